"""Split an Enhanced CT file into one slice per frame.

An Enhanced CT Image Storage file contains many frames in one pixel data
element. The geometry and the rescale of each frame are in functional group
macros: per frame in PerFrameFunctionalGroupsSequence, or for all frames at
once in SharedFunctionalGroupsSequence, where a per-frame item takes
precedence over a shared one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from covidct.intake.slices import (
    MAX_ORIENTATION_ERROR,
    SliceHeader,
    normalise_orientation,
)

__all__ = ["MULTI_FRAME_CT_STORAGE", "MultiFrameError", "read_frame_headers"]

MULTI_FRAME_CT_STORAGE = {
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
}


class MultiFrameError(ValueError):
    """An Enhanced CT file that cannot be split into slices, with the reason."""


def read_frame_headers(path: Path, header: Dataset, forced: bool) -> list[SliceHeader]:
    """Build one slice header per frame from the functional groups.

    Args:
        path: The multi-frame file.
        header: Its data set, read without pixel data.
        forced: Whether it was read without a DICOM file header.

    Returns:
        The slices in frame order. Each has ``frame`` set to its frame index.

    Raises:
        MultiFrameError: NumberOfFrames is missing or 0, a functional group
            with geometry (PlanePositionSequence, PlaneOrientationSequence or
            PixelMeasuresSequence) is missing for a frame, or the orientation
            is not made of perpendicular unit vectors.
    """
    count = int(header.get("NumberOfFrames", 0) or 0)
    if count < 1:
        raise MultiFrameError("multi-frame CT file without NumberOfFrames")
    shared_items = header.get("SharedFunctionalGroupsSequence") or [Dataset()]
    shared = shared_items[0]
    per_frame = header.get("PerFrameFunctionalGroupsSequence") or []
    if per_frame and len(per_frame) != count:
        raise MultiFrameError(
            f"PerFrameFunctionalGroupsSequence has {len(per_frame)} items but "
            f"NumberOfFrames is {count}"
        )

    rows = int(header.Rows)
    columns = int(header.Columns)
    bits_stored = int(header.get("BitsStored", header.BitsAllocated))
    signed = int(header.get("PixelRepresentation", 0)) == 1
    slices = []
    for index in range(count):
        groups = per_frame[index] if per_frame else Dataset()
        plane_position = _macro(groups, shared, "PlanePositionSequence", index)
        plane_orientation = _macro(groups, shared, "PlaneOrientationSequence", index)
        measures = _macro(groups, shared, "PixelMeasuresSequence", index)
        transformation = _optional_macro(
            groups, shared, "PixelValueTransformationSequence"
        )
        try:
            position = np.array([float(v) for v in plane_position.ImagePositionPatient])
            orientation = np.array(
                [float(v) for v in plane_orientation.ImageOrientationPatient]
            )
            row_spacing, column_spacing = (float(v) for v in measures.PixelSpacing)
        except (AttributeError, TypeError, ValueError) as exc:
            raise MultiFrameError(
                f"frame {index + 1} has missing or invalid geometry: {exc}"
            ) from exc
        if position.shape != (3,) or orientation.shape != (6,):
            raise MultiFrameError(
                f"frame {index + 1}: ImagePositionPatient or "
                "ImageOrientationPatient has the wrong number of values"
            )
        orientation, error = normalise_orientation(orientation)
        if error > MAX_ORIENTATION_ERROR:
            raise MultiFrameError(
                f"frame {index + 1}: the ImageOrientationPatient rows are not "
                f"perpendicular unit vectors (deviation {error:.2g})"
            )
        rescale = transformation if transformation is not None else header
        slices.append(
            SliceHeader(
                path=path,
                position=position,
                orientation=orientation,
                pixel_spacing=(row_spacing, column_spacing),
                rows=rows,
                columns=columns,
                slope=float(rescale.get("RescaleSlope", 1.0) or 1.0),
                intercept=float(rescale.get("RescaleIntercept", 0.0) or 0.0),
                bits_stored=bits_stored,
                signed=signed,
                forced=forced,
                header=header,
                frame=index,
                orientation_error=error,
            )
        )
    return slices


def _macro(groups: Dataset, shared: Dataset, keyword: str, index: int) -> Dataset:
    """Return the frame's item of a functional group macro, or raise when absent."""
    item = _optional_macro(groups, shared, keyword)
    if item is None:
        raise MultiFrameError(
            f"frame {index + 1} has no {keyword} in the per-frame or shared "
            "functional groups, so its geometry is unknown"
        )
    return item


def _optional_macro(groups: Dataset, shared: Dataset, keyword: str) -> Dataset | None:
    for source in (groups, shared):
        sequence = source.get(keyword)
        if sequence:
            return sequence[0]
    return None
