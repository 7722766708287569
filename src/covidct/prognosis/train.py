"""Training of the outcome models on the training split of a cohort.

The steps, all fitted on training rows only: feature prevalence over stratified
subsamples, the number of features by cross-validation, tuning of the classifier
pool, choice of the members and of the consensus, then sigmoid calibration of the
consensus on out-of-fold predictions. Imputation and z-scoring are steps of every
member's pipeline, so they too see training rows only.
"""

from __future__ import annotations

import datetime
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV
from sklearn.model_selection import StratifiedKFold

from covidct import __version__
from covidct.prognosis.data import CLASSES_2, CLASSES_3, Cohort, input_columns
from covidct.prognosis.ensemble import (
    choose_consensus,
    select_members,
    tune_pool,
)
from covidct.prognosis.model import OutcomeModel, PrognosisModel, reference_statistics
from covidct.prognosis.selection import choose_feature_count, selection_prevalence

__all__ = ["TrainingOptions", "fit_outcome_model", "train_prognosis"]

logger = logging.getLogger(__name__)


@dataclass
class TrainingOptions:
    """Settings of one training run.

    Attributes:
        clinical: Use the clinical inputs (hypertension, diabetes, lymphocytes,
            CRP) besides imaging, age and sex.
        textures: Also use texture features, whose values depend on the
            PyRadiomics bin width and so transfer poorly between extractions.
        selection_splits: Stratified subsamples (75 %) of the prevalence count.
        tuning_splits: Stratified shuffle splits (75 %) per grid point of tuning.
        feature_counts: Candidate numbers of features to keep.
        members: Maximum number of pool members in the consensus.
        max_gap: Largest train-minus-validation balanced accuracy of a member.
        pool: Pool members to tune, or None for all of ``classifier_pool``.
        three_class: Also train the non-severe / intubated / deceased model
            when the cohort has these labels.
        seed: Seed of every split and randomised model.
    """

    clinical: bool = False
    textures: bool = False
    selection_splits: int = 100
    tuning_splits: int = 20
    feature_counts: tuple[int, ...] = (3, 5, 8, 10, 15, 20, 30)
    members: int = 5
    max_gap: float = 0.05
    pool: list[str] | None = None
    three_class: bool = True
    seed: int = 10


def fit_outcome_model(
    features: pd.DataFrame,
    labels: pd.Series,
    classes: tuple[str, ...],
    options: TrainingOptions,
) -> OutcomeModel:
    """Select features, tune the pool and fit the calibrated consensus.

    Args:
        features: Training rows only, one column per candidate input.
        labels: Class index per row (0 to ``len(classes) - 1``).
        classes: Class names.
        options: Training settings.
    """
    started = time.perf_counter()
    prevalence = selection_prevalence(
        features, labels, n_splits=options.selection_splits, seed=options.seed
    )
    ranking = list(prevalence.index)
    count, count_scores = choose_feature_count(
        features, labels, ranking, candidates=options.feature_counts, seed=options.seed
    )
    selected = ranking[:count]
    values = features[selected].to_numpy(dtype=float)
    target = labels.to_numpy()
    scores = tune_pool(
        values,
        target,
        n_splits=options.tuning_splits,
        seed=options.seed,
        names=options.pool,
    )
    members = select_members(scores, options.members, options.max_gap)
    consensus, consensus_scores = choose_consensus(
        values, target, members, seed=options.seed
    )
    calibrated = CalibratedClassifierCV(
        consensus,
        method="sigmoid",
        cv=StratifiedKFold(n_splits=5, shuffle=True, random_state=options.seed),
        ensemble=False,
    ).fit(values, target)
    prior = np.bincount(target, minlength=len(classes)) / len(target)
    logger.info(
        "%d-class model: %d features, %s of %s, %.0f s",
        len(classes),
        count,
        consensus.method,
        [member.name for member in members],
        time.perf_counter() - started,
    )
    return OutcomeModel(
        classes=list(classes),
        features=selected,
        estimator=calibrated,
        class_prior=[float(value) for value in prior],
        prevalence={
            str(name): float(value) for name, value in prevalence["prevalence"].items()
        },
        feature_count_scores={str(k): v for k, v in count_scores.items()},
        members=[
            {
                "name": score.name,
                "params": {key: _plain(value) for key, value in score.params.items()},
                "validation_balanced_accuracy": round(score.validation, 4),
                "train_balanced_accuracy": round(score.train, 4),
                "used": score in members,
            }
            for score in scores
        ],
        consensus=consensus.method,
        consensus_scores=consensus_scores,
    )


def train_prognosis(
    cohort: Cohort, options: TrainingOptions | None = None, name: str | None = None
) -> PrognosisModel:
    """Train the 2-class (and 3-class) outcome models on a cohort's training split.

    Only the rows whose split is ``"train"`` are read; the test rows are left for
    :func:`covidct.prognosis.evaluate.evaluate_model`.

    Args:
        cohort: Features and outcomes of all patients.
        options: Training settings.
        name: Model name, by default ``"clinical"`` or ``"imaging"``.
    """
    options = options or TrainingOptions()
    train = cohort.subset("train")
    if train.outcome2.nunique() < 2:
        raise ValueError("the training split must contain both outcomes")
    inputs = input_columns(
        list(train.features.columns),
        clinical=options.clinical,
        textures=options.textures,
    )
    features = train.features[inputs]
    binary = fit_outcome_model(features, train.outcome2, CLASSES_2, options)
    three_class = None
    if options.three_class and train.outcome3 is not None:
        three_class = fit_outcome_model(features, train.outcome3, CLASSES_3, options)
    used = list(
        dict.fromkeys(binary.features + (three_class.features if three_class else []))
    )
    return PrognosisModel(
        name=name or ("clinical" if options.clinical else "imaging"),
        inputs=inputs,
        binary=binary,
        three_class=three_class,
        reference=reference_statistics(features[used]),
        metadata={
            "software": f"covidct {__version__}",
            "trained": datetime.date.today().isoformat(),
            "data": cohort.source,
            "split": cohort.split_rule,
            "training_patients": int(len(train.outcome2)),
            "training_severe": int(train.outcome2.sum()),
            "options": {key: _plain(value) for key, value in vars(options).items()},
        },
    )


def _plain(value: Any) -> Any:
    """Convert numpy scalars and tuples so that the value stores as plain data."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value
