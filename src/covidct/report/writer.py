"""Writing the report files into the output folder, each one atomically."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from covidct.errors import OutputError
from covidct.intake.volume import CTVolume
from covidct.report.masks import LABEL_MAP_NAME, label_sidecar
from covidct.report.page import render_page
from covidct.report.serialize import report_json, to_jsonable
from covidct.report.table import biomarker_row, row_csv
from covidct.report.views import render_views
from covidct.segment.result import Segmentation

__all__ = [
    "OUTPUT_FILES",
    "check_output_folder",
    "write_atomic",
    "write_outputs",
    "write_report_json",
]

logger = logging.getLogger(__name__)

#: Key in the result of ``write_outputs`` and file name of each output.
OUTPUT_FILES = {
    "report_json": "report.json",
    "biomarkers_csv": "biomarkers.csv",
    "segmentation": LABEL_MAP_NAME,
    "segmentation_sidecar": "segmentation.json",
    "report_html": "report.html",
}

_WRITE_HINT = (
    "check that the folder is writable and the disk is not full, "
    "or choose another output folder"
)


def _temporary_path(path: Path, suffix: str = ".tmp") -> Path:
    # A hidden name in the same folder keeps os.replace on one file system, so
    # the rename is atomic. The random part avoids clashes between processes.
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}")


def check_output_folder(out_dir: Path) -> None:
    """Check that the output folder exists or can be created, creating nothing.

    Called before a long analysis, so that a bad output path fails at once
    and an input error leaves no empty folder behind.

    Raises:
        OutputError: If the path or one of its parents is a file, or the
            nearest existing folder is not writable.
    """
    out_dir = Path(out_dir).absolute()
    existing = out_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(
            "the output path exists but is a file, not a folder"
            if existing == out_dir
            else f"{existing} is a file, so the output folder cannot be created",
            path=out_dir,
            hint="remove or rename that file, or choose another output folder",
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(
            f"the folder {existing} is not writable",
            path=out_dir,
            hint="choose an output folder you can write to",
        )


def _make_folder(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError as err:
        raise OutputError(
            "the output path exists but is a file, not a folder",
            path=out_dir,
            hint="remove or rename that file, or choose another output folder",
        ) from err
    except OSError as err:
        raise OutputError(
            f"failed to create the output folder: {err.strerror or err}",
            path=out_dir,
            hint="choose an output folder whose parent folders exist as folders "
            "and are writable",
        ) from err


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it.

    Raises:
        OutputError: If the file cannot be written; it names the folder.
    """
    temporary = _temporary_path(path)
    try:
        # Mode 0o666 lets the umask set the permissions, as open() would.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise OutputError(
            f"failed to write {path.name}: {err.strerror or err}",
            path=path.parent,
            hint=_WRITE_HINT,
        ) from err
    logger.debug("wrote %s (%d bytes)", path, len(data))


def _write_label_map(path: Path, volume: CTVolume, segmentation: Segmentation) -> None:
    """Write the label map on the CT grid through a temporary file."""
    image = volume.to_sitk(segmentation.label_map())
    # SimpleITK picks the file format from the name, so the temporary file
    # keeps the .nii.gz ending.
    temporary = _temporary_path(path, suffix=".tmp.nii.gz")
    try:
        sitk.WriteImage(image, str(temporary), useCompression=True)
        os.replace(temporary, path)
    except (RuntimeError, OSError) as err:
        with contextlib.suppress(OSError):
            temporary.unlink()
        reason = err.strerror if isinstance(err, OSError) else str(err).strip()
        raise OutputError(
            f"failed to write {path.name}: {reason}",
            path=path.parent,
            hint=_WRITE_HINT,
        ) from err
    logger.debug("wrote %s", path)


def _check_grid(volume: CTVolume, segmentation: Segmentation) -> None:
    for name in ("lungs", "heart", "lesions"):
        shape = getattr(segmentation, name).shape
        if shape != volume.shape:
            raise ValueError(
                f"segmentation.{name} has shape {shape}, but the CT has shape "
                f"{volume.shape}: masks must lie on the CT grid"
            )


def write_outputs(
    out_dir: Path,
    volume: CTVolume,
    segmentation: Segmentation,
    report: Mapping[str, Any],
) -> dict[str, Path]:
    """Write the report files of one study into ``out_dir``.

    The folder is created if needed, and existing files of the same names are
    replaced. Each file is written to a temporary name in ``out_dir`` and then
    renamed, so a reader never sees a half-written file. Nothing is written
    outside ``out_dir``. If writing fails part way, the files written before the
    failure stay.

    Args:
        out_dir: Output folder.
        volume: The CT that was analysed.
        segmentation: Its masks, on the grid of ``volume``.
        report: The report dict described in ``covidct.report``. It is not
            modified.

    Returns:
        The path of each file, under the keys of ``OUTPUT_FILES``.

    Raises:
        OutputError: If the folder cannot be created or a file cannot be
            written; the message names the folder.
        ValueError: If the masks are not on the CT grid, or a biomarker entry
            is malformed (see ``biomarker_row``).
        TypeError: If the report contains a value that JSON cannot represent.
    """
    out_dir = Path(out_dir)
    _check_grid(volume, segmentation)
    data = to_jsonable(report)
    row = biomarker_row(data)
    paths = {key: out_dir / name for key, name in OUTPUT_FILES.items()}

    _make_folder(out_dir)
    write_atomic(paths["report_json"], report_json(data).encode("utf-8"))
    write_atomic(paths["biomarkers_csv"], row_csv(row).encode("utf-8"))
    _write_label_map(paths["segmentation"], volume, segmentation)
    sidecar = json.dumps(label_sidecar(segmentation), indent=2) + "\n"
    write_atomic(paths["segmentation_sidecar"], sidecar.encode("utf-8"))

    start = time.perf_counter()
    views = render_views(volume, segmentation)
    page = render_page(data, views)
    logger.debug("rendered the HTML report in %.2f s", time.perf_counter() - start)
    write_atomic(paths["report_html"], page.encode("utf-8"))

    logger.info("wrote the report of %s to %s", volume.provenance.source, out_dir)
    return paths


def write_report_json(out_dir: Path, report: Mapping[str, Any]) -> Path:
    """Replace ``report.json`` in ``out_dir`` atomically with ``report``.

    Raises:
        OutputError: If the file cannot be written.
    """
    path = Path(out_dir) / OUTPUT_FILES["report_json"]
    write_atomic(path, report_json(to_jsonable(report)).encode("utf-8"))
    return path
