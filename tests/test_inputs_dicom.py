"""Broken and unusual DICOM inputs, built by changing copies of real series."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from covidct.errors import InputError
from covidct.intake import CTVolume, IntakeOptions, load_study
from covidct.intake.memory import estimate_bytes

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")

P002_SLICES = 133
P002_PIXEL_SPACING = 0.603515625
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
DOSE_REPORT = "1.2.840.10008.5.1.4.1.1.88.67"


@pytest.fixture(scope="module")
def p002_files(p002_dir: Path) -> list[Path]:
    """P002's files sorted by ImagePositionPatient z, from foot to head."""
    return sorted(
        p002_dir.glob("*.dcm"),
        key=lambda p: float(
            pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]
        ),
    )


@pytest.fixture(scope="module")
def p002_volume(p002_dir: Path) -> CTVolume:
    return load_study(p002_dir)


def copy_files(files: list[Path], folder: Path) -> list[Path]:
    """Copy ``files`` into ``folder``, keeping their order and names."""
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(path, folder / path.name)) for path in files]


def rewrite(files: list[Path], change: Callable[[int, Dataset], None]) -> None:
    """Apply ``change(index, dataset)`` to each file and save it in place."""
    for index, path in enumerate(files):
        dataset = pydicom.dcmread(path)
        change(index, dataset)
        dataset.save_as(path)


def load_error(folder: Path, options: IntakeOptions | None = None) -> InputError:
    with pytest.raises(InputError) as caught:
        load_study(folder, options)
    error = caught.value
    assert error.exit_code == 2
    assert str(folder) in str(error)
    return error


def warnings_with(volume: CTVolume, text: str) -> list[str]:
    return [w for w in volume.provenance.warnings if text in w]


def skipped_reasons(volume: CTVolume) -> dict[str, str]:
    return {e["path"]: e["reason"] for e in volume.provenance.skipped_files}


# 1. Oblique and non-orthonormal ImageOrientationPatient.


def test_oblique_series_resampled_to_axes(
    p002_files: list[Path], tmp_path: Path
) -> None:
    files = copy_files(p002_files[30:90], tmp_path / "oblique")
    angle = math.radians(15.0)
    row = np.array([1.0, 0.0, 0.0])
    column = np.array([0.0, math.cos(angle), math.sin(angle)])
    normal = np.cross(row, column)
    first = np.array([float(v) for v in pydicom.dcmread(files[0]).ImagePositionPatient])

    def tilt(index: int, dataset: Dataset) -> None:
        dataset.ImageOrientationPatient = [*row, *column]
        dataset.ImagePositionPatient = list(first + 2.0 * index * normal)

    rewrite(files, tilt)
    volume = load_study(tmp_path / "oblique")

    assert warnings_with(volume, "the slices are oblique")
    assert "15.0 degrees" in warnings_with(volume, "oblique")[0]
    np.testing.assert_allclose(volume.direction, np.eye(3), atol=1e-9)
    assert volume.spacing == pytest.approx((P002_PIXEL_SPACING,) * 2 + (2.0,))
    # SimpleITK reads the oblique series with its true direction. Resampled
    # onto the loaded grid, it must give the same values.
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "oblique")))
    original = reader.Execute()
    np.testing.assert_allclose(
        np.array(original.GetDirection()).reshape(3, 3)[:, 2], normal, atol=1e-6
    )
    expected = sitk.GetArrayFromImage(
        sitk.Resample(
            sitk.Cast(original, sitk.sitkFloat32),
            volume.to_sitk(),
            sitk.Transform(),
            sitk.sitkLinear,
            -1024.0,
        )
    )
    difference = np.abs(volume.hu - expected)
    assert float(np.percentile(difference, 99)) < 1.0
    assert volume.shape[0] > 60


