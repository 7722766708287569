"""Reorient arrays between the CT grid and the canonical orientation.

The threshold segmenters assume a canonical array ``[z, y, x]`` with x toward
the patient's left, y posterior and z superior (LPS with identity direction).
Any other axis order or sign in the header is undone by a transpose and flips,
which are exact and invertible. Oblique axes go to their nearest patient axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Reorientation"]


@dataclass(frozen=True)
class Reorientation:
    """The transpose and flips that take a CT grid array to canonical orientation.

    Attributes:
        axes: For each canonical array axis, the source array axis it comes from.
        flips: For each canonical array axis, whether it is reversed.
        spacing: Canonical voxel size ``(x, y, z)`` in mm.
    """

    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    spacing: tuple[float, float, float]

    @classmethod
    def from_geometry(
        cls, direction: np.ndarray, spacing: tuple[float, float, float]
    ) -> Reorientation:
        """Find the reorientation from ITK direction cosines and spacing.

        Args:
            direction: 3 x 3 matrix whose column ``i`` is the LPS direction of
                ITK axis ``i`` (array axis ``2 - i``).
            spacing: Voxel size along the ITK axes ``(x, y, z)`` in mm.

        Raises:
            ValueError: If two axes point along the same patient axis (a
                degenerate or strongly oblique direction matrix).
        """
        direction = np.asarray(direction, dtype=float).reshape(3, 3)
        patient_axis = [int(np.argmax(np.abs(direction[:, i]))) for i in range(3)]
        if sorted(patient_axis) != [0, 1, 2]:
            raise ValueError(
                f"direction matrix {direction.tolist()} has two axes along the same "
                "patient axis; the grid cannot be reoriented"
            )
        axes = [0, 0, 0]
        flips = [False, False, False]
        canonical_spacing = [0.0, 0.0, 0.0]
        for itk_axis, p in enumerate(patient_axis):
            target = 2 - p
            axes[target] = 2 - itk_axis
            flips[target] = bool(direction[p, itk_axis] < 0)
            canonical_spacing[p] = float(spacing[itk_axis])
        return cls(
            axes=(axes[0], axes[1], axes[2]),
            flips=(flips[0], flips[1], flips[2]),
            spacing=(canonical_spacing[0], canonical_spacing[1], canonical_spacing[2]),
        )

    @property
    def is_identity(self) -> bool:
        """True when the grid already is canonical."""
        return self.axes == (0, 1, 2) and not any(self.flips)

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        """Return ``array`` (on the CT grid) in canonical orientation."""
        if self.is_identity:
            return array
        result = np.transpose(array, self.axes)
        for axis, flip in enumerate(self.flips):
            if flip:
                result = np.flip(result, axis=axis)
        return np.ascontiguousarray(result)

    def from_canonical(self, array: np.ndarray) -> np.ndarray:
        """Return a canonical ``array`` on the CT grid again."""
        if self.is_identity:
            return array
        result = array
        for axis, flip in enumerate(self.flips):
            if flip:
                result = np.flip(result, axis=axis)
        inverse = np.argsort(self.axes)
        return np.ascontiguousarray(np.transpose(result, inverse))
