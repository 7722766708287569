"""The CNN backend: normalisation, training data, training, bundle and inference."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage as ndi

from covidct.cli.main import main
from covidct.errors import InputError
from covidct.segment.cnn.bundle import DEFAULT_BUNDLE, load_bundle
from covidct.segment.cnn.data import (
    LESION,
    LUNG,
    NOT_LESION,
    read_slice_folder,
    read_volume_folder,
)
from covidct.segment.cnn.evaluate import predict_slice_masks
from covidct.segment.cnn.inference import segment_cnn
from covidct.segment.cnn.normalization import hu_slices_to_inputs
from covidct.segment.cnn.train import TrainingOptions, train_member
from covidct.segment.orientation import Reorientation
from tests.conftest import shared_path

# Two short runs of consecutive ma20-8bit files, from two patients.
MA20_FILES = {"patient01": range(60, 70), "patient02": range(200, 206)}


@pytest.fixture()
def ma20_subset(tmp_path: Path) -> tuple[Path, Path]:
    """A slice folder of 16 real ma20-8bit files and its patient table."""
    source = shared_path("ma20-8bit")
    root = tmp_path / "ma20 subset"
    rows = ["file,patient,split"]
    for folder in ("ct", "lungs", "covid"):
        (root / folder).mkdir(parents=True)
    for patient, numbers in MA20_FILES.items():
        split = "train" if patient == "patient01" else "validation"
        for number in numbers:
            name = f"{number:04d}.png"
            for folder in ("ct", "lungs", "covid"):
                shutil.copy(source / folder / name, root / folder / name)
            rows.append(f"{name},{patient},{split}")
    table = tmp_path / "patients.csv"
    table.write_text("\n".join(rows) + "\n")
    return root, table


def test_padding_value_does_not_change_inputs(p002_volume):
    hu = Reorientation.from_geometry(p002_volume.direction, p002_volume.spacing)
    canonical = hu.to_canonical(p002_volume.hu)[60:62].astype(np.float32)
    padded = canonical.copy()
    yy, xx = np.mgrid[: padded.shape[1], : padded.shape[2]]
    outside = (yy - 255.5) ** 2 + (xx - 255.5) ** 2 > 250**2
    padded[:, outside] = -3024
    clean_inputs, _ = hu_slices_to_inputs(np.where(outside, -1024, canonical))
    padded_inputs, _ = hu_slices_to_inputs(padded)
    assert np.array_equal(clean_inputs, padded_inputs)


def test_rectangular_slices_keep_aspect(p002_volume):
    canonical = p002_volume.hu[:2, :, 40:-40]
    inputs, frame = hu_slices_to_inputs(canonical)
    assert inputs.shape == (2, 256, 256)
    assert frame.side == 512
    assert frame.offset == (0, 40)
    assert frame.crop(np.zeros((512, 512))).shape == (512, 432)


def test_slice_folder_codes(ma20_subset):
    root, table = ma20_subset
    data = read_slice_folder(root, table, normalized=True)
    assert len(data) == 16
    assert set(np.unique(data.targets).tolist()) <= {0, LUNG, LESION}
    assert (data.targets == LESION).any()
    assert data.select("validation").patients == ["patient02"] * 6
    assert any("binarised" in warning for warning in data.warnings)
    # Neighbours stay inside a patient's run.
    assert data.previous[10] == 10
    assert data.following[9] == 9


def test_semiseg_masks_without_lungs():
    data = read_slice_folder(shared_path("covid-semiseg", "train-multiclass"))
    assert len(data) == 50
    assert (data.targets == NOT_LESION).any()
    assert (data.targets == LUNG).sum() == 0
    assert data.lesion_classes is not None
    assert (data.lesion_classes == 2).any()


def test_mask_on_other_grid_rejected(ma20_subset):
    root, table = ma20_subset
    mask = cv2.imread(str(root / "covid" / "0060.png"), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(root / "covid" / "0060.png"), cv2.resize(mask, (200, 256)))
    with pytest.raises(InputError, match="200 x 256 pixels but its image is 256 x 256"):
        read_slice_folder(root, table, normalized=True)


def test_patient_table_rows_checked(ma20_subset):
    root, table = ma20_subset
    lines = table.read_text().splitlines()
    table.write_text("\n".join([*lines, "0060.png,patient01,train"]) + "\n")
    with pytest.raises(InputError, match="0060.png has more than one row"):
        read_slice_folder(root, table, normalized=True)
    lines[1] = lines[1].replace("train", "test")
    table.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="patient patient01 is in two splits"):
        read_slice_folder(root, table, normalized=True)


def test_patient_table_must_cover_files(ma20_subset):
    root, table = ma20_subset
    lines = table.read_text().splitlines()
    table.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(InputError, match="1 images have no row"):
        read_slice_folder(root, table, normalized=True)


def _volume_pair(tmp_path: Path, p002_volume, p002_segmentation) -> Path:
    root = tmp_path / "volumes"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    crop = slice(50, 56)
    image = p002_volume.to_sitk()[:, :, crop]
    labels = p002_volume.to_sitk(p002_segmentation.label_map())[:, :, crop]
    sitk.WriteImage(image, str(root / "images" / "p002.nii.gz"))
    sitk.WriteImage(labels, str(root / "labels" / "p002.nii.gz"))
    return root


def test_volume_pairs_read(tmp_path, p002_volume, p002_segmentation):
    root = _volume_pair(tmp_path, p002_volume, p002_segmentation)
    data = read_volume_folder(root)
    assert len(data) == 6
    assert (data.targets == LUNG).any()
    assert (data.targets == LESION).any()


def test_label_map_on_other_grid_rejected(tmp_path, p002_volume, p002_segmentation):
    root = _volume_pair(tmp_path, p002_volume, p002_segmentation)
    labels = sitk.ReadImage(str(root / "labels" / "p002.nii.gz"))
    labels.SetSpacing([s * 2 for s in labels.GetSpacing()])
    sitk.WriteImage(labels, str(root / "labels" / "p002.nii.gz"))
    with pytest.raises(InputError, match="label map lies on another grid") as error:
        read_volume_folder(root)
    assert "spacing" in str(error.value)


def test_label_map_values_checked(tmp_path, p002_volume, p002_segmentation):
    root = _volume_pair(tmp_path, p002_volume, p002_segmentation)
    path = root / "labels" / "p002.nii.gz"
    labels = sitk.ReadImage(str(path))
    as_float = sitk.Cast(labels, sitk.sitkFloat32) * 0.5
    sitk.WriteImage(as_float, str(path))
    with pytest.raises(InputError, match="non-integer values"):
        read_volume_folder(root)
    sitk.WriteImage(sitk.Cast(labels, sitk.sitkUInt8) * 40, str(path))
    with pytest.raises(InputError, match="outside 0..5"):
        read_volume_folder(root)


def test_single_voxel_label_map_warns(tmp_path, p002_volume, p002_segmentation):
    root = _volume_pair(tmp_path, p002_volume, p002_segmentation)
    path = root / "labels" / "p002.nii.gz"
    labels = sitk.ReadImage(str(path))
    array = np.zeros(sitk.GetArrayFromImage(labels).shape, dtype=np.uint8)
    array[3, 200, 200] = 1
    single = sitk.GetImageFromArray(array)
    single.CopyInformation(labels)
    sitk.WriteImage(single, str(path))
    data = read_volume_folder(root)
    assert any("marks 1 lung voxel" in warning for warning in data.warnings)


def test_one_epoch_trains_and_resumes(ma20_subset, tmp_path):
    root, table = ma20_subset
    data = read_slice_folder(root, table, normalized=True)
    options = TrainingOptions(epochs=1, batch_size=8, context_slices=1, threads=1)
    output = tmp_path / "run"
    summary = train_member(
        data.select("train"), data.select("validation"), output, options, progress=False
    )
    assert summary["best_epoch"] == 1
    assert 0.0 <= summary["best_validation_dice"]["lung"] <= 1.0
    first = torch.load(output / "best.pt")["network"]

    options.epochs = 2
    with pytest.raises(InputError, match="other options .*epochs 1 -> 2"):
        train_member(data.select("train"), data.select("validation"), output, options)
    options.epochs = 1
    swapped = (data.select("validation"), data.select("train"))
    with pytest.raises(InputError, match="other slices or another patient split"):
        train_member(*swapped, output, options)
    again = train_member(
        data.select("train"),
        data.select("validation"),
        tmp_path / "same seed",
        TrainingOptions(epochs=1, batch_size=8, context_slices=1, threads=1),
        progress=False,
    )
    assert again["history"][0]["loss"] == pytest.approx(summary["history"][0]["loss"])
    second = torch.load(tmp_path / "same seed" / "best.pt")["network"]
    for name, tensor in first.items():
        assert torch.equal(tensor, second[name]), name


def test_train_command_writes_bundle(ma20_subset, tmp_path):
    root, table = ma20_subset
    bundle_dir = tmp_path / "bundle"
    args = ["train-segmentation", "--slices", str(root), "--patients", str(table)]
    args += ["--normalized", "-o", str(bundle_dir), "--epochs", "1", "--threads", "1"]
    args += ["--members", "unet2d"]
    assert main(args) == 0
    card = json.loads((bundle_dir / "ensemble.json").read_text())
    assert [m["name"] for m in card["members"]] == ["unet2d"]
    assert "patient02" in (bundle_dir / "MODEL_CARD.md").read_text()
    assert card["data"]["splits"]["validation"] == ["patient02"]
    bundle = load_bundle(bundle_dir)
    assert len(bundle.members) == 1

    report = tmp_path / "figures.json"
    args = ["evaluate-segmentation", str(bundle_dir), str(root), "--patients"]
    args += [str(table), "--normalized", "--split", "validation", "--json", str(report)]
    assert main(args) == 0
    figures = json.loads(report.read_text())
    assert figures["slices"] == 6
    assert set(figures["classes"]) >= {"lung", "lesion"}


def test_damaged_weights_rejected(tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, copy)
    card = json.loads((copy / "ensemble.json").read_text())
    weights = copy / card["members"][0]["file"]
    content = bytearray(weights.read_bytes())
    content[len(content) // 2] ^= 0xFF
    weights.write_bytes(bytes(content))
    with pytest.raises(InputError, match="SHA-256") as error:
        load_bundle(copy)
    assert weights.name in str(error.value)
    weights.unlink()
    with pytest.raises(InputError, match="missing"):
        load_bundle(copy)


def test_bundled_card_lists_checksums():
    card = json.loads((DEFAULT_BUNDLE / "ensemble.json").read_text())
    assert card["members"]
    total = sum((DEFAULT_BUNDLE / m["file"]).stat().st_size for m in card["members"])
    assert total < 30 * 1024 * 1024
    bundle = load_bundle()
    assert len(bundle.members) == len(card["members"])


@pytest.mark.slow
def test_cnn_segments_p002(p002_volume):
    segmentation = segment_cnn(p002_volume)
    voxel_ml = float(np.prod(p002_volume.spacing)) / 1000.0
    right = np.count_nonzero(segmentation.lungs == 1) * voxel_ml
    left = np.count_nonzero(segmentation.lungs == 2) * voxel_ml
    lesion = np.count_nonzero(segmentation.lesions) * voxel_ml
    assert 1000 < right < 4000
    assert 800 < left < 3500
    assert lesion / (right + left) > 0.05
    assert segmentation.heart.any()
    assert segmentation.method.startswith("cnn")
    # The lesions lie inside the lungs on the CT grid.
    assert not (segmentation.lesions.astype(bool) & (segmentation.lungs == 0)).any()


@pytest.mark.slow
def test_cnn_abdomen_marked_unreliable(tmp_path):
    abdomen = shared_path("totalseg-examples", "example_ct.nii.gz")
    out = tmp_path / "out"
    assert main(["analyze", str(abdomen), "-o", str(out), "--no-radiomics", "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["segmentation"]["method"].startswith("cnn")
    assert report["reliability"]["lungs_complete"] is False
    assert report["reliability"]["values_reliable"] is False
    assert any("reach the top (superior) slice" in w for w in report["warnings"])


def test_peripheral_lesions_inside_lung(tmp_path):
    # Expert lesions of a held-out patient (ma20-8bit patient 4, files
    # 430-459), many of them against the pleura: the network's lung mask must
    # contain them, which the threshold rule's lung does only in part.
    source = shared_path("ma20-8bit")
    root = tmp_path / "held out"
    for folder in ("ct", "lungs", "covid"):
        (root / folder).mkdir(parents=True)
        for number in range(430, 460):
            name = f"{number:04d}.png"
            shutil.copy(source / folder / name, root / folder / name)
    data = read_slice_folder(root, normalized=True)
    lungs, _ = predict_slice_masks(data, load_bundle())
    lesion = data.targets == LESION
    lung_reference = np.isin(data.targets, (LUNG, LESION))
    depth = np.stack([ndi.distance_transform_edt(mask) for mask in lung_reference])
    peripheral = lesion & (depth <= 8)
    assert peripheral.sum() > 1000
    assert lungs[lesion].mean() > 0.85
    assert lungs[peripheral].mean() > 0.8


def test_model_with_threshold_method_exits_2(p002_dir, tmp_path, capsys):
    args = ["analyze", str(p002_dir), "-o", str(tmp_path / "out")]
    args += ["--method", "threshold", "--model", str(DEFAULT_BUNDLE)]
    assert main(args) == 2
    assert "--model sets the network ensemble" in capsys.readouterr().err
