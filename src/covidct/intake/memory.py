"""Estimate the memory that analysing a CT needs, before its pixels are decoded."""

from __future__ import annotations

import psutil

__all__ = ["BASE_BYTES", "BYTES_PER_VOXEL", "available_memory_bytes", "estimate_bytes"]

# NOTE: these two factors repeat BASE_BYTES and BYTES_PER_VOXEL of
# covidct.cohort.memory, measured on P002 (133 x 512 x 512 voxels) with
# benchmarks/analyze.py without radiomics. Intake cannot import the cohort
# stage, which is built on it. With radiomics the peak is about 2.8 times
# higher per voxel, so the estimate may be low for such runs.
BASE_BYTES = 200 * 2**20
BYTES_PER_VOXEL = 15


def estimate_bytes(slices: int, rows: int, columns: int, value_bytes: int) -> int:
    """Estimate the peak memory of reading and analysing a CT, in bytes.

    Args:
        slices: Number of slices to decode.
        rows: Rows per slice.
        columns: Columns per slice.
        value_bytes: Bytes per voxel of the HU array (2 for int16, 4 for
            float32).
    """
    voxels = slices * rows * columns
    return BASE_BYTES + voxels * (value_bytes + BYTES_PER_VOXEL)


def available_memory_bytes() -> int:
    """Return the memory that the operating system reports as available."""
    return int(psutil.virtual_memory().available)
