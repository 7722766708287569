"""One CT image slice as read from its DICOM header, and its orientation check."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

__all__ = [
    "MAX_ORIENTATION_ERROR",
    "SliceHeader",
    "normalise_orientation",
]

# ImageOrientationPatient rows whose lengths differ from 1, or whose dot
# product differs from 0, by more than this are rejected. Below it they are
# normalised: scanners write the cosines as decimal strings of at most 16
# characters, which leaves errors near 1e-6 at most.
MAX_ORIENTATION_ERROR = 1e-3


@dataclass
class SliceHeader:
    """Header facts of one CT image, enough to sort and decode it.

    A classic CT file gives one slice. Each frame of an Enhanced CT file gives
    one slice whose ``frame`` is its index in the file's pixel data.

    Attributes:
        orientation_error: Largest deviation of the ImageOrientationPatient
            rows from perpendicular unit vectors before ``orientation`` was
            normalised (0 when exact).
    """

    path: Path
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    slope: float
    intercept: float
    bits_stored: int
    signed: bool
    forced: bool
    header: Dataset
    frame: int | None = None
    orientation_error: float = 0.0

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.orientation[:3], self.orientation[3:])

    def geometry_key(self) -> tuple[Any, ...]:
        """Facts that must agree for slices to be stacked into one array."""
        return (
            self.rows,
            self.columns,
            tuple(np.round(self.orientation, 4)),
            tuple(np.round(self.pixel_spacing, 4)),
        )


def normalise_orientation(values: np.ndarray) -> tuple[np.ndarray, float]:
    """Make the two ImageOrientationPatient rows perpendicular unit vectors.

    The row direction is scaled to unit length, and the column direction loses
    its component along the row direction before it is scaled (Gram-Schmidt).

    Args:
        values: The six ImageOrientationPatient values.

    Returns:
        The normalised six values and the largest deviation of the input from
        perpendicular unit vectors: the deviation of either length from 1 or
        the absolute dot product of the rows.
    """
    row = np.asarray(values[:3], dtype=float)
    column = np.asarray(values[3:], dtype=float)
    error = max(
        abs(float(np.linalg.norm(row)) - 1.0),
        abs(float(np.linalg.norm(column)) - 1.0),
        abs(float(row @ column)),
    )
    row_unit = row / np.linalg.norm(row)
    column = column - (column @ row_unit) * row_unit
    column_unit = column / np.linalg.norm(column)
    return np.concatenate([row_unit, column_unit]), error