def test_orientation_rounding_normalised(
    p002_files: list[Path], tmp_path: Path, p002_volume: CTVolume
) -> None:
    files = copy_files(p002_files, tmp_path / "rounded")

    def perturb(index: int, dataset: Dataset) -> None:
        dataset.ImageOrientationPatient = [1.0005, 0.0, 0.0, 0.0, 1.0, 0.0002]

    rewrite(files, perturb)
    volume = load_study(tmp_path / "rounded")

    assert warnings_with(volume, "not exactly perpendicular unit vectors")
    assert "so they were normalised" in warnings_with(volume, "perpendicular")[0]
    np.testing.assert_array_equal(volume.hu, p002_volume.hu)
    assert volume.origin == pytest.approx(p002_volume.origin)


def test_orientation_not_unit_rejected(p002_files: list[Path], tmp_path: Path) -> None:
    files = copy_files(p002_files[:20], tmp_path / "skewed")

    def skew(index: int, dataset: Dataset) -> None:
        dataset.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.98, 0.0]

    rewrite(files, skew)
    error = load_error(tmp_path / "skewed")

    assert "no CT series found" in error.message
    assert "not perpendicular unit vectors (deviation 0.02" in error.message


# 2. Gantry tilt: slice positions sheared along y.


def test_gantry_tilt_slices_shifted(
    p002_files: list[Path], tmp_path: Path, p002_volume: CTVolume
) -> None:
    files = copy_files(p002_files[40:80], tmp_path / "tilted")
    # A tilt whose shear moves each slice by exactly one pixel row, so that
    # the shifted slices can be compared with the original without rounding.
    tan_tilt = P002_PIXEL_SPACING / 2.0
    tilt_degrees = math.degrees(math.atan(tan_tilt))
    first = np.array([float(v) for v in pydicom.dcmread(files[0]).ImagePositionPatient])

    def shear(index: int, dataset: Dataset) -> None:
        z = float(dataset.ImagePositionPatient[2])
        x, y = first[0], first[1] + (z - first[2]) * tan_tilt
        dataset.ImagePositionPatient = [x, y, z]
        dataset.GantryDetectorTilt = round(tilt_degrees, 4)

    rewrite(files, shear)
    volume = load_study(tmp_path / "tilted")

    warning = warnings_with(volume, "gantry tilt")
    assert warning
    assert f"sheared by {tilt_degrees:.1f} degrees" in warning[0]
    assert "shifted within its plane" in warning[0]
    assert volume.shape == (40, 512 + 39, 512)
    assert volume.origin == pytest.approx(tuple(first), abs=1e-4)
    np.testing.assert_allclose(volume.direction, np.eye(3))
    original = p002_volume.hu[40:80].astype(np.float32)
    for k in (0, 1, 20, 39):
        np.testing.assert_allclose(volume.hu[k, k : k + 512], original[k], atol=1e-2)
    assert np.all(volume.hu[39, :39] == -1024.0)


def test_gantry_tilt_above_limit_rejected(
    p002_files: list[Path], tmp_path: Path
) -> None:
    files = copy_files(p002_files[:30], tmp_path / "tilted")
    tan_tilt = math.tan(math.radians(40.0))

    def shear(index: int, dataset: Dataset) -> None:
        position = [float(v) for v in dataset.ImagePositionPatient]
        dataset.ImagePositionPatient = [
            position[0],
            position[1] + index * 2.0 * tan_tilt,
            position[2],
        ]
        dataset.GantryDetectorTilt = 40

    rewrite(files, shear)
    error = load_error(tmp_path / "tilted")

    assert "sheared by 40.0 degrees" in error.message
    assert "GantryDetectorTilt 40" in error.message
    assert "more than the 30 degrees" in error.message


# 3. Duplicate slices and two acquisitions in one series.


