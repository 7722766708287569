"""Load a study from the path a user gives: DICOM folder, zip or image file."""

from __future__ import annotations

import logging
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from covidct.errors import InputError
from covidct.intake.checks import check_hu, check_slice_count
from covidct.intake.dicom import read_dicom_folder
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
        volume = _read_image_file(path, IMAGE_SUFFIXES[suffix], options)
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

    check_hu(volume.hu, path)
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


def _read_image_file(path: Path, kind: str, options: IntakeOptions) -> CTVolume:
    """Read a NIfTI, MHA or NRRD volume whose values are HU."""
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise InputError(
            f"SimpleITK could not read the file: {first_line}",
            path=path,
            hint="Check that the file is complete and in the format its name says.",
        ) from exc

    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"the image has {image.GetNumberOfComponentsPerPixel()} values per "
            "voxel (colour or vector), but a CT has one",
            path=path,
            hint="Give a single-channel CT volume in HU.",
        )
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() == 2:
        check_slice_count(1, options.min_slices, path)
    if image.GetDimension() != 3:
        raise InputError(
            f"the image has {image.GetDimension()} dimensions, but a CT volume has 3",
            path=path,
            hint="Give a 3D CT volume. Split time series or multi-volume files first.",
        )
    check_slice_count(image.GetSize()[2], options.min_slices, path)

    provenance = Provenance(source=str(path), kind=kind)
    provenance.details["pixel_type"] = image.GetPixelIDTypeAsString()
    provenance.details["values_assumed_hu"] = True
    volume = CTVolume.from_sitk(image, provenance)
    volume.hu = _as_hu_dtype(volume.hu)
    return volume


def _as_hu_dtype(values: np.ndarray) -> np.ndarray:
    """Convert to int16 when all values are integers within its range."""
    if np.issubdtype(values.dtype, np.integer):
        if values.min() >= -32768 and values.max() <= 32767:
            return values.astype(np.int16, copy=False)
        return values.astype(np.float32)
    return values.astype(np.float32, copy=False)
