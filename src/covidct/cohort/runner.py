"""The batch loop: skip done studies, run the rest, record every outcome."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covidct.cohort.executors import DaskBackend, LocalBackend, WorkerLost, usable_cores
from covidct.cohort.memory import (
    MEMORY_SHARE,
    MemoryPlan,
    available_memory_bytes,
    estimate_study_bytes,
)
from covidct.cohort.page import COHORT_HTML, render_cohort_page
from covidct.cohort.store import (
    StudyRecord,
    cohort_columns,
    read_record,
    store_outcome,
    write_atomic,
    write_tables,
)
from covidct.cohort.task import StudyTask
from covidct.cohort.worker import StudyOutcome, StudySettings
from covidct.errors import OutputError

__all__ = ["BatchOptions", "BatchProgress", "BatchSummary", "run_batch"]

logger = logging.getLogger(__name__)

# Seconds between checks of the running studies; also the longest delay of
# a progress update.
_POLL_S = 1.0


@dataclass
class BatchOptions:
    """Settings of a batch run.

    Attributes:
        workers: Studies analysed at once on this machine (without
            ``scheduler``). Memory may lower it.
        scheduler: Address of a Dask distributed scheduler
            (``tcp://HOST:PORT``) to run the studies on, or None for local
            processes.
        radiomics: Whether to extract the PyRadiomics features.
        allow_gaps: Whether to interpolate over missing slices.
        method: Segmentation backend, "cnn" or "threshold".
        model: Bundle folder of the network ensemble; None for the bundled one.
        memory_limit_bytes: Memory that the studies running at once may use
            together, by the estimate of ``covidct.cohort.memory``. None takes
            ``MEMORY_SHARE`` of the memory available at start (local), or of
            the workers' memory limits (Dask).
        refresh_s: Minimum seconds between two rewrites of cohort.csv,
            failures.csv and cohort.html while the batch runs.
        worker_log_level: Log level of the local worker processes on standard
            error, or None to leave their logging unconfigured. The warnings
            of each study are also in its report.json.
    """

    workers: int = 1
    scheduler: str | None = None
    radiomics: bool = True
    allow_gaps: bool = False
    method: str = "cnn"
    model: Path | None = None
    memory_limit_bytes: int | None = None
    refresh_s: float = 10.0
    worker_log_level: int | None = None

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")


@dataclass
class BatchProgress:
    """Counts of a batch at one moment, passed to the progress callback.

    Attributes:
        total: Studies in the batch.
        done: Studies done, including those done by an earlier run.
        failed: Studies that failed in this run.
        skipped: Studies found done at start and not analysed again.
        running: Studies being analysed now.
        finished: The outcome that caused this update, if any.
    """

    total: int
    done: int = 0
    failed: int = 0
    skipped: int = 0
    running: int = 0
    finished: StudyOutcome | None = None

    @property
    def remaining(self) -> int:
        return self.total - self.done - self.failed


@dataclass
class BatchSummary:
    """The result of a batch run.

    Attributes:
        total: Studies in the batch.
        done: Studies done, including those done by an earlier run.
        failed: Study ids that failed.
        skipped: Studies found done at start.
        seconds: Wall time of this run.
        out_dir: The output folder.
        concurrency: Studies of typical size allowed to run at once (0 when
            every study was already done).
        files: Paths of cohort.csv, failures.csv and cohort.html.
    """

    total: int
    done: int
    failed: list[str]
    skipped: int
    seconds: float
    out_dir: Path
    concurrency: int
    files: dict[str, Path] = field(default_factory=dict)


def run_batch(
    tasks: Sequence[StudyTask],
    out_dir: str | Path,
    options: BatchOptions | None = None,
    clinical_columns: Sequence[str] = (),
    progress: Callable[[BatchProgress], None] | None = None,
) -> BatchSummary:
    """Analyse every study not yet done and write the cohort files.

    Studies whose outputs are complete from an earlier run with the same
    settings are skipped; all others, including earlier failures, are
    analysed. Each outcome is written into ``OUT/<study_id>`` as soon as it
    arrives, and cohort.csv, failures.csv and cohort.html are rewritten at
    most every ``options.refresh_s`` seconds and at the end.

    Args:
        tasks: The studies, in the order of the cohort table.
        out_dir: Output folder (created).
        options: Batch settings.
        clinical_columns: Manifest columns passed through to cohort.csv.
        progress: Called after each change of the counts.

    Raises:
        OutputError: If the output folder or a file cannot be written.
        CovidctError: If the Dask scheduler cannot be reached.
    """
    options = options or BatchOptions()
    out_dir = Path(out_dir)
    started = time.perf_counter()
    _make_folder(out_dir)
    threads = 1 if options.scheduler else max(1, usable_cores() // options.workers)
    settings = StudySettings(
        radiomics=options.radiomics,
        allow_gaps=options.allow_gaps,
        threads=threads,
        method=options.method,
        model=None if options.model is None else str(options.model),
    )

    records = {task.study_id: read_record(out_dir, task, settings) for task in tasks}
    todo = [task for task in tasks if records[task.study_id].status != "done"]
    state = BatchProgress(total=len(tasks))
    state.skipped = state.done = len(tasks) - len(todo)
    if state.skipped:
        logger.info("%d of %d studies are already done", state.skipped, len(tasks))
    tables = _Tables(out_dir, tasks, records, clinical_columns, options.refresh_s)
    tables.write()
    if progress is not None:
        progress(state)

    concurrency = 0
    if todo:
        backend = _open_backend(options, threads)
        estimates = {
            t.study_id: estimate_study_bytes(t.voxels, options.radiomics) for t in todo
        }
        plan = _memory_plan(options, backend, estimates)
        concurrency = min(
            backend.slots, plan.concurrency(int(statistics.median(estimates.values())))
        )
        loop = _Loop(backend, settings, plan, estimates)
        completed = False
        try:
            for task, outcome in loop.run(todo, state, progress):
                records[task.study_id] = store_outcome(out_dir, task, settings, outcome)
                if outcome.ok:
                    state.done += 1
                else:
                    state.failed += 1
                    _log_failure(outcome)
                state.finished = outcome
                if progress is not None:
                    progress(state)
                tables.write_if_due()
            completed = True
        finally:
            # On an interrupt or error, studies in flight are cancelled and
            # stay unfinished, so the next run analyses them again.
            tables.write()
            backend.close(cancel=not completed)
    else:
        tables.write()

    failed_ids = [t.study_id for t in tasks if records[t.study_id].status == "failed"]
    return BatchSummary(
        total=len(tasks),
        done=state.done,
        failed=failed_ids,
        skipped=state.skipped,
        seconds=time.perf_counter() - started,
        out_dir=out_dir,
        concurrency=concurrency,
        files=tables.paths,
    )


class _Loop:
    """Submit studies while slots and memory allow, and yield their outcomes."""

    def __init__(
        self,
        backend: LocalBackend | DaskBackend,
        settings: StudySettings,
        plan: MemoryPlan,
        estimates: dict[str, int],
    ) -> None:
        self.backend = backend
        self.settings = settings
        self.plan = plan
        self.estimates = estimates
        self._memory_wait_logged = False

    def run(
        self,
        todo: Sequence[StudyTask],
        state: BatchProgress,
        progress: Callable[[BatchProgress], None] | None,
    ) -> Iterator[tuple[StudyTask, StudyOutcome]]:
        queue = list(reversed(todo))
        running: dict[Any, StudyTask] = {}
        while queue or running:
            self._submit(queue, running)
            state.running = len(running)
            finished = self.backend.wait(running, timeout=_POLL_S)
            if not finished and progress is not None:
                state.finished = None
                progress(state)
            for future in finished:
                task = running.pop(future)
                self.plan.in_use_bytes -= self.estimates[task.study_id]
                state.running = len(running)
                yield task, self._outcome(future, task)

    def _submit(self, queue: list[StudyTask], running: dict[Any, StudyTask]) -> None:
        while queue and len(running) < self.backend.slots:
            task = queue[-1]
            estimate = self.estimates[task.study_id]
            if not self.plan.fits(estimate, len(running)):
                if not self._memory_wait_logged:
                    logger.warning(
                        "memory limits the studies running at once: %s waits "
                        "until %.1f GB are free (estimate), with %d running",
                        task.study_id,
                        estimate / 1e9,
                        len(running),
                    )
                    self._memory_wait_logged = True
                return
            queue.pop()
            self.plan.in_use_bytes += estimate
            running[self.backend.submit(task, self.settings)] = task
            logger.debug("started %s (estimate %.2f GB)", task.study_id, estimate / 1e9)

    def _outcome(self, future: Any, task: StudyTask) -> StudyOutcome:
        try:
            return self.backend.result(future)
        except WorkerLost as error:
            return StudyOutcome(
                task.study_id,
                ok=False,
                stage="worker",
                error="WorkerLost",
                message=str(error),
            )
        # The remote side can raise anything (covidct missing on a Dask
        # worker, a task that fails to unpickle); it fails this study only.
        except Exception as error:  # noqa: BLE001
            return StudyOutcome(
                task.study_id,
                ok=False,
                stage="worker",
                error=type(error).__name__,
                message=" ".join(str(error).split()) or type(error).__name__,
            )


class _Tables:
    """cohort.csv, failures.csv and cohort.html, rewritten from the records."""

    def __init__(
        self,
        out_dir: Path,
        tasks: Sequence[StudyTask],
        records: dict[str, StudyRecord],
        clinical_columns: Sequence[str],
        refresh_s: float,
    ) -> None:
        self.out_dir = out_dir
        self.tasks = tasks
        self.records = records
        self.clinical_columns = clinical_columns
        self.refresh_s = refresh_s
        self.paths = {
            "cohort_csv": out_dir / "cohort.csv",
            "failures_csv": out_dir / "failures.csv",
            "cohort_html": out_dir / COHORT_HTML,
        }
        self._written_at = 0.0

    def write(self) -> None:
        write_tables(self.out_dir, self.tasks, self.records, self.clinical_columns)
        columns = cohort_columns(self.records.values(), self.clinical_columns)
        page = render_cohort_page(self.tasks, self.records, columns)
        write_atomic(self.paths["cohort_html"], page.encode("utf-8"))
        self._written_at = time.monotonic()

    def write_if_due(self) -> None:
        if time.monotonic() - self._written_at >= self.refresh_s:
            self.write()


def _open_backend(options: BatchOptions, threads: int) -> LocalBackend | DaskBackend:
    if options.scheduler:
        return DaskBackend(options.scheduler, threads=threads)
    return LocalBackend(options.workers, threads, options.worker_log_level)


def _memory_plan(
    options: BatchOptions,
    backend: LocalBackend | DaskBackend,
    estimates: dict[str, int],
) -> MemoryPlan:
    """Set the memory budget and warn when it allows fewer studies than slots."""
    if options.memory_limit_bytes is not None:
        budget = options.memory_limit_bytes
        source = "the memory limit"
    elif backend.memory_bytes is not None:
        budget = int(backend.memory_bytes * MEMORY_SHARE)
        source = f"{MEMORY_SHARE:.0%} of the Dask workers' memory limits"
    elif options.scheduler:
        budget = 2**62
        source = "no limit (the Dask workers set none)"
    else:
        budget = int(available_memory_bytes() * MEMORY_SHARE)
        source = f"{MEMORY_SHARE:.0%} of the available memory"
    plan = MemoryPlan(budget_bytes=budget)
    typical = int(statistics.median(estimates.values()))
    allowed = plan.concurrency(typical)
    if allowed < backend.slots:
        logger.warning(
            "memory limits the batch to %d studies at once instead of %d: a "
            "typical study needs about %.1f GB (estimate) and the budget is "
            "%.1f GB (%s)",
            allowed,
            backend.slots,
            typical / 1e9,
            budget / 1e9,
            source,
        )
    largest = max(estimates.values())
    if isinstance(backend, DaskBackend) and largest > backend.max_worker_bytes > 0:
        logger.warning(
            "the largest study needs about %.1f GB (estimate), more than the "
            "largest Dask worker's memory limit of %.1f GB",
            largest / 1e9,
            backend.max_worker_bytes / 1e9,
        )
    return plan


def _log_failure(outcome: StudyOutcome) -> None:
    logger.warning(
        "%s failed at %s: %s", outcome.study_id, outcome.stage, outcome.message
    )
    if outcome.details:
        logger.warning("traceback of %s:\n%s", outcome.study_id, outcome.details)


def _make_folder(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(
            f"failed to create the output folder: {error.strerror or error}",
            path=out_dir,
            hint="choose an output folder whose parent exists and is writable",
        ) from error
