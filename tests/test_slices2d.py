"""The 2D threshold adaptation on real 8-bit slices of ma20-8bit."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from covidct.segment.slices2d import (
    SliceCalibration,
    calibrate_slice,
    segment_slice,
    to_pseudo_hu,
)
from tests.conftest import shared_path

# Fixed slices spread over patients 1-20. The lung Dice of each, measured with
# the default SliceOptions, ranges from 0.74 to 0.97 (mean 0.91).
SLICES = ("0100", "0350", "0600", "0900", "1150", "1300", "1400", "1550")
LUNG_DICE_FLOOR = 0.85


def _load(folder: str, number: str) -> np.ndarray:
    return np.asarray(Image.open(shared_path("ma20-8bit", folder, f"{number}.png")))


def _dice(predicted: np.ndarray, reference: np.ndarray) -> float:
    total = np.count_nonzero(predicted) + np.count_nonzero(reference)
    return 2.0 * np.count_nonzero(predicted & reference) / total


def test_lung_dice_above_floor() -> None:
    scores = []
    for number in SLICES:
        masks = segment_slice(_load("ct", number))
        scores.append(_dice(masks.lungs > 0, _load("lungs", number) > 0))
    assert np.mean(scores) > LUNG_DICE_FLOOR, scores


def test_calibration_orders_peaks() -> None:
    calibration = calibrate_slice(_load("ct", SLICES[0]))
    assert calibration.valid
    assert calibration.air_level < calibration.tissue_level


def test_pseudo_hu_pins_peaks() -> None:
    image = _load("ct", SLICES[0])
    calibration = calibrate_slice(image)
    levels = np.array([[calibration.air_level, calibration.tissue_level]])
    pinned = to_pseudo_hu(levels, calibration, air_hu=-850.0, tissue_hu=40.0)
    np.testing.assert_allclose(pinned[0], [-850.0, 40.0], atol=1e-3)


def test_black_slice_gives_empty_masks() -> None:
    image = np.zeros_like(_load("ct", SLICES[0]))
    masks = segment_slice(image)
    assert not masks.calibration.valid
    assert not masks.lungs.any()
    assert not masks.lesions.any()
    assert masks.lungs.shape == image.shape


def test_lesions_stay_inside_reference_lungs() -> None:
    lungs = (_load("lungs", SLICES[2]) > 0).astype(np.uint8)
    masks = segment_slice(_load("ct", SLICES[2]), lungs=lungs)
    assert masks.lesions.any()
    assert not (masks.lesions[lungs == 0]).any()


def test_invalid_calibration_is_rejected() -> None:
    image = _load("ct", SLICES[0])
    with pytest.raises(ValueError, match="pseudo-HU"):
        to_pseudo_hu(image, SliceCalibration(0.0, 0.0, valid=False))
