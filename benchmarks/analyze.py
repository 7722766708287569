"""Time and memory of each stage of ``covidct analyze`` on a real CT.

Runs the stages one after another in this process, as ``covidct analyze``
does (the segmentation stage includes the anatomical checks), and samples
the resident memory (RSS) of this process and its children (the radiomics
workers) every 10 ms to find each stage's peak. Prints a
Markdown table for ``docs/benchmarks.md``.

Usage:
    .venv/bin/python -P benchmarks/analyze.py [STUDY] [--repeat N] [--workers N]
        [--method cnn|threshold]

STUDY defaults to ../shared/data/covid-ct-md/P002.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from covidct.analysis import AnalysisOptions, AnalysisResult, segment_study
from covidct.biomarkers.radiomics import extract_radiomics
from covidct.biomarkers.volumes import compute_biomarkers
from covidct.intake import load_study
from covidct.report import write_outputs
from covidct.segment.anatomy import check_anatomy
from covidct.staging import stage_extent

DEFAULT_STUDY = (
    Path(__file__).resolve().parents[1].parent / "shared/data/covid-ct-md/P002"
)


class RssSampler:
    """Record the peak resident memory of this process between resets."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def reset(self) -> None:
        self.peak_kib = _rss_kib()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, _rss_kib())
            time.sleep(self.interval_s)


def _rss_kib(pid: int | None = None) -> int:
    """Return the RSS of a process and all its descendants, in KiB (Linux)."""
    pid = os.getpid() if pid is None else pid
    total = 0
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as children:
                for child in children.read().split():
                    total += _rss_kib(int(child))
    except (FileNotFoundError, ProcessLookupError):
        pass  # the process ended between two reads
    return total


def run_once(study: Path, workers: int, method: str) -> list[tuple[str, float, float]]:
    """Run every stage once and return (stage, seconds, peak RSS in MiB)."""
    rows: list[tuple[str, float, float]] = []
    state: dict[str, Any] = {}
    options = AnalysisOptions(workers=workers, method=method)
    out_dir = Path(tempfile.mkdtemp(prefix="covidct-bench-"))

    def intake() -> None:
        state["volume"] = load_study(study, options.intake)

    def segmentation() -> None:
        state["segmentation"] = segment_study(state["volume"], options)
        check_anatomy(state["volume"], state["segmentation"])

    def biomarkers() -> None:
        state["biomarkers"] = compute_biomarkers(state["volume"], state["segmentation"])

    def radiomics() -> None:
        state["radiomics"] = extract_radiomics(
            state["volume"], state["segmentation"], workers=workers
        )

    def staging() -> None:
        extent = state["biomarkers"]["Disease_extent"].value or 0.0
        state["stage"] = stage_extent(extent)

    def report() -> None:
        result = AnalysisResult(
            volume=state["volume"],
            segmentation=state["segmentation"],
            biomarkers=state["biomarkers"],
            radiomics=state["radiomics"],
            stage=state["stage"],
            warnings=[],
            timings_s={},
        )
        write_outputs(out_dir, result.volume, result.segmentation, result.report())

    stages: list[tuple[str, Callable[[], None]]] = [
        ("intake", intake),
        ("segmentation", segmentation),
        ("biomarkers", biomarkers),
        ("radiomics", radiomics),
        ("staging", staging),
        ("report", report),
    ]
    with RssSampler() as sampler:
        total_start = time.perf_counter()
        for name, stage in stages:
            sampler.reset()
            start = time.perf_counter()
            stage()
            elapsed = time.perf_counter() - start
            time.sleep(0.02)  # one more sample after the stage
            rows.append((name, elapsed, sampler.peak_kib / 1024))
        total = time.perf_counter() - total_start
        rows.append(("whole run", total, max(r[2] for r in rows)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", nargs="?", type=Path, default=DEFAULT_STUDY)
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs; the median is shown"
    )
    parser.add_argument("--workers", type=int, default=1, help="radiomics processes")
    parser.add_argument(
        "--method",
        choices=["cnn", "threshold"],
        default="cnn",
        help="segmentation backend (default: cnn)",
    )
    args = parser.parse_args()
    if not args.study.exists():
        print(f"study not found: {args.study}; give the path of a CT", file=sys.stderr)
        return 2

    runs = [run_once(args.study, args.workers, args.method) for _ in range(args.repeat)]
    names = [row[0] for row in runs[0]]
    print(
        f"Study: {args.study.name}; {args.repeat} runs, median time and the "
        "memory of the first run shown; "
        f"segmentation: {args.method}; radiomics workers: {args.workers}; "
        f"{os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}, Python "
        f"{platform.python_version()}; {date.today().isoformat()}"
    )
    print()
    print("| stage | wall time (s) | peak RSS with workers (MiB) |")
    print("|---|---:|---:|")
    for index, name in enumerate(names):
        seconds = sorted(run[index][1] for run in runs)[len(runs) // 2]
        # Later runs start with the memory the first one left allocated.
        memory = runs[0][index][2]
        print(f"| {name} | {seconds:.1f} | {memory:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
