"""The label map file and its sidecar, which name the labels and their colours."""

from __future__ import annotations

from typing import Any

from covidct.segment.result import LABELS, Segmentation

__all__ = ["LABEL_COLOURS", "LABEL_MAP_NAME", "label_sidecar"]

#: File name of the label map written next to the report.
LABEL_MAP_NAME = "segmentation.nii.gz"

#: Display colour (R, G, B) of each value of ``LABELS``, in the HTML overlays and
#: in the sidecar, so that viewers can show the masks in the same colours.
LABEL_COLOURS: dict[int, tuple[int, int, int]] = {
    1: (64, 200, 96),  # right lung: green
    2: (0, 200, 230),  # left lung: cyan
    3: (50, 100, 255),  # heart: blue
    4: (255, 220, 0),  # ground-glass opacity: yellow
    5: (230, 30, 30),  # consolidation: red
}


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def label_sidecar(segmentation: Segmentation) -> dict[str, Any]:
    """Describe ``segmentation.nii.gz``: its labels, colours and method.

    Args:
        segmentation: The masks whose label map the sidecar describes.

    Returns:
        A JSON-ready dict. ``labels`` maps each value (as a string, because JSON
        keys are strings) to its name and colour.
    """
    return {
        "image": LABEL_MAP_NAME,
        "method": segmentation.method,
        "background": 0,
        "labels": {
            str(value): {
                "name": name,
                "rgb": list(LABEL_COLOURS[value]),
                "color": _hex(LABEL_COLOURS[value]),
            }
            for value, name in LABELS.items()
        },
        "overlap_rule": (
            "Ground-glass opacity (4) and consolidation (5) replace the lung label "
            "of their voxels, so a lung is the union of its label and the lesion "
            "labels inside it. The heart (3) is labelled only outside the lungs."
        ),
    }