def test_copy_with_new_uid_dropped(
    p002_dir: Path, tmp_path: Path, p002_volume: CTVolume
) -> None:
    study = Path(shutil.copytree(p002_dir, tmp_path / "P002"))
    dataset = pydicom.dcmread(study / "IM0050.dcm")
    dataset.SOPInstanceUID = generate_uid()
    dataset.save_as(study / "ZZ-new-uid.dcm")

    volume = load_study(study)

    np.testing.assert_array_equal(volume.hu, p002_volume.hu)
    reason = skipped_reasons(volume)["ZZ-new-uid.dcm"]
    assert "not an identical copy" in reason
    assert "IM0050.dcm" in reason
    warning = warnings_with(volume, "same position as another slice")
    assert warning
    assert "ZZ-new-uid.dcm (IM0050.dcm)" in warning[0]


def test_exact_copies_in_subfolder_dropped(
    p002_dir: Path, tmp_path: Path, p002_volume: CTVolume
) -> None:
    study = Path(shutil.copytree(p002_dir, tmp_path / "P002"))
    shutil.copytree(p002_dir, study / "again")

    volume = load_study(study)

    np.testing.assert_array_equal(volume.hu, p002_volume.hu)
    reasons = skipped_reasons(volume)
    assert len(reasons) == P002_SLICES
    assert all("identical copy of" in r for r in reasons.values())
    assert warnings_with(volume, f"dropped {P002_SLICES} slices at the same position")


def test_two_acquisitions_larger_one_used(
    p002_dir: Path, p002_files: list[Path], tmp_path: Path, p002_volume: CTVolume
) -> None:
    study = Path(shutil.copytree(p002_dir, tmp_path / "P002"))
    rewrite(
        sorted(study.glob("*.dcm")), lambda i, d: setattr(d, "AcquisitionNumber", 1)
    )
    second = [study / f"second-{path.name}" for path in p002_files[10:]]
    for source, target in zip(p002_files[10:], second, strict=True):
        shutil.copy(source, target)

    def second_acquisition(index: int, dataset: Dataset) -> None:
        dataset.AcquisitionNumber = 2
        dataset.SOPInstanceUID = generate_uid()

    rewrite(second, second_acquisition)
    volume = load_study(study)

    np.testing.assert_array_equal(volume.hu, p002_volume.hu)
    warning = warnings_with(volume, "acquisitions at overlapping positions")
    assert warning
    assert "AcquisitionNumber 1: 133 slices, 2: 123 slices" in warning[0]
    assert "Acquisition 1 was used" in warning[0]
    assert volume.provenance.details["acquisition_number"] == 1
    reasons = skipped_reasons(volume)
    assert len(reasons) == 123
    assert "AcquisitionNumber 2" in reasons[second[0].name]


def test_overlapping_slices_without_acquisition_rejected(
    p002_dir: Path, p002_files: list[Path], tmp_path: Path
) -> None:
    study = Path(shutil.copytree(p002_dir, tmp_path / "P002"))
    second = copy_files(p002_files[:40], study / "second")
    rewrite(second, lambda i, d: setattr(d, "SOPInstanceUID", generate_uid()))

    error = load_error(study)

    assert "40 of the 133 slice positions contain a second slice" in error.message
    assert "two acquisitions" in error.message
    assert "Export each acquisition as its own series" in (error.hint or "")


# 4. Several series in one folder.


