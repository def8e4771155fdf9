"""Nested cross-validation of a named model on a cohort, and its permutation test.

The outer folds (``StratifiedGroupKFold`` for a classification, shuffled ``GroupKFold`` for a
regression) keep each of the cohort's groups whole; inside each outer training set a grid
search picks the hyper-parameters on inner folds made the same way from the training rows only,
then refits on all of them. Inner scoring: the log loss for a classification (a proper score:
AUC, which only ranks, is flat under strong regularisation, and its ties went to the grid's
strongest penalty, whose probabilities all sit near the base rate); the negative mean absolute
error for a regression (in the target's units: Pearson's r would not see a prediction that is
shifted or shrunk). Each participant thus gets one prediction from a model that never saw it,
nor any participant of its group.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.model_selection import GridSearchCV, GroupKFold, StratifiedGroupKFold

from bids_dl.models.classifier_data import Cohort, Task
from bids_dl.models.classifier_estimators import (
    design_matrix,
    image_shape,
    limited_threads,
    make_estimator,
    predict,
)
from bids_dl.models.classifier_metrics import PRIMARY_METRIC, metrics

INNER_SCORING = {"classification": "neg_log_loss", "regression": "neg_mean_absolute_error"}


@dataclass(frozen=True)
class CrossValidation:
    """Out-of-fold predictions of a nested cross-validation, one per participant.

    ``prediction``: the probability of class 1, or the predicted value; ``fold``: the outer fold
    that held each participant out; ``hyperparameters`` and ``fit_seconds``: per outer fold (the
    grid search and the refit together).
    """

    model: str
    task: Task
    participant_ids: tuple[str, ...]
    target: np.ndarray
    prediction: np.ndarray
    fold: np.ndarray
    hyperparameters: tuple[dict, ...]
    fit_seconds: tuple[float, ...]

    def metrics(self) -> dict[str, float]:
        """The metrics of the out-of-fold predictions (:mod:`classifier_metrics`)."""
        return metrics(self.target, self.prediction, self.task)


@dataclass(frozen=True)
class PermutationTest:
    """The nested CV's score against its scores on shuffled targets: ``p = (1 + #null >=
    score) / (1 + len(null))``, a ``nan`` counting as at least the score."""

    metric: str
    score: float
    null: np.ndarray
    p: float


def check_folds(target: np.ndarray, groups: np.ndarray, task: Task, folds: int, where: str) -> None:
    """Raise a one-line ``ValueError`` when ``folds`` grouped folds of these rows cannot each hold
    both classes (a classification) or at least one group (a regression)."""
    if task == "regression":
        if np.ptp(target) == 0:
            raise ValueError(f"the target is constant {where}: there is nothing to predict")
        if len(np.unique(groups)) < folds:
            raise ValueError(
                f"{len(np.unique(groups))} groups {where} for {folds} folds: use fewer folds"
            )
        return
    for label in (0, 1):
        count = len(np.unique(groups[target == label]))
        if count == 0:
            raise ValueError(f"no participant of class {label} {where}: a classifier needs both")
        if count < folds:
            raise ValueError(
                f"{count} groups of class {label} {where} for {folds} folds: use fewer folds"
            )


def splitter(task: Task, folds: int, seed: int) -> StratifiedGroupKFold | GroupKFold:
    """Grouped, shuffled folds: stratified by class for a classification."""
    if task == "classification":
        return StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    return GroupKFold(folds, shuffle=True, random_state=seed)


def tune_and_fit(
    estimator: BaseEstimator,
    grid: dict[str, list],
    x: np.ndarray,
    target: np.ndarray,
    groups: np.ndarray,
    *,
    task: Task,
    inner_folds: int | None,
    seed: int,
) -> tuple[BaseEstimator, dict]:
    """Pick the hyper-parameters on grouped inner folds of these rows, refit on all of them;
    return the fitted estimator and the chosen values (``{}`` for a fixed recipe, fitted once;
    without ``inner_folds``, too few rows to search, the grid's parameters at the estimator's
    own defaults)."""
    if not grid:
        return clone(estimator).fit(x, target), {}
    if inner_folds is None:
        return clone(estimator).fit(x, target), fixed_defaults(estimator, grid)
    check_folds(target, groups, task, inner_folds, "in an outer training set")
    search = GridSearchCV(
        clone(estimator), grid, scoring=INNER_SCORING[task], cv=splitter(task, inner_folds, seed)
    )
    search.fit(x, target, groups=groups)
    chosen = {key.rsplit("__", 1)[-1]: value for key, value in search.best_params_.items()}
    return search.best_estimator_, chosen


def fixed_defaults(estimator: BaseEstimator, grid: dict[str, list]) -> dict:
    """The values a grid model takes without an inner search: its constructor's."""
    params = estimator.get_params()
    return {key.rsplit("__", 1)[-1]: params[key] for key in grid}


