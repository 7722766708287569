"""Lesion figures of the threshold backend on the two HU series of COVID-CT-MD.

- P002 (COVID-19): area under the ROC curve of the per-slice lesion area
  against the radiologists' slice labels (``Slice-level-labels-updated-1.npy``,
  row 1, column 0 the most superior slice).
- normal001: lesion volume as a percentage of lung volume (goal: under 1 %).

Usage:
    .venv/bin/python benchmarks/threshold_volumes.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from covidct.intake import load_study
from covidct.segment.threshold import segment_threshold

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def slice_auc(study: Path, labels_file: Path, row: int) -> tuple[float, int, int]:
    """Return the AUC, the number of labelled-positive slices and the slice count."""
    volume = load_study(study)
    segmentation = segment_threshold(volume)
    # Order slices from superior to inferior along the patient axis, as the
    # labels are, using the z of each slice's position.
    z_positions = volume.origin[2] + np.arange(volume.shape[0]) * (
        volume.direction[2, 2] * volume.spacing[2]
    )
    order = np.argsort(-z_positions)
    area = np.count_nonzero(segmentation.lesions, axis=(1, 2))[order]
    labels = np.load(labels_file)[row][: area.size]
    return float(roc_auc_score(labels, area)), int(labels.sum()), int(area.size)


def lesion_fraction(study: Path) -> float:
    """Return the lesion volume as a percentage of the lung volume."""
    volume = load_study(study)
    segmentation = segment_threshold(volume)
    lung = np.count_nonzero(segmentation.lungs)
    return 100.0 * np.count_nonzero(segmentation.lesions) / lung


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    ct_md = args.data / "covid-ct-md"
    if not ct_md.is_dir():
        print(f"data not found: {ct_md}; pass --data", file=sys.stderr)
        return 2

    start = time.perf_counter()
    auc, positives, slices = slice_auc(
        ct_md / "P002", ct_md / "Slice-level-labels-updated-1.npy", row=1
    )
    fraction = lesion_fraction(ct_md / "normal001")
    print("| figure | value |")
    print("|---|---:|")
    print(
        f"| P002 per-slice lesion AUC ({positives} of {slices} slices labelled) "
        f"| {auc:.3f} |"
    )
    print(f"| normal001 lesion volume, % of lung volume | {fraction:.2f} |")
    print(f"\n({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
