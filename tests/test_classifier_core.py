"""Group-level prediction: metrics against hand computations, the nested cross-validation and
its guards against leaks, the permutation test, and bundles that predict as the fit did."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.pipeline import Pipeline

from bids_dl.models import classifier_validation
from bids_dl.models.card import BundleError
from bids_dl.models.classifier_bundle import fit_final, load_classifier, save_classifier
from bids_dl.models.classifier_data import Cohort
from bids_dl.models.classifier_estimators import design_matrix, make_estimator, model_names
from bids_dl.models.classifier_estimators import predict as estimator_predict
from bids_dl.models.classifier_metrics import (
    bootstrap_intervals,
    classification_metrics,
    confusion_matrix,
    paired_difference,
    regression_metrics,
    reliability_curve,
)
from bids_dl.models.classifier_networks import NetworkClassifier
from bids_dl.models.classifier_validation import nested_cv, permutation_p


def make_cohort(
    n: int = 60,
    features: int = 4,
    signal: float = 2.0,
    task: str = "classification",
    seed: int = 0,
    images: tuple[int, int, int] | None = None,
) -> Cohort:
    """Participants whose target follows the first feature (``signal`` 0: pure noise); with
    ``images``, maps whose mean follows it too."""
    rng = np.random.default_rng(seed)
    tabular = rng.normal(size=(n, features))
    score = signal * tabular[:, 0] + rng.normal(size=n)
    target = (score > np.median(score)).astype(int) if task == "classification" else 10 + score
    maps = None
    if images is not None:
        maps = (score[:, None, None, None] + rng.normal(size=(n, *images))).astype(np.float32)
    return Cohort(
        participant_ids=tuple(f"sub-{i:03d}" for i in range(n)),
        target=target,
        task=task,
        groups=np.arange(n),
        tabular=tabular,
        feature_names=tuple(f"f{j}" for j in range(features)),
        images=maps,
        image_names=("gm_probseg",) if images else (),
        target_name="diagnosis" if task == "classification" else "nihss",
        class_names=("CN", "AD") if task == "classification" else (),
    )


# --- metrics -----------------------------------------------------------------------------

TARGET = np.array([0, 0, 0, 1, 1, 1])
PROBABILITY = np.array([0.1, 0.4, 0.8, 0.35, 0.8, 0.9])


def test_classification_metrics_match_a_hand_computation():
    # positive vs negative pairs: 0.35 beats 0.1 (1); 0.8 beats 0.1, 0.4, ties 0.8 (2.5); 0.9 (3)
    # at 0.5: TN 2 (0.1, 0.4), FP 1 (0.8), FN 1 (0.35), TP 2 (0.8, 0.9)
    found = classification_metrics(TARGET, PROBABILITY)
    brier = (0.1**2 + 0.4**2 + 0.8**2 + 0.65**2 + 0.2**2 + 0.1**2) / 6
    expected = {
        "auc": 6.5 / 9,
        "balanced_accuracy": 2 / 3,
        "sensitivity": 2 / 3,
        "specificity": 2 / 3,
        "brier": brier,
    }
    assert found == pytest.approx(expected)
    assert confusion_matrix(TARGET, PROBABILITY).tolist() == [[2, 1], [1, 2]]
    assert np.isnan(classification_metrics(np.zeros(3), np.array([0.2, 0.6, 0.9]))["auc"])


def test_reliability_curve_bins_the_probabilities():
    curve = reliability_curve(TARGET, PROBABILITY, bins=2)
    assert curve["count"] == [3, 3]
    assert curve["predicted"] == pytest.approx([0.85 / 3, 2.5 / 3])
    assert curve["observed"] == pytest.approx([1 / 3, 2 / 3])
    assert curve["low"] == [0.0, 0.5]


def test_regression_metrics_match_a_hand_computation():
    target = np.array([1.0, 2, 3, 4, 5, 6])
    prediction = np.array([1.5, 2, 2.5, 4.5, 5, 7])
    # deviations from the means (3.5 and 22.5 / 6 = 3.75)
    t, p = target - 3.5, prediction - 3.75
    r = (t * p).sum() / np.sqrt((t * t).sum() * (p * p).sum())
    found = regression_metrics(target, prediction)
    assert found == pytest.approx({"r": r, "mae": 2.5 / 6, "r2": 1 - 1.75 / 17.5})


def test_bootstrap_intervals_and_a_paired_difference():
    rng = np.random.default_rng(1)
    target = np.repeat([0, 1], 50)
    good = np.clip(0.5 + 0.3 * (target - 0.5) + 0.2 * rng.normal(size=100), 0, 1)
    noise = rng.uniform(size=100)
    intervals = bootstrap_intervals(target, good, "classification", n=200, seed=0)
    assert set(intervals) == {"auc", "balanced_accuracy", "sensitivity", "specificity", "brier"}
    for interval in intervals.values():
        assert interval["low"] <= interval["estimate"] <= interval["high"]
    assert intervals == bootstrap_intervals(target, good, "classification", n=200, seed=0)
    same = paired_difference(target, good, good, "classification", n=50)
    assert all(v == {"estimate": 0, "low": 0, "high": 0} for v in same.values())
    better = paired_difference(target, good, noise, "classification", n=200)
    assert better["auc"]["low"] > 0
    regression = bootstrap_intervals(
        np.arange(30.0), np.arange(30.0) + rng.normal(size=30), "regression", n=100
    )
    assert set(regression) == {"r", "mae", "r2"}


# --- estimators and nested cross-validation ---------------------------------------------


def test_model_names_follow_the_cohort():
    assert model_names(make_cohort()) == ("linear", "mlp")
    assert model_names(make_cohort(task="regression")) == ("linear", "svm", "mlp")
    assert model_names(make_cohort(images=(4, 4, 4))) == ("linear", "mlp", "cnn")
    with pytest.raises(ValueError, match="no 'svm' model for a classification"):
        make_estimator("svm", "classification")


def test_nested_cv_predicts_every_participant_once():
    cohort = make_cohort(n=80)
    result = nested_cv(cohort, "linear", outer_folds=4, inner_folds=3)
    assert sorted(np.bincount(result.fold)) == [20, 20, 20, 20]
    assert np.all((result.prediction >= 0) & (result.prediction <= 1))
    assert len(result.hyperparameters) == len(result.fit_seconds) == 4
    assert set(result.hyperparameters[0]) == {"C"}
    assert result.metrics()["auc"] > 0.8
    regression = nested_cv(make_cohort(n=80, task="regression"), "svm", 4, 3)
    assert regression.metrics()["r"] > 0.6
    assert not np.isnan(regression.prediction).any()


def test_a_network_fit_is_seeded_and_leaves_the_global_generator_alone():
    cohort = make_cohort(n=40)
    torch.manual_seed(123)
    fits = [
        NetworkClassifier(seed=seed, epochs=5).fit(cohort.tabular, cohort.target)
        for seed in (7, 7, 8)
    ]
    after_fits = torch.rand(1)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), after_fits)
    first, again, other = (fit.predict_proba(cohort.tabular)[:, 1] for fit in fits)
    assert np.array_equal(first, again) and not np.allclose(first, other)


@pytest.mark.parametrize(
    ("target", "match"),
    [
        (np.zeros(40, int), "no participant of class 1 in the cohort"),
        (
            np.r_[np.ones(4, int), np.zeros(36, int)],
            "4 groups of class 1 in the cohort for 5 folds",
        ),
    ],
)
def test_nested_cv_refuses_cohorts_it_cannot_fold(target, match):
    cohort = make_cohort(n=40)
    cohort = dataclasses.replace(cohort, target=target)
    with pytest.raises(ValueError, match=match) as error:
        nested_cv(cohort, "linear")
    assert "\n" not in str(error.value)


def test_nested_cv_refuses_a_training_set_too_small_for_the_inner_folds():
    # 6 participants of class 1: each outer training set keeps 4 or 5, fewer than 6 inner folds
    cohort = make_cohort(n=40)
    target = np.r_[np.ones(6, int), np.zeros(34, int)]
    cohort = dataclasses.replace(cohort, target=target)
    with pytest.raises(ValueError, match="in an outer training set for 6 folds"):
        nested_cv(cohort, "linear", outer_folds=5, inner_folds=6)


def test_repeated_scans_of_a_participant_do_not_leak_across_folds():
    """Three noisy copies of each participant share its label, drawn at random: an ungrouped
    CV finds the copies in training and scores high, the grouped one stays near chance."""
    rng = np.random.default_rng(0)
    subjects, copies, features = 60, 3, 40
    label = rng.permutation(np.repeat([0, 1], subjects // 2))
    tabular = np.repeat(rng.normal(size=(subjects, features)), copies, axis=0)
    tabular += 0.1 * rng.normal(size=tabular.shape)
    subject = np.repeat(np.arange(subjects), copies)

    def cohort(groups: np.ndarray) -> Cohort:
        ids = tuple(f"sub-{s:02d}_ses-{i % copies}" for i, s in enumerate(subject))
        names = tuple(f"f{j}" for j in range(features))
        return Cohort(ids, label[subject], "classification", groups, tabular, names)

    grouped = nested_cv(cohort(subject), "linear", outer_folds=5, inner_folds=3).metrics()
    naive = nested_cv(cohort(np.arange(len(subject))), "linear", 5, 3).metrics()
    assert grouped["auc"] < 0.7
    assert naive["auc"] > 0.9


class RowSpy(TransformerMixin, BaseEstimator):
    """Records the rows each fit sees (column 0 holds the row number) and drops that column."""

    fits: list[np.ndarray] = []

    def fit(self, x: np.ndarray, y: np.ndarray | None = None) -> RowSpy:
        RowSpy.fits.append(x[:, 0].astype(int))
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return x[:, 1:]


def test_no_outer_test_row_reaches_a_fit(monkeypatch):
    def with_spy(name, task, seed, shape):
        estimator, grid = make_estimator(name, task, seed, shape)
        return Pipeline([("spy", RowSpy()), *estimator.steps]), grid

    monkeypatch.setattr(classifier_validation, "make_estimator", with_spy)
    RowSpy.fits.clear()
    base = make_cohort(n=60)
    tabular = np.column_stack([np.arange(60), base.tabular])
    cohort = dataclasses.replace(base, tabular=tabular, feature_names=("row", *base.feature_names))
    result = nested_cv(cohort, "linear", outer_folds=3, inner_folds=3)
    tests = [set(np.flatnonzero(result.fold == k)) for k in range(3)]
    candidates = len(make_estimator("linear", "classification")[1]["linear__C"])
    assert len(RowSpy.fits) == 3 * (3 * candidates + 1)  # per outer fold: inner fits, a refit
    for rows in RowSpy.fits:
        assert any(test.isdisjoint(rows) for test in tests)
    for test in tests:  # each outer fold's refit saw exactly its training rows
        assert any(set(rows) == set(range(60)) - test for rows in RowSpy.fits)


def test_permutation_p_is_small_for_a_signal_and_large_for_noise():
    settings = {"n_permutations": 4, "outer_folds": 3, "inner_folds": 3, "seed": 0}
    signal = permutation_p(make_cohort(n=60), "linear", **settings)
    assert signal.p == pytest.approx(1 / 5)
    assert signal.score > signal.null.max()
    # with 4 permutations a p of pure noise is uniform on {0.2, ..., 1}: the data are seeded
    noise = permutation_p(make_cohort(n=60, signal=0, seed=3), "linear", **settings)
    assert noise.p >= 0.6
    assert len(noise.null) == 4


# --- bundles -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "model", "images"),
    [
        ("classification", "linear", None),
        ("classification", "mlp", None),
        ("regression", "linear", None),
        ("regression", "svm", None),
        ("regression", "mlp", None),
        ("classification", "cnn", (6, 6, 6)),
    ],
)
def test_a_bundle_predicts_as_the_fitted_model(tmp_path, task, model, images):
    cohort = make_cohort(n=48, task=task, images=images)
    fitted = fit_final(cohort, model, seed=1, inner_folds=3)
    metrics = {"auc": {"estimate": 0.8, "low": 0.7, "high": 0.9}}
    save_classifier(tmp_path / "bundle", fitted, {"version": "1.2.0", "metrics": metrics})
    save_classifier(tmp_path / "bundle", fitted, {"version": "1.2.0", "metrics": metrics})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # replaced, no leftovers
    assert sorted(p.name for p in (tmp_path / "bundle").iterdir()) == [
        "model.json",
        "weights.safetensors",
    ]
    x = design_matrix(model, cohort.tabular, cohort.images)
    before = estimator_predict(fitted.estimator, x, task)
    loaded = load_classifier(tmp_path / "bundle")
    assert np.allclose(loaded.predict(cohort.tabular, cohort.images), before, atol=1e-6)
    card = json.loads((tmp_path / "bundle" / "model.json").read_text())
    assert card["task"] == "classify" and card["version"] == "1.2.0"
    assert card["architecture"]["name"] == model
    assert card["architecture"]["hyperparameters"] == fitted.hyperparameters
    assert card["inputs"]["features"] == list(cohort.feature_names)
    assert card["metrics"] == metrics and card["training"]["seed"] == 1
    if task == "classification":
        assert card["outputs"]["labels"] == {"0": "CN", "1": "AD"}
        assert card["training"]["participants_per_class"] == {"CN": 24, "AD": 24}
    if images:
        assert card["inputs"]["image_shape"] == list(images)


def test_a_bundle_checks_its_inputs(tmp_path):
    cohort = make_cohort(n=40)
    save_classifier(tmp_path / "bundle", fit_final(cohort, "linear", inner_folds=3))
    loaded = load_classifier(tmp_path / "bundle")
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        loaded.predict(cohort.tabular[:, :3])
    (tmp_path / "bundle" / "weights.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(BundleError, match="not a safetensors file"):
        load_classifier(tmp_path / "bundle")
