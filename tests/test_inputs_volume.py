"""Image-file inputs (NIfTI, MHA) that are not plain HU volumes on a clean grid.

Every case converts the real P002 series to an image file in ``tmp_path`` and
changes its values or header: values not in HU, padding outside the field of
view, oblique or sheared directions, and 4D files.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from covidct.errors import InputError
from covidct.intake import CTVolume, IntakeOptions, load_study
from covidct.segment.threshold import segment_threshold

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")

# Byte offsets of NIfTI-1 header fields.
SCL_SLOPE_OFFSET = 112
QFORM_CODE_OFFSET = 252
SROW_OFFSET = 280


def write_image(
    volume: CTVolume,
    path: Path,
    values: np.ndarray | None = None,
    direction: np.ndarray | None = None,
) -> Path:
    """Write ``values`` (default: the HU array) on the volume's grid to ``path``."""
    image = volume.to_sitk(volume.hu if values is None else values)
    if direction is not None:
        image.SetDirection([float(v) for v in np.asarray(direction).ravel()])
    sitk.WriteImage(image, str(path))
    return path


def rotation_about_z(degrees: float) -> np.ndarray:
    angle = np.radians(degrees)
    return np.array(
        [
            [np.cos(angle), -np.sin(angle), 0.0],
            [np.sin(angle), np.cos(angle), 0.0],
            [0.0, 0.0, 1.0],
        ]
    )


def outside_inscribed_circle(volume: CTVolume) -> np.ndarray:
    """In-plane mask of the corners outside the circle that touches the edges.

    Scanners reconstruct a disc and pad the corners of the square image. P002's
    field of view is 309 mm wide, so the disc has a radius of 154.5 mm.
    """
    _, rows, columns = volume.shape
    y, x = np.mgrid[0:rows, 0:columns]
    radius_mm = columns * volume.spacing[0] / 2
    distance_mm = np.hypot(
        (x - (columns - 1) / 2) * volume.spacing[0],
        (y - (rows - 1) / 2) * volume.spacing[1],
    )
    return distance_mm > radius_mm


def patch_nifti(path: Path, offset: int, fmt: str, *values: float) -> None:
    """Overwrite fields of an uncompressed little-endian NIfTI-1 header."""
    data = bytearray(path.read_bytes())
    assert struct.unpack_from("<i", data, 0)[0] == 348
    struct.pack_into("<" + fmt, data, offset, *values)
    path.write_bytes(bytes(data))


def lung_ml(volume: CTVolume, lungs: np.ndarray) -> float:
    return float(np.count_nonzero(lungs)) * volume.voxel_volume_ml


# Values that are not HU.


def test_offset_1024_corrected_with_warning(
    tmp_path: Path, p002_volume: CTVolume
) -> None:
    stored = (p002_volume.hu.astype(np.int32) + 1024).astype(np.uint16)
    path = write_image(p002_volume, tmp_path / "stored.nii", stored)

    volume = load_study(path)
    np.testing.assert_array_equal(volume.hu, p002_volume.hu)
    assert volume.hu.dtype == np.int16
    assert volume.provenance.details["hu_offset_subtracted"] == 1024
    warnings = [w for w in volume.provenance.warnings if "1024 was subtracted" in w]
    assert len(warnings) == 1
    assert "HU = value - 1024" in warnings[0]


def test_lost_nifti_intercept_corrected(tmp_path: Path, p002_volume: CTVolume) -> None:
    stored = (p002_volume.hu.astype(np.int32) + 1024).astype(np.uint16)
    path = write_image(p002_volume, tmp_path / "scaled.nii", stored)
    patch_nifti(path, SCL_SLOPE_OFFSET, "2f", 1.0, -1024.0)

    scaled = load_study(path)
    np.testing.assert_array_equal(scaled.hu, p002_volume.hu)
    assert scaled.provenance.details["nifti_scl_inter"] == -1024.0
    assert "hu_offset_subtracted" not in scaled.provenance.details

    # A slope of 0 means "no scaling" in NIfTI-1: the intercept is lost.
    patch_nifti(path, SCL_SLOPE_OFFSET, "2f", 0.0, 0.0)
    lost = load_study(path)
    np.testing.assert_array_equal(lost.hu, p002_volume.hu)
    assert lost.provenance.details["hu_offset_subtracted"] == 1024


