"""Figures of the group report's Classification section (matplotlib, Agg; PNG on white as the
other group figures, written atomically): the ROC curves of every model, or predicted against
observed values for a regression; the reliability curves with the Brier scores; the final
model's confusion matrix; and the largest feature weights. All come from the out-of-fold
predictions (``cv_predictions.tsv``) and ``metrics.json`` of a training."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bids_dl.derivatives import write_file_atomic  # noqa: E402

DPI = 90
#: the feature weights drawn, the largest first
TOP_WEIGHTS = 15
MARKERS = ("o", "s", "^", "D")


def _save_atomic(figure, out_file: str | Path) -> Path:
    """Write ``figure`` as a PNG under a temporary name, rename it, and close the figure."""
    try:
        return write_file_atomic(
            Path(out_file), lambda tmp: figure.savefig(tmp, dpi=DPI, format="png")
        )
    finally:
        plt.close(figure)


def roc_points(target: np.ndarray, probability: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every threshold, from (0, 0) to (1, 1)."""
    target, probability = np.asarray(target) == 1, np.asarray(probability, float)
    order = np.argsort(-probability, kind="stable")
    target, probability = target[order], probability[order]
    # one point per distinct threshold: the last row of each run of equal probabilities
    last = np.r_[np.flatnonzero(np.diff(probability)), len(probability) - 1]
    tp, fp = np.cumsum(target)[last], np.cumsum(~target)[last]
    positives, negatives = max(target.sum(), 1), max((~target).sum(), 1)
    return np.r_[0, fp / negatives], np.r_[0, tp / positives]


def plot_roc_curves(
    target: np.ndarray, predictions: dict[str, np.ndarray], aucs: dict, out_file: Path, title: str
) -> Path:
    """One ROC curve per model, its AUC in the legend."""
    figure, axis = plt.subplots(figsize=(4.6, 4.4))
    axis.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
    for name, probability in predictions.items():
        fpr, tpr = roc_points(target, probability)
        axis.plot(fpr, tpr, linewidth=1.5, label=f"{name} (AUC {_number(aucs.get(name))})")
    axis.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel="1 - specificity")
    axis.set(ylabel="sensitivity", title=title)
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    return _save_atomic(figure, out_file)


def plot_predicted_vs_observed(
    target: np.ndarray, predictions: dict[str, np.ndarray], rs: dict, out_file: Path, title: str
) -> Path:
    """Each model's out-of-fold predictions against the observed values, and the identity."""
    figure, axis = plt.subplots(figsize=(4.6, 4.4))
    values = np.concatenate([target, *predictions.values()])
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    axis.plot([low, high], [low, high], color="0.7", linestyle="--", linewidth=1)
    for (name, prediction), marker in zip(predictions.items(), MARKERS * 2, strict=False):
        axis.scatter(
            target,
            prediction,
            s=18,
            marker=marker,
            alpha=0.7,
            label=f"{name} (r {_number(rs.get(name))})",
        )
    axis.set(xlabel="observed", ylabel="predicted (out of fold)", title=title)
    axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    return _save_atomic(figure, out_file)


