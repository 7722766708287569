"""The CNN backend: lungs and lesions from the network ensemble.

Each axial slice is normalised as the training slices were, every member of
the ensemble gives class probabilities (background, lung, lesion), and their
weighted mean is mapped back to the CT grid and turned into labels there.
The lungs are then split into right and left, the heart is found between
them by the threshold backend's watershed (the networks do not segment it),
and each lesion voxel is called ground-glass opacity or consolidation by HU.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
import torch
from scipy import ndimage as ndi

from covidct.intake.volume import CTVolume
from covidct.segment._morphology import bounding_box, keep_large_components
from covidct.segment.cnn.bundle import ModelBundle, load_bundle
from covidct.segment.cnn.data import LESION, LUNG
from covidct.segment.cnn.normalization import SquareFrame, hu_slices_to_inputs
from covidct.segment.heart import segment_heart
from covidct.segment.lesions import LesionOptions
from covidct.segment.lungs import split_left_right
from covidct.segment.orientation import Reorientation
from covidct.segment.result import (
    CONSOLIDATION,
    GGO,
    LEFT_LUNG,
    RIGHT_LUNG,
    Segmentation,
)

__all__ = ["decide_labels", "ensemble_probabilities", "segment_cnn"]

logger = logging.getLogger(__name__)

BATCH_SLICES = 16

# A network lung region on one slice must be at least this share aerated
# (below AERATED_HU). Lung with 70 % of its area consolidated passes; muscle,
# fat and liver, which hold no air, do not.
AERATED_HU = -400.0
MIN_AERATED_FRACTION = 0.3

# Lung components smaller than this share of the largest one are dropped as
# bowel gas or noise. A lung collapsed to a tenth of its size is still larger.
MIN_COMPONENT_FRACTION = 0.05

# In-plane pixel size (mm) of the grid on which the lungs are cleaned and
# split into right and left. The threshold backend splits on the same size.
SIDE_GRID_MM = 1.2

# The HU that separates ground-glass opacity from consolidation is smoothed
# over this in-plane radius first, so that one noisy voxel does not flip a
# label (standard deviation of a Gaussian, in mm).
HU_SMOOTHING_MM = 1.0


@torch.no_grad()
def ensemble_probabilities(inputs: np.ndarray, bundle: ModelBundle) -> np.ndarray:
    """Average the members' softmax outputs over normalised slices.

    Args:
        inputs: uint8 ``(n, H, W)`` normalised slices, in order from the
            lowest to the highest.
        bundle: The ensemble.

    Returns:
        float32 ``(n, 3, H, W)`` probabilities of background, lung and lesion.
    """
    count = inputs.shape[0]
    scaled = torch.from_numpy(inputs).float().div_(255.0)
    total = torch.zeros((count, 3, *inputs.shape[1:]), dtype=torch.float32)
    weight_sum = 0.0
    for member in bundle.members:
        context = member.context_slices
        for start in range(0, count, BATCH_SLICES):
            stop = min(start + BATCH_SLICES, count)
            offsets = np.arange(-context, context + 1)
            rows = np.clip(
                np.arange(start, stop)[:, None] + offsets[None, :], 0, count - 1
            )
            batch = scaled[torch.from_numpy(rows)]
            probabilities = torch.softmax(member.network(batch), dim=1)
            if bundle.flip_left_right:
                mirrored = member.network(torch.flip(batch, dims=[-1]))
                probabilities += torch.flip(torch.softmax(mirrored, dim=1), dims=[-1])
                probabilities /= 2
            total[start:stop] += member.weight * probabilities
        weight_sum += member.weight
    return (total / weight_sum).numpy()


def decide_labels(probabilities: np.ndarray, lesion_threshold: float) -> np.ndarray:
    """Turn class probabilities ``(3, ...)`` into labels 0, ``LUNG``, ``LESION``.

    A pixel is lung (lesions included) when background has a probability
    under one half, and lesion when it is lung and the lesion probability
    exceeds ``lesion_threshold``.
    """
    labels = np.where(probabilities[0] < 0.5, LUNG, 0).astype(np.uint8)
    labels[(labels == LUNG) & (probabilities[LESION] > lesion_threshold)] = LESION
    return labels


def _labels_on_grid(
    probabilities: np.ndarray, frame: SquareFrame, lesion_threshold: float
) -> np.ndarray:
    """Resize probabilities to the slice grid and decide the labels there."""
    count = probabilities.shape[0]
    labels = np.empty((count, *frame.shape), dtype=np.uint8)
    for index in range(count):
        channels = [
            cv2.resize(
                probabilities[index, c],
                (frame.side, frame.side),
                interpolation=cv2.INTER_LINEAR,
            )
            for c in range(probabilities.shape[1])
        ]
        labels[index] = frame.crop(decide_labels(np.stack(channels), lesion_threshold))
    return labels


def _block_sums(mask: np.ndarray, factor: int) -> np.ndarray:
    """Count true voxels in each ``factor`` x ``factor`` in-plane block."""
    nz, ny, nx = mask.shape
    padded = np.zeros(
        (nz, -(-ny // factor) * factor, -(-nx // factor) * factor), dtype=np.uint16
    )
    padded[:, :ny, :nx] = mask
    blocks = padded.reshape(nz, padded.shape[1] // factor, factor, -1, factor)
    return blocks.sum(axis=(2, 4), dtype=np.uint16)


def _clean_and_split(
    lungs: np.ndarray, hu: np.ndarray, spacing: tuple[float, float, float]
) -> np.ndarray:
    """Drop network lung regions that hold too little air, then split the sides.

    The training slices come from the middle of the lungs only, so above the
    apices and below the bases the networks can call muscle, fat or bowel
    lung. On each slice, a lung region is kept when at least
    ``MIN_AERATED_FRACTION`` of its voxels are below ``AERATED_HU``. Then 3D
    components under ``MIN_COMPONENT_FRACTION`` of the largest are dropped,
    and the rest is split into right and left lung.

    The work runs on blocks of about ``SIDE_GRID_MM`` in-plane that are lung
    where any of their voxels is, so every lung voxel takes its block's
    decision and side. The aerated fraction counts the voxels themselves.

    Returns:
        uint8 labels on the grid of ``lungs``: 0, ``RIGHT_LUNG``, ``LEFT_LUNG``.
    """
    factor = max(1, int(round(SIDE_GRID_MM / spacing[0])))
    lung_count = _block_sums(lungs, factor)
    air_count = _block_sums(lungs & (hu < AERATED_HU), factor)
    coarse = lung_count > 0

    # Regions are labelled slice by slice: the structure has no z neighbours.
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndi.generate_binary_structure(2, 1)
    regions, count = ndi.label(coarse, structure=in_plane)
    flat = regions.ravel()
    sizes = np.bincount(flat, weights=lung_count.ravel(), minlength=count + 1)
    aerated = np.bincount(flat, weights=air_count.ravel(), minlength=count + 1)
    good = aerated >= MIN_AERATED_FRACTION * np.maximum(sizes, 1)
    good[0] = False
    aerated_lung = good[regions]

    components, count = ndi.label(aerated_lung)
    if count > 1:
        volumes = np.bincount(components.ravel())
        volumes[0] = 0
        keep = volumes >= MIN_COMPONENT_FRACTION * volumes.max()
        keep[0] = False
        aerated_lung = keep[components]

    coarse_spacing = (spacing[0] * factor, spacing[1] * factor, spacing[2])
    sides = split_left_right(aerated_lung, coarse_spacing)
    ny, nx = lungs.shape[1:]
    full = np.repeat(np.repeat(sides, factor, axis=1), factor, axis=2)[:, :ny, :nx]
    full[~lungs] = 0
    return full


def _split_lesions(
    hu: np.ndarray,
    lesion: np.ndarray,
    spacing: tuple[float, float, float],
    options: LesionOptions,
) -> np.ndarray:
    """Call each lesion voxel ground-glass opacity or consolidation by its HU.

    Lesion voxels whose smoothed HU is at or below ``options.ggo_min_hu`` are
    aerated lung by the HU definition of ground-glass opacity, so they are
    dropped. Lesion components under ``options.min_lesion_ml`` are dropped too.
    """
    result = np.zeros(hu.shape, dtype=np.uint8)
    if not lesion.any():
        return result
    box = bounding_box(lesion, margin=4)
    crop_hu = hu[box].astype(np.float32)
    crop_lesion = lesion[box]
    # Smoothing in-plane only (sigma 0 along z), on the lesions' bounding box.
    sigma = (0.0, HU_SMOOTHING_MM / spacing[1], HU_SMOOTHING_MM / spacing[0])
    smooth = ndi.gaussian_filter(crop_hu, sigma)
    opaque = crop_lesion & (smooth > options.ggo_min_hu)
    crop = np.zeros(crop_lesion.shape, dtype=np.uint8)
    crop[opaque] = GGO
    crop[opaque & (smooth > options.consolidation_min_hu)] = CONSOLIDATION
    voxel_ml = float(np.prod(spacing)) / 1000.0
    large = keep_large_components(crop > 0, options.min_lesion_ml / voxel_ml)
    crop[~large] = 0
    result[box] = crop
    return result


def segment_cnn(
    volume: CTVolume,
    bundle: ModelBundle | None = None,
    lesion_options: LesionOptions | None = None,
) -> Segmentation:
    """Segment lungs, lesions and heart of a chest CT with the network ensemble.

    Args:
        volume: The CT in HU.
        bundle: The ensemble; the weights shipped with covidct by default.
        lesion_options: Supplies the HU boundary between ground-glass opacity
            and consolidation.

    Returns:
        The masks on the volume's grid, with warnings about absent organs.
    """
    bundle = load_bundle() if bundle is None else bundle
    options = lesion_options or LesionOptions()
    reorientation = Reorientation.from_geometry(volume.direction, volume.spacing)
    hu = reorientation.to_canonical(volume.hu)
    spacing = reorientation.spacing

    logger.info("running the %d-member network ensemble", len(bundle.members))
    inputs, frame = hu_slices_to_inputs(hu)
    probabilities = ensemble_probabilities(inputs, bundle)
    labels = _labels_on_grid(probabilities, frame, bundle.lesion_threshold)
    del probabilities

    sides = _clean_and_split(labels > 0, hu, spacing)
    lung_mask = sides > 0
    lesion = (labels == LESION) & lung_mask
    warnings = []
    voxel_ml = float(np.prod(spacing)) / 1000.0
    for side, name in ((RIGHT_LUNG, "right"), (LEFT_LUNG, "left")):
        volume_ml = float(np.count_nonzero(sides == side)) * voxel_ml
        if volume_ml < 200.0:
            warnings.append(
                f"the {name} lung measures {volume_ml:.0f} ml: it is absent, "
                "collapsed or outside the field of view, so its values are unreliable"
            )

    logger.info("segmenting the heart")
    heart = segment_heart(hu, spacing, sides)
    if lung_mask.any() and not heart.any():
        warnings.append("no heart found between the lungs; heart values are missing")
    lesions = _split_lesions(hu, lesion, spacing, options)

    return Segmentation(
        lungs=reorientation.from_canonical(sides),
        heart=reorientation.from_canonical(heart),
        lesions=reorientation.from_canonical(lesions),
        method=f"cnn ({bundle.name})",
        warnings=warnings,
    )
