"""Read a NIfTI, MHA or NRRD volume and check its header geometry.

SimpleITK reads the file. This module then chooses one frame of a 4D file,
repairs a direction matrix that is slightly non-orthonormal, and rejects
geometry that the segmentation cannot reorient (strongly oblique or sheared
axes).
"""

from __future__ import annotations

import gzip
import logging
import struct
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from covidct.errors import InputError
from covidct.intake.checks import check_slice_count
from covidct.intake.options import IntakeOptions
from covidct.intake.volume import CTVolume, Provenance

__all__ = ["check_direction", "read_image_file"]

logger = logging.getLogger(__name__)

# Largest element-wise difference between a direction matrix and the nearest
# orthonormal one that is repaired. Over a 400 mm field of view it moves a
# voxel by at most about 0.4 mm. Differences below the lower bound are
# rounding in the header and are repaired without a warning.
MAX_DIRECTION_DEVIATION = 1e-3
SILENT_DIRECTION_DEVIATION = 1e-6

# Angle between an image axis and its nearest patient axis above which the
# volume counts as oblique (warning) and above which it is rejected. The
# segmentation works along the nearest patient axes, so left and right, the
# lung zones along z and the heart position are only approximate for an
# oblique volume.
# NOTE: the 30 degree limit is a judgement, not a measured bound; at 45
# degrees the nearest patient axis is undefined.
OBLIQUE_WARNING_DEGREES = 1.0
MAX_OBLIQUE_DEGREES = 30.0

NIFTI1_HEADER_SIZE = 348


def read_image_file(path: Path, kind: str, options: IntakeOptions) -> CTVolume:
    """Read a NIfTI, MHA or NRRD volume whose values are taken as HU.

    Args:
        path: The image file.
        kind: Provenance kind: "nifti", "mha" or "nrrd".
        options: ``frame`` chooses one volume of a 4D file; ``min_slices``
            applies.

    Raises:
        InputError: SimpleITK cannot read the file, the image has several
            values per voxel, is 4D without ``options.frame``, has too few
            slices, or has a direction matrix that cannot be used.
    """
    image = _read_with_sitk(path)
    provenance = Provenance(source=str(path), kind=kind)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"the image has {image.GetNumberOfComponentsPerPixel()} values per "
            "voxel (colour or vector), but a CT has one",
            path=path,
            hint="Give a single-channel CT volume in HU.",
        )
    image = _select_frame(image, path, options, provenance)
    if image.GetDimension() == 2:
        check_slice_count(1, options.min_slices, path)
    if image.GetDimension() != 3:
        raise InputError(
            f"the image has {image.GetDimension()} dimensions, but a CT volume has 3",
            path=path,
            hint="Give a 3D CT volume.",
        )
    check_slice_count(image.GetSize()[2], options.min_slices, path)

    provenance.details["pixel_type"] = image.GetPixelIDTypeAsString()
    provenance.details["values_assumed_hu"] = True
    if kind == "nifti":
        _record_nifti_header(path, image, provenance)
    volume = CTVolume.from_sitk(image, provenance)
    volume.direction = check_direction(volume.direction, path, provenance)
    volume.hu = _as_hu_dtype(volume.hu)
    return volume


def _read_with_sitk(path: Path) -> sitk.Image:
    """Read the file, turning SimpleITK's exceptions into an ``InputError``."""
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        text = str(exc).strip()
        if "orthonormal" in text:
            raise InputError(
                "the header's orientation matrix is not orthonormal (its axes "
                "are sheared or scaled unequally), and SimpleITK reads only "
                "orthonormal directions, so the file cannot be read",
                path=path,
                hint="Give the original DICOM series, or resample the volume onto "
                "a grid without shear and save it again (for a NIfTI file, a "
                "valid qform is enough).",
            ) from exc
        last_line = text.splitlines()[-1] if text else ""
        raise InputError(
            f"SimpleITK could not read the file: {last_line}",
            path=path,
            hint="Check that the file is complete and in the format its name says.",
        ) from exc


