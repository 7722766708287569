"""The cohort page: distribution plots and a table that links each study's report."""

from __future__ import annotations

import base64
import html
import io
import math
from collections import Counter
from collections.abc import Mapping, Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from covidct.cohort.store import StudyRecord
from covidct.cohort.task import StudyTask

__all__ = ["COHORT_HTML", "render_cohort_page", "risk_columns"]

COHORT_HTML = "cohort.html"

EXTENT_COLUMN = "Disease_extent"
STAGE_COLUMN = "stage_category_name"

_CSS = """
body { margin: 0; color: #1d232a; background: #f4f6f8;
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
main { max-width: 1280px; margin: 0 auto; padding: 16px 20px 40px; }
section { background: #fff; border: 1px solid #d8dde2; border-radius: 6px;
  padding: 14px 18px; margin: 14px 0; }
h1 { font-size: 22px; margin: 0; } h2 { font-size: 18px; margin: 0 0 10px; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; }
.plots img { max-width: 100%; height: auto; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { border-bottom: 1px solid #d8dde2; padding: 4px 8px; text-align: left; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
tr.failed td { background: #fff1f0; }
tr.pending td { color: #5b6670; }
"""

_CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    "form-action 'none'; base-uri 'none'"
)


def risk_columns(columns: Sequence[str]) -> list[str]:
    """Return the predicted-risk columns of cohort.csv to plot against extent.

    ``covidct.report.biomarker_row`` writes the estimated probability of a
    severe outcome as ``prognosis_probability_severe``.
    """
    return [name for name in columns if name == "prognosis_probability_severe"]


def render_cohort_page(
    tasks: Sequence[StudyTask],
    records: Mapping[str, StudyRecord],
    columns: Sequence[str],
) -> str:
    """Build the self-contained cohort page.

    Args:
        tasks: The studies of the batch, in table order.
        records: State of each study by study id.
        columns: Header of cohort.csv, to find the risk columns.
    """
    done = [records[t.study_id] for t in tasks if records[t.study_id].status == "done"]
    counts = Counter(records[t.study_id].status for t in tasks)
    summary = ", ".join(
        f"{counts[name]} {name}" for name in ("done", "failed", "pending")
    )
    plots = [_extent_histogram(done), _stage_counts(done)]
    plots += [_risk_scatter(done, name) for name in risk_columns(columns)]
    images = "".join(
        f'<img alt="{html.escape(alt)}" src="{_png_uri(figure)}">'
        for alt, figure in plots
        if figure is not None
    )
    if not images:
        images = "<p>No study is done yet.</p>"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        "<title>covidct cohort</title>"
        f"<style>{_CSS}</style></head><body><main>"
        f"<h1>Cohort of {len(tasks)} studies</h1><p>{html.escape(summary)}</p>"
        f'<section><h2>Distributions</h2><div class="plots">{images}</div></section>'
        f"<section><h2>Studies</h2>{_study_table(tasks, records)}</section>"
        "</main></body></html>\n"
    )


def _study_table(tasks: Sequence[StudyTask], records: Mapping[str, StudyRecord]) -> str:
    rows = []
    for task in tasks:
        record = records[task.study_id]
        name = html.escape(task.study_id)
        if record.status == "done":
            link = f'<a href="{html.escape(task.study_id)}/report.html">{name}</a>'
            extent = _number(record.row.get(EXTENT_COLUMN))
            stage = html.escape(record.row.get(STAGE_COLUMN, ""))
            note = ""
        else:
            link, extent, stage = name, "", ""
            failure = record.failure
            note = (
                f"{failure.get('stage', '')}: {failure.get('message', '')}"
                if record.status == "failed"
                else ""
            )
        rows.append(
            f'<tr class="{record.status}"><td>{link}</td><td>{record.status}</td>'
            f'<td class="number">{extent}</td><td>{stage}</td>'
            f"<td>{html.escape(note)}</td></tr>"
        )
    return (
        "<table><thead><tr><th>Study</th><th>Status</th><th>Extent (%)</th>"
        "<th>Stage</th><th>Failure</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _values(records: Sequence[StudyRecord], column: str) -> list[float]:
    values = []
    for record in records:
        value = _float(record.row.get(column))
        if value is not None:
            values.append(value)
    return values


def _extent_histogram(records: Sequence[StudyRecord]) -> tuple[str, Figure | None]:
    alt = "Histogram of disease extent"
    values = _values(records, EXTENT_COLUMN)
    if not values:
        return alt, None
    figure, axes = _new_figure()
    axes.hist(values, bins=min(20, max(5, len(values))), range=(0, 100))
    axes.set_xlabel("Disease extent (% of lung volume)")
    axes.set_ylabel("Studies")
    axes.set_title("Extent")
    return alt, figure


def _stage_counts(records: Sequence[StudyRecord]) -> tuple[str, Figure | None]:
    alt = "Number of studies per stage"
    counts = Counter(r.row.get(STAGE_COLUMN, "") for r in records)
    counts.pop("", None)
    if not counts:
        return alt, None
    figure, axes = _new_figure()
    names = sorted(counts)
    axes.bar(names, [counts[name] for name in names])
    axes.set_ylabel("Studies")
    axes.set_title("Stage")
    axes.tick_params(axis="x", labelrotation=30)
    figure.tight_layout()
    return alt, figure


def _risk_scatter(
    records: Sequence[StudyRecord], column: str
) -> tuple[str, Figure | None]:
    alt = f"{column} against disease extent"
    pairs = [
        (_float(r.row.get(EXTENT_COLUMN)), _float(r.row.get(column))) for r in records
    ]
    points = [(x, y) for x, y in pairs if x is not None and y is not None]
    if not points:
        return alt, None
    figure, axes = _new_figure()
    axes.scatter([x for x, _ in points], [y for _, y in points], s=14)
    axes.set_xlabel("Disease extent (% of lung volume)")
    axes.set_ylabel(column)
    axes.set_title("Predicted risk against extent")
    figure.tight_layout()
    return alt, figure


def _new_figure() -> tuple[Figure, Axes]:
    # A Figure made without pyplot draws with the Agg canvas and leaves the
    # application's matplotlib backend alone.
    figure = Figure(figsize=(5, 3.4), dpi=100)
    return figure, figure.subplots()


def _png_uri(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _float(text: str | None) -> float | None:
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _number(text: str | None) -> str:
    value = _float(text)
    return "" if value is None else f"{value:.1f}"
