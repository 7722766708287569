"""Trained outcome models: prediction, explanation, skops files.

Model files are skops archives, never pickles. :func:`load_model` first lists the
types a file would create and loads it only when each of them is in
``TRUSTED_TYPES`` or trusted by skops itself, so a crafted file cannot run code
on load.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from covidct.errors import InputError

__all__ = [
    "BUNDLED_MODELS",
    "OUT_OF_RANGE_Z",
    "TRUSTED_TYPES",
    "OutcomeModel",
    "PrognosisModel",
    "bundled_model_path",
    "load_model",
    "reference_statistics",
    "save_model",
]

logger = logging.getLogger(__name__)

#: Names of the models shipped in ``covidct/prognosis/models``.
BUNDLED_MODELS = ("imaging", "clinical")

#: An input more than this many training standard deviations from the training
#: mean, or outside the training minimum and maximum, is flagged.
OUT_OF_RANGE_Z = 4.0

#: Types a covidct model file may contain besides those skops trusts by default.
TRUSTED_TYPES = [
    "covidct.prognosis.ensemble.ClassBalanced",
    "covidct.prognosis.ensemble.Consensus",
    "covidct.prognosis.model.OutcomeModel",
    "covidct.prognosis.model.PrognosisModel",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.ensemble._gb.GradientBoostingClassifier",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.link.MultinomialLogit",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn._loss.loss.HalfMultinomialLoss",
    "sklearn.dummy.DummyClassifier",
    "sklearn.ensemble._weight_boosting.AdaBoostClassifier",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
    "sklearn.model_selection._split.StratifiedKFold",
    "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.tree._tree.Tree",
    "sklearn.utils._bunch.Bunch",
    "builtins.slice",
    "numpy.dtype",
    "numpy.random._mt19937.MT19937",
    "numpy.random.mtrand.RandomState",
]


@dataclass
class OutcomeModel:
    """One calibrated classifier consensus and how it was chosen.

    Attributes:
        classes: Class names, in the order of the probability columns.
        features: Input features, in the order the estimator takes them.
        estimator: The calibrated consensus (``CalibratedClassifierCV``).
        class_prior: Share of each class in the training split.
        prevalence: Selection prevalence (0 to 1) of every candidate feature.
        feature_count_scores: Cross-validated balanced accuracy per number of
            features tried.
        members: Tuning result of every pool member, and whether it was used.
        consensus: ``"majority"``, ``"weighted"`` or ``"stacking"``.
        consensus_scores: Cross-validated balanced accuracy of each consensus.
    """

    classes: list[str]
    features: list[str]
    estimator: Any
    class_prior: list[float]
    prevalence: dict[str, float]
    feature_count_scores: dict[str, float]
    members: list[dict[str, Any]]
    consensus: str
    consensus_scores: dict[str, float]

    def predict_proba(self, features: pd.DataFrame) -> np.ndarray:
        """Return calibrated probabilities, one column per class.

        Raises:
            KeyError: If a feature column is missing (NaN values are imputed).
        """
        return self.estimator.predict_proba(features[self.features].to_numpy(float))

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        """Return the class index that maximises probability over class prior.

        This is the Bayes decision for classes weighted equally, so the
        threshold suits balanced accuracy rather than plain accuracy.
        """
        return decide(self.predict_proba(features), self.class_prior)


def decide(probabilities: np.ndarray, prior: list[float]) -> np.ndarray:
    """Return the argmax of probability over prior, per row."""
    return np.argmax(probabilities / np.asarray(prior), axis=1)


@dataclass
class PrognosisModel:
    """The 2-class and 3-class outcome models with their training references.

    Attributes:
        name: ``"imaging"`` or ``"clinical"`` for the bundled models.
        inputs: Candidate inputs the selection chose from.
        binary: Non-severe versus severe.
        three_class: Non-severe, intubated, deceased; None if not trained.
        reference: Per used feature, training ``mean``, ``std``, ``min``,
            ``max`` and ``median``.
        metadata: Data, split, options, date and, after evaluation, test
            metrics.
    """

    name: str
    inputs: list[str]
    binary: OutcomeModel
    three_class: OutcomeModel | None
    reference: dict[str, dict[str, float]]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def features(self) -> list[str]:
        """Features read by at least one of the two models."""
        extra = self.three_class.features if self.three_class else []
        return list(dict.fromkeys(self.binary.features + extra))

    def estimate(self, values: Mapping[str, float | None]) -> dict[str, Any]:
        """Estimate the outcome of one patient.

        Args:
            values: Feature name to value, in the units of the training
                table. Missing or None clinical values are imputed with the
                training median.

        Returns:
            The ``prognosis`` entry of report.json: probabilities, predicted
            classes, the features that raised or lowered the risk most, imputed
            inputs and out-of-range inputs.

        Raises:
            ValueError: If an input other than a clinical one is missing.
        """
        from covidct.prognosis.data import CLINICAL_INPUTS

        row = {name: _number(values.get(name)) for name in self.features}
        missing = [
            name
            for name, value in row.items()
            if np.isnan(value) and name not in CLINICAL_INPUTS
        ]
        if missing:
            raise ValueError(f"missing model input(s): {', '.join(missing)}")
        imputed = [name for name, value in row.items() if np.isnan(value)]
        table = pd.DataFrame([row])
        probabilities = self.binary.predict_proba(table)[0]
        severe = float(probabilities[1])
        result: dict[str, Any] = {
            "model": self.name,
            "probability_severe": round(severe, 4),
            "predicted_class": self.binary.classes[
                int(decide(probabilities[None], self.binary.class_prior)[0])
            ],
            "decision_rule": (
                "severe when the probability exceeds the training share of severe "
                f"patients ({self.binary.class_prior[1]:.2f})"
            ),
        }
        if self.three_class is not None:
            three = self.three_class.predict_proba(table)[0]
            result["three_class"] = {
                "probabilities": {
                    name: round(float(value), 4)
                    for name, value in zip(self.three_class.classes, three, strict=True)
                },
                "predicted_class": self.three_class.classes[
                    int(decide(three[None], self.three_class.class_prior)[0])
                ],
            }
        up, down = self._contributions(table, severe)
        result["risk_up"] = up
        result["risk_down"] = down
        result["imputed_inputs"] = imputed
        result["out_of_range"] = self.out_of_range(row)
        result["test_metrics"] = self.metadata.get("test_metrics", {}).get("binary")
        result["intended_use"] = (
            "research use only, not for clinical decisions; trained on "
            f"{self.metadata.get('training_patients', '?')} patients of one cohort"
        )
        return result

    def out_of_range(self, row: Mapping[str, float]) -> list[dict[str, Any]]:
        """List the inputs far outside the training distribution.

        An input is flagged when it lies outside the training minimum and
        maximum or more than ``OUT_OF_RANGE_Z`` standard deviations from the
        training mean.
        """
        flagged = []
        for name, value in row.items():
            stats = self.reference.get(name)
            if stats is None or np.isnan(value):
                continue
            z = (value - stats["mean"]) / stats["std"] if stats["std"] > 0 else 0.0
            outside = value < stats["min"] or value > stats["max"]
            if outside or abs(z) > OUT_OF_RANGE_Z:
                flagged.append(
                    {
                        "feature": name,
                        "value": float(value),
                        "z_score": round(float(z), 2),
                        "training_min": stats["min"],
                        "training_max": stats["max"],
                    }
                )
        return flagged

    def _contributions(
        self, table: pd.DataFrame, severe: float, count: int = 3
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Change of the severe probability when each input is set to the median.

        A positive change means the patient's value raised the risk above what
        a training-median value would give.
        """
        changes: list[dict[str, Any]] = []
        for name in self.binary.features:
            median = self.reference[name]["median"]
            replaced = table.copy()
            replaced[name] = median
            other = float(self.binary.predict_proba(replaced)[0, 1])
            changes.append(
                {
                    "feature": name,
                    "value": None
                    if np.isnan(table[name].iloc[0])
                    else float(table[name].iloc[0]),
                    "training_median": median,
                    "change_percent_points": round(100 * (severe - other), 2),
                }
            )
        changes.sort(key=lambda item: item["change_percent_points"], reverse=True)
        up = [item for item in changes if item["change_percent_points"] > 0][:count]
        down = [item for item in changes[::-1] if item["change_percent_points"] < 0]
        return up, down[:count]


