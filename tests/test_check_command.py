"""The ``covidct check`` command on real studies and broken copies of them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared_path

from covidct.cli.main import main
from covidct.intake import CTVolume

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")


@pytest.fixture()
def four_d_path(tmp_path: Path, p002_volume: CTVolume) -> Path:
    """Two frames of P002 at 1/4 in-plane resolution, the second 10 HU higher."""
    small = p002_volume.hu[:, ::4, ::4]
    frames = []
    for offset in (0, 10):
        image = sitk.GetImageFromArray((small + offset).astype(np.int16))
        image.SetSpacing((p002_volume.spacing[0] * 4, p002_volume.spacing[1] * 4, 2.0))
        frames.append(image)
    path = tmp_path / "frames.nii.gz"
    sitk.WriteImage(sitk.JoinSeries(frames), str(path))
    return path


def test_check_p002_usable(p002_dir: Path, capsys: pytest.CaptureFixture) -> None:
    intake_level = logging.getLogger("covidct.intake").level
    assert main(["check", str(p002_dir)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].startswith(f"{p002_dir}: usable: 512 x 512 x 133 voxels")
    assert "0.604 x 0.604 x 2 mm" in lines[0]
    assert "orientation LPS" in lines[0]
    assert "1 warning" in lines[0]
    assert any(line.startswith("  chosen by: ") for line in lines)
    assert any("not a valid DICOM UID" in line for line in lines)
    # The warning is printed once, in the details, not also as a log line.
    assert "not a valid DICOM UID" not in captured.err
    assert logging.getLogger("covidct.intake").level == intake_level


def test_check_rejected_study(capsys: pytest.CaptureFixture) -> None:
    folder = shared_path("lidc-slices")
    assert main(["check", str(folder)]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{folder}: rejected: the CT has 2 slices")
    assert lines[1].startswith("  What to do: ")


def test_check_several_studies(
    p002_dir: Path, four_d_path: Path, capsys: pytest.CaptureFixture
) -> None:
    status = main(["check", str(p002_dir), str(four_d_path)])
    output = capsys.readouterr().out
    assert status == 2
    summaries = [line for line in output.splitlines() if not line.startswith(" ")]
    assert len(summaries) == 2
    assert summaries[0].startswith(f"{p002_dir}: usable")
    assert summaries[1].startswith(f"{four_d_path}: rejected: the image is 4D")
    assert "--frame N (0 to 1" in output


def test_check_frame_option(four_d_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["check", "--frame", "1", str(four_d_path)]) == 0
    output = capsys.readouterr().out
    assert "usable: 128 x 128 x 133 voxels" in output
    assert "warning: the image is 4D with 2 frames; frame 1 was used" in output


def test_check_negative_frame_is_usage_error(
    four_d_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["check", "--frame", "-1", str(four_d_path)])
    assert caught.value.code == 2
    assert "must be 0 or more, got -1" in capsys.readouterr().err


def test_check_json(
    p002_dir: Path, four_d_path: Path, capsys: pytest.CaptureFixture
) -> None:
    status = main(["check", "--json", str(p002_dir), str(four_d_path)])
    results = json.loads(capsys.readouterr().out)
    assert status == 2
    assert [result["status"] for result in results] == ["usable", "rejected"]
    usable, rejected = results
    assert usable["study"] == str(p002_dir)
    assert usable["size"] == [512, 512, 133]
    assert usable["spacing_mm"] == pytest.approx([0.6035, 0.6035, 2.0], abs=1e-4)
    assert usable["orientation"] == "LPS"
    assert usable["kind"] == "dicom"
    assert usable["series_uid"]
    assert "most slices" in usable["selection_rule"]
    assert usable["rejected_series"] == []
    assert usable["skipped_files"] == []
    assert len(usable["warnings"]) == 1
    assert usable["hu_range"][0] == -1024
    assert "2 volumes (frames)" in rejected["error"]
    assert "--frame" in rejected["hint"]


def test_check_names_unreadable_file(tmp_path, capsys):
    folder = tmp_path / "not dicom"
    folder.mkdir()
    (folder / "x.dcm").write_text("a text file named like DICOM\n")
    assert main(["check", str(folder)]) == 2
    assert "x.dcm could not be read as DICOM" in capsys.readouterr().out
