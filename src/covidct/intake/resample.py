"""Resample DICOM slice stacks whose grid is sheared or oblique.

Later stages assume that the array axes lie along the patient axes and are
perpendicular to each other. A gantry tilt shears the stack: each slice is
shifted within its plane in proportion to its distance from the first slice.
An oblique ImageOrientationPatient rotates the whole grid. Both are resampled
here with linear interpolation, and voxels that fall outside the scanned
field are set to air.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

__all__ = [
    "AIR_HU",
    "Grid",
    "nearest_axes",
    "remove_shear",
    "resample_to_axes",
    "shear_angle_degrees",
]

# Value of voxels outside the scanned field after resampling: air.
AIR_HU = -1024.0


class Grid:
    """Geometry of a volume ``[z, y, x]``: spacing and origin ``(x, y, z)`` in mm
    and the 3 x 3 direction matrix whose columns are the x, y and z axes."""

    def __init__(
        self, spacing: np.ndarray, origin: np.ndarray, direction: np.ndarray
    ) -> None:
        self.spacing = np.asarray(spacing, dtype=float)
        self.origin = np.asarray(origin, dtype=float)
        self.direction = np.asarray(direction, dtype=float)


def shear_angle_degrees(positions: np.ndarray, normal: np.ndarray) -> float:
    """Return the angle between the slice normal and the line of slice positions.

    Args:
        positions: ImagePositionPatient of each slice, shape ``(n, 3)``, in mm,
            sorted along ``normal``.
        normal: Unit slice normal.
    """
    offset = positions[-1] - positions[0]
    along = float(offset @ normal)
    across = float(np.linalg.norm(offset - along * normal))
    return math.degrees(math.atan2(across, along))


def remove_shear(
    hu: np.ndarray, positions: np.ndarray, grid: Grid
) -> tuple[np.ndarray, Grid]:
    """Shift each slice within its plane so that the stack is orthogonal.

    Slice ``k`` lies at ``positions[k]``. Its offset from the line through the
    first slice along the slice normal is removed by shifting its pixels by
    that offset, with linear interpolation. The grid grows in x and y so that
    no pixel of any slice is lost.

    Args:
        hu: Slices ``[z, y, x]`` in HU, sorted along the slice normal.
        positions: ImagePositionPatient of each slice, shape ``(n, 3)``, in mm.
        grid: Geometry of the first slice: its spacing, its position as the
            origin, and the direction matrix whose z column is the normal.

    Returns:
        The float32 slices on the orthogonal grid, and that grid. Its origin
        is the first slice's position moved by the added margin.
    """
    row_direction, column_direction, normal = grid.direction.T
    offsets = positions - positions[0]
    across = offsets - np.outer(offsets @ normal, normal)
    shift_x = across @ row_direction / grid.spacing[0]
    shift_y = across @ column_direction / grid.spacing[1]
    low_x, high_x = math.floor(shift_x.min()), math.ceil(shift_x.max())
    low_y, high_y = math.floor(shift_y.min()), math.ceil(shift_y.max())

    count, rows, columns = hu.shape
    shape = (rows + high_y - low_y, columns + high_x - low_x)
    result = np.empty((count, *shape), dtype=np.float32)
    canvas = np.full(shape, AIR_HU, dtype=np.float32)
    for k in range(count):
        canvas.fill(AIR_HU)
        canvas[-low_y : -low_y + rows, -low_x : -low_x + columns] = hu[k]
        # Pixel (r, c) of slice k lies where pixel (r + shift_y, c + shift_x)
        # of an unsheared slice would, so its value moves there.
        ndimage.shift(
            canvas,
            (shift_y[k], shift_x[k]),
            output=result[k],
            order=1,
            mode="constant",
            cval=AIR_HU,
        )
    origin = (
        positions[0]
        + low_x * grid.spacing[0] * row_direction
        + low_y * grid.spacing[1] * column_direction
    )
    return result, Grid(grid.spacing, origin, grid.direction)


def nearest_axes(direction: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Find the patient axes closest to the columns of a direction matrix.

    Returns:
        The signed permutation matrix of the nearest axes and the largest
        angle in degrees between a column and its axis, or None when two
        columns are closest to the same axis (near 45 degrees).
    """
    axes = np.argmax(np.abs(direction), axis=0)
    if len(set(axes.tolist())) != 3:
        return None
    target = np.zeros((3, 3))
    for column, axis in enumerate(axes):
        target[axis, column] = np.sign(direction[axis, column])
    cosines = np.clip(np.abs(np.sum(direction * target, axis=0)), -1.0, 1.0)
    return target, float(np.degrees(np.arccos(cosines.min())))


def resample_to_axes(
    hu: np.ndarray, grid: Grid, target_direction: np.ndarray
) -> tuple[np.ndarray, Grid]:
    """Resample a volume onto a grid with another direction and the same spacing.

    The new grid is the smallest one with ``target_direction`` that contains
    every corner of the old grid. Values are interpolated linearly, and voxels
    outside the old grid are air.

    Returns:
        The float32 volume ``[z, y, x]`` and its grid.
    """
    image = sitk.GetImageFromArray(hu.astype(np.float32, copy=False))
    image.SetSpacing(grid.spacing.tolist())
    image.SetOrigin(grid.origin.tolist())
    image.SetDirection(grid.direction.ravel().tolist())

    size = np.array(hu.shape[::-1], dtype=float)
    corners = np.array(
        [[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=float
    ) * ((size - 1) * grid.spacing)
    physical = grid.origin + corners @ grid.direction.T
    in_target = physical @ target_direction
    low = in_target.min(axis=0)
    high = in_target.max(axis=0)
    new_size = np.floor((high - low) / grid.spacing + 1e-6).astype(int) + 1
    origin = target_direction @ low

    resampled = sitk.Resample(
        image,
        [int(n) for n in new_size],
        sitk.Transform(),
        sitk.sitkLinear,
        origin.tolist(),
        grid.spacing.tolist(),
        target_direction.ravel().tolist(),
        AIR_HU,
        sitk.sitkFloat32,
    )
    return sitk.GetArrayFromImage(resampled), Grid(
        grid.spacing, origin, target_direction
    )
