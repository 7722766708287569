"""Inputs whose anatomy disagrees with the pipeline, and awkward paths and outputs.

Each case mutates a real series at test time: P002 cropped, flipped or with
its axes swapped while the header stays unchanged, the TotalSegmentator
abdomen CT, and P002 copied under a path with spaces and accents.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared_path

from covidct.cli.main import main
from covidct.errors import InputError
from covidct.intake import load_study
from covidct.intake.volume import CTVolume
from covidct.segment.anatomy import AnatomyCheck, check_anatomy
from covidct.segment.threshold import segment_threshold

# The rule-based backend: its behaviour on these inputs is known and fast.
THRESHOLD = ("--method", "threshold")


def write_nifti(volume: CTVolume, hu: np.ndarray, path: Path) -> Path:
    """Write ``hu`` with the geometry of ``volume``, whatever the array shape."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mutated = dataclasses.replace(volume, hu=np.ascontiguousarray(hu))
    sitk.WriteImage(mutated.to_sitk(), str(path))
    return path


def analyze_anatomy(path: Path) -> tuple[CTVolume, AnatomyCheck]:
    volume = load_study(path)
    return volume, check_anatomy(volume, segment_threshold(volume))


# Lungs absent or outside the field of view.


def test_abdomen_ct_is_rejected(tmp_path: Path, capsys) -> None:
    abdomen = shared_path("totalseg-examples", "example_ct.nii.gz")
    out = tmp_path / "out"
    code = main(
        ["analyze", str(abdomen), "-o", str(out), "--no-radiomics", "-q", *THRESHOLD]
    )
    stderr = capsys.readouterr().err
    assert code == 2
    assert "ml of lung was found" in stderr
    assert str(abdomen) in stderr
    assert "What to do" in stderr
    assert "Traceback" not in stderr
    assert not out.exists()


def test_clean_p002_passes_every_check(p002_volume, p002_segmentation) -> None:
    check = check_anatomy(p002_volume, p002_segmentation)
    assert check.reasons == []
    assert check.lungs_complete
    assert check.orientation_consistent
    assert check.measurements["spine_posterior_offset_mm"] > 30


@pytest.fixture(scope="module")
def lower_half_run(p002_volume, tmp_path_factory) -> tuple[int, Path]:
    """Analyse P002 cut to its inferior half (array index 0 is inferior)."""
    folder = tmp_path_factory.mktemp("lower")
    half = p002_volume.shape[0] // 2
    study = write_nifti(p002_volume, p002_volume.hu[:half], folder / "P002 lower.nii")
    out = folder / "out"
    code = main(
        ["analyze", str(study), "-o", str(out), "--no-radiomics", "-q", *THRESHOLD]
    )
    return code, out


def test_lower_half_marks_lungs_incomplete(lower_half_run) -> None:
    code, out = lower_half_run
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    reliability = report["reliability"]
    assert reliability["lungs_complete"] is False
    assert reliability["values_reliable"] is False
    assert reliability["orientation_consistent"] is True
    assert any("top (superior) slice" in r for r in reliability["reasons"])
    assert set(reliability["reasons"]) <= set(report["warnings"])


def test_lower_half_is_flagged_in_html_and_csv(lower_half_run) -> None:
    _, out = lower_half_run
    page = (out / "report.html").read_text()
    assert "Values unreliable" in page
    assert "top (superior) slice" in page
    with (out / "biomarkers.csv").open(newline="") as file:
        row = next(csv.DictReader(file))
    assert row["reliability_values_reliable"] == "False"
    assert row["reliability_lungs_complete"] == "False"


def test_lateral_crop_marks_lungs_incomplete(p002_volume, p002_segmentation) -> None:
    # Column 330 of 512 runs through the left lung (x grows toward the left).
    # The masks are cut the same way, as a backend that segments the visible
    # lung would return them.
    columns = slice(0, 330)
    volume = dataclasses.replace(
        p002_volume,
        hu=p002_volume.hu[:, :, columns],
        provenance=dataclasses.replace(p002_volume.provenance, warnings=[]),
    )
    segmentation = dataclasses.replace(
        p002_segmentation,
        lungs=p002_segmentation.lungs[:, :, columns],
        heart=p002_segmentation.heart[:, :, columns],
        lesions=p002_segmentation.lesions[:, :, columns],
    )
    check = check_anatomy(volume, segmentation)
    assert check.lungs_complete is False
    assert check.measurements["lung_on_left_border_mm2"] > 1000
    assert any("patient's left border" in r for r in check.reasons)
    assert volume.provenance.warnings == check.reasons