def test_several_series_rule_and_rejections(
    p002_dir: Path, p002_files: list[Path], tmp_path: Path, p002_volume: CTVolume
) -> None:
    study = Path(shutil.copytree(p002_dir, tmp_path / "study"))

    def new_series(files: list[Path], change: Callable[[Dataset], None]) -> str:
        uid = generate_uid()

        def apply(index: int, dataset: Dataset) -> None:
            dataset.SeriesInstanceUID = uid
            change(dataset)

        rewrite(files, apply)
        return uid

    def scout(dataset: Dataset) -> None:
        dataset.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]

    def sharp_kernel(dataset: Dataset) -> None:
        dataset.ConvolutionKernel = "B70f"

    def dose_report(dataset: Dataset) -> None:
        dataset.Modality = "SR"
        dataset.SOPClassUID = DOSE_REPORT
        del dataset.PixelData

    def secondary_capture(dataset: Dataset) -> None:
        dataset.SOPClassUID = SECONDARY_CAPTURE

    uids = {
        "scout": new_series(copy_files(p002_files[:1], study / "scout"), scout),
        "kernel": new_series(copy_files(p002_files, study / "b70f"), sharp_kernel),
        "dose": new_series(copy_files(p002_files[:1], study / "dose"), dose_report),
        "capture": new_series(
            copy_files(p002_files[:1], study / "capture"), secondary_capture
        ),
    }

    volume = load_study(study)

    # P002's SeriesInstanceUID starts with "0", so it wins the tie with the
    # sharp-kernel copy by the lowest-UID rule.
    np.testing.assert_array_equal(volume.hu, p002_volume.hu)
    assert volume.provenance.series_uid == p002_volume.provenance.series_uid
    assert "lowest SeriesInstanceUID" in (volume.provenance.selection_rule or "")
    reasons = {e["series_uid"]: e["reason"] for e in volume.provenance.rejected_series}
    assert set(reasons) == set(uids.values())
    assert "localizer" in reasons[uids["scout"]]
    assert "a lower UID was chosen" in reasons[uids["kernel"]]
    assert "Modality SR" in reasons[uids["dose"]]
    assert "Secondary Capture Image Storage" in reasons[uids["capture"]]


# 5. Files that are not CT images.


@pytest.mark.parametrize("modality", ["CR", "MR"])
def test_non_ct_modality_named(
    modality: str, p002_files: list[Path], tmp_path: Path
) -> None:
    files = copy_files(p002_files[:12], tmp_path / modality)
    rewrite(files, lambda i, d: setattr(d, "Modality", modality))

    error = load_error(tmp_path / modality)

    assert "no CT series found" in error.message
    assert f"not a CT image (Modality {modality})" in error.message


def test_secondary_capture_rejected(p002_files: list[Path], tmp_path: Path) -> None:
    files = copy_files(p002_files[:12], tmp_path / "capture")
    rewrite(files, lambda i, d: setattr(d, "SOPClassUID", SECONDARY_CAPTURE))

    error = load_error(tmp_path / "capture")

    assert "SOP class Secondary Capture Image Storage" in error.message


def test_pdf_and_text_named_dcm_skipped(
    p002_dir: Path, tmp_path: Path, p002_volume: CTVolume
) -> None:
    study = Path(shutil.copytree(p002_dir, tmp_path / "P002"))
    (study / "report.dcm").write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\n")
    (study / "readme.dcm").write_text("Series exported on request.\n")

    volume = load_study(study)

    np.testing.assert_array_equal(volume.hu, p002_volume.hu)
    reasons = skipped_reasons(volume)
    assert "not a DICOM file" in reasons["report.dcm"]
    assert "not a DICOM file" in reasons["readme.dcm"]
    warning = warnings_with(volume, "not DICOM or could not be read")
    assert warning
    assert "readme.dcm" in warning[0]
    assert "report.dcm" in warning[0]


# 6. Truncated or corrupt pixel data in one slice.


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
def test_truncated_slice_named_as_gap(p002_files: list[Path], tmp_path: Path) -> None:
    files = copy_files(p002_files, tmp_path / "cut")
    broken = files[60]
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])

    error = load_error(tmp_path / "cut")

    assert "unevenly spaced or a slice is missing" in error.message
    assert f"1 slices could not be decoded and leave gaps: {broken.name}" in (
        error.message
    )


