"""Lung segmentation by thresholds and morphology, with left and right labels.

The method, on a volume in canonical orientation (array ``[z, y, x]`` with x
toward the patient's left, y posterior, z superior):

1. Air is HU < -500. Air connected to the in-plane border of the image is
   outside the body; what remains is air inside the body.
2. The large air components inside the body are the lungs and airways. Small
   ones (bowel gas, oesophagus) are dropped.
3. The trachea and the main bronchi are removed. Their lumen (darker than
   aerated lung) forms small components between the lungs on each axial
   slice, which are followed down from the trachea to 40 mm below the carina.
4. The lungs are split into right and left by connected components, eroding
   where they touch (anterior or posterior junction) and giving each voxel the
   side of its nearest seed.
5. Dense lung (consolidation, peripheral opacities against the pleura, vessels)
   is added back per axial slice by a hole filling and a closing of each lung.
   Nothing added is bone, fat, airway, mediastinum or the top of a diaphragm
   dome. The mediastinum is the part of the convex hull of both lungs that
   connects to the space between them. The closing fills opacities up to about
   twice its radius wide along the pleura.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from covidct.segment._morphology import (
    bounding_box,
    close_disk,
    downsample_in_plane,
    in_plane_distance,
    keep_large_components,
    mediastinum,
    open_disk,
    upsample_in_plane,
)

__all__ = ["LungOptions", "segment_lungs"]

logger = logging.getLogger(__name__)

RIGHT = 1
LEFT = 2


@dataclass
class LungOptions:
    """Settings of the threshold lung segmentation.

    Attributes:
        air_hu: Voxels below this value are air or aerated lung (HU).
        airway_hu: Airway lumen is below this value (HU), on the working grid.
        bronchi_length_mm: Length of the main bronchi below the carina that is
            removed from the lungs (mm).
        dome_min_mm2: A hole in a lung whose lowest slice covers this area or
            more and rests on no lung is the top of a diaphragm dome, not lung
            (mm²).
        min_lung_fraction: After the airways are removed, air components
            smaller than this fraction of the largest one are not lung (bowel
            gas under the diaphragm).
        min_component_ml: Air components inside the body smaller than this are
            not lung (ml).
        max_airway_area_mm2: A 2D air component between the lungs with an area
            below this is airway, not lung (mm²).
        closing_radius_mm: Radius of the per-slice closing that adds dense lung
            against the pleura and around consolidation (mm).
        bone_hu: Voxels above this value are never added by the closing (HU).
        fat_hu: Voxels in this HU range (adipose tissue) are never added by the
            closing.
        working_pixel_mm: In-plane pixel size of the grid the morphology runs on
            (mm); finer inputs are averaged down to it.
    """

    air_hu: float = -500.0
    dome_min_mm2: float = 150.0
    min_lung_fraction: float = 0.05
    airway_hu: float = -900.0
    bronchi_length_mm: float = 40.0
    min_component_ml: float = 30.0
    max_airway_area_mm2: float = 700.0
    closing_radius_mm: float = 20.0
    bone_hu: float = 250.0
    fat_hu: tuple[float, float] = (-190.0, -30.0)
    working_pixel_mm: float = 1.2


def segment_lungs(
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    options: LungOptions | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Segment the right and left lungs of a chest CT.

    Args:
        hu: Volume in HU, indexed ``[z, y, x]`` in canonical orientation (x toward
            the patient's left, y posterior, z superior).
        spacing: Voxel size ``(x, y, z)`` in mm.
        options: Thresholds and sizes; the defaults suit adult chest CT.

    Returns:
        A uint8 array (0 outside, 1 right lung, 2 left lung) and a list of
        warnings (an absent or incomplete lung).
    """
    options = options or LungOptions()
    warnings: list[str] = []
    # Morphology runs on a grid of about 1.2 mm in-plane. The labels then go back
    # to the full grid, where the boundary is refined against the air threshold.
    factor = max(1, int(round(options.working_pixel_mm / spacing[0])))
    full_hu = hu
    hu = downsample_in_plane(full_hu, factor)
    spacing = (spacing[0] * factor, spacing[1] * factor, spacing[2])
    voxel_ml = float(np.prod(spacing)) / 1000.0

    air = hu < options.air_hu
    inside_air = _remove_outside_air(air)
    candidates = keep_large_components(inside_air, options.min_component_ml / voxel_ml)
    if not candidates.any():
        warnings.append(
            "no lung found: no air region inside the body is larger than "
            f"{options.min_component_ml:g} ml; the scan may not cover the chest"
        )
        return np.zeros(full_hu.shape, dtype=np.uint8), warnings

    # Airway lumen is darker than aerated lung; at this threshold the wall
    # keeps the main bronchi apart from the lung down to the hila.
    lumen = candidates & (hu < options.airway_hu)
    airways = _find_airways(
        lumen, spacing, options.max_airway_area_mm2, options.bronchi_length_mm
    )
    lungs_air = candidates & ~airways
    lungs_air = _drop_minor_components(
        lungs_air, options.min_component_ml / voxel_ml, options.min_lung_fraction
    )
    sides = split_left_right(lungs_air, spacing)
    sides = _add_dense_lung(sides, hu, spacing, airways, options)
    sides = _upsample_labels(sides, full_hu, factor, options.air_hu)
    voxel_ml = voxel_ml / factor**2

    for side, name in ((RIGHT, "right"), (LEFT, "left")):
        volume_ml = float(np.count_nonzero(sides == side)) * voxel_ml
        if volume_ml < 200.0:
            warnings.append(
                f"the {name} lung measures {volume_ml:.0f} ml: it is absent, "
                "collapsed or outside the field of view, so its values are unreliable"
            )
    return sides, warnings