def _select_frame(
    image: sitk.Image, path: Path, options: IntakeOptions, provenance: Provenance
) -> sitk.Image:
    """Return the 3D volume chosen by ``options.frame`` from a 4D image.

    The 4th axis of a NIfTI or MHA file is time or a series of volumes, never
    slices, so a 4D image with several frames needs an explicit choice.
    """
    frames = image.GetSize()[3] if image.GetDimension() == 4 else 1
    frame = options.frame
    if image.GetDimension() > 4:
        raise InputError(
            f"the image has {image.GetDimension()} dimensions, but a CT volume has 3",
            path=path,
            hint="Give a 3D CT volume.",
        )
    if frame is not None and frame >= frames:
        raise InputError(
            f"frame {frame} was requested, but the image has {frames} "
            f"frame{'s' if frames > 1 else ''} (numbered from 0)",
            path=path,
            hint=f"Pass --frame with a value from 0 to {frames - 1}.",
        )
    if image.GetDimension() != 4:
        return image
    size = " x ".join(str(n) for n in image.GetSize()[:3])
    if frames == 1:
        return image[:, :, :, 0]
    if frame is None:
        raise InputError(
            f"the image is 4D: {frames} volumes (frames) of {size} voxels, but "
            "covidct analyses one 3D CT and does not read the 4th axis as slices",
            path=path,
            hint=f"Pass --frame N (0 to {frames - 1}; IntakeOptions.frame in "
            "Python) to analyse one frame, or split the file into 3D volumes.",
        )
    provenance.details["frame"] = frame
    provenance.details["frame_count"] = frames
    provenance.warn(f"the image is 4D with {frames} frames; frame {frame} was used")
    return image[:, :, :, frame]


def check_direction(
    direction: np.ndarray, path: str | Path, provenance: Provenance
) -> np.ndarray:
    """Check an image's direction matrix and repair small non-orthonormality.

    Args:
        direction: 3 x 3 matrix whose columns are the LPS directions of the
            image axes.
        path: Input named in errors.
        provenance: Receives the deviation, the oblique angle and warnings.

    Returns:
        The nearest orthonormal matrix (from the polar decomposition), which
        equals ``direction`` up to rounding for a valid header.

    Raises:
        InputError: The matrix is singular, deviates from orthonormal by more
            than 1e-3, or has an axis more than 30 degrees from every patient
            axis.
    """
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)
    listed = _format_matrix(matrix)
    if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix)) < 1e-6:
        raise InputError(
            f"the direction matrix {listed} is singular, so the image axes do "
            "not span 3D space",
            path=path,
            hint="Fix the orientation in the header, or give the original DICOM "
            "series.",
        )

    left, _, right = np.linalg.svd(matrix)
    nearest = left @ right
    deviation = float(np.max(np.abs(matrix - nearest)))
    provenance.details["direction_deviation"] = deviation
    if deviation > MAX_DIRECTION_DEVIATION:
        raise InputError(
            f"the direction matrix {listed} is not orthonormal: its axes are "
            f"sheared or not of unit length, by up to {deviation:.3g} against "
            f"the nearest orthonormal matrix (at most {MAX_DIRECTION_DEVIATION:g} "
            "is repaired)",
            path=path,
            hint="Resample the volume onto a grid without shear and save it "
            "again, or give the original DICOM series.",
        )
    if deviation > SILENT_DIRECTION_DEVIATION:
        provenance.warn(
            f"the direction matrix {listed} was not orthonormal (deviation "
            f"{deviation:.2g}); the nearest orthonormal matrix "
            f"{_format_matrix(nearest)} was used"
        )

    cosines = np.abs(nearest).max(axis=0).clip(-1.0, 1.0)
    angle = float(np.degrees(np.arccos(cosines)).max())
    patient_axes = np.abs(nearest).argmax(axis=0)
    provenance.details["oblique_degrees"] = round(angle, 3)
    if angle > MAX_OBLIQUE_DEGREES or len(set(patient_axes.tolist())) != 3:
        raise InputError(
            f"the image axes are oblique: the direction matrix {listed} turns an "
            f"axis {angle:.1f} degrees away from the nearest patient axis, more "
            f"than the {MAX_OBLIQUE_DEGREES:g} degrees that the segmentation "
            "accepts",
            path=path,
            hint="Resample the volume onto axial patient axes (for example with "
            "a rigid resampling in 3D Slicer or SimpleITK) and try again.",
        )
    if angle > OBLIQUE_WARNING_DEGREES:
        provenance.warn(
            f"the image axes are oblique, up to {angle:.1f} degrees from the "
            "patient axes; the segmentation, the left-right split and the lung "
            "zones follow the nearest patient axes"
        )
    return nearest


