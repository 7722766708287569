"""Biomarkers of masks built on the real P002 grid, checked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from covidct.biomarkers.volumes import compute_biomarkers
from covidct.segment.result import Segmentation


@pytest.fixture(scope="module")
def boxes(p002_volume):
    """Two lung boxes, lesions and a heart box with known voxel counts.

    Right lung: slices 30..89 (60 slices), rows 150..249, columns 100..199.
    Left lung: the same rows and slices, columns 300..399. Every box slice is
    100 x 100 = 10,000 voxels. Lesions: GGO on right-lung slices 70..89 (the
    upper third), consolidation on left-lung slices 30..39 (lower third).
    """
    shape = p002_volume.hu.shape
    lungs = np.zeros(shape, dtype=np.uint8)
    lungs[30:90, 150:250, 100:200] = 1
    lungs[30:90, 150:250, 300:400] = 2
    lesions = np.zeros(shape, dtype=np.uint8)
    lesions[70:90, 150:250, 100:200] = 1
    lesions[30:40, 150:250, 300:400] = 2
    heart = np.zeros(shape, dtype=bool)
    heart[40:60, 260:300, 220:280] = True
    segmentation = Segmentation(lungs, heart, lesions, method="hand-made")
    return compute_biomarkers(p002_volume, segmentation)


def test_lung_volumes_match_voxel_counts(p002_volume, boxes):
    voxel_ml = 0.603515625 * 0.603515625 * 2.0 / 1000.0
    assert p002_volume.voxel_volume_ml == pytest.approx(voxel_ml)
    assert boxes["lung_volume_right"].value == pytest.approx(600_000 * voxel_ml)
    assert boxes["lung_volume_left"].value == pytest.approx(600_000 * voxel_ml)
    assert boxes["lung_volume_total"].value == pytest.approx(1_200_000 * voxel_ml)
    assert boxes["lung_volume_total"].unit == "ml"


def test_lesion_volumes_and_percentages(boxes):
    assert boxes["ggo_percent_right"].value == pytest.approx(100 * 20 / 60)
    assert boxes["consolidation_percent_left"].value == pytest.approx(100 * 10 / 60)
    assert boxes["ggo_percent_left"].value == pytest.approx(0.0)
    assert boxes["lesion_percent_total"].value == pytest.approx(100 * 30 / 120)
    assert boxes["Disease_extent"].value == pytest.approx(25.0)
    assert boxes["lesion_percent_total"].unit == "%"


def test_zones_are_cranio_caudal_thirds(boxes):
    # The GGO fills the top 20 of the 60 slices: all of the right upper zone.
    assert boxes["ggo_percent_right_upper_third"].value == pytest.approx(100.0)
    assert boxes["ggo_percent_right_middle_third"].value == pytest.approx(0.0)
    assert boxes["consolidation_percent_left_lower_third"].value == pytest.approx(50.0)
    assert boxes["lung_volume_right_upper_third"].value == pytest.approx(
        boxes["lung_volume_right"].value / 3
    )


def test_heart_volume_and_density(p002_volume, boxes):
    voxel_ml = p002_volume.voxel_volume_ml
    assert boxes["heart_volume"].value == pytest.approx(20 * 40 * 60 * voxel_ml)
    expected = p002_volume.hu[40:60, 260:300, 220:280].astype(float).mean()
    assert boxes["heart_mean_hu"].value == pytest.approx(expected)


def test_density_values_match_the_ct(p002_volume, boxes):
    hu = p002_volume.hu
    inside = np.zeros(hu.shape, dtype=bool)
    inside[30:90, 150:250, 100:200] = True
    inside[30:90, 150:250, 300:400] = True
    values = hu[inside].astype(float)
    assert boxes["mean_lung_density"].value == pytest.approx(values.mean())
    aerated = np.mean((values >= -950) & (values <= -700)) * 100
    assert boxes["well_aerated_percent"].value == pytest.approx(aerated)


def test_empty_masks_give_zero_and_none(p002_volume):
    shape = p002_volume.hu.shape
    empty = Segmentation(
        np.zeros(shape, np.uint8), np.zeros(shape, bool), np.zeros(shape, np.uint8), "x"
    )
    values = compute_biomarkers(p002_volume, empty)
    assert values["lung_volume_total"].value == 0.0
    assert values["lesion_percent_total"].value is None
    assert values["heart_mean_hu"].value is None
    assert values["mean_lung_density"].value is None
