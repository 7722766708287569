"""Where the studies run: a local process pool or a Dask distributed cluster.

Both backends take ``run_study`` calls and hand back futures; the batch loop
in ``covidct.cohort.runner`` decides how many run at once.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import time
import uuid
from collections.abc import Iterable
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from covidct.cohort.task import StudyTask
from covidct.cohort.worker import (
    StudyOutcome,
    StudySettings,
    init_local_worker,
    run_study,
)
from covidct.errors import CovidctError

__all__ = ["DaskBackend", "LocalBackend", "WorkerLost", "usable_cores"]

logger = logging.getLogger(__name__)


class WorkerLost(Exception):
    """The process or Dask worker that ran a study died before returning."""


def usable_cores() -> int:
    """Return the CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


class LocalBackend:
    """Studies in a pool of processes on this machine, one study per process.

    Args:
        workers: Number of processes.
        threads: Threads of numpy, BLAS and ITK in each process.
        log_level: Level of the workers' log, or None to leave it unconfigured.
    """

    def __init__(self, workers: int, threads: int, log_level: int | None) -> None:
        self.slots = workers
        self.threads = threads
        self.log_level = log_level
        self.memory_bytes: int | None = None
        self._pool = self._new_pool()

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        # spawn, not fork: the coordinator may hold threads and open files, and
        # a fresh process lets the thread variables act before numpy loads.
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=self.slots,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=init_local_worker,
            initargs=(self.threads, os.getpid(), self.log_level),
        )

    def submit(self, task: StudyTask, settings: StudySettings) -> Any:
        return self._pool.submit(run_study, task, settings)

    def wait(self, futures: Iterable[Any], timeout: float) -> set[Any]:
        done, _ = concurrent.futures.wait(
            list(futures), timeout=timeout, return_when="FIRST_COMPLETED"
        )
        return set(done)

    def result(self, future: Any) -> StudyOutcome:
        """Return a finished future's outcome, or raise ``WorkerLost``."""
        try:
            return future.result()
        except BrokenProcessPool as error:
            # Every study in flight fails with the pool, so a new pool takes
            # the rest of the batch.
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            raise WorkerLost(
                "the worker process died while this study ran (for example "
                "killed by the system for lack of memory); rerun the batch to "
                "retry it"
            ) from error

    def close(self, cancel: bool = False) -> None:
        self._pool.shutdown(wait=not cancel, cancel_futures=cancel)


class DaskBackend:
    """Studies on an existing Dask distributed cluster.

    The workers must have covidct installed and read the study paths as the
    client sees them (a shared file system). Outputs come back to the client,
    which writes them.

    Args:
        address: Scheduler address, such as ``tcp://10.0.0.5:8786``.
        threads: Threads of numpy, BLAS and ITK in each study.

    Raises:
        CovidctError: If the scheduler cannot be reached or has no worker.
    """

    def __init__(self, address: str, threads: int = 1) -> None:
        try:
            from distributed import Client
        except ImportError as error:
            raise CovidctError(
                "--scheduler needs the 'distributed' package, which is not installed",
                hint='Install it with: pip install "dask[distributed]"',
            ) from error
        self.threads = threads
        try:
            self._client = Client(address, timeout="30s", set_as_default=False)
            # Workers of a job queue (SLURM) may start minutes after the
            # scheduler, so the batch waits up to 10 minutes for the first.
            logger.info("waiting for a worker of %s", address)
            self._client.wait_for_workers(1, timeout=600)
        except (OSError, TimeoutError) as error:
            raise CovidctError(
                f"failed to connect to the Dask scheduler at {address}: {error}",
                hint="Check the address (tcp://HOST:PORT), that the scheduler "
                "runs and that at least one worker is connected.",
            ) from error
        logger.info("connected to %s: %d workers, %d threads", address, *self._count())

    def _workers(self) -> list[dict[str, Any]]:
        return list(self._client.scheduler_info()["workers"].values())

    def _count(self) -> tuple[int, int]:
        workers = self._workers()
        return len(workers), self.slots

    @property
    def slots(self) -> int:
        """Threads of the workers connected now; workers may join later."""
        return max(1, sum(int(w.get("nthreads", 1)) for w in self._workers()))

    @property
    def memory_bytes(self) -> int | None:
        """Sum of the workers' memory limits, or None if a worker has none."""
        # A worker without a memory limit reports 0, so the cluster's memory
        # is unknown and only the thread count bounds the studies in flight.
        limits = [int(w.get("memory_limit") or 0) for w in self._workers()]
        return sum(limits) if limits and min(limits) > 0 else None

    @property
    def max_worker_bytes(self) -> int:
        """Largest memory limit of one worker, 0 when none is set."""
        limits = [int(w.get("memory_limit") or 0) for w in self._workers()]
        return max(limits, default=0)

    def submit(self, task: StudyTask, settings: StudySettings) -> Any:
        key = f"covidct-study-{task.study_id}-{uuid.uuid4().hex[:8]}"
        return self._client.submit(run_study, task, settings, key=key, pure=False)

    def wait(self, futures: Iterable[Any], timeout: float) -> set[Any]:
        # distributed.wait looks for a default client, and this one is not
        # the default, so the futures are polled. Studies take seconds to
        # minutes, so a 0.1 s poll adds no noticeable delay.
        pending = list(futures)
        deadline = time.monotonic() + timeout
        while True:
            done = {future for future in pending if future.done()}
            if done or time.monotonic() >= deadline:
                return done
            time.sleep(0.1)

    def result(self, future: Any) -> StudyOutcome:
        """Return a finished future's outcome, or raise ``WorkerLost``."""
        from distributed import KilledWorker

        try:
            return future.result()
        except KilledWorker as error:
            raise WorkerLost(
                "the Dask workers running this study died several times (for "
                "example for lack of memory); rerun the batch to retry it"
            ) from error

    def close(self, cancel: bool = False) -> None:
        self._client.close()