def nested_cv(
    cohort: Cohort,
    model: str,
    outer_folds: int = 5,
    inner_folds: int | None = 5,
    seed: int = 0,
    threads: int = 1,
) -> CrossValidation:
    """Out-of-fold predictions of ``model`` for every participant of ``cohort``; with
    ``inner_folds`` None (outer training sets too small to search), each fold's model at the
    grid's default values.

    Raises ``ValueError`` (one line) when the cohort has one class, or fewer groups of a class
    (or, for a regression, fewer groups) than folds.
    """
    check_folds(cohort.target, cohort.groups, cohort.task, outer_folds, "in the cohort")
    estimator, grid = make_estimator(model, cohort.task, seed, image_shape(cohort))
    x = design_matrix(model, cohort.tabular, cohort.images)
    target, groups = cohort.target, cohort.groups
    prediction = np.full(len(cohort), np.nan)
    fold = np.full(len(cohort), -1)
    chosen, seconds = [], []
    search = {"task": cohort.task, "inner_folds": inner_folds, "seed": seed}
    with limited_threads(threads):
        folds = splitter(cohort.task, outer_folds, seed).split(x, target, groups)
        for index, (train, test) in enumerate(folds):
            start = time.perf_counter()
            fitted, values = tune_and_fit(
                estimator, grid, x[train], target[train], groups[train], **search
            )
            seconds.append(time.perf_counter() - start)
            chosen.append(values)
            prediction[test] = predict(fitted, x[test], cohort.task)
            fold[test] = index
    return CrossValidation(
        model=model,
        task=cohort.task,
        participant_ids=cohort.participant_ids,
        target=target,
        prediction=prediction,
        fold=fold,
        hyperparameters=tuple(chosen),
        fit_seconds=tuple(seconds),
    )


def permutation_p(
    cohort: Cohort,
    model: str,
    n_permutations: int = 100,
    seed: int = 0,
    outer_folds: int = 5,
    inner_folds: int = 5,
    threads: int = 1,
    observed: CrossValidation | None = None,
) -> PermutationTest:
    """Is the nested CV's score (AUC, or r for a regression) better than chance?

    The same nested CV (same folds' seed) runs on ``n_permutations`` copies of the cohort whose
    targets are shuffled across participants. ``observed``: the real nested CV, when already
    run with these settings (it is not run again).
    """
    metric = PRIMARY_METRIC[cohort.task]
    settings = {"outer_folds": outer_folds, "inner_folds": inner_folds, "threads": threads}
    if observed is None:
        observed = nested_cv(cohort, model, seed=seed, **settings)
    score = observed.metrics()[metric]
    rng = np.random.default_rng(seed)
    null = np.empty(n_permutations)
    for index in range(n_permutations):
        shuffled = replace(cohort, target=rng.permutation(cohort.target))
        null[index] = nested_cv(shuffled, model, seed=seed, **settings).metrics()[metric]
    # a score that is nan (e.g. r of a constant prediction) counts against the model
    p = (1 + np.sum(~(null < score))) / (1 + n_permutations)
    return PermutationTest(metric=metric, score=score, null=null, p=float(p))
