"""Anatomical checks of a segmented chest CT: lung coverage and axis orientation.

The segmenters trust the header's geometry. These checks compare the masks and
the HU image with the anatomy that a chest CT must show. A scan that misses
part of the lungs, or whose array axes disagree with the header, is then
reported instead of measured as if it were right. They use only the
``Segmentation`` (lungs 1 right / 2 left, heart, lesions) and the ``CTVolume``,
so they apply to every backend.

Checks, on the volume in canonical orientation (array ``[z, y, x]`` with x
toward the patient's left, y posterior, z superior, as the header states it):

- Coverage: the lungs must measure at least ``min_lung_ml`` in total, or the
  study is rejected. Lungs on the first or last slice or on an in-plane border
  of the image, or one lung far smaller than the other, make the lungs
  incomplete.
- Superior-inferior: an apex cross-section is a compact blob and a base
  cross-section is a crescent around the diaphragm dome, so the lung slices'
  solidity (area over convex hull area) is higher at the superior end.
- Anterior-posterior: bone on the midline between the lungs (the spine) lies
  posterior to the centre of the body.
- Left-right: three votes, each cast only when its margin is clear. The right
  lung is larger than the left, its base (right diaphragm dome) lies higher,
  and the soft tissue below the lungs (the liver) lies on the right of the
  spine.
  Situs inversus gives the same votes as a mirrored image.
- Axis swap: the two lungs lie side by side along x, not one behind the other.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import convex_hull_image

from covidct.errors import InputError
from covidct.intake.volume import CTVolume
from covidct.segment.orientation import Reorientation
from covidct.segment.result import LEFT_LUNG, RIGHT_LUNG, Segmentation

__all__ = ["AnatomyCheck", "AnatomyOptions", "check_anatomy"]

logger = logging.getLogger(__name__)

# Names of the ITK axes (x, y, z), that is array axes 2, 1, 0.
_ITK_AXIS_NAMES = ("x", "y", "z")


@dataclass
class AnatomyOptions:
    """Limits of the anatomical checks.

    Attributes:
        min_lung_ml: Studies whose lungs measure less in total are rejected
            (ml). Adult lungs hold more than a litre even at full expiration.
        edge_area_mm2: Lung on one border of the image (first or last slice,
            or an in-plane border) covering at least this area makes the lungs
            incomplete (mm²).
        min_side_fraction: A lung smaller than this fraction of both lungs
            makes the lungs incomplete: it is absent, collapsed or outside the
            field of view. The threshold backend drops lung air that touches
            the in-plane border, as it drops the air outside the body.
        spine_offset_mm: The spine must lie at least this far posterior to
            the body centre, or anterior for a reversed axis, to decide (mm).
        solidity_margin: Difference of apex and base solidity needed to decide
            the superior-inferior direction.
        volume_ratio_margin: The right-to-left lung volume ratio decides only
            outside ``1 ± margin``.
        base_offset_mm: Height difference of the right and left lung bases
            needed to decide (mm).
        liver_offset_mm: Side offset of the soft tissue below the lungs from
            the spine needed to decide (mm).
    """

    min_lung_ml: float = 500.0
    edge_area_mm2: float = 200.0
    min_side_fraction: float = 0.15
    spine_offset_mm: float = 15.0
    solidity_margin: float = 0.15
    volume_ratio_margin: float = 0.05
    base_offset_mm: float = 4.0
    liver_offset_mm: float = 8.0


@dataclass
class AnatomyCheck:
    """Outcome of the anatomical checks of one study.

    Attributes:
        lungs_complete: False when the lungs reach a border of the image.
        orientation_consistent: False when an axis disagrees with the header.
        reasons: One warning per failed check, in words.
        measurements: The numbers behind each check (mm, ml or ratios); None
            where a check could not measure.
    """

    lungs_complete: bool = True
    orientation_consistent: bool = True
    reasons: list[str] = field(default_factory=list)
    measurements: dict[str, Any] = field(default_factory=dict)

    @property
    def values_reliable(self) -> bool:
        """True when every check passed."""
        return self.lungs_complete and self.orientation_consistent

    def to_dict(self) -> dict[str, Any]:
        """Build the ``reliability`` entry of report.json."""
        return {
            "values_reliable": self.values_reliable,
            "lungs_complete": self.lungs_complete,
            "orientation_consistent": self.orientation_consistent,
            "reasons": list(self.reasons),
            "measurements": dict(self.measurements),
        }


#: In-plane pixel size (mm) of the grid the orientation votes run on.
ORIENTATION_GRID_MM = 1.5


def check_anatomy(
    volume: CTVolume,
    segmentation: Segmentation,
    options: AnatomyOptions | None = None,
) -> AnatomyCheck:
    """Check lung coverage and axis orientation against the anatomy.

    Each failed check is logged and recorded with ``volume.provenance.warn``,
    so it reaches the report's warnings.

    Args:
        volume: The CT in HU with the header's geometry.
        segmentation: Its masks, on the grid of ``volume``.
        options: Limits of the checks.

    Returns:
        Whether the lungs are complete and the orientation consistent, with
        the reasons and measurements.

    Raises:
        InputError: If the lungs measure less than ``options.min_lung_ml``
            (absent, or only their tips are in the scan).
    """
    options = options or AnatomyOptions()
    check = AnatomyCheck()
    lung_ml = float(np.count_nonzero(segmentation.lungs)) * volume.voxel_volume_ml
    check.measurements["lung_volume_ml"] = round(lung_ml, 1)
    if lung_ml < options.min_lung_ml:
        raise InputError(
            f"only {lung_ml:.0f} ml of lung was found, less than the "
            f"{options.min_lung_ml:.0f} ml that a chest CT shows: the scan does "
            "not cover the chest (an abdomen or head CT?) or the lungs could "
            "not be segmented",
            path=volume.provenance.source,
            hint="analyse a chest CT that covers both lungs from apex to base",
        )
    try:
        reorientation = Reorientation.from_geometry(volume.direction, volume.spacing)
    except ValueError as err:
        # NOTE: a degenerate direction matrix leaves nothing to compare with.
        logger.warning("anatomical checks skipped: %s", err)
        return check
    hu = reorientation.to_canonical(volume.hu)
    lungs = reorientation.to_canonical(segmentation.lungs)
    spacing = reorientation.spacing
    _check_coverage(hu, lungs, spacing, options, check)
    # The orientation votes compare centroids and shapes over centimetres, so
    # they run on a grid of about ORIENTATION_GRID_MM in-plane.
    step = max(1, int(round(ORIENTATION_GRID_MM / spacing[0])))
    coarse_spacing = (spacing[0] * step, spacing[1] * step, spacing[2])
    _check_orientation(
        hu[:, ::step, ::step],
        lungs[:, ::step, ::step],
        coarse_spacing,
        reorientation,
        options,
        check,
    )
    for reason in check.reasons:
        volume.provenance.warn(reason)
    return check


def _check_coverage(
    hu: np.ndarray,
    lungs: np.ndarray,
    spacing: tuple[float, float, float],
    options: AnatomyOptions,
    check: AnatomyCheck,
) -> None:
    """Find lungs on the first or last slice or cut by an in-plane border."""
    dx, dy, dz = spacing
    for name, index in (("top (superior)", -1), ("bottom (inferior)", 0)):
        area = float(np.count_nonzero(lungs[index])) * dx * dy
        key = "superior" if index == -1 else "inferior"
        check.measurements[f"lung_on_{key}_slice_mm2"] = round(area, 1)
        if area >= options.edge_area_mm2:
            check.lungs_complete = False
            check.reasons.append(
                f"the lungs reach the {name} slice of the scan ({area:.0f} mm² "
                "of lung on it), so part of them is outside the scan: lung "
                "volumes, extent and stage are unreliable"
            )

    borders = {
        "patient's right": (lungs[:, :, 0], dy),
        "patient's left": (lungs[:, :, -1], dy),
        "anterior": (lungs[:, 0, :], dx),
        "posterior": (lungs[:, -1, :], dx),
    }
    for name, (border, step) in borders.items():
        area = float(np.count_nonzero(border)) * step * dz
        key = name.replace("patient's ", "")
        check.measurements[f"lung_on_{key}_border_mm2"] = round(area, 1)
        if area >= options.edge_area_mm2:
            check.lungs_complete = False
            check.reasons.append(
                f"the {name} border of the image cuts through the lungs "
                f"({area:.0f} mm² of lung on it): the field of view is too "
                "small, so lung volumes, extent and stage are unreliable; "
                "reconstruct the series with a field of view that covers the "
                "whole chest"
            )

    total = float(np.count_nonzero(lungs))
    for side, name in ((RIGHT_LUNG, "right"), (LEFT_LUNG, "left")):
        fraction = float(np.count_nonzero(lungs == side)) / total
        check.measurements[f"{name}_lung_fraction"] = round(fraction, 3)
        if fraction < options.min_side_fraction:
            check.lungs_complete = False
            check.reasons.append(
                f"the {name} lung is {100 * fraction:.0f} % of the lung volume: "
                "it is absent, collapsed or cut by the field of view, so lung "
                "volumes, extent and stage are unreliable"
            )


def _check_orientation(
    hu: np.ndarray,
    lungs: np.ndarray,
    spacing: tuple[float, float, float],
    reorientation: Reorientation,
    options: AnatomyOptions,
    check: AnatomyCheck,
) -> None:
    """Compare the anatomy with the header's axis directions."""
    right = lungs == RIGHT_LUNG
    left = lungs == LEFT_LUNG
    if not right.any() or not left.any():
        check.measurements["orientation"] = "not checked: one lung is missing"
        return

    def axis_name(canonical_axis: int) -> str:
        return _ITK_AXIS_NAMES[2 - reorientation.axes[canonical_axis]]

    if _lungs_one_behind_other(right, left, spacing, check):
        check.orientation_consistent = False
        check.reasons.append(
            f"the image's {axis_name(2)} and {axis_name(1)} axes appear swapped "
            "relative to the header: the two lungs lie one behind the other "
            "instead of side by side. Every value is unreliable; check how the "
            "file was exported"
        )
        return

    superior = _superior_vote(lungs, spacing, options, check)
    if superior < 0:
        check.orientation_consistent = False
        check.reasons.append(
            f"the image's {axis_name(0)} axis appears reversed relative to the "
            "header: the lung apices lie at the end the header calls inferior. "
            "Zone values are swapped and every value is unreliable; check how "
            "the file was exported"
        )
        # The remaining votes need to know which end is the base.
        hu = hu[::-1]
        lungs = lungs[::-1]
        right = right[::-1]
        left = left[::-1]

    posterior = _posterior_vote(hu, lungs, spacing, options, check)
    if posterior < 0:
        check.orientation_consistent = False
        check.reasons.append(
            f"the image's {axis_name(1)} axis appears reversed relative to the "
            "header: the spine lies anterior to the centre of the body. Every "
            "value is unreliable; check how the file was exported"
        )

    consistent, reversed_ = _left_right_votes(hu, lungs, spacing, options, check)
    if reversed_ >= 2 and consistent == 0:
        check.orientation_consistent = False
        check.reasons.append(
            f"the image's {axis_name(2)} axis appears reversed relative to the "
            "header (mirrored left-right): the lung the header calls right is "
            "the smaller one, its base is lower, or the liver lies on the other "
            "side. Right and left values are swapped unless the patient has "
            "situs inversus; check how the file was exported"
        )


