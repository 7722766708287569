"""Radiomics extraction on the real P002 series, checked against plain PyRadiomics."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from covidct.biomarkers.radiomics import (
    FEATURE_NAMES,
    REGIONS,
    RadiomicsSettings,
    extract_radiomics,
    region_masks,
)
from covidct.intake.volume import CTVolume, Provenance
from covidct.segment.result import Segmentation
from tests.conftest import shared_path

# Slices, rows and columns of P002 around the lower right lung and the heart,
# small enough for plain PyRadiomics to finish in seconds.
CROP = (slice(70, 110), slice(150, 400), slice(80, 330))


def _read_series(folder: Path) -> CTVolume:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = sitk.Cast(reader.Execute(), sitk.sitkInt16)
    return CTVolume.from_sitk(image, Provenance(source=str(folder), kind="dicom"))


def _threshold_masks(hu: np.ndarray) -> Segmentation:
    """Make rough lung, lesion and heart masks by thresholds (for tests only)."""
    body = hu > -500
    body = np.stack([ndimage.binary_fill_holes(s) for s in body])
    air, _ = ndimage.label((hu < -400) & body)
    sizes = np.bincount(air.ravel())
    sizes[0] = 0
    lungs_mask = np.isin(air, np.argsort(sizes)[-2:]) & (sizes[air] > 1000)
    middle = hu.shape[2] // 2
    columns = np.arange(hu.shape[2])[None, None, :]
    lungs = np.zeros(hu.shape, np.uint8)
    lungs[lungs_mask & (columns < middle)] = 1  # low x is the patient's right
    lungs[lungs_mask & (columns >= middle)] = 2
    lesions = np.zeros(hu.shape, np.uint8)
    lesions[(lungs > 0) & (hu > -750) & (hu < -300)] = 1
    heart = np.zeros(hu.shape, bool)
    z, y, x = (n // 2 for n in hu.shape)
    heart[z - 8 : z + 8, y - 20 : y + 20, x - 25 : x + 15] = True
    heart &= (lungs == 0) & (hu > -200)
    return Segmentation(lungs=lungs, heart=heart, lesions=lesions, method="threshold")


@pytest.fixture(scope="module")
def p002(p002_dir: Path) -> CTVolume:
    return _read_series(p002_dir)


@pytest.fixture(scope="module")
def p002_crop(p002: CTVolume) -> tuple[CTVolume, Segmentation]:
    """A crop of P002 with threshold masks, on the crop's own grid."""
    image = p002.to_sitk()
    lower = [CROP[2].start, CROP[1].start, CROP[0].start]
    size = [CROP[2].stop - lower[0], CROP[1].stop - lower[1], CROP[0].stop - lower[2]]
    cropped = sitk.RegionOfInterest(image, size, lower)
    volume = CTVolume.from_sitk(cropped, p002.provenance)
    return volume, _threshold_masks(volume.hu)


def _plain_features(
    volume: CTVolume, mask: np.ndarray, settings: RadiomicsSettings
) -> dict[str, float]:
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    extractor = RadiomicsFeatureExtractor(**settings.pyradiomics_settings())
    result = extractor.execute(volume.to_sitk(), volume.to_sitk(mask.astype(np.uint8)))
    return {name: float(value) for name, value in result.items()}


@pytest.mark.parametrize("region", REGIONS)
def test_names_match_cohort_headers(region: str) -> None:
    path = shared_path("covid-media", f"dataset_{region}_Train.csv")
    with path.open(newline="") as handle:
        header = next(csv.reader(handle))
    expected = [f"{name}_{region}" for name in FEATURE_NAMES]
    assert len(FEATURE_NAMES) == 107
    assert header[1:] == expected


def test_fast_path_equals_plain_extractor(
    p002_crop: tuple[CTVolume, Segmentation],
) -> None:
    volume, segmentation = p002_crop
    settings = RadiomicsSettings()
    fast = extract_radiomics(volume, segmentation, settings)
    masks = region_masks(segmentation)
    for region in ("disease_right", "heart"):
        assert masks[region].sum() > 500, f"{region} mask too small for the check"
        plain = _plain_features(volume, masks[region], settings)
        assert set(plain) == set(FEATURE_NAMES)
        for name, expected in plain.items():
            got = fast[f"{name}_{region}"]
            if math.isnan(expected):
                assert got is None, f"{name}_{region}"
            else:
                assert got == pytest.approx(expected, rel=1e-9, abs=1e-12), (
                    f"{name}_{region}"
                )


