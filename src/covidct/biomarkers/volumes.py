"""Volumes, extent, zones and densities of the lungs, lesions and heart."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from covidct.intake.volume import CTVolume
from covidct.segment.orientation import Reorientation
from covidct.segment.result import (
    CONSOLIDATION,
    GGO,
    LEFT_LUNG,
    RIGHT_LUNG,
    Segmentation,
)

__all__ = ["Biomarker", "ZONES", "compute_biomarkers"]

#: Cranio-caudal thirds of each lung, from the apex down. They are cut by
#: slice count, not along fissures, so "middle" is no lobe.
ZONES = ("upper", "middle", "lower")

#: Well-aerated lung lies in this HU range, bounds included.
WELL_AERATED_HU = (-950.0, -700.0)


@dataclass(frozen=True)
class Biomarker:
    """One measured value with its unit; ``value`` is None when undefined."""

    value: float | None
    unit: str
    description: str


def compute_biomarkers(
    volume: CTVolume, segmentation: Segmentation
) -> dict[str, Biomarker]:
    """Measure lung, lesion and heart volumes, extent, zones and densities.

    Sides are the patient's. Zones are the upper, middle and lower thirds of
    each lung along the cranio-caudal axis, cut by slice count of that lung.
    Percentages are of the lung volume of the same side (and zone); a lung of
    zero volume gives None percentages.

    Args:
        volume: The CT in HU.
        segmentation: Masks on the volume's grid.

    Returns:
        Biomarkers by name, in a stable order.
    """
    voxel_ml = volume.voxel_volume_ml
    reorientation = Reorientation.from_geometry(volume.direction, volume.spacing)
    lungs = reorientation.to_canonical(segmentation.lungs)
    lesions = reorientation.to_canonical(segmentation.lesions)
    hu = reorientation.to_canonical(volume.hu)

    result: dict[str, Biomarker] = {}
    sides = {
        "total": lungs > 0,
        "right": lungs == RIGHT_LUNG,
        "left": lungs == LEFT_LUNG,
    }
    for side, lung in sides.items():
        _add_region_values(result, side, lung, lesions, voxel_ml)
    for side in ("right", "left"):
        for zone, zone_mask in zip(ZONES, _zone_masks(sides[side]), strict=True):
            region = f"{side}_{zone}_third"
            _add_region_values(result, region, zone_mask, lesions, voxel_ml)

    lung = sides["total"]
    lung_hu = hu[lung]
    result["mean_lung_density"] = Biomarker(
        _mean(lung_hu), "HU", "mean HU over both lungs, lesions included"
    )
    low, high = WELL_AERATED_HU
    aerated = int(np.count_nonzero((lung_hu >= low) & (lung_hu <= high)))
    result["well_aerated_percent"] = Biomarker(
        _percent(aerated, lung_hu.size),
        "%",
        f"share of lung voxels between {low:g} and {high:g} HU",
    )
    heart = segmentation.heart
    result["heart_volume"] = Biomarker(
        float(np.count_nonzero(heart)) * voxel_ml, "ml", "heart volume"
    )
    result["heart_mean_hu"] = Biomarker(
        _mean(volume.hu[heart]), "HU", "mean HU of the heart"
    )
    result["Disease_extent"] = Biomarker(
        result["lesion_percent_total"].value,
        "%",
        "100 x lesion volume / lung volume (named as in the Covid-MedIA tables)",
    )
    return result


def _add_region_values(
    result: dict[str, Biomarker],
    region: str,
    lung: np.ndarray,
    lesions: np.ndarray,
    voxel_ml: float,
) -> None:
    """Add the lung, lesion, GGO and consolidation volumes and percentages."""
    lung_voxels = int(np.count_nonzero(lung))
    labels = lesions[lung]
    counts = {
        "lesion": int(np.count_nonzero(labels)),
        "ggo": int(np.count_nonzero(labels == GGO)),
        "consolidation": int(np.count_nonzero(labels == CONSOLIDATION)),
    }
    where = region.replace("_", " ")
    result[f"lung_volume_{region}"] = Biomarker(
        lung_voxels * voxel_ml, "ml", f"lung volume, {where}"
    )
    for kind, count in counts.items():
        result[f"{kind}_volume_{region}"] = Biomarker(
            count * voxel_ml, "ml", f"{kind} volume, {where}"
        )
    for kind, count in counts.items():
        result[f"{kind}_percent_{region}"] = Biomarker(
            _percent(count, lung_voxels), "%", f"{kind} share of the lung, {where}"
        )


def _zone_masks(lung: np.ndarray) -> list[np.ndarray]:
    """Split a canonical lung mask into its upper, middle and lower thirds."""
    zones = [np.zeros_like(lung) for _ in ZONES]
    present = np.nonzero(lung.any(axis=(1, 2)))[0]
    if present.size == 0:
        return zones
    # Canonical z grows toward superior, so the upper third has the largest z.
    bottom, top = int(present[0]), int(present[-1]) + 1
    edges = np.linspace(top, bottom, len(ZONES) + 1).round().astype(int)
    for index in range(len(ZONES)):
        upper, lower = edges[index], edges[index + 1]
        zones[index][lower:upper] = lung[lower:upper]
    return zones


def _percent(part: int, whole: int) -> float | None:
    return None if whole == 0 else 100.0 * part / whole


def _mean(values: np.ndarray) -> float | None:
    return None if values.size == 0 else float(values.mean(dtype=np.float64))
