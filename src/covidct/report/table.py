"""The flat row of biomarkers, stage and radiomics written to biomarkers.csv."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from typing import Any

from covidct.report.serialize import to_jsonable

__all__ = [
    "PROGNOSIS_FIELDS",
    "RELIABILITY_FIELDS",
    "STAGE_FIELDS",
    "biomarker_row",
    "row_csv",
]

#: Keys of ``report["stage"]`` copied to the row, each as column ``stage_<key>``.
#: The columns are present even when the stage is missing, so that rows of
#: different studies share one header.
STAGE_FIELDS = (
    "extent_percent",
    "category",
    "category_name",
    "ct_grade",
    "ct_grade_name",
)


#: Keys of ``report["reliability"]`` copied to the row as ``reliability_<key>``,
#: present (empty when the checks did not run) for the same reason.
RELIABILITY_FIELDS = ("values_reliable", "lungs_complete", "orientation_consistent")


#: Keys of ``report["prognosis"]`` copied to the row as ``prognosis_<key>``,
#: present (empty when not estimated) for the same reason.
PROGNOSIS_FIELDS = ("status", "model", "probability_severe", "predicted_class")


def _measure_values(
    measures: Mapping[str, Any] | None, section: str
) -> dict[str, object]:
    """Take the ``value`` of each ``{"value": ..., "unit": ...}`` entry."""
    values: dict[str, object] = {}
    for key, entry in (measures or {}).items():
        if not isinstance(entry, Mapping) or "value" not in entry:
            raise ValueError(
                f'report["{section}"]["{key}"] must be a dict with "value" and '
                f'"unit", got {entry!r}'
            )
        values[str(key)] = entry["value"]
    return values


def _add_columns(
    row: dict[str, object], columns: Mapping[str, object], section: str
) -> None:
    for key, value in columns.items():
        if key in row:
            raise ValueError(
                f'column "{key}" of report["{section}"] is already in the '
                "biomarker row: rename one of the two keys"
            )
        row[key] = value


def biomarker_row(report: Mapping[str, Any]) -> dict[str, object]:
    """Flatten the numbers of a report into one table row.

    Columns come in this order: the biomarker values (column = key), the zone
    values if the report has zones, the stage as ``stage_<key>`` for each key
    of ``STAGE_FIELDS``, the outcome estimate as ``prognosis_<key>`` for each
    key of ``PROGNOSIS_FIELDS``, the anatomical checks as ``reliability_<key>``
    for each key of ``RELIABILITY_FIELDS``, then the radiomics features
    (column = key). Units are not part of the row: they are in
    ``report.json`` and in the HTML report.

    Args:
        report: The report dict described in ``covidct.report``.

    Returns:
        Column name to value: int, float, str or None (missing, NaN or
        infinite), in column order.

    Raises:
        ValueError: If a biomarker or zone entry has no ``value``, or if two
            sections share a column name.
    """
    row: dict[str, object] = {}
    _add_columns(
        row, _measure_values(report.get("biomarkers"), "biomarkers"), "biomarkers"
    )
    _add_columns(row, _measure_values(report.get("zones"), "zones"), "zones")
    stage = report.get("stage") or {}
    _add_columns(row, {f"stage_{key}": stage.get(key) for key in STAGE_FIELDS}, "stage")
    prognosis = report.get("prognosis") or {}
    _add_columns(
        row,
        {f"prognosis_{key}": prognosis.get(key) for key in PROGNOSIS_FIELDS},
        "prognosis",
    )
    reliability = report.get("reliability") or {}
    _add_columns(
        row,
        {f"reliability_{key}": reliability.get(key) for key in RELIABILITY_FIELDS},
        "reliability",
    )
    radiomics = report.get("radiomics") or {}
    _add_columns(
        row, {str(key): value for key, value in radiomics.items()}, "radiomics"
    )
    return to_jsonable(row, "biomarker row")


def row_csv(row: Mapping[str, object]) -> str:
    """Format a row as CSV text: a header line and one data line.

    None becomes an empty cell, and floats keep every digit of Python's
    shortest round-trip representation.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(list(row))
    writer.writerow(["" if value is None else value for value in row.values()])
    return buffer.getvalue()