def test_lateral_crop_threshold_backend(p002_volume, tmp_path: Path) -> None:
    # The cut opens the left lung to the border, and the threshold backend then
    # drops the whole airway tree as air outside the body.
    study = write_nifti(p002_volume, p002_volume.hu[:, :, :330], tmp_path / "n.nii")
    with pytest.raises(InputError, match="ml of lung was found"):
        analyze_anatomy(study)


# Array axes flipped or swapped while the header is unchanged.

FLIPS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], str]] = {
    "left-right": (lambda a: a[:, :, ::-1], "the image's x axis appears reversed"),
    "anterior-posterior": (
        lambda a: a[:, ::-1, :],
        "the image's y axis appears reversed",
    ),
    "superior-inferior": (lambda a: a[::-1], "the image's z axis appears reversed"),
    "x-y swapped": (
        lambda a: np.swapaxes(a, 1, 2),
        "the image's x and y axes appear swapped",
    ),
}


@pytest.mark.parametrize("name", list(FLIPS))
def test_flipped_axis_is_reported(p002_volume, tmp_path: Path, name: str) -> None:
    mutate, expected = FLIPS[name]
    study = write_nifti(p002_volume, mutate(p002_volume.hu), tmp_path / "flip.nii")
    volume, check = analyze_anatomy(study)
    assert check.orientation_consistent is False
    assert check.values_reliable is False
    assert any(expected in reason for reason in check.reasons), check.reasons
    assert any(expected in warning for warning in volume.provenance.warnings)


def test_flipped_axis_names_only_that_axis(p002_volume, tmp_path: Path) -> None:
    mutate, _ = FLIPS["anterior-posterior"]
    study = write_nifti(p002_volume, mutate(p002_volume.hu), tmp_path / "ap.nii")
    _, check = analyze_anatomy(study)
    orientation = [r for r in check.reasons if "appears" in r]
    assert len(orientation) == 1
    assert "y axis" in orientation[0]


# Paths with spaces and accents, read-only input, unwritable output.


def _set_read_only(folder: Path, read_only: bool) -> None:
    file_mode = 0o444 if read_only else 0o644
    folder_mode = 0o555 if read_only else 0o755
    for path in folder.rglob("*"):
        path.chmod(folder_mode if path.is_dir() else file_mode)
    folder.chmod(folder_mode)


@pytest.fixture(scope="module")
def accented_run(p002_dir, tmp_path_factory) -> Iterator[tuple[int, Path, Path, dict]]:
    """Analyse a read-only copy of P002 under ``études CT/P 002``."""
    root = tmp_path_factory.mktemp("paths")
    study = root / "études CT" / "P 002"
    shutil.copytree(p002_dir, study)
    _set_read_only(study, True)
    before = {p.name: (p.stat().st_mtime_ns, p.stat().st_mode) for p in study.iterdir()}
    out = root / "résultats ü" / "sortie 1"
    code = main(
        ["analyze", str(study), "-o", str(out), "--no-radiomics", "-q", *THRESHOLD]
    )
    yield code, study, out, before
    _set_read_only(study, False)


def test_accented_read_only_input_is_analysed(accented_run) -> None:
    code, study, out, _ = accented_run
    assert code == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["input"]["source"] == str(study)
    assert report["input"]["slice_count"] == 133
    assert report["reliability"]["values_reliable"] is True
    for name in ("biomarkers.csv", "segmentation.nii.gz", "report.html"):
        assert (out / name).is_file(), name


def test_accented_read_only_input_is_unchanged(accented_run) -> None:
    _, study, _, before = accented_run
    after = {p.name: (p.stat().st_mtime_ns, p.stat().st_mode) for p in study.iterdir()}
    assert after == before
    assert not stat.S_IMODE(study.stat().st_mode) & 0o222


def test_output_path_that_is_a_file_exits_2(p002_dir, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "rapport é.txt"
    blocker.write_text("not a folder")
    code = main(["analyze", str(p002_dir), "-o", str(blocker), "-q"])
    stderr = capsys.readouterr().err
    assert code == 2
    assert str(blocker) in stderr
    assert "is a file" in stderr
    assert blocker.read_text() == "not a folder"


def test_output_under_a_file_exits_2(p002_dir, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "fichier ü"
    blocker.write_text("not a folder")
    out = blocker / "sortie"
    code = main(["analyze", str(p002_dir), "-o", str(out), "-q"])
    stderr = capsys.readouterr().err
    assert code == 2
    assert f"{blocker} is a file" in stderr
    assert "Traceback" not in stderr


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="root writes into read-only folders, so this case needs another user",
)
def test_read_only_output_folder_exits_2(p002_dir, tmp_path: Path, capsys) -> None:
    parent = tmp_path / "lecture seule"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        code = main(["analyze", str(p002_dir), "-o", str(parent / "out"), "-q"])
    finally:
        parent.chmod(0o755)
    stderr = capsys.readouterr().err
    assert code == 2
    assert "is not writable" in stderr
