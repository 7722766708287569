"""Overlap, surface distance and volume error of segmentation masks."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

__all__ = ["ClassTally", "hausdorff95"]


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndi.binary_erosion(mask, border_value=0)


def hausdorff95(
    predicted: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...]
) -> float:
    """Return the 95th percentile of the symmetric surface distance.

    Args:
        predicted: Boolean mask.
        truth: Boolean mask of the same shape.
        spacing: Pixel or voxel size per array axis, in the unit of the result.

    Returns:
        The distance, or NaN when either mask is empty.
    """
    if not predicted.any() or not truth.any():
        return float("nan")
    predicted_surface = _surface(predicted)
    truth_surface = _surface(truth)
    to_truth = ndi.distance_transform_edt(~truth_surface, sampling=spacing)
    to_predicted = ndi.distance_transform_edt(~predicted_surface, sampling=spacing)
    distances = np.concatenate(
        [to_truth[predicted_surface], to_predicted[truth_surface]]
    )
    return float(np.percentile(distances, 95))


@dataclass
class ClassTally:
    """Running figures of one class over many cases (slices or volumes).

    Attributes:
        overlap: Pixels in both masks, summed over cases.
        predicted: Predicted pixels, summed.
        truth: Reference pixels, summed.
        case_dice: Dice of each case whose reference or prediction is not empty.
        case_hd95: 95th percentile Hausdorff distance of each case where both
            masks are non-empty.
    """

    overlap: int = 0
    predicted: int = 0
    truth: int = 0
    case_dice: list[float] = field(default_factory=list)
    case_hd95: list[float] = field(default_factory=list)

    def add(
        self, predicted: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...]
    ) -> None:
        """Add one case."""
        overlap = int(np.count_nonzero(predicted & truth))
        count_predicted = int(np.count_nonzero(predicted))
        count_truth = int(np.count_nonzero(truth))
        self.overlap += overlap
        self.predicted += count_predicted
        self.truth += count_truth
        if count_predicted + count_truth:
            self.case_dice.append(2.0 * overlap / (count_predicted + count_truth))
        if count_predicted and count_truth:
            self.case_hd95.append(hausdorff95(predicted, truth, spacing))

    def summary(self) -> dict[str, float | int]:
        """Pooled Dice, mean case Dice, median HD95 and volume error in percent."""
        total = self.predicted + self.truth
        return {
            "dice": 2.0 * self.overlap / total if total else float("nan"),
            "mean_case_dice": float(np.mean(self.case_dice))
            if self.case_dice
            else float("nan"),
            "cases": len(self.case_dice),
            "hd95_median": float(np.median(self.case_hd95))
            if self.case_hd95
            else float("nan"),
            "volume_error_percent": 100.0 * (self.predicted - self.truth) / self.truth
            if self.truth
            else float("nan"),
        }