def test_truncated_slice_interpolated_when_allowed(
    p002_files: list[Path], tmp_path: Path, p002_volume: CTVolume
) -> None:
    files = copy_files(p002_files, tmp_path / "cut")
    broken = files[60]
    dataset = pydicom.dcmread(broken)
    fragment = next(
        pydicom.encaps.generate_frames(dataset.PixelData, number_of_frames=1)
    )
    # A JPEG stream cut in half still decodes in pylibjpeg, with made-up rows.
    dataset.PixelData = pydicom.encaps.encapsulate([fragment[: len(fragment) // 2]])
    dataset.save_as(broken)

    volume = load_study(tmp_path / "cut", IntakeOptions(allow_gaps=True))

    assert volume.shape == p002_volume.shape
    assert "end marker (FF D9)" in skipped_reasons(volume)[broken.name]
    assert warnings_with(volume, f"could not be decoded: {broken.name}")
    assert warnings_with(volume, "interpolated 1 missing")
    expected = (
        p002_volume.hu[59].astype(np.float32) + p002_volume.hu[61].astype(np.float32)
    ) / 2
    np.testing.assert_allclose(volume.hu[60], expected, atol=1e-3)


# 7. Too few slices or too thin a slab.


@pytest.mark.parametrize(("count", "extent"), [(1, "2.0"), (2, "4.0")])
def test_few_slices_rejected_with_extent(
    count: int, extent: str, p002_files: list[Path], tmp_path: Path
) -> None:
    copy_files(p002_files[60 : 60 + count], tmp_path / "few")

    error = load_error(tmp_path / "few")

    noun = "slice" if count == 1 else "slices"
    assert f"the CT has {count} {noun} covering {extent} mm along z" in error.message


def test_thin_slab_rejected_with_extent(p002_files: list[Path], tmp_path: Path) -> None:
    copy_files(p002_files[50:70], tmp_path / "slab")

    error = load_error(tmp_path / "slab")

    assert "covers 40.0 mm along z (20 slices of 2.0 mm)" in error.message
    assert "less than the 50.0 mm" in error.message


# 8. Very thin and very thick slices.


def test_thick_slices_load_with_warning(
    p002_files: list[Path], tmp_path: Path, p002_volume: CTVolume
) -> None:
    copy_files(p002_files[::4], tmp_path / "thick")

    volume = load_study(tmp_path / "thick")

    assert volume.shape[0] == len(p002_files[::4])
    assert volume.spacing[2] == pytest.approx(8.0)
    np.testing.assert_array_equal(volume.hu, p002_volume.hu[::4])
    warning = warnings_with(volume, "thicker than 5.0 mm")
    assert warning
    assert "volumes and texture features are less reliable" in warning[0]


def test_thin_slices_load(p002_files: list[Path], tmp_path: Path) -> None:
    files = copy_files(p002_files, tmp_path / "thin")
    first_z = float(pydicom.dcmread(files[0]).ImagePositionPatient[2])

    def thin(index: int, dataset: Dataset) -> None:
        x, y, _ = (float(v) for v in dataset.ImagePositionPatient)
        dataset.ImagePositionPatient = [x, y, first_z + 0.5 * index]
        dataset.SliceThickness = 0.5

    rewrite(files, thin)
    volume = load_study(tmp_path / "thin")

    assert volume.shape == (P002_SLICES, 512, 512)
    assert volume.spacing[2] == pytest.approx(0.5)
    assert not warnings_with(volume, "thicker than")


# 9. A series larger than the memory limit.


def test_memory_limit_reads_every_second_slice(
    p002_dir: Path, p002_volume: CTVolume
) -> None:
    kept = len(range(0, P002_SLICES, 2))
    limit_gb = estimate_bytes(kept, 512, 512, 2) / 1e9 * 1.001

    volume = load_study(p002_dir, IntakeOptions(max_memory_gb=limit_gb))

    assert volume.shape[0] == kept
    assert volume.spacing[2] == pytest.approx(4.0)
    np.testing.assert_array_equal(volume.hu, p002_volume.hu[::2])
    warning = warnings_with(volume, "GB of memory")
    assert warning
    assert "only one slice in 2 was read" in warning[0]
    assert volume.provenance.details["memory_slice_step"] == 2


def test_memory_limit_too_small_rejected(p002_dir: Path, tmp_path: Path) -> None:
    study = Path(shutil.copytree(p002_dir, tmp_path / "P002"))
    needed = estimate_bytes(P002_SLICES, 512, 512, 2) / 1e9

    error = load_error(study, IntakeOptions(max_memory_gb=0.25))

    assert f"needs about {needed:.2f} GB of memory" in error.message
    assert "more than the 0.25 GB of IntakeOptions.max_memory_gb" in error.message


# 10. Enhanced (multi-frame) CT.


def build_enhanced_ct(files: list[Path], target: Path) -> None:
    """Write P002's slices as one Enhanced CT file, frames from head to foot."""
    datasets = [pydicom.dcmread(path) for path in reversed(files)]
    first = datasets[0]
    enhanced = Dataset()
    for keyword in (
        "PatientID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "Modality",
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "SamplesPerPixel",
        "PhotometricInterpretation",
    ):
        setattr(enhanced, keyword, getattr(first, keyword))
    enhanced.SOPClassUID = ENHANCED_CT
    enhanced.SOPInstanceUID = generate_uid()
    enhanced.NumberOfFrames = len(datasets)

    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = first.ImageOrientationPatient
    shared.PlaneOrientationSequence = Sequence([orientation])
    measures = Dataset()
    measures.PixelSpacing = first.PixelSpacing
    measures.SliceThickness = first.SliceThickness
    shared.PixelMeasuresSequence = Sequence([measures])
    enhanced.SharedFunctionalGroupsSequence = Sequence([shared])

    frames = []
    for dataset in datasets:
        groups = Dataset()
        position = Dataset()
        position.ImagePositionPatient = dataset.ImagePositionPatient
        groups.PlanePositionSequence = Sequence([position])
        transformation = Dataset()
        transformation.RescaleSlope = dataset.RescaleSlope
        transformation.RescaleIntercept = dataset.RescaleIntercept
        transformation.RescaleType = "HU"
        groups.PixelValueTransformationSequence = Sequence([transformation])
        frames.append(groups)
    enhanced.PerFrameFunctionalGroupsSequence = Sequence(frames)
    pixels = np.stack([d.pixel_array for d in datasets]).astype(np.uint16)
    enhanced.PixelData = pixels.tobytes()

    enhanced.file_meta = pydicom.dataset.FileMetaDataset()
    enhanced.file_meta.MediaStorageSOPClassUID = ENHANCED_CT
    enhanced.file_meta.MediaStorageSOPInstanceUID = enhanced.SOPInstanceUID
    enhanced.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    target.parent.mkdir(parents=True, exist_ok=True)
    enhanced.save_as(target, enforce_file_format=True)


def test_enhanced_ct_same_as_classic(
    p002_files: list[Path], tmp_path: Path, p002_volume: CTVolume
) -> None:
    build_enhanced_ct(p002_files, tmp_path / "enhanced" / "volume.dcm")

    volume = load_study(tmp_path / "enhanced")

    np.testing.assert_array_equal(volume.hu, p002_volume.hu)
    assert volume.spacing == pytest.approx(p002_volume.spacing)
    assert volume.origin == pytest.approx(p002_volume.origin)
    np.testing.assert_allclose(volume.direction, p002_volume.direction)
    assert volume.provenance.details["slice_count"] == P002_SLICES


def test_enhanced_ct_without_position_rejected(
    p002_files: list[Path], tmp_path: Path
) -> None:
    path = tmp_path / "enhanced" / "volume.dcm"
    build_enhanced_ct(p002_files[:20], path)
    dataset = pydicom.dcmread(path)
    for groups in dataset.PerFrameFunctionalGroupsSequence:
        del groups.PlanePositionSequence
    dataset.save_as(path)

    error = load_error(tmp_path / "enhanced")

    assert "Enhanced CT Image Storage file" in error.message
    assert "no PlanePositionSequence" in error.message
    assert "geometry is unknown" in error.message
