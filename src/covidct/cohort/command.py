"""The ``covidct batch`` command: arguments, progress bar and summary line.

NOTE: this is command-line code kept in the cohort package, next to the batch
it drives; ``covidct.cli.main`` only registers it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from covidct.cli.segmentation import add_segmenter_arguments, check_segmenter_arguments
from covidct.errors import CovidctError

__all__ = ["EXIT_SOME_FAILED", "add_batch_parser", "run_batch_command"]

#: Exit status of a batch that finished but in which some studies failed.
EXIT_SOME_FAILED = 3


def add_batch_parser(commands: Any) -> None:
    """Add the ``batch`` subcommand to the ``covidct`` subparsers."""
    batch = commands.add_parser(
        "batch",
        help="analyse many studies: a folder of studies or a CSV manifest",
        description=(
            "Analyse every study of INPUT into OUT/<study_id>/ (the files of "
            "'covidct analyze'), and keep OUT/cohort.csv, OUT/failures.csv and "
            "OUT/cohort.html up to date. Rerunning the same command skips the "
            "studies already done and retries the others. Exit status: 0 when "
            f"every study is done, {EXIT_SOME_FAILED} when some failed, 2 when "
            "INPUT or OUT cannot be used."
        ),
    )
    batch.add_argument(
        "input",
        type=Path,
        help="folder with one study per subfolder or file, a DICOM tree, or a "
        "CSV manifest with the columns study_id and path (other columns are "
        "copied to cohort.csv)",
    )
    batch.add_argument(
        "-o", "--output", type=Path, required=True, help="output folder (created)"
    )
    batch.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="studies analysed at once on this machine, one process each "
        "(default: 1); memory may lower it",
    )
    batch.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="Dask scheduler (tcp://HOST:PORT) to run the studies on instead of "
        "local processes; its workers need covidct and must read the input paths",
    )
    batch.add_argument(
        "--layout",
        choices=("auto", "subfolders", "dicom-tree"),
        default="auto",
        help="how to find studies in a folder: one per subfolder or file, or "
        "grouped by StudyInstanceUID (default: dicom-tree when DICOM files lie "
        "directly in INPUT, else subfolders)",
    )
    batch.add_argument(
        "--memory-limit",
        type=float,
        metavar="GB",
        help="memory in GB that the studies running at once may use together, "
        "by estimate (default: 80%% of the memory available at start)",
    )
    add_segmenter_arguments(batch)
    batch.add_argument(
        "--no-radiomics",
        action="store_true",
        help="skip the 535 PyRadiomics features (the slowest stage)",
    )
    batch.add_argument(
        "--allow-gaps",
        action="store_true",
        help="resample series with missing slices instead of rejecting them",
    )
    batch.add_argument(
        "-q", "--quiet", action="store_true", help="print errors and the summary only"
    )
    batch.set_defaults(run=run_batch_command)


def run_batch_command(args: argparse.Namespace) -> int:
    """Run ``covidct batch`` and return its exit status."""
    from covidct.cohort import (
        BatchOptions,
        BatchProgress,
        discover_studies,
        read_manifest,
        run_batch,
    )

    if args.workers < 1:
        raise CovidctError(f"--workers must be at least 1, got {args.workers}")
    if args.memory_limit is not None and args.memory_limit <= 0:
        raise CovidctError(f"--memory-limit must be positive, got {args.memory_limit}")
    check_segmenter_arguments(args)
    options = BatchOptions(
        workers=args.workers,
        scheduler=args.scheduler,
        radiomics=not args.no_radiomics,
        allow_gaps=args.allow_gaps,
        method=args.method,
        model=args.model,
        memory_limit_bytes=(
            None if args.memory_limit is None else int(args.memory_limit * 1e9)
        ),
        # Each study's warnings are in its report.json, so the workers print
        # only errors unless --verbose is given.
        worker_log_level=logging.DEBUG if args.verbose else logging.ERROR,
    )
    if args.input.is_file() and args.input.suffix.lower() == ".csv":
        tasks, clinical = read_manifest(args.input)
    else:
        tasks, clinical = discover_studies(args.input, args.layout), []

    bars: list[Any] = []

    def show(state: BatchProgress) -> None:
        if args.quiet:
            return
        if not bars:
            bars.append(_progress_bar(state.total, state.skipped))
        bar = bars[0]
        bar.n = state.done + state.failed
        bar.set_postfix(
            done=state.done,
            failed=state.failed,
            remaining=state.remaining,
            running=state.running,
            refresh=False,
        )
        bar.refresh()

    try:
        summary = run_batch(tasks, args.output, options, clinical, progress=show)
    finally:
        for bar in bars:
            bar.close()
    failed = len(summary.failed)
    print(
        f"Batch finished in {_duration(summary.seconds)}: {summary.total} studies, "
        f"{summary.done} done ({summary.skipped} from an earlier run), "
        f"{failed} failed. Cohort: {summary.files['cohort_csv']}"
        + (f"; failures: {summary.files['failures_csv']}" if failed else "")
    )
    return EXIT_SOME_FAILED if failed else 0


def _progress_bar(total: int, skipped: int) -> Any:
    from tqdm import tqdm

    # tqdm computes the rate and ETA from the count above ``initial``, so the
    # studies done by an earlier run do not make the batch look faster.
    return tqdm(
        total=total,
        initial=skipped,
        unit="study",
        file=sys.stderr,
        dynamic_ncols=True,
    )


def _duration(seconds: float) -> str:
    minutes, rest = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {rest} s"
    return f"{seconds:.1f} s"
