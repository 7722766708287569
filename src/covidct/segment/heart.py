"""Heart segmentation by thresholds, lung geometry and morphology.

The method, on a volume in canonical orientation (array ``[z, y, x]`` with x
toward the patient's left, y posterior, z superior), run on a grid of about
2 mm and mapped back to the input grid:

1. Only slices that contain both lungs are searched. On each of them the
   mediastinum is the convex hull of the lungs minus a 3 mm margin around them.
2. Soft tissue and blood are -30..1000 HU after a light Gaussian smoothing, so
   pericardial fat is left out and contrast-enhanced blood is kept.
3. Tissue posterior to the anterior edge of the vertebral body is removed. The
   edge is the first long run of bone (>= 150 HU) met when walking anteriorly
   along the midline from the back of the mediastinum, smoothed over slices.
4. A 5 mm opening detaches thin bridges. The heart seed is the deepest point of
   the remaining tissue on mid-chest slices (lung area at least half its
   maximum), grown to the voxels at least 60 % as deep.
5. A watershed on the negative distance map splits the heart from the abdomen,
   whose seeds are tissue 10 to 40 mm below the right lung base (liver dome) and
   the lowest searched slice.
6. The heart ends at the first slice above the seed where the cross-section of
   the connected tissue falls below 35 % of its area at the seed: above that
   lie the great vessels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import convex_hull_image
from skimage.segmentation import watershed

__all__ = ["HeartOptions", "segment_heart"]

logger = logging.getLogger(__name__)

RIGHT_LUNG = 1
LEFT_LUNG = 2


@dataclass
class HeartOptions:
    """Settings of the rule-based heart segmentation.

    Attributes:
        grid_mm: Target voxel size of the internal grid (mm); each axis is
            downsampled by a whole factor toward it.
        min_lung_area_mm2: A slice is searched only when each lung covers at
            least this area on it (mm²).
        lung_margin_mm: Width of the band around the lungs left out of the
            mediastinum (mm).
        low_hu: Lowest smoothed value of heart tissue (HU); fat lies below.
        high_hu: Highest smoothed value of heart tissue (HU); high enough for
            contrast-enhanced blood, so bone is removed by position instead.
        bone_hu: Smoothed value from which a voxel counts as bone when looking
            for the vertebral body (HU).
        min_vertebra_mm: Shortest run of bone along the midline taken for the
            vertebral body (mm).
        opening_radius_mm: Radius of the 3D opening that detaches thin bridges
            to neighbouring organs (mm).
        seed_depth_fraction: The heart seed is the tissue at least this
            fraction of the maximum depth (distance to the tissue border).
        liver_depth_mm: Range of depths below the right lung base, as
            ``(min, max)``, whose tissue seeds the abdomen (mm).
        top_area_fraction: The heart ends where the tissue cross-section drops
            below this fraction of its area at the seed level.
        airway_hu: Air between the lungs below this value is airway (HU).
        min_bronchus_mm2: Smallest airway cross-section counted when looking
            for the split of the trachea (mm²).
        below_carina_mm: The heart ends at most this far below the carina
            (mm), under the great vessels.
    """

    grid_mm: float = 2.0
    min_lung_area_mm2: float = 100.0
    lung_margin_mm: float = 3.0
    low_hu: float = -30.0
    high_hu: float = 1000.0
    bone_hu: float = 150.0
    min_vertebra_mm: float = 15.0
    opening_radius_mm: float = 5.0
    seed_depth_fraction: float = 0.6
    liver_depth_mm: tuple[float, float] = (10.0, 40.0)
    top_area_fraction: float = 0.35
    airway_hu: float = -800.0
    min_bronchus_mm2: float = 30.0
    below_carina_mm: float = 10.0


def segment_heart(
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    lungs: np.ndarray,
    options: HeartOptions | None = None,
) -> np.ndarray:
    """Segment the heart (chambers and myocardium inside the pericardium).

    Args:
        hu: Volume in HU, indexed ``[z, y, x]`` in canonical orientation (x toward
            the patient's left, y posterior, z superior).
        spacing: Voxel size ``(x, y, z)`` in mm.
        lungs: Lung labels on the same grid: 0 outside, 1 right lung, 2 left lung.
        options: Thresholds and sizes; the defaults suit adult chest CT with or
            without contrast.

    Returns:
        A bool mask with the shape of ``hu``, never overlapping ``lungs``. It is
        all False, with a logged warning, when no slice contains both lungs or no
        mediastinal tissue is found.

    Raises:
        ValueError: If the shapes of ``hu`` and ``lungs`` differ, the volume is
            not 3D, or a spacing is not positive.
    """
    options = options or HeartOptions()
    _check_inputs(hu, spacing, lungs)
    heart = np.zeros(hu.shape, dtype=bool)

    box = _lung_box(lungs, spacing)
    if box is None:
        logger.warning("no heart segmented: the lung mask is empty")
        return heart
    crop_hu = hu[box].astype(np.float32)
    crop_lungs = lungs[box]

    factors = tuple(
        max(1, int(round(options.grid_mm / step)))
        for step in (spacing[2], spacing[1], spacing[0])
    )
    small_spacing = (
        spacing[0] * factors[2],
        spacing[1] * factors[1],
        spacing[2] * factors[0],
    )
    small = _segment_small(
        _block_mean(crop_hu, factors),
        small_spacing,
        _block_labels(crop_lungs, factors),
        options,
    )
    if not small.any():
        return heart

    upsampled = small
    for axis, factor in enumerate(factors):
        upsampled = upsampled.repeat(factor, axis=axis)
    crop_shape = crop_hu.shape
    heart[box] = upsampled[: crop_shape[0], : crop_shape[1], : crop_shape[2]]
    heart &= lungs == 0
    return heart


def _check_inputs(
    hu: np.ndarray, spacing: tuple[float, float, float], lungs: np.ndarray
) -> None:
    if hu.ndim != 3:
        raise ValueError(f"hu must be a 3D array [z, y, x], got shape {hu.shape}")
    if lungs.shape != hu.shape:
        raise ValueError(
            f"lungs has shape {lungs.shape} but hu has shape {hu.shape}: "
            "pass the lung mask of the same volume"
        )
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive sizes in mm, got {spacing}")


def _lung_box(
    lungs: np.ndarray, spacing: tuple[float, float, float]
) -> tuple[slice, slice, slice] | None:
    """Return the bounding box of the lungs with a 10 mm in-plane margin."""
    present = lungs > 0
    zs = np.nonzero(present.any(axis=(1, 2)))[0]
    if zs.size == 0:
        return None
    ys = np.nonzero(present.any(axis=(0, 2)))[0]
    xs = np.nonzero(present.any(axis=(0, 1)))[0]
    pad_y = int(np.ceil(10.0 / spacing[1]))
    pad_x = int(np.ceil(10.0 / spacing[0]))
    return (
        slice(zs[0], zs[-1] + 1),
        slice(max(ys[0] - pad_y, 0), ys[-1] + pad_y + 1),
        slice(max(xs[0] - pad_x, 0), xs[-1] + pad_x + 1),
    )


def _block_shape(shape: tuple[int, ...], factors: tuple[int, ...]) -> tuple[int, ...]:
    """Return the number of blocks per axis, counting a partial block as one."""
    pairs = zip(shape, factors, strict=True)
    return tuple(-(-size // factor) for size, factor in pairs)


def _block_mean(volume: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """Average non-overlapping blocks, padding the far edges by replication."""
    if factors == (1, 1, 1):
        return volume
    shape = tuple(
        -(-size // factor) for size, factor in zip(volume.shape, factors, strict=True)
    )
    padding = [
        (0, blocks * factor - size)
        for blocks, factor, size in zip(shape, factors, volume.shape, strict=True)
    ]
    padded = np.pad(volume, padding, mode="edge")
    blocks = padded.reshape(
        shape[0], factors[0], shape[1], factors[1], shape[2], factors[2]
    )
    return blocks.mean(axis=(1, 3, 5), dtype=np.float32)


def _block_labels(lungs: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """Downsample the lung labels: a block takes a side when half of it is that side."""
    shape = tuple(
        -(-size // factor) for size, factor in zip(lungs.shape, factors, strict=True)
    )
    labels = np.zeros(shape, dtype=np.uint8)
    for side in (RIGHT_LUNG, LEFT_LUNG):
        fraction = _block_mean((lungs == side).astype(np.float32), factors)
        labels[fraction >= 0.5] = side
    return labels


def _ellipsoid(radii: tuple[float, float, float]) -> np.ndarray:
    """Return an ellipsoid structuring element with radii ``(z, y, x)`` in voxels."""
    grids = np.ogrid[tuple(slice(-int(r), int(r) + 1) for r in radii)]
    total = sum(
        (grid / max(r, 1e-6)) ** 2 for grid, r in zip(grids, radii, strict=True)
    )
    return np.asarray(total <= 1.0)


def _segment_small(
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    lungs: np.ndarray,
    options: HeartOptions,
) -> np.ndarray:
    """Segment the heart on the downsampled grid (steps 1 to 6 of the module)."""
    nz, ny, _ = hu.shape
    pixel_mm2 = spacing[0] * spacing[1]
    right_area = np.count_nonzero(lungs == RIGHT_LUNG, axis=(1, 2)) * pixel_mm2
    left_area = np.count_nonzero(lungs == LEFT_LUNG, axis=(1, 2)) * pixel_mm2
    slices = np.nonzero(
        (right_area >= options.min_lung_area_mm2)
        & (left_area >= options.min_lung_area_mm2)
    )[0]
    if slices.size == 0:
        logger.warning(
            "no heart segmented: no slice contains both lungs (each at least "
            "%g mm²), so there is no mediastinum to search",
            options.min_lung_area_mm2,
        )
        return np.zeros(hu.shape, dtype=bool)

    smooth = ndi.gaussian_filter(hu, sigma=0.7)
    radius = options.lung_margin_mm / spacing[0]
    margin = _ellipsoid((0.0, radius, radius))[0]
    mediastinum = np.zeros(hu.shape, dtype=bool)
    hull_air = np.zeros(hu.shape, dtype=bool)
    vertebra_edge = np.full(nz, -1)
    for z in slices:
        lung = lungs[z] > 0
        hull = convex_hull_image(lung)
        hull_air[z] = hull & ~lung & (smooth[z] < options.airway_hu)
        region = hull & ~ndi.binary_dilation(lung, margin)
        mediastinum[z] = region
        vertebra_edge[z] = _find_vertebra_edge(smooth[z], region, spacing, options)

    tissue = mediastinum & (smooth >= options.low_hu) & (smooth <= options.high_hu)
    cut = _smooth_edges(vertebra_edge, slices, ny)
    tissue &= np.arange(ny)[None, :, None] < cut[:, None, None]
    carina = _find_carina(hull_air, slices, spacing, options)
    heart = _split_heart(tissue, lungs, spacing, slices, options, carina)
    if not heart.any():
        logger.warning(
            "no heart segmented: the mediastinum contains no soft tissue between "
            "%g and %g HU after an opening of %g mm",
            options.low_hu,
            options.high_hu,
            options.opening_radius_mm,
        )
        return heart
    # Fill calcifications and fat inside the chambers' outline, slice by slice.
    for z in np.nonzero(heart.any(axis=(1, 2)))[0]:
        heart[z] = ndi.binary_fill_holes(heart[z])
    return heart & (lungs == 0)


def _find_vertebra_edge(
    hu: np.ndarray,
    region: np.ndarray,
    spacing: tuple[float, float, float],
    options: HeartOptions,
) -> int:
    """Find the row of the anterior edge of the vertebral body on one slice.

    Walks each column of a 16 mm band around the middle of the mediastinum from
    its posterior end and takes the first bone run that is long enough. A run
    cut by the image border (a cropped field of view) may be a third as long.

    Returns:
        The median row over the band, or -1 when no vertebral body is found.
    """
    ny, nx = hu.shape
    xs = np.nonzero(region)[1]
    if xs.size == 0:
        return -1
    middle = int(round(xs.mean()))
    half_band = max(1, int(round(8.0 / spacing[0])))
    min_run = options.min_vertebra_mm / spacing[1]
    edges = []
    for x in range(max(middle - half_band, 0), min(middle + half_band + 1, nx)):
        rows = np.nonzero(region[:, x])[0]
        if rows.size == 0:
            continue
        top, bottom = rows.min(), rows.max()
        bone = hu[top : bottom + 1, x] >= options.bone_hu
        bone |= ndi.binary_closing(bone, structure=np.ones(3, dtype=bool))
        runs, count = ndi.label(bone)
        for index in range(count, 0, -1):
            run = np.nonzero(runs == index)[0]
            cropped = bottom == ny - 1 and run.max() == bone.size - 1
            if run.size < min_run and not (cropped and run.size >= min_run / 3):
                continue
            # Contrast-enhanced blood also passes the bone threshold: a run that
            # starts in the anterior 60 % of the mediastinum is not the spine.
            if run.min() >= 0.6 * bone.size:
                edges.append(top + run.min())
            break
    if not edges:
        return -1
    return int(np.median(edges))


def _smooth_edges(edges: np.ndarray, slices: np.ndarray, ny: int) -> np.ndarray:
    """Interpolate missing vertebra edges and median-filter them over 7 slices.

    Returns:
        The first excluded row per slice; ``ny`` (no cut) where no vertebral
        body was found on any slice.
    """
    cut = np.full(edges.shape, ny)
    found = np.nonzero(edges >= 0)[0]
    if found.size == 0:
        return cut
    filled = np.interp(np.arange(edges.size), found, edges[found])
    filled = ndi.median_filter(filled, size=7, mode="nearest")
    cut[slices] = np.round(filled[slices]).astype(int)
    return cut


def _split_heart(
    tissue: np.ndarray,
    lungs: np.ndarray,
    spacing: tuple[float, float, float],
    slices: np.ndarray,
    options: HeartOptions,
    carina: int | None,
) -> np.ndarray:
    """Separate the heart from the abdomen and the great vessels (steps 4 to 6).

    ``carina`` is the slice of the carina, when found; the heart ends at most
    ``below_carina_mm`` below it.
    """
    nz = tissue.shape[0]
    sampling = (spacing[2], spacing[1], spacing[0])
    radius = options.opening_radius_mm
    ball = _ellipsoid((radius / spacing[2], radius / spacing[1], radius / spacing[0]))
    opened = ndi.binary_opening(tissue, structure=ball)
    if not opened.any():
        return opened

    depth = ndi.distance_transform_edt(opened, sampling=sampling)
    lung_area = np.count_nonzero(lungs, axis=(1, 2))
    mid_chest = lung_area >= 0.5 * lung_area.max()
    seed_depth = np.where(mid_chest[:, None, None], depth, 0.0)
    if seed_depth.max() <= 0:
        return np.zeros(tissue.shape, dtype=bool)
    center = np.unravel_index(np.argmax(seed_depth), depth.shape)
    seed_labels, _ = ndi.label(seed_depth >= options.seed_depth_fraction * depth.max())
    heart_seed = seed_labels == seed_labels[center]

    abdomen_seed = _below_right_lung(lungs, spacing, options) & opened
    abdomen_seed[center[0] :] = False
    abdomen_seed[slices.min()] |= opened[slices.min()]
    markers = np.zeros(tissue.shape, dtype=np.int32)
    markers[abdomen_seed] = 2
    markers[heart_seed] = 1
    # NOTE: nothing seeds the descending aorta. Where it touches the left
    # atrium wider than the opening and the carina bound misses the arch (no
    # carina found), it stays in the heart.
    heart = watershed(-depth, markers, mask=opened) == 1

    top = _find_heart_top(
        opened, tuple(int(i) for i in center), options.top_area_fraction
    )
    if carina is not None:
        below_carina = carina - int(round(options.below_carina_mm / spacing[2]))
        if center[0] < below_carina < top:
            top = below_carina
    heart[top:] = False
    labels, _ = ndi.label(heart)
    if labels[center] == 0:
        return np.zeros(tissue.shape, dtype=bool)
    heart = labels == labels[center]
    logger.debug("heart seed at slice %d of %d, top at slice %d", center[0], nz, top)
    return heart


def _below_right_lung(
    lungs: np.ndarray, spacing: tuple[float, float, float], options: HeartOptions
) -> np.ndarray:
    """Mark voxels whose column has right lung between the liver depths above them."""
    nz = lungs.shape[0]
    right = lungs == RIGHT_LUNG
    near = int(np.ceil(options.liver_depth_mm[0] / spacing[2]))
    far = int(np.ceil(options.liver_depth_mm[1] / spacing[2]))
    under_far = np.zeros(lungs.shape, dtype=bool)
    under_near = np.zeros(lungs.shape, dtype=bool)
    for shift in range(1, far + 1):
        if shift >= nz:
            break
        if shift < near:
            under_near[: nz - shift] |= right[shift:]
        else:
            under_far[: nz - shift] |= right[shift:]
    return under_far & ~under_near


def _find_carina(
    hull_air: np.ndarray,
    slices: np.ndarray,
    spacing: tuple[float, float, float],
    options: HeartOptions,
) -> int | None:
    """Return the slice of the carina, or None when the split is not seen.

    Walking down from the highest slice with both lungs, the airway between
    the lungs is one component (the trachea) until it splits in two (the main
    bronchi). The carina is the last slice with one component.
    """
    min_pixels = options.min_bronchus_mm2 / (spacing[0] * spacing[1])
    seen_trachea = False
    for z in sorted(slices.tolist(), reverse=True):
        labels, count = ndi.label(hull_air[z])
        sizes = np.bincount(labels.ravel())[1:]
        airways = int(np.count_nonzero(sizes >= min_pixels))
        if airways == 1:
            seen_trachea = True
        elif airways >= 2 and seen_trachea:
            return z + 1
    return None


def _find_heart_top(
    opened: np.ndarray, center: tuple[int, ...], fraction: float
) -> int:
    """Return the first slice above the seed where the heart's tissue narrows.

    NOTE: the area fraction was set on two non-contrast scans and one CTA crop;
    the carina bound usually ends the heart lower.
    """
    labels, _ = ndi.label(opened)
    component = labels == labels[center]
    area = np.count_nonzero(component, axis=(1, 2)).astype(float)
    z = int(center[0])
    reference = area[max(z - 5, 0) : z + 6].max()
    for level in range(z, opened.shape[0]):
        if area[level] < fraction * reference:
            return level
    return opened.shape[0]