def test_keys_cover_all_regions(p002_crop: tuple[CTVolume, Segmentation]) -> None:
    volume, segmentation = p002_crop
    features = extract_radiomics(volume, segmentation)
    expected = [f"{name}_{region}" for region in REGIONS for name in FEATURE_NAMES]
    assert list(features) == expected
    assert len(features) == 535


def test_workers_give_same_values(p002_crop: tuple[CTVolume, Segmentation]) -> None:
    volume, segmentation = p002_crop
    serial = extract_radiomics(volume, segmentation, workers=1)
    parallel = extract_radiomics(volume, segmentation, workers=2)
    assert list(parallel) == list(serial)
    # Mesh sums may differ in the last bit between processes.
    for name, value in serial.items():
        if value is None:
            assert parallel[name] is None, name
        else:
            assert parallel[name] == pytest.approx(value, rel=1e-12, abs=1e-12), name


def test_empty_lesion_region_is_missing(
    p002_crop: tuple[CTVolume, Segmentation], caplog: pytest.LogCaptureFixture
) -> None:
    volume, segmentation = p002_crop
    no_lesions = Segmentation(
        lungs=segmentation.lungs,
        heart=segmentation.heart,
        lesions=np.zeros_like(segmentation.lesions),
        method="threshold",
    )
    with caplog.at_level(logging.INFO, logger="covidct.biomarkers.radiomics"):
        features = extract_radiomics(volume, no_lesions)
    for region in ("disease_left", "disease_right"):
        assert features[f"original_shape_VoxelVolume_{region}"] == 0.0
        assert features[f"original_shape_MeshVolume_{region}"] == 0.0
        assert features[f"original_firstorder_Mean_{region}"] is None
        assert features[f"original_glcm_Contrast_{region}"] is None
        assert f"region {region}: the mask is empty" in caplog.text
    assert features["original_shape_VoxelVolume_lung_left"] > 0


def test_single_voxel_region_is_missing(
    p002_crop: tuple[CTVolume, Segmentation],
) -> None:
    volume, segmentation = p002_crop
    lesions = np.zeros_like(segmentation.lesions)
    z, y, x = np.argwhere(segmentation.lungs == 2)[0]
    lesions[z, y, x] = 1
    one_lesion = Segmentation(
        lungs=segmentation.lungs,
        heart=segmentation.heart,
        lesions=lesions,
        method="threshold",
    )
    features = extract_radiomics(volume, one_lesion)
    assert features["original_shape_VoxelVolume_disease_left"] == 0.0
    assert features["original_shape_MeshVolume_disease_left"] == 0.0
    assert features["original_glszm_ZonePercentage_disease_left"] is None
    assert features["original_firstorder_Mean_disease_left"] is None


def test_box_voxel_volume_in_mm3(p002: CTVolume) -> None:
    # A box of 66 x 50 x 10 CT voxels (about 39.8 x 30.2 x 20.0 mm) as the heart.
    heart = np.zeros(p002.hu.shape, bool)
    heart[60:70, 200:250, 220:286] = True
    empty = np.zeros(p002.hu.shape, np.uint8)
    box = Segmentation(lungs=empty, heart=heart, lesions=empty, method="box")
    features = extract_radiomics(p002, box)

    sx, sy, sz = p002.spacing
    lengths_mm = np.array([66 * sx, 50 * sy, 10 * sz])
    # On a 1 mm grid each side contains floor(L) or ceil(L) voxel centres.
    smallest = float(np.prod(np.floor(lengths_mm)))
    largest = float(np.prod(np.ceil(lengths_mm)))
    volume = features["original_shape_VoxelVolume_heart"]
    assert volume is not None
    assert smallest <= volume <= largest
    assert volume == pytest.approx(float(np.prod(lengths_mm)), rel=0.06)
