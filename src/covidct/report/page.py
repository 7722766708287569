"""The self-contained HTML report: one file with inline CSS and embedded images.

The page loads nothing: images are ``data:`` URIs, the CSS is inline, there is
no script, and a Content-Security-Policy forbids any other source. Every text
that comes from the report is escaped, because series descriptions, file names
and warnings come from the user's files.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from typing import Any

from covidct.report.masks import LABEL_COLOURS, LABEL_MAP_NAME
from covidct.report.views import (
    LUNG_WINDOW_LEVEL_HU,
    LUNG_WINDOW_WIDTH_HU,
    View,
)
from covidct.segment.result import LABELS

__all__ = ["render_page"]

# Maximum rows shown of a list such as skipped_files. report.json lists all.
_MAX_LIST_ROWS = 100

_MISSING = '<span class="missing" title="not computed">—</span>'

_CSS = """
:root { --ink: #1d232a; --muted: #5b6670; --line: #d8dde2; --accent: #0b5cad; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #f4f6f8;
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
main { max-width: 1280px; margin: 0 auto; padding: 16px 20px 40px; }
h1 { font-size: 22px; margin: 0; }
h2 { font-size: 18px; margin: 0 0 10px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 6px;
  padding: 14px 18px; margin: 14px 0; }
header { display: flex; flex-wrap: wrap; gap: 16px; align-items: stretch;
  justify-content: space-between; }
header .title { padding: 6px 0; }
header .source { color: var(--muted); margin: 4px 0 0; word-break: break-all; }
#stage { margin: 0; border-left: 6px solid var(--accent); min-width: 320px; }
#stage .label { color: var(--muted); font-size: 13px; text-transform: uppercase;
  letter-spacing: .04em; }
#stage .name { font-size: 28px; font-weight: 700; text-transform: capitalize; }
#stage .detail { font-size: 16px; }
#warnings.some { background: #fff4d6; border: 2px solid #c98a00; }
#warnings.some h2 { color: #7a4b00; }
#warnings.none { color: var(--muted); }
#reliability.unreliable { background: #fde8e8; border: 2px solid #b42318; }
#reliability.unreliable h2 { color: #8a1c12; }
#reliability.reliable { color: var(--muted); }
#reliability ul { margin: 0; padding-left: 20px; }
#warnings ul { margin: 0; padding-left: 20px; }
#warnings li { margin: 3px 0; }
.controls { display: flex; flex-wrap: wrap; gap: 8px 20px; align-items: center;
  margin-bottom: 10px; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 16px; margin: 0; padding: 0;
  list-style: none; }
.swatch { display: inline-block; width: 14px; height: 14px; margin-right: 5px;
  vertical-align: -2px; border-radius: 2px; }
.swatch.outline { background: transparent; border: 3px solid; }
.note { color: var(--muted); font-size: 13px; margin: 4px 0 10px; }
.views { display: grid; gap: 12px;
  grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); align-items: start; }
