"""Train, evaluate and document a model in one call, for the command line."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from covidct.errors import InputError
from covidct.prognosis.data import (
    CLASSES_3,
    Cohort,
    load_cohort_table,
    load_covid_media,
)
from covidct.prognosis.evaluate import evaluate_model
from covidct.prognosis.model import PrognosisModel, load_model, save_model
from covidct.prognosis.train import TrainingOptions, train_prognosis

__all__ = [
    "evaluation_markdown",
    "load_cohort",
    "model_card",
    "run_evaluation",
    "run_training",
]

logger = logging.getLogger(__name__)

_ARTICLE = (
    'Chassagnon et al., "AI-driven quantification, staging and outcome prediction '
    'of COVID-19 pneumonia", Medical Image Analysis 67:101860 (2021)'
)


def load_cohort(source: str | Path, outcome: str | None = None) -> Cohort:
    """Read a Covid-MedIA folder, or a cohort CSV with its outcome column.

    Raises:
        InputError: If the source is missing, or a CSV comes without ``outcome``.
    """
    source = Path(source)
    if source.is_dir():
        return load_covid_media(source)
    if outcome is None:
        raise InputError(
            "a cohort table needs the name of its outcome column",
            source,
            "pass --outcome COLUMN",
        )
    return load_cohort_table(source, outcome)


def run_training(
    cohort: Cohort, options: TrainingOptions, out_dir: Path, name: str | None = None
) -> tuple[PrognosisModel, dict[str, Path]]:
    """Train on the training split, evaluate on the test split, write all files.

    Writes ``<name>.skops``, the model card ``<name>.md``, the evaluation page
    ``evaluation_<name>.md`` with its plots and ``metrics_<name>.json``.
    """
    model = train_prognosis(cohort, options, name=name)
    metrics = evaluate_model(model, cohort, plots=out_dir)
    model.metadata["test_metrics"] = {
        "binary": metrics["binary"],
        "three_class": metrics["three_class"],
    }
    paths = {
        "model": save_model(model, out_dir / f"{model.name}.skops"),
        "card": _write(out_dir / f"{model.name}.md", model_card(model, metrics)),
        "evaluation": _write(
            out_dir / f"evaluation_{model.name}.md", evaluation_markdown(model, metrics)
        ),
        "metrics": _write(
            out_dir / f"metrics_{model.name}.json", json.dumps(metrics, indent=2) + "\n"
        ),
    }
    return model, paths


def run_evaluation(
    model_path: Path, cohort: Cohort, out_dir: Path
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Evaluate a saved model on a cohort's test split; write the page and plots."""
    model = load_model(model_path)
    missing = [name for name in model.features if name not in cohort.features.columns]
    if missing:
        raise InputError(
            f"the cohort lacks the model input(s) {', '.join(missing)}",
            cohort.source,
            "add the columns or train a model on this cohort with train-prognosis",
        )
    metrics = evaluate_model(model, cohort, plots=out_dir)
    paths = {
        "evaluation": _write(
            out_dir / f"evaluation_{model.name}.md", evaluation_markdown(model, metrics)
        ),
        "metrics": _write(
            out_dir / f"metrics_{model.name}.json", json.dumps(metrics, indent=2) + "\n"
        ),
    }
    return metrics, paths


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _metrics_rows(name: str, values: dict[str, Any]) -> str:
    auc = values.get("auc", values.get("auc_macro_ovr"))
    interval = values.get("auc_95ci")
    if auc is None:
        auc_text = "–"
    elif interval is None:
        auc_text = f"{auc:.3f}"
    else:
        auc_text = f"{auc:.3f} ({interval[0]:.3f}–{interval[1]:.3f})"

    def cell(key: str) -> str:
        value = values.get(key)
        return "–" if value is None else f"{value:.3f}"

    return (
        f"| {name} | {auc_text} | {cell('balanced_accuracy')} | "
        f"{cell('sensitivity')} | {cell('specificity')} |"
    )


def evaluation_markdown(model: PrognosisModel, metrics: dict[str, Any]) -> str:
    """Format the test figures, baselines and selected features as Markdown."""
    binary = metrics["binary"]
    lines = [
        f"# Test figures of the `{model.name}` model",
        "",
        f"Data: {Path(str(model.metadata.get('data'))).name}. "
        f"Split: {model.metadata.get('split')}.",
        "",
        f"## Severe versus non-severe ({binary['patients']} test patients, "
        f"{binary['severe']} severe)",
        "",
        "| model | AUC (95 % bootstrap CI) | balanced accuracy | sensitivity | "
        "specificity |",
        "|---|---|---|---|---|",
        _metrics_rows(f"covidct `{model.name}` ({model.binary.consensus})", binary),
    ]
    names = {
        "extent_alone": "Disease_extent alone",
        "extent_above_25_percent": "rule: extent > 25 %",
        "clinical_logistic_regression": "logistic regression, clinical variables",
    }
    for key, values in metrics["baselines"].items():
        lines.append(_metrics_rows(names[key], values))
    lines += [
        "",
        "Confusion matrix (rows: true non-severe, severe; columns: predicted): "
        f"`{binary['confusion_matrix']}`.",
        "",
        f"![ROC curves](roc_{model.name}.png) "
        f"![Calibration](calibration_{model.name}.png)",
        "",
    ]
    three = metrics.get("three_class")
    if three:
        recall = ", ".join(
            f"{name} {value:.3f}"
            for name, value in zip(CLASSES_3, three["recall_per_class"], strict=True)
        )
        lines += [
            f"## Non-severe, intubated, deceased ({three['patients']} test patients)",
            "",
            f"- AUC, macro one-versus-rest: {three['auc_macro_ovr']:.3f} "
            f"(95 % CI {three['auc_95ci'][0]:.3f}–{three['auc_95ci'][1]:.3f})",
            f"- balanced accuracy: {three['balanced_accuracy']:.3f}",
            f"- recall per class: {recall}",
            f"- confusion matrix (rows true, columns predicted, order "
            f"{', '.join(CLASSES_3)}): `{three['confusion_matrix']}`",
            "",
        ]
    lines += _model_description(model)
    return "\n".join(lines) + "\n"


