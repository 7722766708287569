"""Memory estimates that bound how many studies run at once."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psutil

__all__ = ["MemoryPlan", "available_memory_bytes", "estimate_study_bytes"]

logger = logging.getLogger(__name__)

# Peak resident memory of one analysis is modelled as a fixed part (Python,
# numpy, SimpleITK and the pipeline's code) plus a part per voxel. The figures
# come from P002 (133 x 512 x 512 voxels) measured with benchmarks/analyze.py:
# 686 MiB without radiomics and 1577 MiB with them, so they are estimates
# that may be low for studies unlike it.
BASE_BYTES = 200 * 2**20
BYTES_PER_VOXEL = 15
BYTES_PER_VOXEL_RADIOMICS = 42

#: Voxels assumed for a study whose headers did not give its size: 400 slices
#: of 512 x 512.
DEFAULT_VOXELS = 400 * 512 * 512

#: Share of the memory available at start that the studies may use together;
#: the rest is left to the batch process and to other programs.
MEMORY_SHARE = 0.8


def estimate_study_bytes(voxels: int | None, radiomics: bool) -> int:
    """Estimate the peak memory of analysing one study, in bytes."""
    per_voxel = BYTES_PER_VOXEL_RADIOMICS if radiomics else BYTES_PER_VOXEL
    return BASE_BYTES + per_voxel * (DEFAULT_VOXELS if voxels is None else voxels)


def available_memory_bytes() -> int:
    """Return the memory that the operating system reports as available."""
    return int(psutil.virtual_memory().available)


@dataclass
class MemoryPlan:
    """The memory budget of a batch and the estimates running against it.

    Attributes:
        budget_bytes: Memory that the running studies may use together.
        in_use_bytes: Sum of the estimates of the studies running now.
    """

    budget_bytes: int
    in_use_bytes: int = 0

    def fits(self, estimate_bytes: int, running: int) -> bool:
        """Return whether a study may start now.

        A study always starts when nothing runs, so that a study larger than
        the whole budget runs alone instead of never.
        """
        return running == 0 or self.in_use_bytes + estimate_bytes <= self.budget_bytes

    def concurrency(self, estimate_bytes: int) -> int:
        """Return how many studies of this estimate fit in the budget (at least 1)."""
        return max(1, self.budget_bytes // max(1, estimate_bytes))