figure { margin: 0; }
figcaption { font-size: 13px; color: var(--muted); margin-bottom: 4px; }
figcaption b { color: var(--ink); }
.frame { position: relative; background: #000; line-height: 0; }
.frame img { display: block; width: 100%; height: auto; }
.frame img.overlay { position: absolute; left: 0; top: 0; }
#show-masks:not(:checked) ~ .views .overlay { visibility: hidden; }
.edge { position: absolute; color: #fff; font: 600 13px/1 system-ui, sans-serif;
  text-shadow: 0 0 3px #000; }
.edge.top { top: 4px; left: 50%; transform: translateX(-50%); }
.edge.bottom { bottom: 4px; left: 50%; transform: translateX(-50%); }
.edge.left { left: 5px; top: 50%; transform: translateY(-50%); }
.edge.right { right: 5px; top: 50%; transform: translateY(-50%); }
.level { position: absolute; left: 0; right: 0; height: 0;
  border-top: 1px dashed rgba(255, 255, 255, .55); }
.level span { position: absolute; right: 20px; top: -8px; color: #fff;
  font: 600 11px/1 system-ui, sans-serif; text-shadow: 0 0 3px #000; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { background: #eef1f4; font-weight: 600; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td .key { display: block; color: var(--muted); font-size: 12px;
  font-family: ui-monospace, monospace; }
.missing { color: var(--muted); }
.columns { display: grid; gap: 14px;
  grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); }
.columns { align-items: start; }
.columns section { margin: 0 0 14px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 14px;
  margin: 0 0 10px; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; word-break: break-all; }
h3 { font-size: 15px; margin: 14px 0 6px; }
details summary { cursor: pointer; font-weight: 600; font-size: 16px; }
details table { margin-top: 10px; }
footer { color: var(--muted); font-size: 13px; margin-top: 16px; }
@media print { body { background: #fff; } section { break-inside: avoid; } }
"""

_CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    "form-action 'none'; base-uri 'none'"
)


def _escape(value: object) -> str:
    return html.escape(str(value), quote=True)


def _format_number(value: float, significant: int = 3) -> str:
    """Format a measurement with a precision that suits its magnitude."""
    magnitude = abs(value)
    if magnitude == 0:
        return "0"
    if magnitude >= 1000:
        return f"{value:.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.{significant}g}"


def _format_value(value: object) -> str:
    """Format any report value as escaped HTML, with a dash for None."""
    if value is None:
        return _MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return _escape(value)
    if isinstance(value, float):
        return _escape(_format_number(value))
    if isinstance(value, str):
        return _escape(value)
    if isinstance(value, Mapping):
        return "<br>".join(
            f"{_escape(_readable(str(key)))}: {_format_value(item)}"
            for key, item in value.items()
        )
    return _escape(json.dumps(value, ensure_ascii=False))


# Abbreviations that read as words once underscores become spaces.
_ACRONYMS = {"ggo": "GGO", "hu": "HU", "ct": "CT", "uid": "UID", "crp": "CRP"}


def _readable(key: str) -> str:
    words = [_ACRONYMS.get(word, word) for word in key.replace("_", " ").split()]
    text = " ".join(words)
    return text[:1].upper() + text[1:]


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _header(report: Mapping[str, Any]) -> str:
    source = (report.get("input") or {}).get("source")
    source_html = "" if source is None else _escape(source)
    stage = report.get("stage")
    if not stage:
        stage_html = '<div class="name">Stage not available</div>'
    else:
        extent = stage.get("extent_percent")
        if isinstance(extent, (int, float)) and not isinstance(extent, bool):
            extent_html = _escape(f"{extent:.1f} %")
        else:
            extent_html = _format_value(extent)
        stage_html = (
            f'<div class="label">Severity stage</div>'
            f'<div class="name">{_format_value(stage.get("category_name"))}</div>'
            f'<div class="detail">Disease extent <b>{extent_html}</b>'
            f" · category {_format_value(stage.get('category'))}"
            f" · <b>{_format_value(stage.get('ct_grade_name'))}</b>"
            f" (CT grade {_format_value(stage.get('ct_grade'))})</div>"
        )
    return (
        "<header>"
        '<div class="title"><h1>Chest CT report: COVID-19 pneumonia</h1>'
        f'<p class="source">{source_html}</p></div>'
        f'<section id="stage">{stage_html}</section>'
        "</header>"
    )


def _warnings(report: Mapping[str, Any]) -> str:
    warnings = report.get("warnings") or []
    if not warnings:
        return '<section id="warnings" class="none"><h2>Warnings: none</h2></section>'
    items = "".join(f"<li>{_escape(warning)}</li>" for warning in warnings)
    return (
        f'<section id="warnings" class="some"><h2>Warnings ({len(warnings)})</h2>'
        f"<ul>{items}</ul></section>"
    )


def _reliability(report: Mapping[str, Any]) -> str:
    """Show the outcome of the anatomical checks; nothing when they did not run."""
    reliability = report.get("reliability")
    if not isinstance(reliability, Mapping):
        return ""
    if reliability.get("values_reliable"):
        return (
            '<section id="reliability" class="reliable"><h2>Anatomical checks: '
            "passed</h2><p>The lungs lie inside the scan and the anatomy agrees "
            "with the header's axis directions.</p></section>"
        )
    reasons = reliability.get("reasons") or []
    items = "".join(f"<li>{_escape(reason)}</li>" for reason in reasons)
    return (
        '<section id="reliability" class="unreliable"><h2>Values unreliable</h2>'
        f"<p>Lungs complete: {_format_value(reliability.get('lungs_complete'))}. "
        "Orientation consistent with the header: "
        f"{_format_value(reliability.get('orientation_consistent'))}.</p>"
        f"<ul>{items}</ul></section>"
    )


def _figure(view: View) -> str:
    edges = "".join(
        f'<span class="edge {side}">{_escape(letter)}</span>'
        for side, letter in view.orientation.items()
    )
    levels = "".join(
        f'<div class="level" style="top: {100 * fraction:.2f}%">'
        f"<span>{_escape(title)}</span></div>"
        for title, fraction in view.levels
    )
    size = f'width="{view.width}" height="{view.height}"'
    return (
        f'<figure class="view {_escape(view.plane)}">'
        f"<figcaption><b>{_escape(view.title)}</b> {_escape(view.caption)}"
        "</figcaption>"
        '<div class="frame">'
        f'<img class="ct" src="{_data_uri(view.ct_png)}" {size} '
        f'alt="{_escape(view.title)}: CT in the lung window">'
        f'<img class="overlay" src="{_data_uri(view.overlay_png)}" {size} '
        f'alt="{_escape(view.title)}: masks">'
        f"{edges}{levels}</div></figure>"
    )


def _legend() -> str:
    items = []
    for value, name in LABELS.items():
        colour = "#{:02x}{:02x}{:02x}".format(*LABEL_COLOURS[value])
        if value in (1, 2):
            swatch = f'<span class="swatch outline" style="border-color: {colour}">'
            name = f"{name} (outline)"
        else:
            swatch = f'<span class="swatch" style="background: {colour}">'
        items.append(f"<li>{swatch}</span>{_escape(name)}</li>")
    return f'<ul class="legend">{"".join(items)}</ul>'


def _images(report: Mapping[str, Any], views: Sequence[View]) -> str:
    method = (report.get("segmentation") or {}).get("method")
    # The coronal overview comes first, then the axial images from superior to
    # inferior, whose levels the coronal image marks.
    ordered = [v for v in views if v.plane == "coronal"]
    ordered += [v for v in views if v.plane != "coronal"]
    figures = "".join(_figure(view) for view in ordered)
    return (
        '<section id="images"><h2>Images</h2>'
        '<input type="checkbox" id="show-masks" checked>'
        '<label for="show-masks"> Show masks</label>'
        f'<div class="controls">{_legend()}</div>'
        f'<p class="note">Lung window W {LUNG_WINDOW_WIDTH_HU:.0f} / '
        f"L {LUNG_WINDOW_LEVEL_HU:.0f} HU. Radiological convention: the "
        "patient's right is on the image's left. Dashed lines on the coronal "
        "image mark the axial images. Segmentation method: "
        f"{_format_value(method)}.</p>"
        f'<div class="views">{figures}</div></section>'
    )


def _measure_table(measures: Mapping[str, Any], first_column: str) -> str:
    rows = []
    for key, entry in measures.items():
        if isinstance(entry, Mapping):
            value, unit = entry.get("value"), entry.get("unit")
        else:
            value, unit = entry, None
        unit_html = "" if unit is None else _escape(unit)
        rows.append(
            f"<tr><td>{_escape(_readable(key))}"
            f'<span class="key">{_escape(key)}</span></td>'
            f'<td class="num">{_format_value(value)}</td><td>{unit_html}</td></tr>'
        )
    return (
        f"<table><thead><tr><th>{_escape(first_column)}</th><th class='num'>Value</th>"
        f"<th>Unit</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _measures(report: Mapping[str, Any]) -> str:
    biomarkers = report.get("biomarkers") or {}
    parts = ['<section id="biomarkers"><h2>Biomarkers</h2>']
    if biomarkers:
        parts.append(_measure_table(biomarkers, "Biomarker"))
    else:
        parts.append("<p>No biomarker was computed.</p>")
    zones = report.get("zones")
    if zones:
        parts.append(
            '<h3>Zones</h3><p class="note">Upper, middle and lower thirds of '
            "each lung from apex to base, cut by slice count; they are not "
            "lobes.</p>"
        )
        parts.append(_measure_table(zones, "Zone measure"))
    parts.append("</section>")
    return "".join(parts)


def _prognosis(report: Mapping[str, Any]) -> str:
    prognosis = report.get("prognosis")
    if prognosis is None:
        return ""
    if isinstance(prognosis, Mapping) and prognosis.get("status") == "estimated":
        body = _prognosis_estimate(prognosis)
    elif isinstance(prognosis, Mapping) and prognosis.get("status"):
        body = f"<p>{_escape(prognosis.get('reason', prognosis['status']))}</p>"
    elif isinstance(prognosis, Mapping):
        body = _measure_table(prognosis, "Item")
    else:
        body = f"<p>{_format_value(prognosis)}</p>"
    return f'<section id="prognosis"><h2>Prognosis</h2>{body}</section>'


def _prognosis_estimate(prognosis: Mapping[str, Any]) -> str:
    """Format the estimate of ``covidct.prognosis.predict.estimate_prognosis``."""
    severe = float(prognosis["probability_severe"])
    parts = [
        f"<p>Probability of a severe outcome (intubation or death within 4 days): "
        f"<strong>{100 * severe:.0f} %</strong>, predicted "
        f"<strong>{_escape(prognosis.get('predicted_class'))}</strong> "
        f"({_escape(prognosis.get('decision_rule'))}). Model: "
        f"{_escape(prognosis.get('model'))}.</p>"
    ]
    three = prognosis.get("three_class")
    if isinstance(three, Mapping):
        rows = [
            {"outcome": name, "probability": f"{100 * float(value):.0f} %"}
            for name, value in three.get("probabilities", {}).items()
        ]
        parts.append(
            f"<h3>Three outcomes (predicted: "
            f"{_escape(three.get('predicted_class'))})</h3>{_records_table(rows)}"
        )
    for key, title in (
        ("risk_up", "Inputs that raised the risk most"),
        ("risk_down", "Inputs that lowered the risk most"),
        ("out_of_range", "Inputs outside the training cohort's range"),
    ):
        if prognosis.get(key):
            parts.append(f"<h3>{title}</h3>{_records_table(prognosis[key])}")
    if prognosis.get("imputed_inputs"):
        parts.append(
            '<p class="note">Set to the training median: '
            f"{_escape(', '.join(prognosis['imputed_inputs']))}.</p>"
        )
    parts.append(f'<p class="note">{_escape(prognosis.get("intended_use"))}</p>')
    return "".join(parts)


def _records_table(records: Sequence[Any]) -> str:
    """Format a list of dicts as a table whose columns are all their keys."""
    visible = list(records[:_MAX_LIST_ROWS])
    columns: list[str] = []
    for record in visible:
        if isinstance(record, Mapping):
            columns += [str(key) for key in record if str(key) not in columns]
    if not columns:
        body = "".join(f"<tr><td>{_format_value(r)}</td></tr>" for r in visible)
        table = f"<table><tbody>{body}</tbody></table>"
    else:
        head = "".join(f"<th>{_escape(_readable(c))}</th>" for c in columns)
        body = "".join(
            "<tr>"
            + "".join(
                f"<td>{_format_value(record.get(c))}</td>"
                if isinstance(record, Mapping)
                else f"<td>{_format_value(record)}</td>"
                for c in columns
            )
            + "</tr>"
            for record in visible
        )
        table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if len(records) > len(visible):
        table += (
            f'<p class="note">{len(visible)} of {len(records)} shown. '
            "report.json lists all.</p>"
        )
    return table


def _numbers(values: object, digits: int) -> str:
    """Format a list of numbers with ``digits`` decimals, separated by commas."""
    if not isinstance(values, Sequence) or isinstance(values, str):
        return _format_value(values)
    parts = []
    for value in values:
        if isinstance(value, float):
            parts.append(_escape(f"{value:.{digits}f}"))
        else:
            parts.append(_format_value(value))
    return ", ".join(parts)


def _direction(values: object) -> str:
    if isinstance(values, Sequence) and len(values) == 9:
        rows = [values[i : i + 3] for i in (0, 3, 6)]
        return "<br>".join(_numbers(row, 4) for row in rows)
    if isinstance(values, Sequence) and len(values) == 3:
        return "<br>".join(_numbers(row, 4) for row in values)
    return _format_value(values)


def _input(report: Mapping[str, Any]) -> str:
    source = report.get("input") or {}
    facts = [
        ("Source", _format_value(source.get("source"))),
        ("Kind", _format_value(source.get("kind"))),
        ("Series description", _format_value(source.get("series_description"))),
        ("Series UID", _format_value(source.get("series_uid"))),
        ("Selection rule", _format_value(source.get("selection_rule"))),
        ("Slices", _format_value(source.get("slice_count"))),
        ("Shape (z, y, x)", _numbers(source.get("shape"), 0)),
        ("Spacing (x, y, z)", _numbers(source.get("spacing_mm"), 3) + " mm"),
        ("Origin (x, y, z)", _numbers(source.get("origin_mm"), 2) + " mm, LPS"),
        ("Direction", _direction(source.get("direction"))),
    ]
    known = {
        "source",
        "kind",
        "series_description",
        "series_uid",
        "selection_rule",
        "slice_count",
        "shape",
        "spacing_mm",
        "origin_mm",
        "direction",
        "rejected_series",
        "skipped_files",
    }
    facts += [
        (_readable(key), _format_value(value))
        for key, value in source.items()
        if key not in known
    ]
    parts = ['<section id="input"><h2>Input</h2><dl class="facts">']
    parts += [f"<dt>{_escape(name)}</dt><dd>{value}</dd>" for name, value in facts]
    parts.append("</dl>")
    for key, title in (
        ("rejected_series", "Rejected series"),
        ("skipped_files", "Skipped files"),
    ):
        records = source.get(key) or []
        parts.append(f"<h3>{title} ({len(records)})</h3>")
        parts.append(_records_table(records) if records else "<p>none</p>")
    parts.append("</section>")
    return "".join(parts)


def _run(report: Mapping[str, Any]) -> str:
    software = report.get("software") or {}
    timings = report.get("timings_s") or {}
    rows = "".join(
        f'<tr><td>{_escape(stage)}</td><td class="num">{_format_value(seconds)}</td>'
        "</tr>"
        for stage, seconds in timings.items()
    )
    numbers = [s for s in timings.values() if isinstance(s, (int, float))]
    total = f"{sum(numbers):.1f}" if numbers else "—"
    return (
        '<section id="run"><h2>Software and timings</h2><dl class="facts">'
        f"<dt>Software</dt><dd>{_format_value(software.get('name'))} "
        f"{_format_value(software.get('version'))}</dd></dl>"
        "<table><thead><tr><th>Stage</th><th class='num'>Time (s)</th></tr></thead>"
        f"<tbody>{rows}</tbody><tfoot><tr><th>Total</th>"
        f'<th class="num">{_escape(total)}</th></tr></tfoot></table></section>'
    )


def _radiomics(report: Mapping[str, Any]) -> str:
    radiomics = report.get("radiomics") or {}
    if not radiomics:
        return '<section id="radiomics"><h2>Radiomics</h2><p>none</p></section>'
    rows = []
    for name, value in radiomics.items():
        # Features span many magnitudes, so they keep six significant digits.
        text = _escape(f"{value:.6g}") if isinstance(value, float) else None
        rows.append(
            f'<tr><td>{_escape(name)}</td><td class="num">'
            f"{text or _format_value(value)}</td></tr>"
        )
    return (
        '<section id="radiomics"><details>'
        f"<summary>Radiomics features ({len(radiomics)} values; shape features "
        "in mm, mm² and mm³ on a 1 mm grid, the others on z-scored intensities)"
        "</summary>"
        "<table><thead><tr><th>Feature</th><th class='num'>Value</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></details></section>"
    )


def render_page(report: Mapping[str, Any], views: Sequence[View]) -> str:
    """Build the HTML report.

    Args:
        report: The report dict described in ``covidct.report``, with plain
            JSON values (see ``to_jsonable``).
        views: The images from ``render_views``.

    Returns:
        The complete HTML document.
    """
    source = (report.get("input") or {}).get("source") or ""
    software = report.get("software") or {}
    footer = (
        f"<footer>Written by {_format_value(software.get('name'))} "
        f"{_format_value(software.get('version'))}. The same numbers are in "
        "report.json and biomarkers.csv, and the masks are in "
        f"{_escape(LABEL_MAP_NAME)} on the grid of the CT.</footer>"
    )
    body = [
        _header(report),
        _reliability(report),
        _warnings(report),
        _images(report, views),
        '<div class="columns">',
        _measures(report),
        "<div>",
        _prognosis(report),
        _input(report),
        _run(report),
        "</div></div>",
        _radiomics(report),
        footer,
    ]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>covidct report: {_escape(source)}</title>"
        f"<style>{_CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )
