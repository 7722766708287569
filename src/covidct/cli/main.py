"""Entry point of the ``covidct`` command."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from covidct import __version__
from covidct.cli.check import FRAME_HELP, add_check_parser, frame_number
from covidct.cli.segmentation import (
    add_segmentation_parsers,
    add_segmenter_arguments,
    check_segmenter_arguments,
)
from covidct.cohort.command import add_batch_parser
from covidct.errors import CovidctError

__all__ = ["main"]

logger = logging.getLogger("covidct")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit status.

    Exit status: 0 success, 1 failure of the tool or of a download, 2 an input
    or output problem the user can fix (the message states what to do), 3 a
    batch that finished with some studies failed, 130 interrupted.
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose, getattr(args, "quiet", False))
    try:
        return int(args.run(args))
    except CovidctError as error:
        print(f"covidct: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("covidct: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - last line of defence for users
        logger.debug("unexpected failure", exc_info=True)
        print(
            f"covidct: internal error: {type(error).__name__}: {error}\n"
            "  Rerun with --verbose for the traceback and report it with the "
            "command you ran.",
            file=sys.stderr,
        )
        if args.verbose:
            raise
        return 1


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="covidct",
        description="Quantify, stage and report COVID-19 pneumonia on chest CT.",
    )
    parser.add_argument("--version", action="version", version=f"covidct {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log every step (to stderr)"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    analyze = commands.add_parser(
        "analyze",
        help="analyse one chest CT study",
        description=(
            "Segment lungs, heart and lesions, measure biomarkers, stage the "
            "extent and write report.json, biomarkers.csv, segmentation.nii.gz "
            "with its label sidecar segmentation.json, and report.html into "
            "the output folder."
        ),
    )
    analyze.add_argument(
        "study",
        type=Path,
        help="DICOM folder (searched recursively), DICOM zip, NIfTI, MHA or NRRD",
    )
    analyze.add_argument(
        "-o", "--output", type=Path, required=True, help="output folder (created)"
    )
    analyze.add_argument(
        "--series",
        metavar="UID",
        help="SeriesInstanceUID to analyse instead of the automatic choice",
    )
    analyze.add_argument(
        "--allow-gaps",
        action="store_true",
        help="resample a series with missing slices instead of rejecting it",
    )
    analyze.add_argument("--frame", type=frame_number, metavar="N", help=FRAME_HELP)
    add_segmenter_arguments(analyze)
    analyze.add_argument(
        "--no-radiomics",
        action="store_true",
        help="skip the 535 PyRadiomics features (the slowest stage)",
    )
    analyze.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="processes for the radiomics regions (default: 1)",
    )
    output = analyze.add_mutually_exclusive_group()
    output.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    output.add_argument(
        "--json",
        action="store_true",
        help="print report.json to stdout (progress and logs stay on stderr)",
    )
    _add_patient_arguments(analyze)
    analyze.set_defaults(run=_run_analyze)

    fetch = commands.add_parser(
        "fetch-sample",
        help="find or download the demo CT (COVID-CT-MD series P002)",
        description=(
            "Print the folder of the demo CT, downloading it and checking the "
            "SHA-256 of every file when it is not found locally."
        ),
    )
    fetch.add_argument("--dest", type=Path, help="folder to download into")
    fetch.add_argument("--url", help="base URL that serves the sample's files")
    fetch.set_defaults(run=_run_fetch_sample)

    add_batch_parser(commands)
    add_check_parser(commands)
    add_segmentation_parsers(commands)
    _add_prognosis_commands(commands)
    return parser


def _add_patient_arguments(analyze: argparse.ArgumentParser) -> None:
    patient = analyze.add_argument_group(
        "outcome estimate",
        "Age and sex are required for the outcome estimate. Giving --crp or "
        "--lymphocytes selects the model with clinical inputs; then an absent "
        "--hypertension or --diabetes counts as no, and a missing CRP or "
        "lymphocyte count is set to the training median.",
    )
    patient.add_argument("--age", type=float, metavar="YEARS", help="age in years")
    patient.add_argument("--sex", choices=["M", "F", "m", "f"], help="M or F")
    patient.add_argument(
        "--hypertension", action="store_true", default=None, help="known hypertension"
    )
    patient.add_argument(
        "--diabetes", action="store_true", default=None, help="known diabetes"
    )
    patient.add_argument(
        "--crp", type=float, metavar="MG_PER_L", help="C-reactive protein in mg/l"
    )
    patient.add_argument(
        "--lymphocytes",
        type=float,
        metavar="G_PER_L",
        help="lymphocyte count in 10^9 cells/l (not a percentage)",
    )


def _add_prognosis_commands(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train-prognosis",
        help="train and evaluate the outcome models on a cohort",
        description=(
            "Select features, tune the classifier pool and fit the calibrated "
            "consensus on the training split, score it and the baselines on the "
            "test split, and write the model (.skops), its model card, the "
            "evaluation page, plots and metrics into the output folder."
        ),
    )
    train.add_argument(
        "cohort",
        type=Path,
        help="Covid-MedIA folder, or CSV of biomarkers.csv rows with Age, Sex, "
        "optional HBP, Diabetes, Lymphocytes, CRP, an outcome column and an "
        "optional split column (train/test)",
    )
    train.add_argument("--outcome", metavar="COLUMN", help="outcome column of a CSV")
    train.add_argument(
        "-o", "--output", type=Path, required=True, help="output folder (created)"
    )
    train.add_argument(
        "--clinical",
        action="store_true",
        help="also use hypertension, diabetes, lymphocytes and CRP",
    )
    train.add_argument(
        "--textures",
        action="store_true",
        help="also use texture features (they depend on the radiomics bin width)",
    )
    train.add_argument("--name", help="model name (default: imaging or clinical)")
    train.add_argument(
        "--selection-splits",
        type=int,
        default=100,
        metavar="N",
        help="subsamples of the feature prevalence (default: 100)",
    )
    train.add_argument(
        "--tuning-splits",
        type=int,
        default=20,
        metavar="N",
        help="shuffle splits per grid point of the tuning (default: 20)",
    )
    train.set_defaults(run=_run_train_prognosis)

    evaluate = commands.add_parser(
        "evaluate-prognosis",
        help="score an outcome model and the baselines on a cohort's test split",
    )
    evaluate.add_argument("cohort", type=Path, help="as for train-prognosis")
    evaluate.add_argument("--outcome", metavar="COLUMN", help="outcome column of a CSV")
    evaluate.add_argument(
        "--model",
        default="imaging",
        help="bundled model name (imaging, clinical) or .skops file (default: imaging)",
    )
    evaluate.add_argument(
        "-o", "--output", type=Path, required=True, help="output folder (created)"
    )
    evaluate.set_defaults(run=_run_evaluate_prognosis)


def _configure_logging(verbose: bool, quiet: bool) -> None:
    if verbose:
        level = logging.DEBUG
    elif quiet:
        level = logging.ERROR
    else:
        level = logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    # The handler's own level also filters libraries that set their loggers to
    # INFO, such as PyRadiomics.
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("covidct: %(levelname)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    logging.getLogger("covidct").setLevel(level)


def _run_analyze(args: argparse.Namespace) -> int:
    from covidct.analysis import STAGES, AnalysisOptions, analyze, write_analysis
    from covidct.intake import IntakeOptions
    from covidct.prognosis.predict import PatientInfo
    from covidct.report import check_output_folder
    from covidct.report.serialize import report_json, to_jsonable

    if args.workers < 1:
        raise CovidctError(f"--workers must be at least 1, got {args.workers}")
    check_segmenter_arguments(args)
    options = AnalysisOptions(
        intake=IntakeOptions(
            series_uid=args.series, allow_gaps=args.allow_gaps, frame=args.frame
        ),
        radiomics=not args.no_radiomics,
        workers=args.workers,
        method=args.method,
        model=args.model,
        patient=PatientInfo(
            age=args.age,
            sex=args.sex,
            hypertension=args.hypertension,
            diabetes=args.diabetes,
            crp=args.crp,
            lymphocytes=args.lymphocytes,
        ),
    )
    show = not args.quiet
    check_output_folder(args.output)
    started = time.perf_counter()
    last_name = [""]
    last_at = [started]

    def is_skipped(name: str) -> bool:
        return name == "radiomics" and not options.radiomics

    def progress(name: str) -> None:
        now = time.perf_counter()
        if show and last_name[0] and not is_skipped(last_name[0]):
            print(f"  done in {now - last_at[0]:.1f} s", file=sys.stderr)
        last_name[0] = name
        last_at[0] = now
        if show:
            step = STAGES.index(name) + 1
            label = f"{name} skipped (--no-radiomics)" if is_skipped(name) else name
            if not is_skipped(name):
                label += " ..."
            print(f"[{step}/{len(STAGES)}] {label}", file=sys.stderr, flush=True)

    result = analyze(args.study, options, progress=progress)
    paths = write_analysis(result, args.output, progress=progress)
    total = time.perf_counter() - started
    if show:
        print(f"  done in {time.perf_counter() - last_at[0]:.1f} s", file=sys.stderr)

    stage = result.stage
    if args.json:
        print(report_json(to_jsonable(result.report())), end="")
    elif show:
        print(
            f"Extent {stage.extent_percent:.1f} % of lung volume: "
            f"{stage.category_name} ({stage.category}), {stage.ct_grade_name}"
        )
        print(f"Segmentation: {result.segmentation.method}.")
        provenance = result.volume.provenance
        if provenance.series_uid:
            rejected = len(provenance.rejected_series)
            print(
                f"Series {provenance.series_uid} "
                f"({result.volume.shape[0]} slices)"
                + (
                    f"; {rejected} other series rejected, see the report."
                    if rejected
                    else "."
                )
            )
        reliability = result.reliability or {}
        if reliability.get("values_reliable") is False:
            reasons = len(reliability.get("reasons", []))
            print(f"Values unreliable: {reasons} reason(s), listed in the report.")
        if result.warnings:
            print(f"{len(result.warnings)} warning(s), listed in the report.")
        print(f"Report: {paths['report_html']}")
        print(f"Finished in {total:.1f} s.")
    return 0


def _run_train_prognosis(args: argparse.Namespace) -> int:
    from covidct.prognosis.train import TrainingOptions
    from covidct.prognosis.workflow import load_cohort, run_training

    for option in ("selection_splits", "tuning_splits"):
        if getattr(args, option) < 2:
            raise CovidctError(
                f"--{option.replace('_', '-')} must be at least 2, got "
                f"{getattr(args, option)}"
            )
    cohort = load_cohort(args.cohort, args.outcome)
    options = TrainingOptions(
        clinical=args.clinical,
        textures=args.textures,
        selection_splits=args.selection_splits,
        tuning_splits=args.tuning_splits,
    )
    model, paths = run_training(cohort, options, args.output, name=args.name)
    _print_metrics(model.metadata["test_metrics"]["binary"], paths)
    return 0


def _run_evaluate_prognosis(args: argparse.Namespace) -> int:
    from covidct.prognosis.model import BUNDLED_MODELS, bundled_model_path
    from covidct.prognosis.workflow import load_cohort, run_evaluation

    model_path = (
        bundled_model_path(args.model)
        if args.model in BUNDLED_MODELS
        else Path(args.model)
    )
    cohort = load_cohort(args.cohort, args.outcome)
    metrics, paths = run_evaluation(model_path, cohort, args.output)
    _print_metrics(metrics["binary"], paths)
    return 0


def _print_metrics(binary: dict, paths: dict) -> None:
    """Print the 2-class test figures and the files written."""
    print(
        f"Test AUC {binary['auc']:.3f}, balanced accuracy "
        f"{binary['balanced_accuracy']:.3f} on {binary['patients']} patients."
    )
    for path in paths.values():
        print(path)


def _run_fetch_sample(args: argparse.Namespace) -> int:
    from covidct.sample import fetch_sample, find_sample

    folder = None if args.dest or args.url else find_sample()
    if folder is None:
        folder = fetch_sample(args.dest, args.url)
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
