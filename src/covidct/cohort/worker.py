"""The work on one study, run in a worker process or on a Dask worker.

This module imports the pipeline only inside ``run_study``, so that a worker
can bound its threads before numpy and SimpleITK load.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from covidct.cohort.task import StudyTask
from covidct.errors import CovidctError, InputError

if TYPE_CHECKING:
    from covidct.prognosis.predict import PatientInfo

__all__ = [
    "THREAD_VARIABLES",
    "StudyOutcome",
    "StudySettings",
    "init_local_worker",
    "run_study",
]

logger = logging.getLogger(__name__)

#: Environment variables that set the thread count of OpenMP, the BLAS
#: libraries, numexpr and ITK. They only act on libraries loaded after they
#: are set, so ``run_study`` also bounds the loaded ones with threadpoolctl.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
)


@dataclass(frozen=True)
class StudySettings:
    """Analysis settings shared by every study of a batch.

    Attributes:
        radiomics: Whether to extract the PyRadiomics features.
        allow_gaps: Whether to interpolate over missing slices (``--allow-gaps``).
        threads: Threads that one study may use in numpy, BLAS, ITK and torch.
        method: Segmentation backend, "cnn" or "threshold".
        model: Bundle folder of the network ensemble; None for the bundled one.
    """

    radiomics: bool = True
    allow_gaps: bool = False
    threads: int = 1
    method: str = "cnn"
    model: str | None = None

    def key(self) -> dict[str, object]:
        """Return the settings that change the outputs, as stored with them."""
        return {
            "radiomics": self.radiomics,
            "allow_gaps": self.allow_gaps,
            "method": self.method,
            "model": self.model,
        }


@dataclass
class StudyOutcome:
    """Result of the analysis of one study, as returned to the batch.

    Attributes:
        study_id: The study.
        ok: Whether the analysis and the writing of its files succeeded.
        files: Output file name to content, empty on failure.
        stage: Stage that failed (a name of ``covidct.analysis.STAGES``, or
            ``worker`` when the process running it died).
        error: Class name of the exception.
        message: The error message on one line.
        details: Traceback of an unexpected exception, for the log.
        seconds: Wall time of the study in the worker.
        warnings: Number of warnings in the report.
    """

    study_id: str
    ok: bool
    files: dict[str, bytes] = field(default_factory=dict)
    stage: str | None = None
    error: str | None = None
    message: str | None = None
    details: str | None = None
    seconds: float = 0.0
    warnings: int = 0

    def failure(self) -> dict[str, str]:
        """Return the failure as stored in the study's status file."""
        return {
            "stage": self.stage or "",
            "error": self.error or "",
            "message": self.message or "",
        }


def init_local_worker(threads: int, parent_pid: int, log_level: int | None) -> None:
    """Prepare a process of the local pool: bound threads, follow the parent.

    A watchdog thread ends the worker when the batch process is gone, for
    example after SIGKILL, so that no orphan keeps analysing. The check relies
    on the worker being re-parented when its parent dies (POSIX).

    Args:
        threads: Threads of numpy, BLAS, OpenMP and ITK.
        parent_pid: Process id of the batch process.
        log_level: Level of the worker's log on standard error, or None to
            leave logging unconfigured.
    """
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    if log_level is not None:
        handler = logging.StreamHandler()
        # The handler's level also filters libraries that log at INFO on
        # loggers of their own, such as PyRadiomics.
        handler.setLevel(log_level)
        handler.setFormatter(
            logging.Formatter("covidct: %(levelname)s: worker: %(message)s")
        )
        logging.basicConfig(level=log_level, handlers=[handler])
        logging.getLogger("covidct").setLevel(log_level)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="covidct-parent-watchdog", daemon=True).start()


