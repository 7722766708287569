"""Small morphology helpers shared by the threshold segmenters.

Openings and closings by a disk in the axial plane are computed with a
structuring element for small radii and with distance transforms, whose cost
does not grow with the radius, for large ones. A very large sampling along z
keeps every distance within its own slice.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

_SLICE_SAMPLING_Z = 1.0e4


def in_plane_sampling(
    spacing: tuple[float, float, float],
) -> tuple[float, float, float]:
    """Return the EDT sampling ``(z, y, x)`` that measures in-plane distances in mm."""
    return (_SLICE_SAMPLING_Z, spacing[1], spacing[0])


def in_plane_distance(
    mask: np.ndarray, spacing: tuple[float, float, float]
) -> np.ndarray:
    """Distance in mm from each voxel of ``mask`` to the nearest voxel outside it."""
    return ndi.distance_transform_edt(mask, sampling=in_plane_sampling(spacing))


#: Radius in pixels up to which a structuring element beats a distance transform.
_MAX_STRUCTURE_RADIUS_PX = 4


def disk_structure(
    radius_mm: float, spacing: tuple[float, float, float]
) -> np.ndarray | None:
    """Return a ``(1, ny, nx)`` in-plane disk, or None when it would be large."""
    ry, rx = radius_mm / spacing[1], radius_mm / spacing[0]
    if max(ry, rx) > _MAX_STRUCTURE_RADIUS_PX:
        return None
    y = np.arange(-int(ry), int(ry) + 1)[:, None] / max(ry, 1e-6)
    x = np.arange(-int(rx), int(rx) + 1)[None, :] / max(rx, 1e-6)
    return ((y**2 + x**2) <= 1.0)[None]


def erode_disk(
    mask: np.ndarray, radius_mm: float, spacing: tuple[float, float, float]
) -> np.ndarray:
    """Erode ``mask`` slice by slice with a disk of ``radius_mm``.

    Pixels beyond the array count as inside, so the erosion does not eat in
    from the array border.
    """
    structure = disk_structure(radius_mm, spacing)
    if structure is None:
        return in_plane_distance(mask, spacing) > radius_mm
    return ndi.binary_erosion(mask, structure=structure, border_value=1)


def dilate_disk(
    mask: np.ndarray, radius_mm: float, spacing: tuple[float, float, float]
) -> np.ndarray:
    """Dilate ``mask`` slice by slice with a disk of ``radius_mm``."""
    structure = disk_structure(radius_mm, spacing)
    if structure is None:
        return in_plane_distance(~mask, spacing) <= radius_mm
    return ndi.binary_dilation(mask, structure=structure)


def open_disk(
    mask: np.ndarray, radius_mm: float, spacing: tuple[float, float, float]
) -> np.ndarray:
    """Open ``mask`` slice by slice with a disk of ``radius_mm``."""
    eroded = erode_disk(mask, radius_mm, spacing)
    return dilate_disk(eroded, radius_mm, spacing) & mask


def close_disk(
    mask: np.ndarray, radius_mm: float, spacing: tuple[float, float, float]
) -> np.ndarray:
    """Close ``mask`` slice by slice with a disk of ``radius_mm``.

    The caller pads the mask by more than the radius, since the closing cannot
    reach beyond the array.
    """
    dilated = in_plane_distance(~mask, spacing) <= radius_mm
    return (in_plane_distance(dilated, spacing) > radius_mm) | mask


def keep_large_components(mask: np.ndarray, min_voxels: float) -> np.ndarray:
    """Keep the 3D components of ``mask`` with at least ``min_voxels`` voxels."""
    labels, count = ndi.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels]


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...]:
    """Return the slices of the smallest box holding ``mask``, grown by ``margin``.

    Raises:
        ValueError: If the mask is empty.
    """
    if not mask.any():
        raise ValueError("cannot take the bounding box of an empty mask")
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.nonzero(mask.any(axis=other))[0]
        start = max(int(present[0]) - margin, 0)
        stop = min(int(present[-1]) + margin + 1, mask.shape[axis])
        box.append(slice(start, stop))
    return tuple(box)


def downsample_in_plane(volume: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor`` x ``factor`` in-plane blocks into float32 (edges cropped)."""
    if factor == 1:
        return volume.astype(np.float32, copy=False)
    nz, ny, nx = volume.shape
    ny_c, nx_c = ny // factor, nx // factor
    blocks = volume[:, : ny_c * factor, : nx_c * factor].astype(np.float32)
    return blocks.reshape(nz, ny_c, factor, nx_c, factor).mean(axis=(2, 4))


def upsample_in_plane(
    labels: np.ndarray, factor: int, shape: tuple[int, ...]
) -> np.ndarray:
    """Repeat each in-plane pixel ``factor`` times onto an array of ``shape``.

    Rows and columns that the downsampling cropped stay 0.
    """
    if factor == 1:
        return labels
    full = np.zeros(shape, dtype=labels.dtype)
    ny, nx = labels.shape[1] * factor, labels.shape[2] * factor
    full[:, :ny, :nx] = labels.repeat(factor, axis=1).repeat(factor, axis=2)
    return full


def between_lungs(right: np.ndarray, left: np.ndarray) -> np.ndarray:
    """Mark, on each image row, the pixels between the right and the left lung."""
    nx = right.shape[2]
    columns = np.arange(nx)
    # Right lung at small x: its last pixel on a row; left lung: its first.
    right_end = np.where(
        right.any(axis=2), nx - 1 - np.argmax(right[..., ::-1], axis=2), -1
    )
    left_start = np.where(left.any(axis=2), np.argmax(left, axis=2), nx)
    both = right.any(axis=2) & left.any(axis=2)
    between = (columns > right_end[..., None]) & (columns < left_start[..., None])
    return between & both[..., None]
