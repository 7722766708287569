"""A pool of tuned classifiers and their consensus by vote or stacking.

Every member is a pipeline of median imputation, z-scoring and a classifier
wrapped in :class:`ClassBalanced`, all fitted on the rows it is given. Members
are tuned on balanced accuracy over stratified shuffle splits. The best ones
whose gap between training and validation score is small are combined by
majority vote, weighted vote or stacking, and the combination with the best
cross-validated balanced accuracy is kept.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.ensemble import (
    AdaBoostClassifier,
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import (
    GridSearchCV,
    StratifiedKFold,
    StratifiedShuffleSplit,
    cross_val_predict,
    cross_val_score,
)
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC
from sklearn.utils.class_weight import compute_sample_weight

from covidct.prognosis.selection import preprocessing

__all__ = [
    "CONSENSUS_METHODS",
    "ClassBalanced",
    "Consensus",
    "MemberScore",
    "classifier_pool",
    "select_members",
    "tune_pool",
]

logger = logging.getLogger(__name__)

#: Ways to combine the members, see :class:`Consensus`.
CONSENSUS_METHODS = ("majority", "weighted", "stacking")


class ClassBalanced(ClassifierMixin, BaseEstimator):
    """A classifier trained as if every class were equally frequent.

    Estimators whose ``fit`` takes ``sample_weight`` are fitted with weights
    inversely proportional to class frequency. The others (k-NN) are fitted
    plainly, and their probabilities are divided by the training class
    frequencies and renormalised. SVMs get both, because their Platt scaling
    ignores the weights. Either way ``predict_proba`` gives balanced
    probabilities and ``predict`` their argmax.

    Args:
        estimator: The scikit-learn classifier to wrap.
    """

    def __init__(self, estimator: Any = None) -> None:
        self.estimator = estimator

    def fit(self, X: Any, y: Any) -> ClassBalanced:  # noqa: N803 - scikit-learn name
        self.classes_, counts = np.unique(y, return_counts=True)
        self.estimator_ = clone(self.estimator)
        parameters = inspect.signature(self.estimator_.fit).parameters
        self.weighted_ = "sample_weight" in parameters
        if self.weighted_:
            weights = compute_sample_weight("balanced", y)
            self.estimator_.fit(X, y, sample_weight=weights)
        else:
            self.estimator_.fit(X, y)
        self.rebalance_ = not self.weighted_ or isinstance(self.estimator_, SVC)
        self.prior_ = counts / counts.sum()
        return self

    def predict_proba(self, X: Any) -> np.ndarray:  # noqa: N803
        probabilities = self.estimator_.predict_proba(X)
        if self.rebalance_:
            probabilities = probabilities / self.prior_
            probabilities /= probabilities.sum(axis=1, keepdims=True)
        return probabilities

    def predict(self, X: Any) -> np.ndarray:  # noqa: N803
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def _member(classifier: Any) -> Pipeline:
    imputer, scaler = preprocessing()
    return Pipeline(
        [
            ("impute", imputer),
            ("scale", scaler),
            ("classify", ClassBalanced(classifier)),
        ]
    )


def classifier_pool(seed: int = 10) -> dict[str, tuple[Pipeline, dict[str, list]]]:
    """Return the untuned members and their parameter grids.

    Grids favour strong regularisation (shallow trees, large leaves, small C),
    because members whose training score exceeds their validation score by
    0.05 or more are not used.
    """
    prefix = "classify__estimator__"

    def grid(**values: list) -> dict[str, list]:
        return {prefix + key: value for key, value in values.items()}

    trees = {"n_estimators": 60, "random_state": seed, "n_jobs": 1}
    return {
        "logistic_regression": (
            _member(LogisticRegression(max_iter=5000)),
            grid(C=[0.003, 0.01, 0.03, 0.1, 1.0]),
        ),
        "linear_svm": (
            _member(SVC(kernel="linear", probability=True, random_state=seed)),
            grid(C=[0.001, 0.01, 0.1]),
        ),
        "rbf_svm": (
            _member(SVC(kernel="rbf", probability=True, random_state=seed)),
            grid(C=[0.1, 1.0], gamma=["scale", 0.01]),
        ),
        "random_forest": (
            _member(RandomForestClassifier(**trees)),
            grid(max_depth=[2, 4], min_samples_leaf=[10, 20]),
        ),
        "extra_trees": (
            _member(ExtraTreesClassifier(**trees)),
            grid(max_depth=[3, 5], min_samples_leaf=[10, 20]),
        ),
        "gradient_boosting": (
            _member(
                GradientBoostingClassifier(
                    learning_rate=0.05, subsample=0.8, random_state=seed
                )
            ),
            grid(n_estimators=[30, 80], max_depth=[1, 2]),
        ),
        "adaboost": (
            _member(AdaBoostClassifier(random_state=seed)),
            grid(n_estimators=[30, 60], learning_rate=[0.1, 0.3]),
        ),
        "knn": (
            _member(KNeighborsClassifier()),
            grid(n_neighbors=[15, 31, 61]),
        ),
        "naive_bayes": (_member(GaussianNB()), {}),
    }


@dataclass
class MemberScore:
    """Cross-validated result of one tuned member.

    Attributes:
        name: Key of :func:`classifier_pool`.
        params: The chosen parameters.
        validation: Mean balanced accuracy on the validation parts.
        train: Mean balanced accuracy on the training parts.
        estimator: The member with the chosen parameters, not fitted.
    """

    name: str
    params: dict[str, Any]
    validation: float
    train: float
    estimator: Pipeline

    @property
    def gap(self) -> float:
        """Training minus validation balanced accuracy."""
        return self.train - self.validation


def tune_pool(
    features: np.ndarray,
    labels: np.ndarray,
    n_splits: int = 20,
    seed: int = 10,
    names: list[str] | None = None,
) -> list[MemberScore]:
    """Tune each member by grid search on balanced accuracy.

    Args:
        features: Training rows only.
        labels: Class per row.
        n_splits: Stratified shuffle splits (75 % train) per grid point.
        seed: Seed of the splits and of the randomised members.
        names: Members to tune; all of :func:`classifier_pool` by default.

    Returns:
        One score per member, best validation score first.
    """
    pool = classifier_pool(seed)
    splitter = StratifiedShuffleSplit(
        n_splits=n_splits, train_size=0.75, random_state=seed
    )
    results = []
    for name in names or list(pool):
        estimator, grid = pool[name]
        search = GridSearchCV(
            estimator,
            grid or {"classify__estimator": [estimator[-1].estimator]},
            scoring="balanced_accuracy",
            cv=splitter,
            return_train_score=True,
            n_jobs=1,
            refit=False,
        )
        search.fit(features, labels)
        best = search.best_index_
        params = search.cv_results_["params"][best]
        score = MemberScore(
            name=name,
            params={
                key.removeprefix("classify__estimator__"): value
                for key, value in params.items()
                if key != "classify__estimator"
            },
            validation=float(search.cv_results_["mean_test_score"][best]),
            train=float(search.cv_results_["mean_train_score"][best]),
            estimator=clone(estimator).set_params(**params),
        )
        logger.info(
            "%s: validation %.3f, train %.3f, %s",
            name,
            score.validation,
            score.train,
            score.params,
        )
        results.append(score)
    return sorted(results, key=lambda item: item.validation, reverse=True)


def select_members(
    scores: list[MemberScore], count: int = 5, max_gap: float = 0.05
) -> list[MemberScore]:
    """Keep the ``count`` best members whose train-validation gap is below ``max_gap``.

    When fewer than two members pass, the members with the smallest gaps are
    used instead and a warning is logged.
    """
    passing = [score for score in scores if score.gap < max_gap]
    if len(passing) < 2:
        logger.warning(
            "fewer than 2 members have a train-validation gap below %.2f: using "
            "the %d with the smallest gaps",
            max_gap,
            count,
        )
        passing = sorted(scores, key=lambda item: item.gap)[:count]
        return sorted(passing, key=lambda item: item.validation, reverse=True)
    return passing[:count]


class Consensus(ClassifierMixin, BaseEstimator):
    """Combination of fitted members by vote or stacking.

    Args:
        members: ``(name, estimator)`` pairs; clones are fitted.
        method: ``"majority"`` (share of member votes per class),
            ``"weighted"`` (mean of member probabilities weighted by
            ``weights``) or ``"stacking"`` (a class-weighted logistic regression
            on the members' out-of-fold probabilities, 5 folds).
        weights: One weight per member, for ``"weighted"``.
        seed: Seed of the stacking folds.

    ``predict_proba`` gives balanced scores (classes treated as equally
    frequent), not calibrated probabilities: wrap the consensus in
    ``CalibratedClassifierCV`` for those.
    """

    def __init__(
        self,
        members: list[tuple[str, Any]] | None = None,
        method: str = "weighted",
        weights: list[float] | None = None,
        seed: int = 10,
    ) -> None:
        self.members = members
        self.method = method
        self.weights = weights
        self.seed = seed

    def fit(self, X: Any, y: Any) -> Consensus:  # noqa: N803 - scikit-learn name
        if self.method not in CONSENSUS_METHODS:
            raise ValueError(
                f"unknown consensus method {self.method!r}, expected one of "
                f"{CONSENSUS_METHODS}"
            )
        if not self.members:
            raise ValueError("a consensus needs at least one member")
        members = self.members
        self.classes_ = np.unique(y)
        self.fitted_ = [clone(estimator).fit(X, y) for _, estimator in members]
        if self.method == "stacking":
            folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=self.seed)
            stacked = np.hstack(
                [
                    cross_val_predict(
                        clone(estimator), X, y, cv=folds, method="predict_proba"
                    )
                    for _, estimator in members
                ]
            )
            self.meta_ = LogisticRegression(
                C=1.0, class_weight="balanced", max_iter=5000
            ).fit(stacked, y)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:  # noqa: N803
        probabilities = [member.predict_proba(X) for member in self.fitted_]
        if self.method == "stacking":
            return self.meta_.predict_proba(np.hstack(probabilities))
        if self.method == "weighted":
            weights = np.asarray(self.weights or [1.0] * len(probabilities), float)
            return np.tensordot(weights / weights.sum(), np.stack(probabilities), 1)
        votes = np.zeros_like(probabilities[0])
        for member_probabilities in probabilities:
            votes[np.arange(len(votes)), member_probabilities.argmax(axis=1)] += 1
        return votes / len(probabilities)

    def predict(self, X: Any) -> np.ndarray:  # noqa: N803
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def choose_consensus(
    features: np.ndarray,
    labels: np.ndarray,
    members: list[MemberScore],
    seed: int = 10,
    folds: int = 5,
) -> tuple[Consensus, dict[str, float]]:
    """Pick the combination with the best cross-validated balanced accuracy.

    Returns:
        The chosen consensus (not fitted) and the score of each method.
    """
    pairs = [(member.name, member.estimator) for member in members]
    weights = [member.validation for member in members]
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = {}
    for method in CONSENSUS_METHODS:
        consensus = Consensus(pairs, method=method, weights=weights, seed=seed)
        result = cross_val_score(
            consensus, features, labels, cv=splitter, scoring="balanced_accuracy"
        )
        scores[method] = float(result.mean())
        logger.info("consensus %s: balanced accuracy %.3f", method, scores[method])
    best = max(scores, key=scores.__getitem__)
    return Consensus(pairs, method=best, weights=weights, seed=seed), scores
