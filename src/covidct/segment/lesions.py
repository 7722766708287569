"""Lesion segmentation inside the lungs by a documented HU rule.

The rule runs on a grid of about 1.2 mm in-plane (the CT averaged over blocks
of pixels, which also damps the noise of low-dose scans):

- ground-glass opacity (GGO): -750 HU < value <= -300 HU;
- consolidation: -300 HU < value <= 200 HU (denser voxels are calcification or
  bone at the lung border and are not lesion).

What is not lesion, although it has those values:

- vessels and airway walls: dense structures into which a disk of radius
  ``vessel_radius_mm`` does not fit in the axial plane (vessels cut across or
  lengthwise, bronchial walls) are removed by an opening, and their
  partial-volume halo of ``halo_mm`` is removed from the GGO;
- the hila: the large vessels and bronchi where each lung meets the
  mediastinum; dense lung within ``hilum_mm`` of the mediastinum and GGO within
  ``halo_mm`` of it are not counted, so a consolidation that touches the
  mediastinum is undercounted;
- the lung border: a band of ``pleura_margin_mm`` along it, blurred by the
  chest wall;
- components smaller than ``min_lesion_ml``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from covidct.segment._morphology import (
    bounding_box,
    dilate_disk,
    downsample_in_plane,
    erode_disk,
    in_plane_distance,
    keep_large_components,
    mediastinum,
    open_disk,
    upsample_in_plane,
)

__all__ = ["LesionOptions", "segment_lesions"]

logger = logging.getLogger(__name__)

GGO = 1
CONSOLIDATION = 2


@dataclass
class LesionOptions:
    """Settings of the HU lesion rule.

    Attributes:
        ggo_min_hu: Lower bound of ground-glass opacity (HU, exclusive).
        consolidation_min_hu: Boundary between GGO and consolidation (HU).
        consolidation_max_hu: Upper bound of consolidation (HU).
        vessel_radius_mm: Dense structures thinner than twice this in the axial
            plane are vessels or airway walls (mm).
        halo_mm: Width of the partial-volume halo removed around them (mm).
        hilum_mm: Dense lung closer than this to the mediastinum is hilum (mm).
        pleura_margin_mm: Band along the lung border excluded from lesions (mm).
        min_lesion_ml: Smallest lesion component kept (ml).
        working_pixel_mm: In-plane pixel size of the grid the rule runs on (mm).
    """

    ggo_min_hu: float = -750.0
    consolidation_min_hu: float = -300.0
    consolidation_max_hu: float = 200.0
    vessel_radius_mm: float = 2.5
    halo_mm: float = 2.0
    hilum_mm: float = 30.0
    pleura_margin_mm: float = 2.0
    min_lesion_ml: float = 0.3
    working_pixel_mm: float = 1.2


def segment_lesions(
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    lungs: np.ndarray,
    options: LesionOptions | None = None,
) -> np.ndarray:
    """Split the lungs into normal lung, ground-glass opacity and consolidation.

    Args:
        hu: Volume in HU, indexed ``[z, y, x]`` in canonical orientation (x toward
            the patient's left, y posterior, z superior).
        spacing: Voxel size ``(x, y, z)`` in mm.
        lungs: 0 outside, 1 right lung, 2 left lung; same shape as ``hu``.
        options: The HU rule and sizes.

    Returns:
        A uint8 array: 0 no lesion, 1 GGO, 2 consolidation; 0 outside the lungs.
    """
    options = options or LesionOptions()
    lesions = np.zeros(hu.shape, dtype=np.uint8)
    if not (lungs > 0).any():
        return lesions

    factor = max(1, int(round(options.working_pixel_mm / spacing[0])))
    box = bounding_box(lungs > 0, margin=factor)
    # Align the box on the coarse grid so that blocks do not straddle it.
    box = (
        box[0],
        slice(box[1].start - box[1].start % factor, box[1].stop),
        slice(box[2].start - box[2].start % factor, box[2].stop),
    )
    smooth = downsample_in_plane(hu[box], factor)
    sides = downsample_in_plane(lungs[box], factor)
    # A coarse pixel is lung when most of its block is; its side by majority.
    right = sides > 0.5
    left = sides > 1.5
    lung = right | left
    coarse_spacing = (spacing[0] * factor, spacing[1] * factor, spacing[2])

    crop = _classify(smooth, lung, right & ~left, left, coarse_spacing, options)
    full = upsample_in_plane(crop, factor, hu[box].shape)
    full[lungs[box] == 0] = 0
    lesions[box] = full
    return lesions


def _classify(
    smooth: np.ndarray,
    lung: np.ndarray,
    right: np.ndarray,
    left: np.ndarray,
    spacing: tuple[float, float, float],
    options: LesionOptions,
) -> np.ndarray:
    """Apply the HU rule and the exclusions on the working grid."""
    core = lung & erode_disk(lung, options.pleura_margin_mm, spacing)
    near_mediastinum = in_plane_distance(~mediastinum(right, left), spacing)

    dense = core & (smooth > options.consolidation_min_hu)
    dense &= smooth <= options.consolidation_max_hu
    consolidation = open_disk(dense, options.vessel_radius_mm, spacing)
    consolidation &= near_mediastinum > options.hilum_mm
    thin_dense = dense & ~consolidation
    halo = dilate_disk(thin_dense, options.halo_mm, spacing)

    ggo = core & (smooth > options.ggo_min_hu)
    ggo &= smooth <= options.consolidation_min_hu
    ggo &= ~halo & (near_mediastinum > options.halo_mm)
    ggo = open_disk(ggo, options.halo_mm, spacing)

    voxel_ml = float(np.prod(spacing)) / 1000.0
    kept = keep_large_components(ggo | consolidation, options.min_lesion_ml / voxel_ml)
    result = np.zeros(lung.shape, dtype=np.uint8)
    result[ggo & kept] = GGO
    result[consolidation & kept] = CONSOLIDATION
    return result