def _drop_minor_components(
    mask: np.ndarray, min_voxels: float, min_fraction: float
) -> np.ndarray:
    """Keep components of ``min_voxels`` or more and ``min_fraction`` of the largest.

    Gas in the bowel below the diaphragm can pass an absolute size limit; it
    is small beside the lungs.
    """
    labels, count = ndi.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = sizes >= max(min_voxels, min_fraction * sizes.max())
    keep[0] = False
    return keep[labels]


def _remove_outside_air(air: np.ndarray) -> np.ndarray:
    """Drop air connected to the in-plane border of any slice (outside the body)."""
    labels, count = ndi.label(air)
    if count == 0:
        return air
    border = np.zeros(count + 1, dtype=bool)
    for face in (
        labels[:, 0, :],
        labels[:, -1, :],
        labels[:, :, 0],
        labels[:, :, -1],
    ):
        border[np.unique(face)] = True
    border[0] = True
    return ~border[labels] & air


def _find_airways(
    candidates: np.ndarray,
    spacing: tuple[float, float, float],
    max_area_mm2: float,
    bronchi_length_mm: float,
) -> np.ndarray:
    """Find the trachea and main bronchi outside the lung parenchyma.

    Walks the slices from the top down. A 2D component is airway when it is
    small, and either lies on the topmost slices with air or overlaps the
    airway found on the slice above. Below the carina (the first slice where
    the airway splits) the walk follows the main bronchi for
    ``bronchi_length_mm``. The airways beyond lie in the lung and stay lung.
    """
    pixel_mm2 = spacing[0] * spacing[1]
    max_pixels = max_area_mm2 / pixel_mm2
    airways = np.zeros(candidates.shape, dtype=bool)
    above: np.ndarray | None = None
    nz = candidates.shape[0]
    center_x = candidates.shape[2] / 2.0
    started = False
    carina: int | None = None
    for z in range(nz - 1, -1, -1):
        if carina is not None and (carina - z) * spacing[2] > bronchi_length_mm:
            break
        labels, count = ndi.label(candidates[z])
        if count == 0:
            if started:
                break
            continue
        sizes = np.bincount(labels.ravel())
        found = np.zeros(candidates.shape[1:], dtype=bool)
        for index in range(1, count + 1):
            if sizes[index] > max_pixels:
                continue
            component = labels == index
            if above is not None:
                if (component & above).any():
                    found |= component
            elif not started:
                # The topmost air inside the body: the trachea is the small round
                # component near the middle; lung apices lie to each side.
                _, xs = np.nonzero(component)
                if abs(xs.mean() - center_x) < 0.15 * candidates.shape[2]:
                    found |= component
        if not found.any():
            if started:
                break
            # Air components on this slice are lung apices only; keep looking down.
            if count and sizes[1:].max() > max_pixels:
                continue
            continue
        started = True
        if carina is None and ndi.label(found)[1] >= 2:
            carina = z
        airways[z] = found
        above = ndi.binary_dilation(found, iterations=2)
    return airways