def _number(value: Any) -> float:
    if value is None:
        return float("nan")
    return float(value)


def reference_statistics(features: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Summarise each training column for the out-of-range check."""
    reference = {}
    for name in features.columns:
        values = features[name].dropna().to_numpy(float)
        reference[str(name)] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)),
            "min": float(values.min()),
            "max": float(values.max()),
            "median": float(np.median(values)),
        }
    return reference


def save_model(model: PrognosisModel, path: str | Path) -> Path:
    """Write a model as a deflate-compressed skops archive."""
    import zipfile

    import skops.io

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    skops.io.dump(model, path, compression=zipfile.ZIP_DEFLATED, compresslevel=9)
    return path


def load_model(path: str | Path) -> PrognosisModel:
    """Read a model written by :func:`save_model`.

    Raises:
        InputError: If the file is missing, not a skops archive, or would create
            a type outside ``TRUSTED_TYPES``.
    """
    import skops.io

    path = Path(path)
    if not path.is_file():
        raise InputError("model file not found", path, "check the path")
    try:
        untrusted = skops.io.get_untrusted_types(file=path)
    except Exception as error:  # noqa: BLE001 - skops raises several types
        raise InputError(
            f"not a skops model file: {error}",
            path,
            "pass a file written by covidct train-prognosis",
        ) from error
    unknown = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if unknown:
        raise InputError(
            f"the model file would create untrusted types: {', '.join(unknown)}",
            path,
            "load only model files written by covidct train-prognosis",
        )
    model = skops.io.load(path, trusted=untrusted)
    if not isinstance(model, PrognosisModel):
        raise InputError(
            f"contains a {type(model).__name__}, not a covidct PrognosisModel",
            path,
            "pass a file written by covidct train-prognosis",
        )
    return model


def bundled_model_path(name: str) -> Path:
    """Return the file of a bundled model (``"imaging"`` or ``"clinical"``)."""
    if name not in BUNDLED_MODELS:
        raise ValueError(f"unknown bundled model {name!r}, expected {BUNDLED_MODELS}")
    folder = resources.files("covidct.prognosis") / "models"
    return Path(str(folder / f"{name}.skops"))