def test_lost_slope_rejected(tmp_path: Path, p002_volume: CTVolume) -> None:
    halved = ((p002_volume.hu.astype(np.int32) + 1024) // 2).astype(np.uint16)
    path = write_image(p002_volume, tmp_path / "halved.nii", halved)

    with pytest.raises(InputError) as caught:
        load_study(path)
    assert caught.value.exit_code == 2
    assert str(path) in str(caught.value)
    assert "stored scanner values" in caught.value.message
    assert "histogram peaks at" in caught.value.message
    assert "scl_slope" in (caught.value.hint or "")
    assert "RescaleSlope" in (caught.value.hint or "")


def test_offset_float_not_corrected(tmp_path: Path, p002_volume: CTVolume) -> None:
    shifted = p002_volume.hu.astype(np.float32) + 1024.5
    path = write_image(p002_volume, tmp_path / "float.nii", shifted)

    with pytest.raises(InputError) as caught:
        load_study(path)
    assert "not Hounsfield units" in caught.value.message


def test_windowed_8bit_rejected_with_advice(
    tmp_path: Path, p002_volume: CTVolume
) -> None:
    # Window [-1350, 150] HU mapped linearly to 0..255.
    scaled = (p002_volume.hu.astype(np.float32) + 1350) / 1500 * 255
    windowed = np.clip(np.round(scaled), 0, 255).astype(np.uint8)
    path = write_image(p002_volume, tmp_path / "windowed.nii.gz", windowed)

    with pytest.raises(InputError) as caught:
        load_study(path)
    assert caught.value.exit_code == 2
    assert str(path) in str(caught.value)
    message = caught.value.message
    assert "windowed 8-bit image" in message
    assert "histogram peaks at" in message
    hint = caught.value.hint or ""
    assert "original DICOM series" in hint
    assert "dcm2niix" in hint


def test_normalised_values_rejected(tmp_path: Path, p002_volume: CTVolume) -> None:
    hu = p002_volume.hu.astype(np.float32)
    normalised = (hu - hu.mean()) / hu.std()
    path = write_image(p002_volume, tmp_path / "zscore.nii", normalised)

    with pytest.raises(InputError) as caught:
        load_study(path)
    assert caught.value.exit_code == 2
    message = caught.value.message
    assert "the 1st percentile of the values is -1" in message
    assert "histogram peaks at -1.16 and 0.732" in message
    assert "not a normalised or rescaled one" in (caught.value.hint or "")


# Voxels below -1024 HU.


@pytest.mark.parametrize("padding", [-2048, -3024])
def test_padding_set_to_air(
    tmp_path: Path, p002_volume: CTVolume, padding: int
) -> None:
    corners = outside_inscribed_circle(p002_volume)
    padded = p002_volume.hu.copy()
    padded[:, corners] = padding
    path = write_image(p002_volume, tmp_path / "padded.nii", padded)

    volume = load_study(path)
    assert np.all(volume.hu[:, corners] == -1024)
    np.testing.assert_array_equal(volume.hu[:, ~corners], p002_volume.hu[:, ~corners])
    details = volume.provenance.details
    assert details["padding_hu"] == padding
    assert details["padding_voxels"] == corners.sum() * volume.shape[0]
    assert any(
        f"padding value {padding} HU" in w and "set to -1024 HU" in w
        for w in volume.provenance.warnings
    )


def test_padding_keeps_lung_volume(
    tmp_path: Path, p002_volume: CTVolume, p002_segmentation
) -> None:
    clean_ml = lung_ml(p002_volume, p002_segmentation.lungs)
    lungs = p002_segmentation.lungs > 0
    padded = p002_volume.hu.copy()
    # Calibration error: aerated lung reads 60 HU low, down to -1084 HU.
    aerated = lungs & (padded < -900)
    padded[aerated] -= 60
    corners = outside_inscribed_circle(p002_volume)
    padded[:, corners] = -3024
    path = write_image(p002_volume, tmp_path / "padded.nii", padded)

    volume = load_study(path)
    # The genuine values below -1024 HU inside the lungs stay as they are.
    assert volume.hu.min() < -1024
    np.testing.assert_array_equal(volume.hu[aerated], padded[aerated])
    segmentation = segment_threshold(volume)
    padded_ml = lung_ml(volume, segmentation.lungs)
    assert padded_ml == pytest.approx(clean_ml, rel=0.01)
    assert not np.any(segmentation.lungs[:, corners])


def test_low_lung_values_not_padding(
    tmp_path: Path, p002_volume: CTVolume, p002_segmentation
) -> None:
    lowered = p002_volume.hu.copy()
    aerated = (p002_segmentation.lungs > 0) & (lowered < -900)
    lowered[aerated] -= 60
    path = write_image(p002_volume, tmp_path / "low.nii", lowered)

    volume = load_study(path)
    np.testing.assert_array_equal(volume.hu, lowered)
    assert "padding_hu" not in volume.provenance.details
    assert not any("padding" in w for w in volume.provenance.warnings)


# Oblique and non-orthonormal directions.


def test_oblique_header_same_segmentation(
    tmp_path: Path, p002_volume: CTVolume, p002_segmentation
) -> None:
    rotated = rotation_about_z(15.0)
    path = write_image(p002_volume, tmp_path / "oblique.nii.gz", direction=rotated)

    volume = load_study(path)
    np.testing.assert_allclose(volume.direction, rotated, atol=1e-6)
    assert volume.provenance.details["oblique_degrees"] == pytest.approx(15.0, abs=0.01)
    assert any("oblique, up to 15.0 degrees" in w for w in volume.provenance.warnings)
    segmentation = segment_threshold(volume)
    np.testing.assert_array_equal(segmentation.lungs, p002_segmentation.lungs)
    np.testing.assert_array_equal(segmentation.heart, p002_segmentation.heart)
    np.testing.assert_array_equal(segmentation.lesions, p002_segmentation.lesions)


@pytest.mark.parametrize("degrees", [40.0, 45.0])
def test_strongly_oblique_rejected(
    tmp_path: Path, p002_volume: CTVolume, degrees: float
) -> None:
    path = write_image(
        p002_volume, tmp_path / "oblique.mha", direction=rotation_about_z(degrees)
    )

    with pytest.raises(InputError) as caught:
        load_study(path)
    assert caught.value.exit_code == 2
    assert str(path) in str(caught.value)
    assert f"{degrees:.1f} degrees away" in caught.value.message
    assert "[0.7" in caught.value.message  # the matrix is named
    assert "Resample" in (caught.value.hint or "")


def test_small_shear_repaired(tmp_path: Path, p002_volume: CTVolume) -> None:
    sheared = np.eye(3)
    sheared[0, 1] = 4e-4
    path = write_image(p002_volume, tmp_path / "sheared.mha", direction=sheared)

    volume = load_study(path)
    np.testing.assert_allclose(
        volume.direction.T @ volume.direction, np.eye(3), atol=1e-12
    )
    np.testing.assert_allclose(volume.direction, np.eye(3), atol=1e-3)
    np.testing.assert_array_equal(volume.hu, p002_volume.hu)
    deviation = volume.provenance.details["direction_deviation"]
    assert 1e-4 < deviation < 4e-4
    assert any(
        "was not orthonormal (deviation 0.0002" in w for w in volume.provenance.warnings
    )


def test_large_shear_rejected(tmp_path: Path, p002_volume: CTVolume) -> None:
    sheared = np.eye(3)
    sheared[0, 1] = 0.05
    path = write_image(p002_volume, tmp_path / "sheared.mha", direction=sheared)

    with pytest.raises(InputError) as caught:
        load_study(path)
    assert caught.value.exit_code == 2
    message = caught.value.message
    assert "[[1, 0.05, 0], [0, 1, 0], [0, 0, 1]]" in message
    assert "not orthonormal" in message


def test_sheared_sform_without_qform_rejected(
    tmp_path: Path, p002_volume: CTVolume
) -> None:
    path = write_image(p002_volume, tmp_path / "sheared.nii")
    data = path.read_bytes()
    srow = list(struct.unpack_from("<12f", data, SROW_OFFSET))
    srow[1] = 0.2  # x grows with the row index: shear
    patch_nifti(path, SROW_OFFSET, "12f", *srow)
    patch_nifti(path, QFORM_CODE_OFFSET, "h", 0)

    with pytest.raises(InputError) as caught:
        load_study(path)
    assert caught.value.exit_code == 2
    assert str(path) in str(caught.value)
    assert "not orthonormal" in caught.value.message
    assert "SimpleITK reads only orthonormal" in caught.value.message
    assert "qform" in (caught.value.hint or "")


def test_sheared_sform_with_qform_warns(tmp_path: Path, p002_volume: CTVolume) -> None:
    path = write_image(p002_volume, tmp_path / "sheared.nii")
    data = path.read_bytes()
    srow = list(struct.unpack_from("<12f", data, SROW_OFFSET))
    srow[1] = 0.2
    patch_nifti(path, SROW_OFFSET, "12f", *srow)

    volume = load_study(path)
    np.testing.assert_allclose(volume.direction, p002_volume.direction, atol=1e-6)
    assert any(
        "sform" in w and "used the qform" in w for w in volume.provenance.warnings
    )


# 4D files.


@pytest.fixture()
def four_d_path(tmp_path: Path, p002_volume: CTVolume) -> Path:
    """Three frames of P002 at 1/4 in-plane resolution: as is, +10 HU, +20 HU."""
    small = p002_volume.hu[:, ::4, ::4]
    spacing = (p002_volume.spacing[0] * 4, p002_volume.spacing[1] * 4, 2.0)
    frames = []
    for offset in (0, 10, 20):
        image = sitk.GetImageFromArray((small + offset).astype(np.int16))
        image.SetSpacing(spacing)
        image.SetOrigin(p002_volume.origin)
        frames.append(image)
    path = tmp_path / "frames.nii.gz"
    sitk.WriteImage(sitk.JoinSeries(frames), str(path))
    return path


def test_4d_rejected_with_frame_count(four_d_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        load_study(four_d_path)
    assert caught.value.exit_code == 2
    assert str(four_d_path) in str(caught.value)
    assert "3 volumes (frames) of 128 x 128 x 133 voxels" in caught.value.message
    hint = caught.value.hint or ""
    assert "--frame N (0 to 2" in hint
    assert "split" in hint


def test_4d_frame_chosen(four_d_path: Path, p002_volume: CTVolume) -> None:
    volume = load_study(four_d_path, IntakeOptions(frame=2))
    assert volume.shape == (133, 128, 128)
    np.testing.assert_array_equal(volume.hu, p002_volume.hu[:, ::4, ::4] + 20)
    assert volume.spacing[2] == pytest.approx(2.0)
    assert volume.provenance.details["frame"] == 2
    assert any("frame 2 was used" in w for w in volume.provenance.warnings)


def test_frame_out_of_range_rejected(
    four_d_path: Path, tmp_path: Path, p002_volume: CTVolume
) -> None:
    with pytest.raises(InputError) as caught:
        load_study(four_d_path, IntakeOptions(frame=3))
    assert "frame 3 was requested, but the image has 3 frames" in caught.value.message

    three_d = write_image(p002_volume, tmp_path / "p002.nii")
    with pytest.raises(InputError) as caught:
        load_study(three_d, IntakeOptions(frame=1))
    assert "has 1 frame (numbered from 0)" in caught.value.message
    assert load_study(three_d, IntakeOptions(frame=0)).shape == p002_volume.shape
