"""Tests of the intake stage on real CT data and on broken copies of it."""

from __future__ import annotations

import random
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import shared_path

from covidct.errors import InputError
from covidct.intake import CTVolume, IntakeOptions, check_hu, load_study
from covidct.intake.checks import format_mm

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")

P002_SLICES = 133
NORMAL001_SLICES = 154
P002_PIXEL_SPACING = 0.603515625


@pytest.fixture(scope="session")
def p002_volume(p002_dir: Path) -> CTVolume:
    """P002 loaded once for the whole session."""
    return load_study(p002_dir)


@pytest.fixture(scope="session")
def p002_uid(p002_dir: Path) -> str:
    header = pydicom.dcmread(next(p002_dir.glob("*.dcm")), stop_before_pixels=True)
    return str(header.SeriesInstanceUID)


@pytest.fixture()
def p002_copy(p002_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the P002 folder that a test may break."""
    return Path(shutil.copytree(p002_dir, tmp_path / "P002"))


def read_with_sitk(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def slice_files_by_position(folder: Path) -> list[Path]:
    """Files of a single-series folder sorted by ImagePositionPatient z."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    return sorted(
        files,
        key=lambda p: float(
            pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]
        ),
    )


def assert_names_path(error: InputError, path: Path) -> None:
    assert error.exit_code == 2
    assert str(path) in str(error)


