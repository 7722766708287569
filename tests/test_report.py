"""Tests of the report files on the real CT P002 with a threshold segmentation."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from matplotlib import image as mpl_image
from scipy import ndimage

from covidct.errors import OutputError
from covidct.intake.volume import CTVolume, Provenance
from covidct.report import OUTPUT_FILES, STAGE_FIELDS, biomarker_row, write_outputs
from covidct.report.page import render_page
from covidct.report.png import encode_png
from covidct.report.serialize import to_jsonable
from covidct.report.table import PROGNOSIS_FIELDS
from covidct.report.views import display_frame, to_display
from covidct.segment.result import LABELS, Segmentation

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _load_p002(folder: Path) -> CTVolume:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    provenance = Provenance(
        source=str(folder),
        kind="dicom",
        series_description="P002 <b>low dose</b>",
        selection_rule="the only series in the folder",
    )
    return CTVolume.from_sitk(image, provenance)


def _fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    return np.stack([ndimage.binary_fill_holes(plane) for plane in mask])


def _threshold_segmentation(volume: CTVolume) -> Segmentation:
    """Crude masks from HU thresholds, only to give the report something to draw."""
    hu = volume.hu
    body = _fill_holes_per_slice(hu > -500)
    lungs_any = body & (hu < -400)
    lungs_any = ndimage.binary_opening(lungs_any, iterations=2)
    lungs_any = _fill_holes_per_slice(lungs_any)
    nz, ny, nx = hu.shape
    lungs = np.zeros(hu.shape, dtype=np.uint8)
    # The direction of P002 is the identity, so x grows towards patient left.
    lungs[:, :, : nx // 2][lungs_any[:, :, : nx // 2]] = 1
    lungs[:, :, nx // 2 :][lungs_any[:, :, nx // 2 :]] = 2
    lesions = np.zeros(hu.shape, dtype=np.uint8)
    lesions[lungs_any & (hu >= -700) & (hu < -300)] = 1
    lesions[lungs_any & (hu >= -300)] = 2
    heart = np.zeros(hu.shape, dtype=bool)
    heart[nz // 4 : nz // 2, ny // 3 : ny // 2, nx // 3 : nx // 2 + nx // 8] = True
    return Segmentation(lungs=lungs, heart=heart, lesions=lesions, method="threshold")


def _report(volume: CTVolume, warnings: list[str]) -> dict:
    provenance = volume.provenance
    lung_ml = float(np.count_nonzero(volume.hu < -400)) * volume.voxel_volume_ml
    return {
        "software": {"name": "covidct", "version": "0.1.0"},
        "input": {
            "source": provenance.source,
            "kind": provenance.kind,
            "series_uid": "1.2.3.4",
            "series_description": provenance.series_description,
            "selection_rule": provenance.selection_rule,
            "rejected_series": [
                {"series_uid": "1.2.3.5", "reason": "localizer, 1 slice"}
            ],
            "skipped_files": [],
            "shape": list(volume.shape),
            "spacing_mm": list(volume.spacing),
            "slice_count": volume.shape[0],
            "origin_mm": list(volume.origin),
            "direction": volume.direction.ravel(),
        },
        "segmentation": {
            "method": "threshold",
            "labels": {str(k): v for k, v in LABELS.items()},
        },
        "biomarkers": {
            "lung_volume_total": {"value": np.float32(lung_ml), "unit": "ml"},
            "lesion_percent_left": {"value": 12.3, "unit": "%"},
            "lesion_percent_right": {"value": float("nan"), "unit": "%"},
            "heart_volume": {"value": None, "unit": "ml"},
        },
        "radiomics": {
            "original_firstorder_Mean_lung_left": np.float64(0.12),
            "original_shape_Sphericity_lung_left": None,
        },
        "stage": {
            "extent_percent": 23.1,
            "category": "10-25 %",
            "category_name": "moderate",
            "ct_grade": np.int64(2),
            "ct_grade_name": "CT-2",
        },
        "prognosis": None,
        "warnings": warnings,
        "timings_s": {"intake": 2.1, "segmentation": 8.0},
    }


@pytest.fixture(scope="module")
def p002_study(p002_dir: Path) -> tuple[CTVolume, Segmentation]:
    volume = _load_p002(p002_dir)
    return volume, _threshold_segmentation(volume)


@pytest.fixture(scope="module")
def written(
    p002_study: tuple[CTVolume, Segmentation], tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Path], dict, float]:
    volume, segmentation = p002_study
    report = _report(volume, ["slice spacing varies: <script>alert(1)</script>"])
    out_dir = tmp_path_factory.mktemp("report") / "nested" / "out"
    start = time.perf_counter()
    paths = write_outputs(out_dir, volume, segmentation, report)
    return paths, report, time.perf_counter() - start


def test_outputs_are_the_five_files(written: tuple) -> None:
    paths, _, _ = written
    assert set(paths) == set(OUTPUT_FILES)
    for key, path in paths.items():
        assert path.name == OUTPUT_FILES[key]
        assert path.is_file(), f"{path} missing"
    # Only the five files: no temporary file is left behind.
    assert sorted(p.name for p in paths["report_json"].parent.iterdir()) == sorted(
        OUTPUT_FILES.values()
    )


def test_outputs_are_written_fast(written: tuple) -> None:
    _, _, seconds = written
    # A loose bound, so that slow CI machines pass.
    assert seconds < 10.0


def test_report_json_round_trips(written: tuple) -> None:
    paths, report, _ = written
    data = json.loads(paths["report_json"].read_text(encoding="utf-8"))
    assert data["stage"]["ct_grade"] == 2
    assert data["stage"]["category_name"] == "moderate"
    assert data["biomarkers"]["lesion_percent_right"]["value"] is None
    assert data["biomarkers"]["heart_volume"]["value"] is None
    assert math.isclose(
        data["biomarkers"]["lung_volume_total"]["value"],
        float(report["biomarkers"]["lung_volume_total"]["value"]),
    )
    assert data["input"]["direction"] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert data["radiomics"]["original_firstorder_Mean_lung_left"] == 0.12
    assert data["warnings"] == report["warnings"]


def test_csv_row_matches_biomarker_row(written: tuple) -> None:
    paths, report, _ = written
    rows = list(csv.reader(io.StringIO(paths["biomarkers_csv"].read_text())))
    assert len(rows) == 2
    header, values = rows
    row = biomarker_row(report)
    assert header == list(row)
    assert len(values) == len(header)
    assert header[:4] == list(report["biomarkers"])
    assert header[4 : 4 + len(STAGE_FIELDS)] == [f"stage_{k}" for k in STAGE_FIELDS]
    after_stage = header[4 + len(STAGE_FIELDS) : 4 + len(STAGE_FIELDS) + 4]
    assert after_stage == [f"prognosis_{k}" for k in PROGNOSIS_FIELDS]
    assert header[-2:] == list(report["radiomics"])
    cells = dict(zip(header, values, strict=True))
    assert cells["lesion_percent_right"] == ""
    assert cells["stage_category"] == "10-25 %"
    assert float(cells["lesion_percent_left"]) == 12.3


def test_biomarker_row_rejects_bare_values() -> None:
    with pytest.raises(ValueError, match="lung_volume_total"):
        biomarker_row({"biomarkers": {"lung_volume_total": 4123.4}})


def test_label_map_has_ct_geometry(
    written: tuple, p002_study: tuple[CTVolume, Segmentation]
) -> None:
    paths, _, _ = written
    volume, segmentation = p002_study
    image = sitk.ReadImage(str(paths["segmentation"]))
    ct = volume.to_sitk()
    assert image.GetSize() == ct.GetSize()
    # NIfTI-1 stores spacing and origin as float32: the z origin of P002,
    # -437.7 mm, reads back 1.2e-5 mm off, within the relative tolerance.
    for read, expected in (
        (image.GetSpacing(), ct.GetSpacing()),
        (image.GetOrigin(), ct.GetOrigin()),
        (image.GetDirection(), ct.GetDirection()),
    ):
        np.testing.assert_allclose(read, expected, rtol=1e-7, atol=1e-6)
    assert image.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(image), segmentation.label_map()
    )


def test_sidecar_names_labels(written: tuple) -> None:
    paths, _, _ = written
    sidecar = json.loads(paths["segmentation_sidecar"].read_text())
    assert sidecar["method"] == "threshold"
    assert sidecar["image"] == "segmentation.nii.gz"
    assert set(sidecar["labels"]) == {"1", "2", "3", "4", "5"}
    for value, name in LABELS.items():
        entry = sidecar["labels"][str(value)]
        assert entry["name"] == name
        assert len(entry["rgb"]) == 3
        assert entry["color"].startswith("#")


def test_html_is_self_contained(written: tuple) -> None:
    paths, _, _ = written
    page = paths["report_html"].read_text(encoding="utf-8")
    assert "http://" not in page
    assert "https://" not in page
    assert "<script" not in page
    assert page.count("data:image/png;base64,") == 12


def test_html_escapes_user_text(written: tuple) -> None:
    paths, _, _ = written
    page = paths["report_html"].read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "P002 &lt;b&gt;low dose&lt;/b&gt;" in page


def test_html_without_warnings_says_none(
    p002_study: tuple[CTVolume, Segmentation], tmp_path: Path
) -> None:
    volume, segmentation = p002_study
    paths = write_outputs(tmp_path, volume, segmentation, _report(volume, []))
    page = paths["report_html"].read_text(encoding="utf-8")
    assert "Warnings: none" in page


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} not found: install Debian's chromium "
            "(apt-get install chromium) to run the HTML rendering test"
        )
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


def test_html_renders_in_chromium(written: tuple, browser, tmp_path: Path) -> None:
    paths, _, _ = written
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(paths["report_html"].resolve().as_uri())
    page.wait_for_load_state("load")

    images = page.locator("img")
    assert images.count() >= 6
    states = page.eval_on_selector_all(
        "img", "imgs => imgs.map(i => [i.complete, i.naturalWidth])"
    )
    for complete, natural_width in states:
        assert complete
        assert natural_width > 0

    stage = page.locator("#stage")
    assert stage.is_visible()
    stage_text = stage.inner_text()
    assert "moderate" in stage_text.lower()
    assert "CT-2" in stage_text
    assert "23.1 %" in stage_text

    warning = page.locator("#warnings li").first
    assert warning.inner_text() == "slice spacing varies: <script>alert(1)</script>"

    external = [url for url in requests if not url.startswith(("data:", "file:"))]
    assert external == []

    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    page.close()


def test_path_under_file_raises_output_error(
    p002_study: tuple[CTVolume, Segmentation], tmp_path: Path
) -> None:
    volume, segmentation = p002_study
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out_dir = blocker / "out"
    with pytest.raises(OutputError) as caught:
        write_outputs(out_dir, volume, segmentation, _report(volume, []))
    assert caught.value.path == str(out_dir)
    assert caught.value.hint


def test_output_folder_that_is_a_file_raises(
    p002_study: tuple[CTVolume, Segmentation], tmp_path: Path
) -> None:
    volume, segmentation = p002_study
    blocker = tmp_path / "out"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        write_outputs(blocker, volume, segmentation, _report(volume, []))


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="root can write into read-only folders",
)
def test_read_only_folder_raises_output_error(
    p002_study: tuple[CTVolume, Segmentation], tmp_path: Path
) -> None:
    volume, segmentation = p002_study
    out_dir = tmp_path / "read-only"
    out_dir.mkdir()
    out_dir.chmod(0o555)
    try:
        with pytest.raises(OutputError) as caught:
            write_outputs(out_dir, volume, segmentation, _report(volume, []))
    finally:
        out_dir.chmod(0o755)
    assert caught.value.path == str(out_dir)
    assert list(out_dir.iterdir()) == []


def test_masks_off_grid_raise(
    p002_study: tuple[CTVolume, Segmentation], tmp_path: Path
) -> None:
    volume, segmentation = p002_study
    cropped = Segmentation(
        lungs=segmentation.lungs[1:],
        heart=segmentation.heart[1:],
        lesions=segmentation.lesions[1:],
        method="threshold",
    )
    with pytest.raises(ValueError, match="CT grid"):
        write_outputs(tmp_path, volume, cropped, _report(volume, []))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "pixels",
    [
        np.arange(12 * 7, dtype=np.uint8).reshape(12, 7),
        np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3) * 4,
        np.arange(3 * 6 * 4, dtype=np.uint8).reshape(3, 6, 4) * 3,
    ],
)
def test_png_decodes_to_same_pixels(pixels: np.ndarray) -> None:
    decoded = mpl_image.imread(io.BytesIO(encode_png(pixels)), format="png")
    # matplotlib returns floats in 0..1 for 8-bit PNG files.
    np.testing.assert_array_equal(np.rint(decoded * 255).astype(np.uint8), pixels)


def test_display_frame_identity_keeps_axes() -> None:
    frame = display_frame(np.eye(3), (0.7, 0.8, 2.0))
    assert frame.source_axes == (0, 1, 2)
    assert frame.flipped == (False, False, False)
    assert frame.spacing == (2.0, 0.8, 0.7)
    assert frame.obliquity_deg == 0.0


def test_display_frame_undoes_flips_and_swaps(
    p002_study: tuple[CTVolume, Segmentation],
) -> None:
    volume, _ = p002_study
    image = volume.to_sitk()
    # Reorient P002 so that its array runs right-anterior-inferior, with the
    # array's x and y axes swapped; the displayed pixels must not change.
    reoriented = sitk.DICOMOrient(image, "AIR")
    other = CTVolume.from_sitk(reoriented, volume.provenance)
    assert not np.allclose(other.direction, np.eye(3))
    frame = display_frame(other.direction, other.spacing)
    expected = to_display(volume.hu, display_frame(volume.direction, volume.spacing))
    np.testing.assert_array_equal(to_display(other.hu, frame), expected)
    assert frame.spacing == (2.0, volume.spacing[1], volume.spacing[0])


def test_html_shows_prognosis_and_zones(
    p002_study: tuple[CTVolume, Segmentation],
) -> None:
    volume, _ = p002_study
    report = to_jsonable(_report(volume, []))
    report["zones"] = {"lesion_percent_upper_left": {"value": 4.5, "unit": "%"}}
    report["prognosis"] = {
        "severe_probability": {"value": 0.31, "unit": "probability"},
        "model": "consensus <v1>",
    }
    page = render_page(report, [])
    assert 'id="prognosis"' in page
    assert "consensus &lt;v1&gt;" in page
    assert "0.31" in page
    assert "lesion_percent_upper_left" in page
