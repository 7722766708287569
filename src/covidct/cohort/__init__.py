"""Cohorts: analyse many studies in one batch, resumably, locally or on Dask.

``discover_studies`` or ``read_manifest`` lists the studies, and ``run_batch``
analyses them into one output folder with ``cohort.csv``, ``failures.csv``
and ``cohort.html``. See ``covidct.cohort.store`` for the folder layout.

Names load on first use, so that worker processes can import
``covidct.cohort.worker`` before numpy and bound its threads first.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "BatchOptions",
    "BatchProgress",
    "BatchSummary",
    "StudyTask",
    "discover_studies",
    "read_manifest",
    "run_batch",
]

_MODULES = {
    "BatchOptions": "covidct.cohort.runner",
    "BatchProgress": "covidct.cohort.runner",
    "BatchSummary": "covidct.cohort.runner",
    "run_batch": "covidct.cohort.runner",
    "StudyTask": "covidct.cohort.task",
    "discover_studies": "covidct.cohort.studies",
    "read_manifest": "covidct.cohort.studies",
}


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module 'covidct.cohort' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULES[name]), name)