def assert_same_as_sitk(volume: CTVolume, image: sitk.Image) -> None:
    np.testing.assert_array_equal(volume.hu, sitk.GetArrayFromImage(image))
    np.testing.assert_allclose(volume.spacing, image.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(volume.origin, image.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(
        volume.direction.ravel(), image.GetDirection(), atol=1e-6
    )


# Real series that load.


def test_p002_shape_spacing_and_hu(p002_volume: CTVolume) -> None:
    assert p002_volume.shape == (P002_SLICES, 512, 512)
    assert p002_volume.spacing == pytest.approx(
        (P002_PIXEL_SPACING, P002_PIXEL_SPACING, 2.0)
    )
    assert p002_volume.hu.dtype == np.int16
    assert p002_volume.hu.min() >= -1100
    assert np.percentile(p002_volume.hu, 1) < -950
    assert p002_volume.hu.max() < 4000


def test_p002_matches_sitk_series_reader(p002_volume: CTVolume, p002_dir: Path) -> None:
    assert_same_as_sitk(p002_volume, read_with_sitk(p002_dir))


def test_p002_provenance_records_choice(p002_volume: CTVolume, p002_uid: str) -> None:
    provenance = p002_volume.provenance
    assert provenance.kind == "dicom"
    assert provenance.series_uid == p002_uid
    assert "most slices" in (provenance.selection_rule or "")
    assert provenance.rejected_series == []
    assert provenance.skipped_files == []
    assert any("not a valid DICOM UID" in w for w in provenance.warnings)
    assert provenance.details["slice_count"] == P002_SLICES


def test_provenance_has_no_patient_identity(
    p002_volume: CTVolume, p002_dir: Path
) -> None:
    header = pydicom.dcmread(next(p002_dir.glob("*.dcm")), stop_before_pixels=True)
    provenance = p002_volume.provenance
    # The source is the user's own path, which here contains the patient ID.
    text = repr(
        [provenance.series_description, provenance.details, provenance.warnings]
    )
    for keyword in ("PatientName", "PatientID"):
        value = str(header.get(keyword, "") or "")
        if value:
            assert value not in text


def test_normal001_matches_sitk_series_reader(normal001_dir: Path) -> None:
    volume = load_study(normal001_dir)
    assert volume.shape == (NORMAL001_SLICES, 512, 512)
    assert np.percentile(volume.hu, 1) < -950
    assert_same_as_sitk(volume, read_with_sitk(normal001_dir))


def test_jpeg2000_series_loads() -> None:
    folder = shared_path("totalseg-examples", "example_ct_dicom")
    # The series is a 40 mm slab of the upper abdomen, under the chest limit.
    volume = load_study(folder, IntakeOptions(min_extent_mm=0.0))
    assert volume.shape == (20, 512, 512)
    assert volume.provenance.details["transfer_syntax"].startswith(
        "1.2.840.10008.1.2.4.90"
    )
    assert_same_as_sitk(volume, read_with_sitk(folder))


def test_nifti_gz_loads() -> None:
    path = shared_path("totalseg-examples", "example_ct.nii.gz")
    volume = load_study(path)
    assert volume.provenance.kind == "nifti"
    assert volume.shape == (112, 101, 122)
    assert volume.spacing == pytest.approx((3.0, 3.0, 3.0))


# Real series that are rejected.


def test_lidc_slices_too_few() -> None:
    folder = shared_path("lidc-slices")
    with pytest.raises(InputError) as caught:
        load_study(folder)
    assert_names_path(caught.value, folder)
    assert "2 slices" in caught.value.message
    assert "fewer than the 10" in caught.value.message


def test_monai_series_too_few() -> None:
    folder = shared_path("monai-ct-dicom", "tests", "testing_data", "CT_DICOM")
    with pytest.raises(InputError) as caught:
        load_study(folder)
    assert_names_path(caught.value, folder)
    assert "4 slices" in caught.value.message


def test_monai_uneven_spacing_names_positions() -> None:
    folder = shared_path("monai-ct-dicom", "tests", "testing_data", "CT_DICOM")
    with pytest.raises(InputError) as caught:
        load_study(folder, IntakeOptions(min_slices=2))
    assert_names_path(caught.value, folder)
    message = caught.value.message
    assert "unevenly spaced" in message
    assert "between z = -99.48 and 103.02 mm" in message
    assert "allow_gaps" in (caught.value.hint or "")


# Path errors.


def test_missing_path_rejected(tmp_path: Path) -> None:
    path = tmp_path / "no-such-study"
    with pytest.raises(InputError) as caught:
        load_study(path)
    assert_names_path(caught.value, path)
    assert "no such file or folder" in caught.value.message


def test_empty_folder_rejected(tmp_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        load_study(tmp_path)
    assert_names_path(caught.value, tmp_path)
    assert "no files" in caught.value.message


def test_folder_without_dicom_rejected(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image\n")
    with pytest.raises(InputError) as caught:
        load_study(tmp_path)
    assert_names_path(caught.value, tmp_path)
    assert "no DICOM files" in caught.value.message


def test_single_dicom_file_rejected(p002_dir: Path) -> None:
    path = p002_dir / "IM0001.dcm"
    with pytest.raises(InputError) as caught:
        load_study(path)
    assert_names_path(caught.value, path)
    assert "single DICOM file" in caught.value.message


def test_unsupported_file_rejected(tmp_path: Path) -> None:
    path = tmp_path / "scan.png"
    path.write_bytes(b"\x89PNG\r\n")
    with pytest.raises(InputError) as caught:
        load_study(path)
    assert_names_path(caught.value, path)
    assert "unsupported file type" in caught.value.message


# Broken copies of P002.


def test_missing_slice_names_gap(p002_copy: Path) -> None:
    files = slice_files_by_position(p002_copy)
    removed = files[len(files) // 2]
    z = float(pydicom.dcmread(removed, stop_before_pixels=True).ImagePositionPatient[2])
    removed.unlink()

    with pytest.raises(InputError) as caught:
        load_study(p002_copy)
    assert_names_path(caught.value, p002_copy)
    expected = (
        f"gap of 4.0 mm between z = {format_mm(z - 2.0)} and "
        f"{format_mm(z + 2.0)} mm, expected 2.0 mm"
    )
    assert expected in caught.value.message


def test_missing_slice_interpolated_when_allowed(
    p002_copy: Path, p002_volume: CTVolume
) -> None:
    files = slice_files_by_position(p002_copy)
    index = len(files) // 2
    files[index].unlink()

    volume = load_study(p002_copy, IntakeOptions(allow_gaps=True))
    assert volume.shape == p002_volume.shape
    assert volume.spacing[2] == pytest.approx(2.0)
    assert volume.origin == pytest.approx(p002_volume.origin)
    assert any("interpolated 1 missing" in w for w in volume.provenance.warnings)
    original = p002_volume.hu.astype(np.float32)
    np.testing.assert_array_equal(volume.hu[index - 1], original[index - 1])
    np.testing.assert_array_equal(volume.hu[index + 1], original[index + 1])
    expected = (original[index - 1] + original[index + 1]) / 2
    np.testing.assert_allclose(volume.hu[index], expected, atol=1e-3)


def test_shuffled_nested_names_same_volume(
    p002_copy: Path, p002_volume: CTVolume
) -> None:
    rng = random.Random(7)
    files = sorted(p002_copy.iterdir())
    rng.shuffle(files)
    for number, path in enumerate(files):
        folder = p002_copy / ["", "a/b", "c"][number % 3]
        folder.mkdir(parents=True, exist_ok=True)
        path.rename(folder / f"{rng.getrandbits(40):x}")

    volume = load_study(p002_copy)
    np.testing.assert_array_equal(volume.hu, p002_volume.hu)
    assert volume.origin == pytest.approx(p002_volume.origin)
    assert volume.spacing == pytest.approx(p002_volume.spacing)


def test_second_series_chosen_by_slice_count(
    p002_dir: Path, normal001_dir: Path, tmp_path: Path, p002_uid: str
) -> None:
    study = tmp_path / "study"
    shutil.copytree(p002_dir, study)
    shutil.copytree(normal001_dir, study / "more" / "normal001")

    volume = load_study(study)
    assert volume.shape[0] == NORMAL001_SLICES
    assert volume.provenance.series_uid != p002_uid
    rejected = volume.provenance.rejected_series
    assert [entry["series_uid"] for entry in rejected] == [p002_uid]
    assert rejected[0]["slice_count"] == P002_SLICES
    assert rejected[0]["modality"] == "CT"
    assert "fewer slices (133)" in rejected[0]["reason"]
    mixed = [w for w in volume.provenance.warnings if "different patients" in w]
    assert mixed, volume.provenance.warnings
    assert "P002" not in mixed[0]  # no patient identifier in the report

    chosen = load_study(study, IntakeOptions(series_uid=p002_uid))
    assert chosen.shape[0] == P002_SLICES
    assert chosen.provenance.series_uid == p002_uid
    assert p002_uid in (chosen.provenance.selection_rule or "")


def test_unknown_series_uid_lists_available(
    p002_dir: Path, p002_uid: str, tmp_path: Path
) -> None:
    study = Path(shutil.copytree(p002_dir, tmp_path / "study"))
    with pytest.raises(InputError) as caught:
        load_study(study, IntakeOptions(series_uid="1.2.3.4"))
    assert_names_path(caught.value, study)
    assert "1.2.3.4" in caught.value.message
    assert f"{p002_uid} (133 slices" in caught.value.message


def test_mr_modality_rejected(p002_copy: Path) -> None:
    for path in p002_copy.iterdir():
        dataset = pydicom.dcmread(path)
        dataset.Modality = "MR"
        dataset.save_as(path)

    with pytest.raises(InputError) as caught:
        load_study(p002_copy)
    assert_names_path(caught.value, p002_copy)
    assert "no CT series" in caught.value.message
    assert "Modality MR" in caught.value.message


def test_stray_files_skipped_and_listed(p002_copy: Path, p002_volume: CTVolume) -> None:
    (p002_copy / "notes.dcm").write_text("exported by the PACS\n")
    localizer = pydicom.dcmread(p002_copy / "IM0001.dcm")
    localizer.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    localizer.ImagePositionPatient = [0.0, 0.0, 500.0]
    localizer.save_as(p002_copy / "scout.dcm")
    report = pydicom.dcmread(p002_copy / "IM0002.dcm")
    report.Modality = "SR"
    report.SeriesInstanceUID = pydicom.uid.generate_uid()
    report.save_as(p002_copy / "dose.dcm")

    volume = load_study(p002_copy)
    np.testing.assert_array_equal(volume.hu, p002_volume.hu)
    skipped = {
        entry["path"]: entry["reason"] for entry in volume.provenance.skipped_files
    }
    assert "not a DICOM file" in skipped["notes.dcm"]
    assert "localizer" in skipped["scout.dcm"]
    rejected = volume.provenance.rejected_series
    assert len(rejected) == 1
    assert rejected[0]["modality"] == "SR"
    assert "not a CT image" in rejected[0]["reason"]


def test_duplicate_position_dropped(p002_copy: Path, p002_volume: CTVolume) -> None:
    shutil.copy(p002_copy / "IM0050.dcm", p002_copy / "ZZ-copy.dcm")

    volume = load_study(p002_copy)
    np.testing.assert_array_equal(volume.hu, p002_volume.hu)
    skipped = volume.provenance.skipped_files
    assert skipped == [
        {
            "path": "ZZ-copy.dcm",
            "reason": "duplicate slice position: identical copy of IM0050.dcm",
        }
    ]
    assert any("same position" in w for w in volume.provenance.warnings)


def test_files_without_preamble_read(p002_copy: Path, p002_volume: CTVolume) -> None:
    converted = sorted(p002_copy.iterdir())[:3]
    for path in converted:
        dataset = pydicom.dcmread(path)
        dataset.decompress()
        dataset.file_meta = pydicom.dataset.FileMetaDataset()
        dataset.preamble = None
        dataset.save_as(
            path, implicit_vr=True, little_endian=True, enforce_file_format=False
        )
        assert path.read_bytes()[128:132] != b"DICM"

    volume = load_study(p002_copy)
    np.testing.assert_array_equal(volume.hu, p002_volume.hu)
    assert any(
        "3 files lack the DICOM file header" in w for w in volume.provenance.warnings
    )


def test_one_undecodable_end_slice_skipped(p002_copy: Path) -> None:
    broken = slice_files_by_position(p002_copy)[0]
    dataset = pydicom.dcmread(broken)
    dataset.PixelData = dataset.PixelData[:64]
    dataset.save_as(broken)

    volume = load_study(p002_copy)
    assert volume.shape[0] == P002_SLICES - 1
    skipped = [entry["path"] for entry in volume.provenance.skipped_files]
    assert skipped == [broken.name]
    assert any("could not be decoded" in w for w in volume.provenance.warnings)


def test_many_undecodable_files_rejected(p002_copy: Path) -> None:
    broken = sorted(p002_copy.iterdir())[:20]
    for path in broken:
        dataset = pydicom.dcmread(path)
        dataset.PixelData = dataset.PixelData[:64]
        dataset.save_as(path)

    with pytest.raises(InputError) as caught:
        load_study(p002_copy)
    assert_names_path(caught.value, p002_copy)
    assert "20 of 133 files" in caught.value.message
    assert any(path.name in caught.value.message for path in broken)


# Zip and image files.


def test_zip_of_p002_loads(
    p002_dir: Path, tmp_path: Path, p002_volume: CTVolume
) -> None:
    archive = tmp_path / "P002.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as output:
        for path in sorted(p002_dir.iterdir()):
            output.write(path, f"P002/{path.name}")
    size = archive.stat().st_size

    volume = load_study(archive)
    assert volume.provenance.kind == "dicom-zip"
    assert volume.provenance.source == str(archive)
    np.testing.assert_array_equal(volume.hu, p002_volume.hu)
    assert archive.stat().st_size == size


def test_nifti_of_p002_same_geometry(tmp_path: Path, p002_volume: CTVolume) -> None:
    path = tmp_path / "p002.nii"
    sitk.WriteImage(p002_volume.to_sitk(), str(path))

    volume = load_study(path)
    assert volume.provenance.kind == "nifti"
    np.testing.assert_array_equal(volume.hu, p002_volume.hu)
    assert volume.spacing == pytest.approx(p002_volume.spacing, abs=1e-5)
    assert volume.origin == pytest.approx(p002_volume.origin, abs=1e-4)
    np.testing.assert_allclose(volume.direction, p002_volume.direction, atol=1e-6)


def test_windowed_nifti_rejected(tmp_path: Path, p002_volume: CTVolume) -> None:
    windowed = np.clip((p002_volume.hu.astype(np.float32) + 1000) / 1400 * 255, 0, 255)
    path = tmp_path / "windowed.nii"
    sitk.WriteImage(p002_volume.to_sitk(windowed.astype(np.uint8)), str(path))

    with pytest.raises(InputError) as caught:
        load_study(path)
    assert_names_path(caught.value, path)
    assert "8-bit" in caught.value.message


def test_stored_values_without_rescale_rejected(
    tmp_path: Path, p002_volume: CTVolume
) -> None:
    stored = (p002_volume.hu.astype(np.int32) + 1024).astype(np.uint16)
    with pytest.raises(InputError) as caught:
        check_hu(stored, tmp_path / "stored.nii")
    assert_names_path(caught.value, tmp_path / "stored.nii")
    assert "RescaleIntercept" in (caught.value.hint or "")


def test_hu_check_accepts_p002(p002_volume: CTVolume) -> None:
    check_hu(p002_volume.hu, "P002")
