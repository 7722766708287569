"""Batch analysis of cohorts on copies of real studies.

Each analysis of P002 without radiomics takes 10 to 25 s on 2 cores, so the
runs below share their outputs where they can. They are one full run, a
rerun of it, a partial study redone, a run killed with SIGKILL and resumed,
and a manifest run on a Dask LocalCluster bound to 127.0.0.1.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from covidct.cohort.memory import MemoryPlan, estimate_study_bytes
from covidct.cohort.store import STATUS_FILE
from covidct.cohort.studies import discover_studies, read_manifest
from covidct.errors import InputError

pytestmark = pytest.mark.slow

STUDY_FILES = (
    "report.json",
    "biomarkers.csv",
    "segmentation.nii.gz",
    "segmentation.json",
    "report.html",
    STATUS_FILE,
)


def run_batch_command(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "covidct", "batch", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        return list(reader.fieldnames or []), list(reader)


def copy_corrupted(source: Path, target: Path) -> Path:
    """Copy a series and cut every file in half, so no slice decodes."""
    shutil.copytree(source, target)
    for path in target.iterdir():
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return target


@pytest.fixture(scope="module")
def cohort_input(p002_dir, tmp_path_factory) -> Path:
    """Two copies of P002 under different ids, and a corrupted copy."""
    folder = tmp_path_factory.mktemp("cohort-input")
    shutil.copytree(p002_dir, folder / "p1")
    shutil.copytree(p002_dir, folder / "p2")
    copy_corrupted(p002_dir, folder / "broken")
    return folder


@pytest.fixture(scope="module")
def full_run(cohort_input, tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort-out")
    result = run_batch_command(
        cohort_input, "-o", out, "--workers", "2", "--no-radiomics"
    )
    return result, out


# Finding studies


def test_subfolders_become_studies(cohort_input):
    tasks = discover_studies(cohort_input)
    assert [t.study_id for t in tasks] == ["broken", "p1", "p2"]
    assert tasks[1].path == cohort_input / "p1"
    assert tasks[1].files == ()
    assert tasks[1].voxels == 133 * 512 * 512


def test_dicom_tree_is_grouped_by_study_uid(p002_dir, normal001_dir, tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    for index, path in enumerate(sorted(p002_dir.iterdir())):
        shutil.copy(path, tree / f"a{index:04d}.dcm")
    for index, path in enumerate(sorted(normal001_dir.iterdir())):
        shutil.copy(path, tree / f"b{index:04d}.dcm")

    tasks = discover_studies(tree)

    assert len(tasks) == 2
    assert sorted(len(t.files) for t in tasks) == [133, 154]
    assert sorted(t.voxels for t in tasks) == [133 * 512 * 512, 154 * 512 * 512]
    assert all(t.path == tree for t in tasks)


def test_subfolder_with_two_studies_is_split(p002_dir, normal001_dir, tmp_path):
    mixed = tmp_path / "in" / "ward"
    shutil.copytree(p002_dir, mixed / "s1")
    shutil.copytree(normal001_dir, mixed / "s2")

    tasks = discover_studies(tmp_path / "in")

    assert len(tasks) == 2
    assert all(t.study_id.startswith("ward-") for t in tasks)
    assert sorted(len(t.files) for t in tasks) == [133, 154]


def test_manifest_keeps_clinical_columns(tmp_path):
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("study_id,path,age,sex,CRP\nA1,studies/a,48,F,12.5\n")

    tasks, columns = read_manifest(manifest)

    assert columns == ["age", "sex", "CRP"]
    assert tasks[0].path == tmp_path / "studies" / "a"
    assert tasks[0].clinical == {"age": "48", "sex": "F", "CRP": "12.5"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("id,path\nA,a\n", "no column study_id"),
        ("study_id,path\nA,a\nA,b\n", "appears more than once"),
        ("study_id,path\n../x,a\n", "invalid study id"),
        ("study_id,path,status\nA,a,x\n", "column 'status'"),
        ("study_id,path\n", "lists no study"),
    ],
)
def test_invalid_manifest_is_rejected(tmp_path, text, expected):
    manifest = tmp_path / "m.csv"
    manifest.write_text(text)
    with pytest.raises(InputError, match=expected):
        read_manifest(manifest)


# Memory


def test_memory_plan_bounds_concurrency():
    estimate = estimate_study_bytes(133 * 512 * 512, radiomics=False)
    plan = MemoryPlan(budget_bytes=int(estimate * 1.5))
    assert plan.concurrency(estimate) == 1
    assert plan.fits(estimate, running=0)
    plan.in_use_bytes = estimate
    assert not plan.fits(estimate, running=1)


def test_oversized_study_still_runs_alone():
    plan = MemoryPlan(budget_bytes=1)
    assert plan.fits(10**12, running=0)
    assert plan.concurrency(10**12) == 1


# A full run


def test_batch_exit_status_reports_failure(full_run):
    result, _ = full_run
    assert result.returncode == 3, result.stderr
    assert "3 studies, 2 done (0 from an earlier run), 1 failed" in result.stdout


def test_batch_writes_each_study_outputs(full_run):
    _, out = full_run
    for study in ("p1", "p2"):
        for name in STUDY_FILES:
            assert (out / study / name).is_file(), f"{study}/{name}"
    status = json.loads((out / "p1" / STATUS_FILE).read_text())
    assert status["status"] == "done"
    assert status["settings"] == {
        "radiomics": False,
        "allow_gaps": False,
        "method": "cnn",
        "model": None,
    }


def test_cohort_csv_columns_are_biomarker_row(full_run):
    _, out = full_run
    columns, rows = read_csv(out / "cohort.csv")
    study_columns, _ = read_csv(out / "p1" / "biomarkers.csv")
    assert columns == ["study_id", "status", *study_columns]
    assert [r["study_id"] for r in rows] == ["broken", "p1", "p2"]
    assert [r["status"] for r in rows] == ["failed", "done", "done"]


def test_cohort_csv_rows_match_study_files(full_run):
    _, out = full_run
    _, rows = read_csv(out / "cohort.csv")
    _, (study_row,) = read_csv(out / "p1" / "biomarkers.csv")
    cohort_row = next(r for r in rows if r["study_id"] == "p1")
    for name, value in study_row.items():
        assert cohort_row[name] == value, name
    assert float(cohort_row["Disease_extent"]) > 0


def test_failures_csv_names_stage_and_error(full_run):
    _, out = full_run
    columns, rows = read_csv(out / "failures.csv")
    assert columns == ["study_id", "source", "stage", "error", "message"]
    assert len(rows) == 1
    assert rows[0]["study_id"] == "broken"
    assert rows[0]["stage"] == "intake"
    assert rows[0]["error"] == "InputError"
    assert "could not be decoded" in rows[0]["message"]


def test_cohort_html_links_reports(full_run):
    _, out = full_run
    page = (out / "cohort.html").read_text()
    assert 'href="p1/report.html"' in page
    assert 'href="p2/report.html"' in page
    assert 'href="broken/report.html"' not in page
    assert page.count("data:image/png;base64,") == 2


def test_rerun_skips_done_studies(full_run, cohort_input):
    _, out = full_run
    before = (out / "p1" / "report.json").stat().st_mtime_ns

    result = run_batch_command(cohort_input, "-o", out, "--no-radiomics", "-q")

    assert result.returncode == 3, result.stderr
    assert "2 done (2 from an earlier run), 1 failed" in result.stdout
    assert (out / "p1" / "report.json").stat().st_mtime_ns == before
    _, rows = read_csv(out / "cohort.csv")
    assert sorted(r["study_id"] for r in rows) == ["broken", "p1", "p2"]


def test_partial_study_is_redone(full_run, cohort_input, tmp_path):
    _, first_out = full_run
    out = tmp_path / "out"
    shutil.copytree(first_out, out)
    # A study killed while its files were written: no status file yet.
    (out / "p2" / STATUS_FILE).unlink()
    (out / "p2" / "report.html").write_text("<html>cut")

    result = run_batch_command(cohort_input, "-o", out, "--no-radiomics", "-q")

    assert result.returncode == 3, result.stderr
    assert "2 done (1 from an earlier run), 1 failed" in result.stdout
    assert (out / "p2" / STATUS_FILE).is_file()
    assert "<html>cut" not in (out / "p2" / "report.html").read_text()
    _, rows = read_csv(out / "cohort.csv")
    assert [r["status"] for r in rows] == ["failed", "done", "done"]


# Killed and resumed


def test_sigkill_then_resume_lists_each_study_once(p002_dir, tmp_path):
    source = tmp_path / "in"
    for name in ("k1", "k2", "k3"):
        shutil.copytree(p002_dir, source / name)
    out = tmp_path / "out"
    # A 1 GB budget fits one P002 analysis (about 0.7 GB by estimate), so the
    # studies run one after another although two workers are requested.
    command = [
        sys.executable, "-m", "covidct", "batch", str(source), "-o", str(out),
        "--workers", "2", "--memory-limit", "1", "--no-radiomics",
    ]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / "k1" / STATUS_FILE).exists():
        assert process.poll() is None, "the batch ended before the kill"
        assert time.monotonic() < deadline, "k1 was not done within 300 s"
        time.sleep(0.2)
    workers = psutil.Process(process.pid).children(recursive=True)
    os.kill(process.pid, signal.SIGKILL)
    _, stderr = process.communicate(timeout=30)
    assert "memory limits the batch to 1 studies at once instead of 2" in stderr

    # The workers notice that the batch is gone and exit on their own.
    _, alive = psutil.wait_procs(workers, timeout=20)
    assert alive == []
    k1_report = (out / "k1" / "report.json").stat().st_mtime_ns

    result = run_batch_command(source, "-o", out, "--no-radiomics", "-q")

    assert result.returncode == 0, result.stderr
    _, rows = read_csv(out / "cohort.csv")
    assert [r["study_id"] for r in rows] == ["k1", "k2", "k3"]
    assert [r["status"] for r in rows] == ["done", "done", "done"]
    assert (out / "k1" / "report.json").stat().st_mtime_ns == k1_report
    _, failures = read_csv(out / "failures.csv")
    assert failures == []


# Dask and a manifest


@pytest.fixture
def local_cluster():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    try:
        yield cluster
    finally:
        cluster.close()


def test_manifest_on_local_cluster(local_cluster, p002_dir, tmp_path):
    shutil.copytree(p002_dir, tmp_path / "studies" / "a")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "study_id,path,age,sex,CRP,intubated\n"
        "A1,studies/a,48,F,12.5,0\n"
        "B2,studies/missing,70,M,,1\n"
    )
    out = tmp_path / "out"

    result = run_batch_command(
        manifest,
        "-o",
        out,
        "--scheduler",
        local_cluster.scheduler_address,
        "--no-radiomics",
    )

    assert local_cluster.scheduler_address.startswith("tcp://127.0.0.1:")
    assert result.returncode == 3, result.stderr
    columns, rows = read_csv(out / "cohort.csv")
    assert columns[:6] == ["study_id", "status", "age", "sex", "CRP", "intubated"]
    first, second = rows
    assert (first["status"], first["age"], first["sex"]) == ("done", "48", "F")
    assert (first["CRP"], first["intubated"]) == ("12.5", "0")
    assert (second["status"], second["CRP"], second["intubated"]) == ("failed", "", "1")
    assert (out / "A1" / "report.html").is_file()
    # Age and sex reached the outcome model: without radiomics it lacks its
    # image inputs, not the patient's.
    assert first["prognosis_status"] == "not estimated"
    prognosis = json.loads((out / "A1" / "report.json").read_text())["prognosis"]
    assert "radiomics" in prognosis["reason"]
    assert "age and sex" not in prognosis["reason"]
    _, failures = read_csv(out / "failures.csv")
    assert [f["study_id"] for f in failures] == ["B2"]
    assert "no such file or folder" in failures[0]["message"]


def test_manifest_row_gives_patient_inputs():
    from covidct.cohort.worker import patient_from_columns

    patient = patient_from_columns(
        {"Age": "63", "sex": "f", "HBP": "1", "hypertension": "yes", "CRP": "54"}
    )
    assert patient.age == 63.0
    assert patient.sex == "F"
    assert patient.hypertension is True
    assert patient.diabetes is None
    assert patient.crp == 54.0
    assert patient.lymphocytes is None


@pytest.mark.parametrize(
    ("columns", "named"),
    [({"age": "sixty"}, "age"), ({"diabetes": "maybe"}, "diabetes")],
)
def test_bad_manifest_value_names_column(columns, named):
    from covidct.cohort.worker import patient_from_columns

    with pytest.raises(InputError, match=named):
        patient_from_columns(columns)