def _centroid_mm(mask: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Centroid ``(z, y, x)`` of a mask in mm from voxel ``[0, 0, 0]``."""
    dx, dy, dz = spacing
    return np.array([float(c.mean()) for c in np.nonzero(mask)]) * (dz, dy, dx)


def _lungs_one_behind_other(
    right: np.ndarray,
    left: np.ndarray,
    spacing: tuple[float, float, float],
    check: AnatomyCheck,
) -> bool:
    """Return True when the lung centroids are apart along y far more than x."""
    difference = np.abs(_centroid_mm(left, spacing) - _centroid_mm(right, spacing))
    check.measurements["lung_centroid_distance_x_mm"] = round(float(difference[2]), 1)
    check.measurements["lung_centroid_distance_y_mm"] = round(float(difference[1]), 1)
    return bool(difference[1] > 2 * difference[2] and difference[1] > 50.0)


def _solidity(mask: np.ndarray) -> float | None:
    if np.count_nonzero(mask) < 20:
        return None
    return float(np.count_nonzero(mask)) / float(
        np.count_nonzero(convex_hull_image(mask))
    )


def _superior_vote(
    lungs: np.ndarray,
    spacing: tuple[float, float, float],
    options: AnatomyOptions,
    check: AnatomyCheck,
) -> int:
    """Vote +1 if the apices are superior, -1 if inferior, 0 if unclear."""
    # Every second pixel in-plane is enough for a shape measure.
    lungs = lungs[:, ::2, ::2]

    slices = np.nonzero(lungs.any(axis=(1, 2)))[0]
    first, last = int(slices.min()), int(slices.max())
    quarter = max(1, (last - first + 1) // 4)
    ends = {
        "inferior": range(first, first + quarter),
        "superior": range(last - quarter + 1, last + 1),
    }

    solidity: dict[str, float | None] = {}
    for end, indices in ends.items():
        values = [
            value
            for z in indices
            for side in (RIGHT_LUNG, LEFT_LUNG)
            if (value := _solidity(lungs[z] == side)) is not None
        ]
        mean = float(np.mean(values)) if values else None
        solidity[end] = mean
        check.measurements[f"lung_solidity_{end}"] = (
            None if mean is None else round(mean, 3)
        )

    inferior, superior = solidity["inferior"], solidity["superior"]
    if inferior is None or superior is None:
        return 0
    difference = superior - inferior
    if difference > options.solidity_margin:
        return 1
    if difference < -options.solidity_margin:
        return -1
    return 0


def _midline_and_slab(lungs: np.ndarray) -> tuple[float, slice]:
    """Return the x midline of the lungs (pixels) and their slice range."""
    columns = np.nonzero(lungs.any(axis=(0, 1)))[0]
    slices = np.nonzero(lungs.any(axis=(1, 2)))[0]
    midline = (float(columns.min()) + float(columns.max())) / 2
    return midline, slice(int(slices.min()), int(slices.max()) + 1)


def _posterior_vote(
    hu: np.ndarray,
    lungs: np.ndarray,
    spacing: tuple[float, float, float],
    options: AnatomyOptions,
    check: AnatomyCheck,
) -> int:
    """Vote +1 if the spine is posterior to the body centre, -1 if anterior."""
    dx, dy, _ = spacing
    midline, slab = _midline_and_slab(lungs)
    band = max(1, int(round(20.0 / dx)))
    low = max(0, int(midline) - band)
    central = hu[slab, :, low : int(midline) + band]
    bone_rows = np.nonzero(central > 200)[1]
    body_rows = np.nonzero(hu[slab] > -300)[1]
    if bone_rows.size == 0 or body_rows.size == 0:
        check.measurements["spine_posterior_offset_mm"] = None
        return 0
    offset = (float(bone_rows.mean()) - float(body_rows.mean())) * dy
    check.measurements["spine_posterior_offset_mm"] = round(offset, 1)
    if offset > options.spine_offset_mm:
        return 1
    if offset < -options.spine_offset_mm:
        return -1
    return 0


def _left_right_votes(
    hu: np.ndarray,
    lungs: np.ndarray,
    spacing: tuple[float, float, float],
    options: AnatomyOptions,
    check: AnatomyCheck,
) -> tuple[int, int]:
    """Count the left-right cues that agree and disagree with the header."""
    dx, dy, dz = spacing
    votes: list[int] = []

    right_voxels = float(np.count_nonzero(lungs == RIGHT_LUNG))
    left_voxels = float(np.count_nonzero(lungs == LEFT_LUNG))
    ratio = right_voxels / left_voxels
    check.measurements["right_to_left_lung_volume_ratio"] = round(ratio, 3)
    votes.append(_vote(ratio - 1.0, options.volume_ratio_margin))

    # The base height of a lung is the slice below which 10 % of it lies.
    bases = []
    for side in (RIGHT_LUNG, LEFT_LUNG):
        cumulative = np.cumsum(np.count_nonzero(lungs == side, axis=(1, 2)))
        bases.append(float(np.searchsorted(cumulative, 0.1 * cumulative[-1])) * dz)
    base_offset = bases[0] - bases[1]
    check.measurements["right_minus_left_lung_base_mm"] = round(base_offset, 1)
    votes.append(_vote(base_offset, options.base_offset_mm))

    liver_offset = _liver_offset_mm(hu, lungs, spacing)
    check.measurements["soft_tissue_below_lungs_left_of_spine_mm"] = (
        None if liver_offset is None else round(liver_offset, 1)
    )
    if liver_offset is not None:
        # The liver lies on the right, that is toward smaller x.
        votes.append(_vote(-liver_offset, options.liver_offset_mm))
    return votes.count(1), votes.count(-1)


def _vote(value: float, margin: float) -> int:
    if value > margin:
        return 1
    if value < -margin:
        return -1
    return 0


def _liver_offset_mm(
    hu: np.ndarray, lungs: np.ndarray, spacing: tuple[float, float, float]
) -> float | None:
    """Measure how far left of the spine the soft tissue of the lung bases lies.

    On the lowest quarter of the lung slices the liver fills the right side
    under the right dome. Positive values are toward the patient's left (mm).
    """
    dx = spacing[0]
    midline, slab = _midline_and_slab(lungs)
    band = max(1, int(round(40.0 / dx)))
    low = max(0, int(midline) - band)
    central = hu[slab, :, low : int(midline) + band] > 200
    bone = np.nonzero(central)
    if bone[0].size == 0:
        return None
    spine_x = float(bone[2].mean()) + low

    first = slab.start
    quarter = max(1, (slab.stop - slab.start) // 4)
    total = 0
    weighted = 0.0
    for z in range(first, first + quarter):
        body = ndi.binary_fill_holes(hu[z] > -300)
        tissue = body & (lungs[z] == 0) & (hu[z] > 20) & (hu[z] < 100)
        columns = np.nonzero(tissue)[1]
        total += columns.size
        weighted += float(columns.sum())
    if total == 0:
        return None
    return (weighted / total - spine_x) * dx
