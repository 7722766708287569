"""The segmentation every backend returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["LABELS", "Segmentation"]

#: Values of the label map written to ``segmentation.nii.gz``.
LABELS: dict[int, str] = {
    1: "right lung",
    2: "left lung",
    3: "heart",
    4: "ground-glass opacity",
    5: "consolidation",
}

RIGHT_LUNG = 1
LEFT_LUNG = 2
GGO = 1
CONSOLIDATION = 2


@dataclass
class Segmentation:
    """Masks of one study on the CT grid, each indexed ``[z, y, x]``.

    Attributes:
        lungs: 0 outside, 1 right lung, 2 left lung (patient sides). Lesions are
            inside the lungs, so the lung masks include them.
        heart: True inside the pericardial sac (chambers and myocardium).
        lesions: 0 none, 1 ground-glass opacity, 2 consolidation; 0 outside lungs.
        method: Name of the backend that made the masks.
        warnings: Oddities the backend noticed (an absent lung, an empty heart).
    """

    lungs: np.ndarray
    heart: np.ndarray
    lesions: np.ndarray
    method: str
    warnings: list[str] = field(default_factory=list)

    def label_map(self) -> np.ndarray:
        """Compose the uint8 label map of ``LABELS``: lesions replace lung labels."""
        labels = np.zeros(self.lungs.shape, dtype=np.uint8)
        labels[self.lungs == RIGHT_LUNG] = 1
        labels[self.lungs == LEFT_LUNG] = 2
        labels[self.heart & (self.lungs == 0)] = 3
        labels[self.lesions == GGO] = 4
        labels[self.lesions == CONSOLIDATION] = 5
        return labels
