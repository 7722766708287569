"""Test-split figures of an outcome model and of the baselines, with plots.

The baselines run through the same code: the extent alone as a score, the rule
"extent above 25 %", and a class-weighted logistic regression on the clinical
variables, fitted on the training split.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    balanced_accuracy_score,
    confusion_matrix,
    roc_auc_score,
    roc_curve,
)
from sklearn.pipeline import make_pipeline

from covidct.prognosis.data import BASE_INPUTS, CLINICAL_INPUTS, EXTENT, Cohort
from covidct.prognosis.model import PrognosisModel, decide
from covidct.prognosis.selection import preprocessing

__all__ = [
    "EXTENT_RULE_PERCENT",
    "binary_metrics",
    "bootstrap_auc",
    "evaluate_model",
    "multiclass_metrics",
    "plot_calibration",
    "plot_roc",
]

logger = logging.getLogger(__name__)

#: Extent in % of lung volume above which the rule baseline predicts severe.
EXTENT_RULE_PERCENT = 25.0


def bootstrap_auc(
    labels: np.ndarray,
    scores: np.ndarray,
    resamples: int = 2000,
    seed: int = 10,
    multiclass: bool = False,
) -> tuple[float, float]:
    """Return the 95 % percentile bootstrap interval of the ROC AUC.

    Resamples that lack a class are skipped. For several classes the AUC is the
    macro average of one-versus-rest AUCs.
    """
    rng = np.random.default_rng(seed)
    count = len(labels)
    classes = np.unique(labels)
    values = []
    for _ in range(resamples):
        rows = rng.integers(0, count, count)
        if len(np.unique(labels[rows])) < len(classes):
            continue
        values.append(_auc(labels[rows], scores[rows], multiclass))
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def _auc(labels: np.ndarray, scores: np.ndarray, multiclass: bool) -> float:
    if multiclass:
        return float(roc_auc_score(labels, scores, multi_class="ovr", average="macro"))
    return float(roc_auc_score(labels, scores))


def binary_metrics(
    labels: np.ndarray, scores: np.ndarray | None, predicted: np.ndarray
) -> dict[str, Any]:
    """Compute AUC with its interval, balanced accuracy, sensitivity, specificity.

    Args:
        labels: 0 non-severe, 1 severe.
        scores: Score or probability of severe per patient, or None for a rule
            without a score (no AUC).
        predicted: Predicted class per patient.
    """
    matrix = confusion_matrix(labels, predicted, labels=[0, 1])
    (tn, fp), (fn, tp) = matrix
    result: dict[str, Any] = {
        "patients": int(len(labels)),
        "severe": int(np.sum(labels)),
        "balanced_accuracy": round(
            float(balanced_accuracy_score(labels, predicted)), 3
        ),
        "sensitivity": round(float(tp / (tp + fn)), 3),
        "specificity": round(float(tn / (tn + fp)), 3),
        "confusion_matrix": matrix.tolist(),
    }
    if scores is not None:
        low, high = bootstrap_auc(labels, scores)
        result["auc"] = round(_auc(labels, scores, False), 3)
        result["auc_95ci"] = [round(low, 3), round(high, 3)]
    return result


def multiclass_metrics(
    labels: np.ndarray, probabilities: np.ndarray, predicted: np.ndarray
) -> dict[str, Any]:
    """Compute macro one-versus-rest AUC, balanced accuracy and per-class recall."""
    classes = list(range(probabilities.shape[1]))
    matrix = confusion_matrix(labels, predicted, labels=classes)
    low, high = bootstrap_auc(labels, probabilities, multiclass=True)
    recall = matrix.diagonal() / np.maximum(matrix.sum(axis=1), 1)
    return {
        "patients": int(len(labels)),
        "auc_macro_ovr": round(_auc(labels, probabilities, True), 3),
        "auc_95ci": [round(low, 3), round(high, 3)],
        "balanced_accuracy": round(
            float(balanced_accuracy_score(labels, predicted)), 3
        ),
        "recall_per_class": [round(float(value), 3) for value in recall],
        "confusion_matrix": matrix.tolist(),
    }


def evaluate_model(
    model: PrognosisModel, cohort: Cohort, plots: Path | None = None
) -> dict[str, Any]:
    """Score a model and the baselines on the test split of a cohort.

    The baselines' logistic regression is fitted on the training split of the
    same cohort. The test rows are read only to score.

    Args:
        model: A trained model.
        cohort: The cohort, both splits.
        plots: Folder for ``roc_<model>.png`` and ``calibration_<model>.png``,
            or None for no plots.

    Returns:
        ``binary``, ``three_class`` (or None) and ``baselines`` metrics.
    """
    train = cohort.subset("train")
    test = cohort.subset("test")
    labels = test.outcome2.to_numpy()
    probabilities = model.binary.predict_proba(test.features)
    severe = probabilities[:, 1]
    results: dict[str, Any] = {
        "binary": binary_metrics(labels, severe, model.binary.predict(test.features))
    }
    results["three_class"] = None
    if model.three_class is not None and test.outcome3 is not None:
        three = model.three_class.predict_proba(test.features)
        results["three_class"] = multiclass_metrics(
            test.outcome3.to_numpy(),
            three,
            decide(three, model.three_class.class_prior),
        )
    extent = test.features[EXTENT].to_numpy(float)
    extent_rule = (extent > EXTENT_RULE_PERCENT).astype(int)
    clinical_columns = [*BASE_INPUTS, *CLINICAL_INPUTS]
    clinical = make_pipeline(
        *preprocessing(),
        LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000),
    ).fit(train.features[clinical_columns], train.outcome2)
    clinical_score = clinical.predict_proba(test.features[clinical_columns])[:, 1]
    baselines = {
        "extent_alone": binary_metrics(labels, extent, extent_rule),
        "extent_above_25_percent": binary_metrics(labels, None, extent_rule),
        "clinical_logistic_regression": binary_metrics(
            labels, clinical_score, clinical.predict(test.features[clinical_columns])
        ),
    }
    # The extent alone has no threshold of its own: its balanced accuracy is
    # the 25 % rule's, reported under that name.
    for key in ("balanced_accuracy", "sensitivity", "specificity", "confusion_matrix"):
        baselines["extent_alone"].pop(key)
    results["baselines"] = baselines
    if plots is not None:
        curves = {
            f"covidct {model.name} model": severe,
            "extent alone": extent,
            "clinical logistic regression": clinical_score,
        }
        plot_roc(labels, curves, plots / f"roc_{model.name}.png")
        plot_calibration(labels, severe, plots / f"calibration_{model.name}.png")
    return results


def plot_roc(labels: np.ndarray, curves: dict[str, np.ndarray], path: Path) -> Path:
    """Draw ROC curves of several scores on one figure and save it as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 5))
    for name, scores in curves.items():
        fpr, tpr, _ = roc_curve(labels, scores)
        axes.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(labels, scores):.3f})")
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes.set_xlabel("1 - specificity")
    axes.set_ylabel("sensitivity")
    axes.set_title(f"Severe outcome, test split ({len(labels)} patients)")
    axes.legend(loc="lower right", fontsize=8)
    return _save(figure, path)


def plot_calibration(
    labels: np.ndarray, probabilities: np.ndarray, path: Path, bins: int = 5
) -> Path:
    """Draw observed severe share against predicted probability (quantile bins)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = pd.DataFrame({"label": labels, "probability": probabilities})
    table["bin"] = pd.qcut(table["probability"], bins, duplicates="drop")
    grouped = table.groupby("bin", observed=True).agg(
        predicted=("probability", "mean"),
        observed=("label", "mean"),
        count=("label", "size"),
    )
    figure, axes = plt.subplots(figsize=(5, 5))
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes.plot(grouped["predicted"], grouped["observed"], marker="o")
    for _, row in grouped.iterrows():
        axes.annotate(
            f"n={row['count']}", (row["predicted"], row["observed"]), fontsize=7
        )
    axes.set_xlabel("predicted probability of severe outcome")
    axes.set_ylabel("observed share of severe outcomes")
    axes.set_title("Calibration, test split (quantile bins)")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    return _save(figure, path)


def _save(figure: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