def _model_description(model: PrognosisModel) -> list[str]:
    lines = []
    tasks = [("2 classes", model.binary), ("3 classes", model.three_class)]
    for title, outcome in tasks:
        if outcome is None:
            continue
        used = [member["name"] for member in outcome.members if member["used"]]
        lines += [
            f"## Selected features, {title}",
            "",
            f"Consensus: {outcome.consensus} of {', '.join(used)}. Cross-validated "
            "balanced accuracy on the training split per consensus: "
            + ", ".join(f"{k} {v:.3f}" for k, v in outcome.consensus_scores.items())
            + ".",
            "",
            "| feature | prevalence |",
            "|---|---|",
        ]
        lines += [
            f"| `{name}` | {outcome.prevalence[name]:.2f} |"
            for name in outcome.features
        ]
        lines += [
            "",
            "| member | validation balanced accuracy | train balanced accuracy | "
            "used | parameters |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {m['name']} | {m['validation_balanced_accuracy']:.3f} | "
            f"{m['train_balanced_accuracy']:.3f} | {'yes' if m['used'] else 'no'} | "
            f"{m['params']} |"
            for m in outcome.members
        ]
        lines.append("")
    return lines


def model_card(model: PrognosisModel, metrics: dict[str, Any]) -> str:
    """Write the model card: data, split, features, test figures, use and limits."""
    meta = model.metadata
    binary = metrics["binary"]
    three = metrics.get("three_class")
    inputs = "imaging biomarkers, age and sex"
    if model.name == "clinical" or "CRP" in model.inputs:
        inputs += ", hypertension, diabetes, lymphocyte count and CRP"
    lines = [
        f"# Model card: covidct prognosis model `{model.name}`",
        "",
        "**Research use only. Not a medical device; do not use it for clinical "
        "decisions.**",
        "",
        f"- Task: probability of a severe outcome (intubation or death within 4 "
        f"days of the CT) and of non-severe / intubated / deceased, from {inputs}.",
        f"- Trained: {meta.get('trained')} with {meta.get('software')}.",
        f"- Data: {Path(str(meta.get('data'))).name}, the Covid-MedIA feature "
        f"tables of {_ARTICLE}. The release states no licence, so cite the "
        "article when using this model. "
        "The radiomics features of that release were extracted with PyRadiomics "
        "on 1 mm voxels of whole-image z-scored CT, bin width 25.",
        f"- Split: {meta.get('split')}. Training patients: "
        f"{meta.get('training_patients')} ({meta.get('training_severe')} severe). "
        "Every fitted step (imputation, z-scores, selection, tuning, calibration) "
        "saw training patients only.",
        f"- Selected features (2 classes): {', '.join(model.binary.features)}.",
    ]
    if model.three_class is not None:
        lines.append(
            f"- Selected features (3 classes): {', '.join(model.three_class.features)}."
        )
    lines += [
        f"- Test figures, 2 classes: AUC {binary['auc']:.3f} (95 % CI "
        f"{binary['auc_95ci'][0]:.3f}–{binary['auc_95ci'][1]:.3f}), balanced "
        f"accuracy {binary['balanced_accuracy']:.3f}, sensitivity "
        f"{binary['sensitivity']:.3f}, specificity {binary['specificity']:.3f}.",
    ]
    if three:
        lines.append(
            f"- Test figures, 3 classes: macro AUC {three['auc_macro_ovr']:.3f}, "
            f"balanced accuracy {three['balanced_accuracy']:.3f}."
        )
    lines += [
        "- Intended use: research on outcome prediction from chest CT biomarkers, "
        "and a reference to compare with a model retrained on a local cohort.",
        "- Limits: one multicentre cohort of COVID-19 patients, so a normal or "
        "non-COVID CT lies outside its range. Inputs computed by another "
        "segmentation or radiomics pipeline shift the features, and the report "
        "flags inputs outside the training range. Clinical inputs missing from the "
        "release were set to the training median. Sex is coded 1 male, 0 female, "
        "as inferred from the release.",
        "",
    ]
    return "\n".join(lines)
