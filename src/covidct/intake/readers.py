"""Load a study from the path a user gives: DICOM folder, zip or image file."""

from __future__ import annotations

import logging
import shutil
import tempfile
import zipfile
from pathlib import Path

import pydicom

from covidct.errors import InputError
from covidct.intake.checks import check_hu, check_z_extent
from covidct.intake.dicom import read_dicom_folder
from covidct.intake.hu import correct_stored_offset, replace_padding
from covidct.intake.image_file import read_image_file
from covidct.intake.options import IntakeOptions
from covidct.intake.volume import CTVolume, Provenance

__all__ = ["load_study"]

logger = logging.getLogger(__name__)

# File name endings read by SimpleITK, and the provenance kind of each.
IMAGE_SUFFIXES = {
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".mha": "mha",
    ".mhd": "mha",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
}

SUPPORTED = (
    "a DICOM folder, a .zip of a DICOM series, or a .nii, .nii.gz, .mha, .mhd, "
    ".nrrd or .nhdr file"
)


def load_study(path: str | Path, options: IntakeOptions | None = None) -> CTVolume:
    """Read a chest CT, check it, and return it as one volume in HU.

    DICOM folders are searched recursively and one CT series is chosen by the
    rule in ``covidct.intake.series.SELECTION_RULE`` unless
    ``options.series_uid`` names one. A zip is extracted into a temporary folder
    and read the same way, and the user's files are not changed. NIfTI, MHA and
    NRRD files are read with SimpleITK and their values are taken as HU.
    Every result passes ``check_hu``.

    Args:
        path: DICOM folder, zip of a DICOM series, or image file.
        options: Series override and limits. Defaults to ``IntakeOptions()``.

    Returns:
        The volume in HU (int16, or float32 when rescaled or interpolated values
        are not integers), with spacing and origin in mm in the LPS frame, and
        a provenance record of choices and warnings.

    Raises:
        InputError: The path is missing or unsupported, or the study fails a
            check (not CT, too few slices, gaps, unreadable, not HU).
    """
    options = IntakeOptions() if options is None else options
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(
            "no such file or folder",
            path=path,
            hint=f"Check the path. Give {SUPPORTED}.",
        )

    suffix = _image_suffix(path)
    if path.is_dir():
        provenance = Provenance(source=str(path), kind="dicom")
        volume = read_dicom_folder(path, options, provenance)
    elif path.suffix.lower() == ".zip":
        volume = _read_dicom_zip(path, options)
    elif suffix is not None:
        volume = read_image_file(path, IMAGE_SUFFIXES[suffix], options)
    elif _is_dicom_file(path):
        raise InputError(
            "this is a single DICOM file, but a CT series spans many files",
            path=path,
            hint="Give the folder that contains all files of the series.",
        )
    else:
        raise InputError(
            f"unsupported file type '{path.suffix or path.name}'",
            path=path,
            hint=f"Give {SUPPORTED}.",
        )

    replace_padding(volume)
    correct_stored_offset(volume)
    check_hu(volume.hu, path)
    check_z_extent(volume, path, options.min_extent_mm)
    logger.info(
        "loaded %s: %d x %d x %d voxels of %s mm",
        path,
        *volume.shape,
        " x ".join(f"{s:.3g}" for s in volume.spacing),
    )
    return volume


def _image_suffix(path: Path) -> str | None:
    """Return the supported image ending of ``path``, if any."""
    name = path.name.lower()
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return None


def _is_dicom_file(path: Path) -> bool:
    try:
        pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - any failure means "not a DICOM file"
        return False
    return True


def _read_dicom_zip(path: Path, options: IntakeOptions) -> CTVolume:
    """Extract a zip into a temporary folder and read the DICOM series in it."""
    provenance = Provenance(source=str(path), kind="dicom-zip")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(
            f"not a valid zip archive: {exc}",
            path=path,
            hint="Check that the download or copy is complete, or give the "
            "extracted folder.",
        ) from exc

    with archive, tempfile.TemporaryDirectory(prefix="covidct-zip-") as temporary:
        root = Path(temporary)
        members = [m for m in archive.infolist() if not m.is_dir()]
        needed = sum(m.file_size for m in members)
        free = shutil.disk_usage(root).free
        if needed > free:
            raise InputError(
                f"extracting the zip needs {needed / 1e9:.1f} GB, but the "
                f"temporary folder {root.parent} has {free / 1e9:.1f} GB free",
                path=path,
                hint="Extract the zip yourself and give the folder, or set TMPDIR "
                "to a folder with more space.",
            )
        for member in members:
            target = (root / member.filename).resolve()
            # A member named with '..' or an absolute path would land outside
            # the temporary folder, so it is skipped.
            if not target.is_relative_to(root.resolve()):
                provenance.skipped_files.append(
                    {"path": member.filename, "reason": "path leads outside the zip"}
                )
                continue
            try:
                archive.extract(member, root)
            except (zipfile.BadZipFile, OSError, ValueError) as exc:
                provenance.skipped_files.append(
                    {"path": member.filename, "reason": f"extraction failed: {exc}"}
                )
        logger.info("extracted %d files of %s", len(members), path)
        return read_dicom_folder(root, options, provenance, label=path)