def run_study(task: StudyTask, settings: StudySettings) -> StudyOutcome:
    """Analyse one study and return its output files, or why it failed.

    Every ``Exception`` raised by the analysis, from input errors to defects
    in a stage, comes back in the outcome, so that one study cannot stop the
    batch. A crash of the process itself is seen by the batch instead.
    """
    from covidct.analysis import AnalysisOptions, analyze, write_analysis
    from covidct.intake import IntakeOptions

    started = time.perf_counter()
    try:
        patient = patient_from_columns(task.clinical)
    except CovidctError as error:
        return _failed(task, "manifest", error, started)
    options = AnalysisOptions(
        intake=IntakeOptions(allow_gaps=settings.allow_gaps),
        radiomics=settings.radiomics,
        workers=1,
        method=settings.method,
        model=None if settings.model is None else Path(settings.model),
        patient=patient,
    )
    current = {"stage": "intake"}

    def progress(name: str) -> None:
        current["stage"] = name

    try:
        with (
            _bounded_threads(settings.threads),
            tempfile.TemporaryDirectory(prefix="covidct-batch-") as temporary,
        ):
            root = Path(temporary)
            path = task.path
            if task.files:
                path = _link_files(task.files, task.path, root / "input")
            result = analyze(path, options, progress=progress)
            if task.files:
                result.volume.provenance.source = str(task.path)
            paths = write_analysis(result, root / "output", progress=progress)
            files = {p.name: p.read_bytes() for p in paths.values()}
    except CovidctError as error:
        return _failed(task, current["stage"], error, started)
    except MemoryError as error:
        return _failed(task, current["stage"], error, started, "out of memory")
    # A defect in one stage must not stop the other studies of the night, so
    # any exception becomes a recorded failure with its traceback.
    except Exception as error:  # noqa: BLE001
        outcome = _failed(task, current["stage"], error, started)
        outcome.details = traceback.format_exc()
        return outcome
    return StudyOutcome(
        study_id=task.study_id,
        ok=True,
        files=files,
        seconds=time.perf_counter() - started,
        warnings=len(result.warnings),
    )


_TRUE = {"1", "yes", "y", "true", "t"}
_FALSE = {"0", "no", "n", "false", "f"}


def patient_from_columns(columns: dict[str, str]) -> PatientInfo:
    """Read age, sex and the clinical inputs from a manifest row.

    Column names are matched without regard to case: ``age`` (years), ``sex``
    (M or F), ``hypertension`` and ``diabetes`` (1/0, yes/no, true/false),
    ``crp`` (mg/l) and ``lymphocytes`` (10^9/l). An empty or absent column is
    unknown.

    Raises:
        InputError: If a value cannot be read; the message names the column.
    """
    from covidct.prognosis.predict import PatientInfo

    lower = {key.strip().lower(): value.strip() for key, value in columns.items()}

    def number(name: str) -> float | None:
        text = lower.get(name, "")
        if not text:
            return None
        try:
            return float(text)
        except ValueError as error:
            raise InputError(
                f"manifest column {name!r} must be a number, got {text!r}",
                hint="fix the manifest row or leave the cell empty",
            ) from error

    def flag(name: str) -> bool | None:
        text = lower.get(name, "").lower()
        if not text:
            return None
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise InputError(
            f"manifest column {name!r} must be 1/0, yes/no or true/false, got {text!r}",
            hint="fix the manifest row or leave the cell empty",
        )

    sex = lower.get("sex", "").upper() or None
    return PatientInfo(
        age=number("age"),
        sex=sex,
        hypertension=flag("hypertension"),
        diabetes=flag("diabetes"),
        crp=number("crp"),
        lymphocytes=number("lymphocytes"),
    )


def _failed(
    task: StudyTask,
    stage: str,
    error: BaseException,
    started: float,
    message: str | None = None,
) -> StudyOutcome:
    if message is None and isinstance(error, CovidctError):
        # One line for failures.csv; the source path is in its own column.
        message = error.message.rstrip(".")
        if error.path is not None:
            message = f"{error.path}: {message}"
        if error.hint:
            message += f". What to do: {error.hint}"
    text = message or str(error) or type(error).__name__
    return StudyOutcome(
        study_id=task.study_id,
        ok=False,
        stage=stage,
        error=type(error).__name__,
        message=" ".join(text.split()),
        seconds=time.perf_counter() - started,
    )


@contextmanager
def _bounded_threads(threads: int) -> Iterator[None]:
    """Bound the thread pools of BLAS, OpenMP, ITK and torch."""
    import SimpleITK as sitk
    import torch
    from threadpoolctl import threadpool_limits

    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    previous_torch = torch.get_num_threads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)
        torch.set_num_threads(previous_torch)


def _link_files(files: tuple[Path, ...], folder: Path, target: Path) -> Path:
    """Mirror ``files`` under ``target`` as symbolic links, keeping their paths.

    A study split from a folder that contains several studies is read from these
    links, so intake sees only its files and reports them by the same
    relative names.
    """
    for path in files:
        link = target / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path.resolve())
    return target
