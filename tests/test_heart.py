"""Tests of the rule-based heart segmentation on real chest CT."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from covidct.segment.heart import segment_heart
from covidct.segment.lungs import segment_lungs
from tests.conftest import shared_path

CTA_DIR = ("totalseg-examples", "chest-cta-pulmonary", "models")

# Measured with the default options: 0.766 (991 ml against 669 ml from
# TotalSegmentator). The mask also takes part of the liver below the heart
# and of the descending aorta, which the crop's partial lungs do not exclude.
CTA_MIN_DICE = 0.70


def _read_series(folder: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Read a DICOM series in canonical LPS orientation, as HU and spacing."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = sitk.DICOMOrient(reader.Execute(), "LPS")
    return sitk.GetArrayFromImage(image), image.GetSpacing()


def _lungs_of_crop(hu: np.ndarray, voxel_ml: float) -> np.ndarray:
    """Label air of the CTA crop as lungs, split at the x midline.

    The crop cuts the lungs at its borders, so the lung segmenter, which drops
    air touching the border as outside the body, finds none there.
    """
    from scipy import ndimage as ndi

    air = hu < -400
    labels, _ = ndi.label(air)
    sizes = np.bincount(labels.ravel()) * voxel_ml
    sizes[0] = 0
    lung = (sizes > 30.0)[labels]
    lungs = np.zeros(hu.shape, dtype=np.uint8)
    left = np.arange(hu.shape[2])[None, None, :] >= hu.shape[2] / 2
    lungs[lung & ~left] = 1
    lungs[lung & left] = 2
    return lungs


@functools.cache
def _study(name: str) -> dict:
    """Read a covid-ct-md series and segment its lungs and heart, once per run."""
    hu, spacing = _read_series(shared_path("covid-ct-md", name))
    lungs, _ = segment_lungs(hu, spacing)
    heart = segment_heart(hu, spacing, lungs)
    return {"hu": hu, "spacing": spacing, "lungs": lungs, "heart": heart}


@pytest.fixture(scope="module", params=["P002", "normal001"])
def study(request: pytest.FixtureRequest) -> dict:
    return _study(request.param)


def test_heart_volume_plausible(study: dict) -> None:
    # Chambers and myocardium of an adult without the pericardial fat, which
    # the mask leaves out: P002 measures 355 ml and normal001 472 ml.
    volume_ml = study["heart"].sum() * np.prod(study["spacing"]) / 1000.0
    assert 300.0 <= volume_ml <= 1200.0, f"heart volume {volume_ml:.0f} ml"


def test_heart_between_lungs(study: dict) -> None:
    heart, lungs = study["heart"], study["lungs"]
    z, _, x = np.argwhere(heart).mean(axis=0)
    slice_lungs = lungs[int(round(z))]
    right_x = np.nonzero(slice_lungs == 1)[1]
    left_x = np.nonzero(slice_lungs == 2)[1]
    assert right_x.size > 0, "no right lung on the slice of the heart centroid"
    assert left_x.size > 0, "no left lung on the slice of the heart centroid"
    assert right_x.mean() < x < left_x.mean()


def test_heart_anterior_to_spine(study: dict) -> None:
    hu, heart, lungs = study["hu"], study["heart"], study["lungs"]
    z, y, _ = np.round(np.argwhere(heart).mean(axis=0)).astype(int)
    # The vertebral body lies on the midline of the chest, halfway between the
    # lungs' centres: look for bone there, posterior to the heart's centroid.
    middle = int(round(np.nonzero(lungs[z])[1].mean()))
    half_band = int(round(10.0 / study["spacing"][0]))
    band = hu[z, y:, middle - half_band : middle + half_band + 1] > 200
    bone_rows = np.nonzero(band.any(axis=1))[0]
    assert bone_rows.size > 0, "no bone on the midline posterior to the heart"
    gap_mm = bone_rows.min() * study["spacing"][1]
    assert gap_mm > 30.0, f"heart centroid {gap_mm:.0f} mm anterior to bone"


def test_heart_does_not_overlap_lungs(study: dict) -> None:
    assert not (study["heart"] & (study["lungs"] > 0)).any()


def test_heart_dice_on_cta_crop() -> None:
    folder = shared_path(*CTA_DIR)
    image = sitk.DICOMOrient(sitk.ReadImage(str(folder / "ct_cropped.nii.gz")), "LPS")
    reference = sitk.ReadImage(str(folder / "heart.nii.gz"))
    reference = sitk.Resample(
        reference, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0
    )
    hu = sitk.GetArrayFromImage(image)
    expected = sitk.GetArrayFromImage(reference) > 0
    spacing = image.GetSpacing()
    lungs = _lungs_of_crop(hu, float(np.prod(spacing)) / 1000.0)

    heart = segment_heart(hu, spacing, lungs)

    dice = 2.0 * (heart & expected).sum() / (heart.sum() + expected.sum())
    assert dice >= CTA_MIN_DICE, f"Dice {dice:.3f}"


def test_empty_lungs_give_empty_heart(caplog: pytest.LogCaptureFixture) -> None:
    p002 = _study("P002")
    hu, spacing = p002["hu"], p002["spacing"]
    lungs = np.zeros(hu.shape, dtype=np.uint8)

    with caplog.at_level(logging.WARNING, logger="covidct.segment.heart"):
        heart = segment_heart(hu, spacing, lungs)

    assert heart.shape == hu.shape
    assert not heart.any()
    assert "no heart segmented" in caplog.text


def test_one_lung_gives_empty_heart(caplog: pytest.LogCaptureFixture) -> None:
    p002 = _study("P002")
    hu, spacing = p002["hu"], p002["spacing"]
    lungs = np.where(p002["lungs"] == 2, 0, p002["lungs"]).astype(np.uint8)

    with caplog.at_level(logging.WARNING, logger="covidct.segment.heart"):
        heart = segment_heart(hu, spacing, lungs)

    assert not heart.any()
    assert "no slice contains both lungs" in caplog.text


def test_mismatched_shapes_raise() -> None:
    hu = np.zeros((4, 8, 8), dtype=np.int16)
    with pytest.raises(ValueError, match="shape"):
        segment_heart(hu, (1.0, 1.0, 1.0), np.zeros((4, 8, 9), dtype=np.uint8))