def split_left_right(
    lungs: np.ndarray, spacing: tuple[float, float, float]
) -> np.ndarray:
    """Label each lung voxel right (1) or left (2), by components then erosion."""
    sides = np.zeros(lungs.shape, dtype=np.uint8)
    if not lungs.any():
        return sides
    seeds = _two_largest(lungs)
    if seeds is None:
        # Lungs that touch at a junction form one component: erode in-plane,
        # through the distance to the lung border, until two parts separate.
        depth = np.zeros(lungs.shape, dtype=np.float32)
        box = bounding_box(lungs, margin=1)
        depth[box] = in_plane_distance(lungs[box], spacing)
        for erosion_mm in (2.0, 4.0, 6.0, 8.0, 11.0, 15.0):
            seeds = _two_largest(depth > erosion_mm)
            if seeds is not None:
                break
    if seeds is None:
        # One lung only, or junction too wide: split at the middle of the mask.
        xs = np.nonzero(lungs)[2]
        middle = int(np.median(xs))
        sides[:, :, :middle][lungs[:, :, :middle]] = RIGHT
        sides[:, :, middle:][lungs[:, :, middle:]] = LEFT
        return sides
    first, second = seeds
    x_first = np.nonzero(first)[2].mean()
    x_second = np.nonzero(second)[2].mean()
    right, left = (first, second) if x_first < x_second else (second, first)
    seed_labels = np.zeros(lungs.shape, dtype=np.uint8)
    seed_labels[right] = RIGHT
    seed_labels[left] = LEFT
    unassigned = lungs & (seed_labels == 0)
    if unassigned.any():
        box = bounding_box(lungs)
        nearest = ndi.distance_transform_edt(
            seed_labels[box] == 0,
            sampling=(spacing[2], spacing[1], spacing[0]),
            return_distances=False,
            return_indices=True,
        )
        seed_labels[box] = seed_labels[box][tuple(nearest)]
    seed_labels[~lungs] = 0
    return seed_labels


