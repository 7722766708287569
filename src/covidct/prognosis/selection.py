"""Feature selection by prevalence over repeated subsamples of the training set.

Several selectors run on many stratified subsamples of the training patients. A
feature's prevalence is the share of (subsample, selector) pairs that selected
it. The features are ranked by prevalence and the number kept is chosen by
cross-validation. This follows the selection of Chassagnon et al., Medical Image
Analysis 67:101860 (2021), with 100 subsamples of 75 % and seed 10.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from sklearn.base import ClassifierMixin
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedShuffleSplit, cross_val_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

__all__ = ["SELECTORS", "choose_feature_count", "preprocessing", "selection_prevalence"]

logger = logging.getLogger(__name__)


def preprocessing() -> list:
    """Return fresh imputation (training median) and z-score steps."""
    return [SimpleImputer(strategy="median"), StandardScaler()]


def _l1_logistic(seed: int) -> ClassifierMixin:
    # saga, because liblinear fits no multinomial model for the 3-class task.
    return LogisticRegression(
        l1_ratio=1.0,
        solver="saga",
        C=0.05,
        class_weight="balanced",
        max_iter=5000,
        random_state=seed,
    )


def _linear_svm(seed: int) -> ClassifierMixin:
    return LinearSVC(
        penalty="l1", dual=False, C=0.01, class_weight="balanced", max_iter=20000
    )


def _random_forest(seed: int) -> ClassifierMixin:
    return RandomForestClassifier(
        n_estimators=100,
        min_samples_leaf=5,
        class_weight="balanced",
        random_state=seed,
        n_jobs=1,
    )


def _extra_trees(seed: int) -> ClassifierMixin:
    return ExtraTreesClassifier(
        n_estimators=100,
        min_samples_leaf=5,
        class_weight="balanced",
        random_state=seed,
        n_jobs=1,
    )


#: Selector factories (argument: random seed). Linear models select the features
#: with a non-zero coefficient; tree ensembles those with an importance above
#: the mean importance (the rule of scikit-learn's ``SelectFromModel``).
SELECTORS: dict[str, Callable[[int], ClassifierMixin]] = {
    "l1_logistic": _l1_logistic,
    "l1_linear_svm": _linear_svm,
    "random_forest": _random_forest,
    "extra_trees": _extra_trees,
}


def _selected(model: ClassifierMixin) -> np.ndarray:
    if hasattr(model, "coef_"):
        return np.any(np.abs(model.coef_) > 1e-10, axis=0)
    importance = model.feature_importances_
    return importance > importance.mean()


def selection_prevalence(
    features: pd.DataFrame,
    labels: pd.Series,
    n_splits: int = 100,
    train_size: float = 0.75,
    seed: int = 10,
    selectors: Sequence[str] = tuple(SELECTORS),
) -> pd.DataFrame:
    """Count how often each feature is selected over stratified subsamples.

    Each selector is fitted, after median imputation and z-scoring fitted on the
    same subsample, on ``n_splits`` stratified subsamples of ``train_size`` of
    the rows. Pass training rows only.

    Args:
        features: Training features, one column per candidate.
        labels: Class per row.
        n_splits: Number of subsamples.
        train_size: Share of rows in each subsample.
        seed: Seed of the subsamples and of the tree ensembles.
        selectors: Keys of ``SELECTORS``.

    Returns:
        One row per feature, sorted by decreasing prevalence: column
        ``prevalence`` (0 to 1, over all selectors and subsamples) and one column
        per selector (share of its subsamples that selected the feature).
    """
    splitter = StratifiedShuffleSplit(
        n_splits=n_splits, train_size=train_size, random_state=seed
    )
    counts = {name: np.zeros(features.shape[1]) for name in selectors}
    values = features.to_numpy(dtype=float)
    target = np.asarray(labels)
    for index, (rows, _) in enumerate(splitter.split(values, target)):
        for name in selectors:
            pipeline = make_pipeline(*preprocessing(), SELECTORS[name](seed + index))
            pipeline.fit(values[rows], target[rows])
            counts[name] += _selected(pipeline[-1])
    table = pd.DataFrame(
        {name: count / n_splits for name, count in counts.items()},
        index=features.columns,
    )
    table.insert(0, "prevalence", table.mean(axis=1))
    return table.sort_values("prevalence", ascending=False, kind="stable")


def choose_feature_count(
    features: pd.DataFrame,
    labels: pd.Series,
    ranking: Sequence[str],
    candidates: Sequence[int] = (3, 5, 8, 10, 15, 20, 30),
    n_splits: int = 20,
    seed: int = 10,
    tolerance: float = 0.01,
) -> tuple[int, dict[int, float]]:
    """Choose how many top-ranked features to keep, by cross-validation.

    Each candidate count is scored by the mean balanced accuracy of a
    class-weighted logistic regression over stratified shuffle splits of the
    training rows. The smallest count within ``tolerance`` of the best score is
    kept, because fewer features transfer better to other scanners and
    segmentations.

    NOTE: the ranking was computed on the same training rows, so these scores
    are optimistic. They only compare counts; the test split gives the figures.

    Returns:
        The chosen count and the score of every candidate.
    """
    splitter = StratifiedShuffleSplit(
        n_splits=n_splits, train_size=0.75, random_state=seed
    )
    scores: dict[int, float] = {}
    for count in candidates:
        if count > len(ranking):
            continue
        model = Pipeline(
            [
                ("impute", SimpleImputer(strategy="median")),
                ("scale", StandardScaler()),
                (
                    "classify",
                    LogisticRegression(C=0.1, class_weight="balanced", max_iter=2000),
                ),
            ]
        )
        result = cross_val_score(
            model,
            features[list(ranking[:count])],
            labels,
            cv=splitter,
            scoring="balanced_accuracy",
            n_jobs=1,
        )
        scores[count] = float(result.mean())
    best = max(scores.values())
    chosen = min(count for count, score in scores.items() if score >= best - tolerance)
    logger.info("feature count %d chosen, scores %s", chosen, scores)
    return chosen, scores
