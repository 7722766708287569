"""The ``covidct check`` command: run the intake checks alone on studies.

It reads each study as ``covidct analyze`` would, pixels included, so that it
catches what decoding catches, and prints what analyze would use, choose,
correct or reject. Nothing is segmented and nothing is written.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from covidct.intake import IntakeOptions

__all__ = ["FRAME_HELP", "add_check_parser", "frame_number", "run_check"]

logger = logging.getLogger(__name__)

FRAME_HELP = "volume to read from a 4D NIfTI or MHA file, numbered from 0"

EXIT_USABLE = 0
EXIT_FAILED = 1
EXIT_REJECTED = 2


def frame_number(text: str) -> int:
    """Parse the ``--frame`` value, a whole number of 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number, got {text!r}"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def add_check_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``check`` subcommand to the command line's subparsers."""
    check = commands.add_parser(
        "check",
        help="check that studies can be analysed, without analysing them",
        description=(
            "Read each study as 'covidct analyze' would, pixels included, and "
            "print the series chosen and the rule, the series rejected, the "
            "files skipped, the warnings and the geometry, or why the study is "
            "rejected. Exit status: 0 when every study is usable, 2 when at "
            "least one is rejected, 1 when the check failed on one."
        ),
    )
    check.add_argument(
        "studies",
        nargs="+",
        type=Path,
        metavar="STUDY",
        help="DICOM folder (searched recursively), DICOM zip, NIfTI, MHA or NRRD",
    )
    check.add_argument(
        "--series",
        metavar="UID",
        help="SeriesInstanceUID to use instead of the automatic choice",
    )
    check.add_argument(
        "--allow-gaps",
        action="store_true",
        help="accept a series with missing slices (analyze resamples it)",
    )
    check.add_argument("--frame", type=frame_number, metavar="N", help=FRAME_HELP)
    check.add_argument(
        "--json",
        action="store_true",
        help="print a JSON list with one object per study instead of text",
    )
    check.set_defaults(run=run_check)


def run_check(args: argparse.Namespace) -> int:
    """Check every study of ``args.studies`` and print the results.

    Returns:
        0 when every study is usable, 2 when at least one is rejected, and 1
        when the check failed unexpectedly on at least one.
    """
    from covidct.intake import IntakeOptions
    from covidct.report.serialize import to_jsonable

    options = IntakeOptions(
        series_uid=args.series, allow_gaps=args.allow_gaps, frame=args.frame
    )
    # The results list every warning, so intake's log lines would repeat them.
    intake_logger = logging.getLogger("covidct.intake")
    previous_level = intake_logger.level
    if not args.verbose:
        intake_logger.setLevel(logging.ERROR)
    results = []
    try:
        for study in args.studies:
            result = check_study(study, options)
            results.append(result)
            if not args.json:
                print(format_result(result), flush=True)
    finally:
        intake_logger.setLevel(previous_level)
    if args.json:
        print(json.dumps(to_jsonable(results), indent=2, ensure_ascii=False))

    statuses = {result["status"] for result in results}
    if "failed" in statuses:
        return EXIT_FAILED
    if "rejected" in statuses:
        return EXIT_REJECTED
    return EXIT_USABLE


def check_study(study: Path, options: IntakeOptions) -> dict[str, Any]:
    """Run intake on one study and describe the outcome as a plain dict.

    The dict has ``status`` "usable", "rejected" (an ``InputError``: the
    message and what to do) or "failed" (any other error, which is a bug).
    """
    import SimpleITK as sitk

    from covidct.errors import InputError
    from covidct.intake import load_study

    started = time.perf_counter()
    result: dict[str, Any] = {"study": str(study)}
    try:
        volume = load_study(study, options)
    except InputError as error:
        result.update(status="rejected", error=error.message, hint=error.hint)
    except Exception as error:  # noqa: BLE001 - one broken study must not stop a cohort
        logger.debug("check of %s failed", study, exc_info=True)
        result.update(status="failed", error=f"{type(error).__name__}: {error}")
    else:
        provenance = volume.provenance
        nz, ny, nx = volume.shape
        direction = [float(v) for v in volume.direction.ravel()]
        result.update(
            status="usable",
            kind=provenance.kind,
            series_uid=provenance.series_uid,
            series_description=provenance.series_description,
            selection_rule=provenance.selection_rule,
            rejected_series=provenance.rejected_series,
            skipped_files=provenance.skipped_files,
            warnings=provenance.warnings,
            size=[nx, ny, nz],
            spacing_mm=list(volume.spacing),
            origin_mm=list(volume.origin),
            direction=direction,
            orientation=sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
                direction
            ),
            hu_range=[float(volume.hu.min()), float(volume.hu.max())],
            details=provenance.details,
        )
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def format_result(result: dict[str, Any]) -> str:
    """Format one study's result as a summary line and indented details."""
    study = result["study"]
    if result["status"] == "rejected":
        lines = [f"{study}: rejected: {result['error']}"]
        if result.get("hint"):
            lines.append(f"  What to do: {result['hint']}")
        return "\n".join(lines)
    if result["status"] == "failed":
        return (
            f"{study}: check failed: {result['error']}\n"
            "  Rerun with --verbose for the traceback and report it."
        )

    size = " x ".join(str(n) for n in result["size"])
    spacing = " x ".join(f"{s:.3g}" for s in result["spacing_mm"])
    warnings = result["warnings"]
    noun = "warning" if len(warnings) == 1 else "warnings"
    lines = [
        f"{study}: usable: {size} voxels of {spacing} mm, orientation "
        f"{result['orientation']}, {len(warnings)} {noun}"
    ]
    if result["series_uid"]:
        description = result["series_description"] or "no description"
        lines.append(f"  series: {result['series_uid']} ({description})")
        lines.append(f"  chosen by: {result['selection_rule']}")
    for series in result["rejected_series"]:
        uid = series.get("series_uid", "?")
        lines.append(f"  rejected series: {uid}: {series.get('reason', '')}")
    for skipped in result["skipped_files"]:
        lines.append(f"  skipped file: {skipped['path']}: {skipped['reason']}")
    for warning in warnings:
        lines.append(f"  warning: {warning}")
    return "\n".join(lines)