def _two_largest(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Return the two largest components if the second is at least 1/6 of the first."""
    labels, count = ndi.label(mask)
    if count < 2:
        return None
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    order = np.argsort(sizes)[::-1]
    if sizes[order[1]] < sizes[order[0]] / 6:
        return None
    return labels == order[0], labels == order[1]


def _add_dense_lung(
    sides: np.ndarray,
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    airways: np.ndarray,
    options: LungOptions,
) -> np.ndarray:
    """Add dense lung per slice: hole filling, then a closing of each lung.

    Holes enclosed by a lung (vessels, consolidation inside the lung) are lung
    unless they are fat. The closing then adds the dense regions that bite
    into the lung from the pleura, except bone, fat, airway and mediastinum.
    """
    radius = options.closing_radius_mm
    # Fat is never lung: without this, the closing takes in the pericardial fat
    # pads that the lung wraps around. The opening keeps thick fat only, since
    # the rim between lung and any soft tissue has fat values by partial volume.
    fat_low, fat_high = options.fat_hu
    fat = np.zeros(hu.shape, dtype=bool)
    if sides.any():
        margin = int(np.ceil(radius / spacing[0])) + 2
        near = bounding_box(sides > 0, margin=margin)
        fat[near] = open_disk(
            (hu[near] >= fat_low) & (hu[near] <= fat_high), 2.0, spacing
        )
    allowed = (hu < options.bone_hu) & ~fat & ~airways
    # The mediastinum lies between the lungs: never lung, whatever its density.
    allowed &= ~mediastinum(sides == RIGHT, sides == LEFT)
    result = sides.copy()
    for side in (RIGHT, LEFT):
        lung = sides == side
        if not lung.any():
            continue
        margin = int(np.ceil(radius / spacing[0])) + 2
        box = bounding_box(lung, margin=margin)
        crop = lung[box]
        filled = np.zeros_like(crop)
        for z in range(crop.shape[0]):
            filled[z] = ndi.binary_fill_holes(crop[z])
        filled &= ~airways[box]
        bitten = close_disk(filled, radius, spacing)
        closed = np.zeros_like(bitten)
        for z in range(bitten.shape[0]):
            closed[z] = ndi.binary_fill_holes(bitten[z])
        added = (closed & ~filled & allowed[box]) | (filled & ~crop & ~fat[box])
        holes = (filled & ~crop) | (closed & ~bitten)
        added &= ~_diaphragm_domes(holes, crop, spacing, options.dome_min_mm2)
        added &= result[box] == 0
        result[box][added] = side
    return result


def _diaphragm_domes(
    holes: np.ndarray,
    lung: np.ndarray,
    spacing: tuple[float, float, float],
    min_area_mm2: float,
) -> np.ndarray:
    """Mark the holes of a lung that are the top of a diaphragm dome.

    Near the base, the dome of the diaphragm (with the liver or spleen under
    it) shows as an island of soft tissue inside the lung on axial slices.
    Unlike a consolidation surrounded by lung, that island rests on tissue:
    below its lowest slice there is no lung. A stack of holes is a dome when
    its lowest slice covers at least ``min_area_mm2`` and most of that area
    has no lung on the slice below.
    """
    domes = np.zeros(holes.shape, dtype=bool)
    labels, count = ndi.label(holes)
    if count == 0:
        return domes
    pixel_mm2 = spacing[0] * spacing[1]
    for index, found in enumerate(ndi.find_objects(labels), start=1):
        if found is None:
            continue
        bottom = found[0].start
        component = labels[found] == index
        footprint = component[0]
        if footprint.sum() * pixel_mm2 < min_area_mm2:
            continue
        if bottom == 0:
            continue  # nothing below to look at: a single slice, or the scan's end
        below = lung[bottom - 1][found[1], found[2]]
        if float(below[footprint].mean()) < 0.5:
            domes[found] |= component
    return domes


def _upsample_labels(
    coarse: np.ndarray, full_hu: np.ndarray, factor: int, air_hu: float
) -> np.ndarray:
    """Bring labels back to the full grid and refine the lung border there.

    Inside the coarse mask, full-resolution voxels keep their label, because
    dense ones may be consolidation. Air voxels (below ``air_hu``) just outside
    the coarse border join the nearest lung, so the outline reaches the lung
    surface at full resolution.
    """
    if factor == 1:
        return coarse
    full = upsample_in_plane(coarse, factor, full_hu.shape)
    lung = full > 0
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndi.generate_binary_structure(2, 1)
    grown = ndi.binary_dilation(lung, structure=in_plane, iterations=factor)
    band = grown & ~lung
    nearest = ndi.grey_dilation(full, footprint=in_plane)
    for _ in range(factor - 1):
        nearest = ndi.grey_dilation(nearest, footprint=in_plane)
    outside_air = band & ~lung & (full_hu < air_hu)
    full[outside_air] = nearest[outside_air]
    return full
