"""Compare the inputs of the bundled outcome models on real scans with the cohort.

Run ``covidct analyze STUDY -o OUT --json > STUDY.json`` first for each scan, then::

    .venv/bin/python benchmarks/prognosis.py P002.json normal001.json

For each feature that a bundled model reads, the script prints the scan's value,
its z-score against the training split of the Covid-MedIA cohort and whether it
lies outside the training minimum and maximum, as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from covidct.prognosis.data import BASE_INPUTS, CLINICAL_INPUTS
from covidct.prognosis.model import BUNDLED_MODELS, OUT_OF_RANGE_Z
from covidct.prognosis.predict import load_bundled_model

PATIENT_INPUTS = (*BASE_INPUTS, *CLINICAL_INPUTS)


def _measures(report_path: Path) -> dict[str, float | None]:
    report = json.loads(report_path.read_text(encoding="utf-8"))
    measures = {key: entry["value"] for key, entry in report["biomarkers"].items()}
    measures.update(report.get("radiomics") or {})
    return measures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", type=Path, nargs="+", help="report.json files")
    args = parser.parse_args()
    scans = {path.stem: _measures(path) for path in args.reports}
    features: dict[str, dict[str, float]] = {}
    for name in BUNDLED_MODELS:
        model = load_bundled_model(name)
        for feature in model.features:
            features.setdefault(feature, model.reference[feature])
    header = " | ".join(f"{scan} value | z" for scan in scans)
    print(f"| feature | training range | {header} |")
    print("|---|---|" + "---|---|" * len(scans))
    for feature, stats in features.items():
        cells = []
        for measures in scans.values():
            value = measures.get(feature)
            if feature in PATIENT_INPUTS:
                cells.append("patient input | –")
                continue
            if value is None:
                cells.append("undefined | –")
                continue
            z = (value - stats["mean"]) / stats["std"]
            outside = value < stats["min"] or value > stats["max"]
            mark = " **out**" if outside or abs(z) > OUT_OF_RANGE_Z else ""
            cells.append(f"{value:.4g} | {z:+.2f}{mark}")
        print(
            f"| `{feature}` | {stats['min']:.4g} to {stats['max']:.4g} | "
            + " | ".join(cells)
            + " |"
        )


if __name__ == "__main__":
    main()
