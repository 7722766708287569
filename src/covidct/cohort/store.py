"""The batch output folder: per-study files, status files and cohort tables.

Layout of ``OUT``::

    OUT/<study_id>/report.json, biomarkers.csv, ...   as ``covidct analyze``
    OUT/<study_id>/batch-status.json                  written last
    OUT/cohort.csv, OUT/failures.csv, OUT/cohort.html

Only the batch process writes here, every file through a temporary name and
``os.replace``. A study counts as done only when its ``batch-status.json``
records ``done``, its settings and source match the current run, and every file
it lists exists with the recorded size. Anything else is analysed again.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covidct import __version__
from covidct.cohort.task import StudyTask
from covidct.cohort.worker import StudyOutcome, StudySettings
from covidct.errors import OutputError
from covidct.report.writer import write_atomic as write_file_atomic

__all__ = [
    "COHORT_CSV",
    "FAILURES_COLUMNS",
    "FAILURES_CSV",
    "STATUS_FILE",
    "StudyRecord",
    "cohort_columns",
    "read_record",
    "store_outcome",
    "write_atomic",
    "write_tables",
]

logger = logging.getLogger(__name__)

STATUS_FILE = "batch-status.json"
COHORT_CSV = "cohort.csv"
FAILURES_CSV = "failures.csv"
FAILURES_COLUMNS = ("study_id", "source", "stage", "error", "message")

_WRITE_HINT = "check that the folder is writable and the disk is not full"


@dataclass
class StudyRecord:
    """The last known state of one study in the output folder.

    Attributes:
        status: ``done``, ``failed`` or ``pending``.
        row: Columns of the study's ``biomarkers.csv`` as text, when done.
        failure: ``stage``, ``error`` and ``message`` when failed.
    """

    status: str = "pending"
    row: dict[str, str] = field(default_factory=dict)
    failure: dict[str, str] = field(default_factory=dict)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    The folder is created if needed.

    Raises:
        OutputError: If the folder or the file cannot be written.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(
            f"failed to create {path.parent}: {error.strerror or error}",
            path=path.parent,
            hint=_WRITE_HINT,
        ) from error
    write_file_atomic(path, data)


def read_record(out_dir: Path, task: StudyTask, settings: StudySettings) -> StudyRecord:
    """Read a study's state from its status file, checking done outputs.

    A status file from other settings or another source, or with a missing or
    truncated output, yields ``pending`` so that the study is analysed again.
    """
    folder = out_dir / task.study_id
    status_path = folder / STATUS_FILE
    try:
        status = json.loads(status_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return StudyRecord()
    except (OSError, ValueError) as error:
        logger.warning("%s is unreadable (%s): analysing again", status_path, error)
        return StudyRecord()

    if status.get("source") != _source(task):
        logger.info("%s: the source changed, analysing again", task.study_id)
        return StudyRecord()
    if status.get("status") == "failed":
        return StudyRecord(status="failed", failure=dict(status.get("failure", {})))
    if status.get("status") != "done":
        return StudyRecord()
    if status.get("settings") != settings.key():
        logger.info("%s: analysed with other settings, analysing again", task.study_id)
        return StudyRecord()
    for name, size in dict(status.get("files", {})).items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            logger.info(
                "%s: %s is missing or changed, analysing again", task.study_id, name
            )
            return StudyRecord()
    row = _read_row(folder / "biomarkers.csv")
    if row is None:
        return StudyRecord()
    return StudyRecord(status="done", row=row)


def store_outcome(
    out_dir: Path,
    task: StudyTask,
    settings: StudySettings,
    outcome: StudyOutcome,
) -> StudyRecord:
    """Write a study's outcome into ``OUT/<study_id>``, the status file last.

    The old status file is removed first, so that a batch killed while this
    runs finds the study unfinished and analyses it again.

    Raises:
        OutputError: If a file cannot be written.
    """
    folder = out_dir / task.study_id
    with contextlib.suppress(FileNotFoundError):
        (folder / STATUS_FILE).unlink()
    status: dict[str, Any] = {
        "study_id": task.study_id,
        "source": _source(task),
        "settings": settings.key(),
        "software_version": __version__,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(outcome.seconds, 3),
    }
    if outcome.ok:
        for name, data in outcome.files.items():
            write_atomic(folder / name, data)
        status.update(
            status="done",
            files={name: len(data) for name, data in outcome.files.items()},
        )
        record = StudyRecord(
            status="done", row=_parse_row(outcome.files["biomarkers.csv"])
        )
    else:
        status.update(status="failed", failure=outcome.failure())
        record = StudyRecord(status="failed", failure=outcome.failure())
    text = json.dumps(status, indent=2) + "\n"
    write_atomic(folder / STATUS_FILE, text.encode("utf-8"))
    return record


def cohort_columns(
    records: Iterable[StudyRecord], clinical_columns: Sequence[str]
) -> list[str]:
    """Return the cohort.csv header: ids, status, manifest columns, biomarkers.

    Biomarker columns follow ``covidct.report.biomarker_row``, in the order of
    the first done study, then any column that only later studies have.

    Raises:
        OutputError: If a manifest column has the name of a biomarker column.
    """
    columns = ["study_id", "status", *clinical_columns]
    seen = set(columns)
    for record in records:
        for name in record.row:
            if name in clinical_columns or name in ("study_id", "status"):
                raise OutputError(
                    f"the manifest column '{name}' has the name of a biomarker "
                    "column of cohort.csv",
                    hint="Rename that manifest column.",
                )
            if name not in seen:
                seen.add(name)
                columns.append(name)
    return columns


def write_tables(
    out_dir: Path,
    tasks: Sequence[StudyTask],
    records: Mapping[str, StudyRecord],
    clinical_columns: Sequence[str],
) -> None:
    """Rewrite cohort.csv and failures.csv from the records, one row per study."""
    ordered = [records[task.study_id] for task in tasks]
    columns = cohort_columns(ordered, clinical_columns)
    cohort = io.StringIO()
    writer = csv.DictWriter(cohort, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for task, record in zip(tasks, ordered, strict=True):
        writer.writerow(
            {
                "study_id": task.study_id,
                "status": record.status,
                **task.clinical,
                **record.row,
            }
        )
    write_atomic(out_dir / COHORT_CSV, cohort.getvalue().encode("utf-8"))

    failures = io.StringIO()
    writer = csv.DictWriter(failures, fieldnames=FAILURES_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for task, record in zip(tasks, ordered, strict=True):
        if record.status == "failed":
            writer.writerow(
                {
                    "study_id": task.study_id,
                    "source": _source(task),
                    "stage": record.failure.get("stage", ""),
                    "error": record.failure.get("error", ""),
                    "message": record.failure.get("message", ""),
                }
            )
    write_atomic(out_dir / FAILURES_CSV, failures.getvalue().encode("utf-8"))


def _source(task: StudyTask) -> str:
    """Return the study's input as recorded: the path, with the file count if split."""
    if task.files:
        return f"{task.path} ({len(task.files)} files)"
    return str(task.path)


def _read_row(path: Path) -> dict[str, str] | None:
    try:
        return _parse_row(path.read_bytes())
    except (OSError, ValueError) as error:
        logger.warning("%s is unreadable (%s): analysing again", path, error)
        return None


def _parse_row(data: bytes) -> dict[str, str]:
    """Parse a biomarkers.csv (a header and one line) into column to text."""
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))
    if len(rows) != 2 or len(rows[0]) != len(rows[1]):
        raise ValueError("biomarkers.csv must have a header and one data line")
    return dict(zip(rows[0], rows[1], strict=True))
