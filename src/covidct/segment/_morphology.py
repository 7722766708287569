"""Small morphology helpers shared by the threshold segmenters.

Openings and closings by a disk in the axial plane are computed with a
structuring element for small radii and with distance transforms, whose cost
does not grow with the radius, for large ones. A very large sampling along z
keeps every distance within its own slice.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import convex_hull_image

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
    """Return the slices of the smallest box containing ``mask``, plus ``margin``.

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
    """Mark, on each image row, the pixels between the right and the left lung.

    Some rows inside the rows spanned by both lungs cross only one lung, or
    none. On them, the medial edges of the nearest row that crosses each lung
    are used, so the mediastinum has no gaps in front of or behind a lung.
    """
    nz, ny, nx = right.shape
    columns = np.arange(nx)
    rows = np.arange(ny)
    between = np.zeros(right.shape, dtype=bool)
    for z in range(nz):
        has_right = right[z].any(axis=1)
        has_left = left[z].any(axis=1)
        if not has_right.any() or not has_left.any():
            continue
        # Right lung at small x: its last pixel on a row; left lung: its first.
        right_end = nx - 1 - np.argmax(right[z, :, ::-1], axis=1)
        left_start = np.argmax(left[z], axis=1)
        right_end = _from_nearest_row(right_end, has_right, rows)
        left_start = _from_nearest_row(left_start, has_left, rows)
        spanned = rows >= max(rows[has_right][0], rows[has_left][0])
        spanned &= rows <= min(rows[has_right][-1], rows[has_left][-1])
        inside = (columns[None, :] > right_end[:, None]) & (
            columns[None, :] < left_start[:, None]
        )
        between[z] = inside & spanned[:, None]
    return between


def _from_nearest_row(
    values: np.ndarray, present: np.ndarray, rows: np.ndarray
) -> np.ndarray:
    """Replace the values of absent rows by those of the nearest present row."""
    present_rows = rows[present]
    nearest = np.searchsorted(present_rows, rows).clip(1, present_rows.size - 1)
    below = present_rows[nearest - 1]
    above = present_rows[nearest]
    chosen = np.where(np.abs(rows - below) <= np.abs(above - rows), below, above)
    if present_rows.size == 1:
        chosen = np.full_like(rows, present_rows[0])
    return values[chosen]


def mediastinum(right: np.ndarray, left: np.ndarray) -> np.ndarray:
    """Mark, on each slice, the non-lung region between and around the lungs.

    It is the part of the convex hull of both lungs that is neither lung nor
    cut off from the pixels between the lungs (``between_lungs``) by lung. A
    bite into one lung from the chest wall is closed off by that lung and the
    hull's edge, so it is not mediastinum. The hila, the heart and the
    diaphragm domes inside the hull are mediastinum.
    """
    between = between_lungs(right, left)
    lungs = right | left
    result = np.zeros(right.shape, dtype=bool)
    for z in np.nonzero(between.any(axis=(1, 2)))[0]:
        inside = convex_hull_image(lungs[z]) & ~lungs[z]
        labels, _ = ndi.label(inside)
        touching = np.unique(labels[between[z] & inside])
        touching = touching[touching > 0]
        result[z] = np.isin(labels, touching)
    return result