def _format_matrix(matrix: np.ndarray) -> str:
    rows = ", ".join(
        "[" + ", ".join(f"{value:.4g}" for value in row) + "]" for row in matrix
    )
    return f"[{rows}]"


def _record_nifti_header(path: Path, image: sitk.Image, provenance: Provenance) -> None:
    """Record the NIfTI-1 scaling and warn when SimpleITK discarded the sform.

    SimpleITK applies ``scl_slope`` and ``scl_inter`` itself. When the sform is
    not orthonormal and a qform exists, SimpleITK 2.5 uses the qform without
    raising, so the geometry differs from the sform that other tools show.
    """
    header = _read_nifti1_header(path)
    if header is None:
        return
    provenance.details["nifti_scl_slope"] = header["scl_slope"]
    provenance.details["nifti_scl_inter"] = header["scl_inter"]
    if header["sform_code"] <= 0 or header["qform_code"] <= 0:
        return
    # The sform columns carry the spacing, and NIfTI is RAS where ITK is LPS.
    affine = np.array(header["srow"], dtype=float).reshape(3, 4)[:, :3]
    norms = np.linalg.norm(affine, axis=0)
    if np.any(norms <= 0):
        return
    sform = np.diag([-1.0, -1.0, 1.0]) @ (affine / norms)
    left, _, right = np.linalg.svd(sform)
    shear = float(np.max(np.abs(sform - left @ right)))
    if shear > MAX_DIRECTION_DEVIATION:
        used = np.array(image.GetDirection(), dtype=float).reshape(
            image.GetDimension(), image.GetDimension()
        )[:3, :3]
        provenance.warn(
            f"the NIfTI sform {_format_matrix(sform)} is not orthonormal "
            f"(deviation {shear:.3g}), so SimpleITK used the qform, whose "
            f"direction is {_format_matrix(used)}"
        )


def _read_nifti1_header(path: Path) -> dict[str, Any] | None:
    """Read the scaling and orientation fields of a NIfTI-1 header, if it is one."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as stream:
            raw = stream.read(NIFTI1_HEADER_SIZE)
    except OSError:
        return None
    if len(raw) < NIFTI1_HEADER_SIZE:
        return None
    for order in ("<", ">"):
        if struct.unpack_from(order + "i", raw, 0)[0] == NIFTI1_HEADER_SIZE:
            break
    else:
        return None  # NIfTI-2 or not NIfTI
    slope, inter = struct.unpack_from(order + "2f", raw, 112)
    qform_code, sform_code = struct.unpack_from(order + "2h", raw, 252)
    return {
        "scl_slope": float(slope),
        "scl_inter": float(inter),
        "qform_code": int(qform_code),
        "sform_code": int(sform_code),
        "srow": struct.unpack_from(order + "12f", raw, 280),
    }


def _as_hu_dtype(values: np.ndarray) -> np.ndarray:
    """Convert to int16 when all values are integers within its range."""
    if np.issubdtype(values.dtype, np.integer):
        if values.min() >= -32768 and values.max() <= 32767:
            return values.astype(np.int16, copy=False)
        return values.astype(np.float32)
    return values.astype(np.float32, copy=False)
