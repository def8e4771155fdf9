"""How well a group-level model predicts: metrics of out-of-fold predictions and their bootstrap
intervals.

A classification is scored from the probability of class 1: AUC (threshold-free), and at the
fixed threshold :data:`THRESHOLD` = 0.5 the balanced accuracy, sensitivity and specificity (0.5
rather than the prevalence, so the threshold a bundle records is the one the metrics used; on an
unbalanced cohort these three then reflect the prevalence the model learnt), the Brier score and
a reliability curve. A regression is scored by Pearson's r, the mean absolute error and R^2.
Intervals resample participants (2000 percentile bootstrap resamples by default).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

THRESHOLD = 0.5
#: the metric a permutation test compares, per task (higher is better for both)
PRIMARY_METRIC = {"classification": "auc", "regression": "r"}
BOOTSTRAP_SAMPLES = 2000


def auc(target: np.ndarray, probability: np.ndarray) -> float:
    """Area under the ROC curve: the fraction of (positive, negative) pairs that the
    probabilities order correctly, ties counting one half (Mann-Whitney); ``nan`` with one class."""
    positive = np.asarray(target) == 1
    n_positive, n_negative = positive.sum(), (~positive).sum()
    if n_positive == 0 or n_negative == 0:
        return float("nan")
    ranks = rankdata(probability)
    return float(
        (ranks[positive].sum() - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative)
    )


def confusion_matrix(
    target: np.ndarray, probability: np.ndarray, threshold: float = THRESHOLD
) -> np.ndarray:
    """``[[TN, FP], [FN, TP]]``, a participant predicted positive when its probability is at
    least ``threshold``."""
    actual = np.asarray(target) == 1
    predicted = np.asarray(probability) >= threshold
    return np.array(
        [
            [np.sum(~actual & ~predicted), np.sum(~actual & predicted)],
            [np.sum(actual & ~predicted), np.sum(actual & predicted)],
        ]
    )


def _ratio(numerator: int, denominator: int) -> float:
    return float(numerator / denominator) if denominator else float("nan")


def classification_metrics(target: np.ndarray, probability: np.ndarray) -> dict[str, float]:
    """AUC, balanced accuracy, sensitivity, specificity (at :data:`THRESHOLD`) and Brier score."""
    (tn, fp), (fn, tp) = confusion_matrix(target, probability)
    sensitivity, specificity = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    return {
        "auc": auc(target, probability),
        "balanced_accuracy": (sensitivity + specificity) / 2,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "brier": float(np.mean((np.asarray(probability) - np.asarray(target)) ** 2)),
    }


def regression_metrics(target: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """Pearson's r (``nan`` when either side is constant), mean absolute error and R^2 (1 minus
    the residual over the total sum of squares: negative when worse than predicting the mean)."""
    target, prediction = np.asarray(target, float), np.asarray(prediction, float)
    t, p = target - target.mean(), prediction - prediction.mean()
    spread = np.sqrt((t**2).sum() * (p**2).sum())
    total = (t**2).sum()
    return {
        "r": float((t * p).sum() / spread) if spread > 0 else float("nan"),
        "mae": float(np.abs(target - prediction).mean()),
        "r2": float(1 - ((target - prediction) ** 2).sum() / total) if total > 0 else float("nan"),
    }


def metrics(target: np.ndarray, prediction: np.ndarray, task: str) -> dict[str, float]:
    """The scalar metrics of ``task`` (``"classification"`` or ``"regression"``)."""
    if task == "classification":
        return classification_metrics(target, prediction)
    return regression_metrics(target, prediction)


def reliability_curve(
    target: np.ndarray, probability: np.ndarray, bins: int = 10
) -> dict[str, list[float]]:
    """Calibration of the probabilities: for each non-empty bin of equal width on [0, 1], its
    edges, how many participants, their mean probability and the observed fraction of class 1."""
    target, probability = np.asarray(target), np.asarray(probability)
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(probability, edges[1:-1]), 0, bins - 1)
    curve: dict[str, list[float]] = {
        key: [] for key in ("low", "high", "count", "predicted", "observed")
    }
    for b in np.unique(index):
        members = index == b
        curve["low"].append(float(edges[b]))
        curve["high"].append(float(edges[b + 1]))
        curve["count"].append(int(members.sum()))
        curve["predicted"].append(float(probability[members].mean()))
        curve["observed"].append(float(target[members].mean()))
    return curve


def _bootstrap(
    target: np.ndarray, predictions: list[np.ndarray], task: str, n: int, seed: int
) -> tuple[list[dict[str, float]], list[dict[str, np.ndarray]]]:
    """Each prediction's metrics, and their values on ``n`` resamples of the participants (the
    same resamples for every prediction, so that differences are paired)."""
    target = np.asarray(target)
    rng = np.random.default_rng(seed)
    estimates = [metrics(target, p, task) for p in predictions]
    draws: list[dict[str, list[float]]] = [{name: [] for name in e} for e in estimates]
    for _ in range(n):
        rows = rng.integers(0, len(target), len(target))
        for prediction, values in zip(predictions, draws, strict=True):
            for name, value in metrics(target[rows], np.asarray(prediction)[rows], task).items():
                values[name].append(value)
    return estimates, [{k: np.array(v) for k, v in d.items()} for d in draws]


def _interval(estimate: float, draws: np.ndarray) -> dict[str, float]:
    # resamples missing a class leave AUC, sensitivity... undefined: they are left out
    low, high = np.nanpercentile(draws, [2.5, 97.5]) if np.isfinite(draws).any() else (np.nan,) * 2
    return {"estimate": estimate, "low": float(low), "high": float(high)}


def bootstrap_intervals(
    target: np.ndarray,
    prediction: np.ndarray,
    task: str,
    n: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Every metric of :func:`metrics` with its 95 % percentile bootstrap interval:
    ``{"auc": {"estimate": ..., "low": ..., "high": ...}, ...}``."""
    (estimate,), (draws,) = _bootstrap(target, [prediction], task, n, seed)
    return {name: _interval(estimate[name], draws[name]) for name in estimate}


def paired_difference(
    target: np.ndarray,
    prediction_a: np.ndarray,
    prediction_b: np.ndarray,
    task: str,
    n: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """metric(a) - metric(b) for every metric, with the 95 % interval of the difference over the
    same resamples of the participants (e.g. the deep model against the linear baseline: an
    interval above 0 for AUC says a is better)."""
    (a, b), (draws_a, draws_b) = _bootstrap(target, [prediction_a, prediction_b], task, n, seed)
    return {name: _interval(a[name] - b[name], draws_a[name] - draws_b[name]) for name in a}