def plot_reliability(
    curves: dict[str, dict], briers: dict, positive: str, out_file: Path, title: str
) -> Path:
    """Observed fraction of class 1 (``positive``) against the mean predicted probability, per
    bin (the size of a dot: its participants), one curve per model with its Brier score."""
    figure, axis = plt.subplots(figsize=(4.6, 4.4))
    axis.plot(
        [0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1, label="perfectly calibrated"
    )
    for (name, curve), marker in zip(curves.items(), MARKERS * 2, strict=False):
        sizes = 12 + 8 * np.asarray(curve["count"], float)
        line = axis.plot(curve["predicted"], curve["observed"], marker=None, linewidth=1)[0]
        axis.scatter(
            curve["predicted"],
            curve["observed"],
            s=sizes,
            marker=marker,
            color=line.get_color(),
            label=f"{name} (Brier {_number(briers.get(name))})",
        )
    axis.set(xlim=(-0.02, 1.02), ylim=(-0.05, 1.05), xlabel="mean predicted probability")
    axis.set(ylabel=f"observed fraction of {positive}", title=title)
    axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    return _save_atomic(figure, out_file)


def plot_confusion_matrix(
    matrix: list[list[int]], class_names: list[str], out_file: Path, title: str
) -> Path:
    """``[[TN, FP], [FN, TP]]`` as a table of counts (rows: the true class)."""
    matrix = np.asarray(matrix)
    figure, axis = plt.subplots(figsize=(4.2, 3.8))
    axis.imshow(matrix, cmap="Blues", vmin=0, vmax=max(int(matrix.max()), 1))
    for (row, column), count in np.ndenumerate(matrix):
        dark = count > matrix.max() / 2
        axis.text(column, row, str(count), ha="center", va="center", fontsize=14,
                  color="white" if dark else "black")  # fmt: skip
    axis.set_xticks([0, 1], class_names, fontsize=8)
    axis.set_yticks([0, 1], class_names, fontsize=8)
    axis.set(xlabel="predicted (probability >= 0.5)", ylabel="true class", title=title)
    figure.tight_layout()
    return _save_atomic(figure, out_file)


def plot_feature_weights(features: list[dict], out_file: Path, title: str) -> Path | None:
    """A horizontal bar per feature (the largest |weight| on top); None without features."""
    shown = features[:TOP_WEIGHTS]
    if not shown:
        return None
    names = [f["feature"] for f in shown][::-1]
    weights = np.array([f["weight"] for f in shown][::-1], float)
    figure, axis = plt.subplots(figsize=(5.6, 1.2 + 0.28 * len(shown)))
    axis.barh(names, weights, color=np.where(weights >= 0, "#c0504d", "#4f81bd"))
    axis.axvline(0, color="0.3", linewidth=0.8)
    axis.tick_params(axis="y", labelsize=8)
    axis.set(xlabel="weight", title=title)
    figure.tight_layout()
    return _save_atomic(figure, out_file)


def _number(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.2f}"


def draw_all(
    folder: Path, prefix: str, metrics: dict, predictions: pd.DataFrame
) -> list[tuple[Path, str]]:
    """Every figure of a training into ``folder`` (``<prefix>_<kind>.png``), with captions."""
    models = list(metrics["models"])
    final, target = metrics["final"]["model"], metrics["target"]
    observed = predictions["target"].to_numpy(float)
    predicted = {name: predictions[name].to_numpy(float) for name in models}
    scores = {name: metrics["models"][name]["metrics"] for name in models}
    drawn = []
    if metrics["task"] == "classification":
        aucs = {name: scores[name]["auc"]["estimate"] for name in models}
        path = plot_roc_curves(
            observed, predicted, aucs, folder / f"{prefix}_roc.png", f"ROC curves: {target}"
        )
        drawn.append((path, f"ROC curves of the out-of-fold predictions of {target}, per model"))
        curves = {name: metrics["models"][name]["reliability"] for name in models}
        briers = {name: scores[name]["brier"]["estimate"] for name in models}
        path = plot_reliability(
            curves,
            briers,
            metrics["class_names"][1],
            folder / f"{prefix}_reliability.png",
            f"Reliability: {target}",
        )
        drawn.append(
            (path, "Reliability (calibration) of the out-of-fold probabilities, Brier scores")
        )
        path = plot_confusion_matrix(
            metrics["models"][final]["confusion_matrix"],
            metrics["class_names"],
            folder / f"{prefix}_confusion.png",
            f"{final} (out of fold)",
        )
        drawn.append((path, f"Confusion matrix of the final model ({final}), out of fold"))
    else:
        rs = {name: scores[name]["r"]["estimate"] for name in models}
        path = plot_predicted_vs_observed(
            observed, predicted, rs, folder / f"{prefix}_predicted.png", f"Predicted {target}"
        )
        drawn.append((path, f"Out-of-fold predictions of {target} against the observed values"))
    importance = metrics.get("feature_importance", {}).get(final, {})
    path = plot_feature_weights(
        importance.get("features", []), folder / f"{prefix}_weights.png", f"{final}: {target}"
    )
    if path is not None:
        drawn.append((path, f"The largest feature weights of the final model ({final})"))
    return drawn
