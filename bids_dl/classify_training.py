"""Training group-level models, from checked inputs to the files they write: the code that
``bids_dl-classify train`` and the BIDS-App's ``bids_dl ... group --classify`` share (applying a
bundle is :mod:`bids_dl.classify_prediction`'s). Errors are :class:`InputError` (one line);
progress goes to a ``report`` callback (``click.echo`` on a terminal, a logger in the BIDS-App).

Training cross-validates every model that applies (nested: hyper-parameters picked inside each
outer training set) and writes ``cv_predictions.tsv``, ``metrics.json`` and ``bundle/``, the
final model refitted on every participant.

Small cohorts shrink the folds rather than fail: the outer folds are at most the participants of
the smallest class (at least 2, else an error), the inner folds at most those of the smallest
class of an outer training set; where that is under 2, the grid models take fixed defaults
(:data:`NO_INNER_SEARCH`), which ``metrics.json`` and the card say.

The final model is the linear one unless another model beats it: the 95 % paired-bootstrap
interval of its difference to the linear model in the primary metric (AUC, or Pearson's r
for a regression) lies above 0. Among several that do, the one with the best estimate wins.
A simple model that is as good is easier to trust, explain and reuse (``final`` overrides).
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from bids_dl import __version__
from bids_dl.classify_features import (
    CohortPlan,
    FeatureOptions,
    FeatureSpec,
    load_cohort,
    plan_training,
)
from bids_dl.config import CLASSIFY_MODELS
from bids_dl.derivatives import write_json_atomic, write_nifti_atomic, write_text_atomic
from bids_dl.inputs import InputError, check_writable_folder

LOGGER = logging.getLogger("bids_dl.classify")
#: every model of the core, in the order they are run and listed
MODELS = CLASSIFY_MODELS
BUNDLE = "bundle"
#: the card's ``inputs`` entry that says how to compute the features again
SPEC_KEY = "feature_spec"
#: the atlas of regional loads, in the bundle beside the card
ATLAS_FILE = "atlas.nii.gz"
NO_INNER_SEARCH = "no inner search: too few participants"
#: shuffles per feature of the permutation importance (MLP, SVM)
PERMUTATION_REPEATS = 10

Report = Callable[[str], None]


@dataclass(frozen=True)
class TrainingOptions:
    """How to train: the models, folds, seed, bootstrap and where to write."""

    output_dir: Path
    models: tuple[str, ...] = ()
    final: str = "auto"
    folds: int = 5
    inner_folds: int = 5
    seed: int = 0
    bootstrap: int = 2000
    threads: int = 1
    #: the command line, recorded in metrics.json and on the card
    command: str = ""


@dataclass(frozen=True)
class FoldPlan:
    """The folds a cohort allows: ``inner`` None means no inner search in the cross-validation
    (the grid models take fixed defaults), ``final_inner`` the same for the final refit."""

    outer: int
    inner: int | None
    final_inner: int | None
    requested_outer: int
    requested_inner: int
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict:
        inner = f"{self.inner} grouped folds of each outer training set" if self.inner else None
        return {
            "outer_folds": self.outer,
            "inner_folds": self.inner,
            "final_model_inner_folds": self.final_inner,
            "requested": {"outer_folds": self.requested_outer, "inner_folds": self.requested_inner},
            "inner_search": inner or NO_INNER_SEARCH,
            "notes": list(self.notes),
        }


@dataclass
class TrainingPlan:
    """Checked inputs of a training: the cohort plan, the models and the folds."""

    cohort: CohortPlan
    models: tuple[str, ...]
    folds: FoldPlan
    options: TrainingOptions
    #: the derivatives folder the features come from (recorded on the card)
    source: Path


@dataclass
class TrainingResult:
    """What a training wrote: ``summary`` is the content of metrics.json."""

    summary: dict
    results: dict = field(default_factory=dict)
    bundle: Path | None = None


def check_training(
    derivatives: Path, participants: Path, features: FeatureOptions, options: TrainingOptions
) -> TrainingPlan:
    """Every check of a training, before any image is read."""
    check_output(derivatives, options.output_dir)
    plan = plan_training(derivatives, participants, features)
    models = choose_models(plan.spec, options.models, options.final)
    plan.spec = replace(plan.spec, keep_images="cnn" in models)
    folds = plan_folds(
        plan, options.folds, options.inner_folds, options.seed, features.target_option
    )
    return TrainingPlan(plan, models, folds, options, derivatives)


def check_output(derivatives: Path, output: Path) -> None:
    """OUTPUT_DIR must be writable and not DERIVATIVES_DIR itself (never written to)."""
    if output.resolve() == derivatives.resolve():
        raise InputError("OUTPUT_DIR is DERIVATIVES_DIR: the input is never written to")
    check_writable_folder("OUTPUT_DIR", output)


def choose_models(spec: FeatureSpec, requested: tuple[str, ...], final: str) -> tuple[str, ...]:
    """The requested models, or every one that applies; refuse one that cannot run."""
    from bids_dl.models.classifier_estimators import model_names

    if "cnn" in (*requested, final) and len(spec.images) > 1:
        raise InputError("the cnn reads one map per participant: give one --image-features")
    # the core's rule reads only these three attributes of a cohort, known before any image
    features = SimpleNamespace(
        tabular=spec.feature_names or None, images=spec.images or None, task=spec.target.task
    )
    applicable = model_names(features)
    for name in (*requested, *([final] if final != "auto" else [])):
        if name in applicable:
            continue
        if name == "cnn":
            raise InputError("model cnn needs --image-features")
        if not spec.feature_names:
            raise InputError(
                f"model {name} needs tabular features: --features, --covariates or --atlas"
            )
        raise InputError(f"model {name} is for a regression only")
    if final != "auto" and requested and final not in requested:
        raise InputError(f"--final {final} is not among the models {' '.join(requested)}")
    return tuple(m for m in MODELS if m in (requested or applicable))


def plan_folds(
    plan: CohortPlan, folds: int, inner_folds: int, seed: int, option: str = "--target"
) -> FoldPlan:
    """The outer folds: at most the participants (groups, where folds keep groups together) of
    the smallest class (of the cohort, for a regression; at least 2, else
    :class:`InputError`); the inner folds: at most the smallest class of any outer training set
    (the same splits as the cross-validation), None under 2."""
    from bids_dl.models.classifier_validation import splitter

    target, spec, groups = plan.target, plan.spec.target, plan.fold_groups
    if spec.task == "classification":
        counts = {
            name: len(np.unique(groups[target == i])) for i, name in enumerate(spec.class_names)
        }
        for name, count in counts.items():
            if count < 2:
                what = "no participant" if count == 0 else "1 participant"
                raise InputError(
                    f"{option} {spec.column}: {what} in class {name}: a classification needs "
                    "two classes, each of at least 2 participants for cross-validation"
                )
        smallest, unit = min(counts.values()), "the smallest class has"
    else:
        if np.ptp(target) == 0:
            raise InputError(f"{option} {spec.column} is the same for every participant")
        if len(target) < 3:
            raise InputError(f"{option} {spec.column}: {len(target)} participants, too few")
        smallest, unit = len(np.unique(groups)), "the cohort has"
    outer = min(folds, smallest)
    notes = []
    what = "groups" if plan.groups is not None else "participants"
    if outer < folds:
        notes.append(f"outer folds reduced from {folds} to {outer}: {unit} {smallest} {what}")
    splits = splitter(spec.task, outer, seed).split(np.zeros((len(target), 1)), target, groups)
    capacity = min(_inner_capacity(target[train], groups[train], spec.task) for train, _ in splits)
    inner = min(inner_folds, capacity) if capacity >= 2 else None
    if inner is None:
        notes.append(
            f"{NO_INNER_SEARCH} (an outer training set has {capacity} in a class): the grid "
            "models take fixed defaults"
            if spec.task == "classification"
            else f"{NO_INNER_SEARCH} in an outer training set: the grid models take fixed defaults"
        )
    elif inner < inner_folds:
        notes.append(
            f"inner folds reduced from {inner_folds} to {inner} by the outer training sets"
        )
    whole = _inner_capacity(target, groups, spec.task)
    final_inner = min(inner_folds, whole) if whole >= 2 else None
    return FoldPlan(outer, inner, final_inner, folds, inner_folds, tuple(notes))


def _inner_capacity(target: np.ndarray, groups: np.ndarray, task: str) -> int:
    """The most grouped folds these rows allow: the groups of the smallest class (a
    classification); the most that leave each inner training set 2 groups and a target that
    varies (a regression)."""
    if task == "classification":
        return min(len(np.unique(groups[target == value])) for value in (0, 1))
    n = len(np.unique(groups))
    if np.ptp(target) == 0:
        return 0
    return max((k for k in range(2, n + 1) if n - math.ceil(n / k) >= 2), default=0)


def run_training(training: TrainingPlan, report: Report = LOGGER.info) -> TrainingResult:
    """Read the features, cross-validate each model, choose and refit the final one, write
    ``cv_predictions.tsv`` (+ JSON), ``bundle/`` and ``metrics.json``."""
    plan, options, output = training.cohort, training.options, training.options.output_dir
    start = time.perf_counter()
    left_out = ", ".join(f"{n} {why}" for why, n in plan.left_out.items()) or "none"
    report(f"{len(plan.participant_ids)} participants (left out: {left_out}); reading features")
    for note in training.folds.notes:
        report(note)
    cohort = load_cohort(plan)
    timings = {"features_s": elapsed(start)}
    results = {}
    for name in training.models:
        begin = time.perf_counter()
        try:
            results[name] = cross_validate(cohort, name, training.folds, options)
        except ValueError as error:  # a fold the checks could not foresee
            raise InputError(f"{name}: {error}") from None
        timings[f"{name}_cv_s"] = elapsed(begin)
        report(f"{name}: cross-validated in {timings[f'{name}_cv_s']:.1f} s")
    scores = score_models(results, cohort.task, options.bootstrap, options.seed)
    for name, entry in scores.items():
        entry["cross_validation_s"] = timings[f"{name}_cv_s"]
        entry["hyperparameter_search"] = _search(name, cohort, training.folds.inner)
    final, reason = choose_final(scores, options.final, cohort.task)
    summary = training_summary(training, cohort, scores, (final, reason))
    write_cv_predictions(results, plan, output / "cv_predictions.tsv")
    begin = time.perf_counter()
    fitted = fit_final_model(cohort, final, training.folds, options)
    timings[f"{final}_final_fit_s"] = elapsed(begin)
    summary["feature_importance"] = importances(fitted, cohort, training, results)
    bundle = save_final_model(fitted, training, summary)
    timings["total_s"] = elapsed(start)
    summary["timings"] = timings
    write_json_atomic(json_safe(summary), output / "metrics.json")
    for line in describe_scores(scores, cohort.task):
        report(line)
    report(f"final model: {final} ({reason}); bundle written to {bundle}")
    return TrainingResult(summary, results, bundle)


def elapsed(start: float) -> float:
    return round(time.perf_counter() - start, 2)


def json_safe(value):
    """``value`` with every NaN or infinite float as None (JSON has no NaN: ``null``)."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _search(name: str, cohort, inner: int | None) -> str:
    from bids_dl.models.classifier_estimators import image_shape, make_estimator

    _, grid = make_estimator(name, cohort.task, 0, image_shape(cohort))
    if not grid:
        return "none: a fixed recipe"
    return f"grid search on {inner} grouped inner folds" if inner else NO_INNER_SEARCH


def cross_validate(cohort, name: str, folds: FoldPlan, options: TrainingOptions):
    """The core's nested cross-validation on the planned folds (without inner folds, each grid
    model at its defaults)."""
    from bids_dl.models.classifier_validation import nested_cv

    return nested_cv(cohort, name, folds.outer, folds.inner, options.seed, options.threads)


def score_models(results: dict, task: str, samples: int, seed: int) -> dict[str, dict]:
    """Each model's metrics with 95 % bootstrap intervals, and its paired difference to the
    linear model (the same resamples of the participants); for a classification also the
    confusion matrix (at the 0.5 threshold) and the reliability curve."""
    from bids_dl.models.classifier_metrics import (
        bootstrap_intervals,
        confusion_matrix,
        paired_difference,
        reliability_curve,
    )

    reference = results.get("linear")
    scores = {}
    for name, cv in results.items():
        entry = {"metrics": bootstrap_intervals(cv.target, cv.prediction, task, samples, seed)}
        if reference is not None and name != "linear":
            entry["difference_to_linear"] = paired_difference(
                cv.target, cv.prediction, reference.prediction, task, samples, seed
            )
        if task == "classification":
            entry["confusion_matrix"] = confusion_matrix(cv.target, cv.prediction).tolist()
            entry["reliability"] = reliability_curve(cv.target, cv.prediction)
        entry["hyperparameters"] = list(cv.hyperparameters)
        entry["fit_seconds_per_fold"] = [round(s, 2) for s in cv.fit_seconds]
        scores[name] = entry
    return scores


def choose_final(scores: dict[str, dict], requested: str, task: str) -> tuple[str, str]:
    """The final model and why: linear unless another's paired-bootstrap interval of the
    primary metric's difference to linear lies above 0 (the best such one)."""
    from bids_dl.models.classifier_metrics import PRIMARY_METRIC

    metric = PRIMARY_METRIC[task]

    def estimate(name: str) -> float:
        value = scores[name]["metrics"][metric]["estimate"]
        return value if np.isfinite(value) else -np.inf

    if requested != "auto":
        return requested, "chosen on the command line"
    if "linear" not in scores:
        best = max(scores, key=estimate)
        return best, f"the best {metric} in cross-validation (no linear model to compare with)"
    better = [
        name
        for name, entry in scores.items()
        if name != "linear" and entry["difference_to_linear"][metric]["low"] > 0
    ]
    if not better:
        return "linear", f"no model beats it: no paired-bootstrap interval of {metric} lies above 0"
    best = max(better, key=estimate)
    difference = scores[best]["difference_to_linear"][metric]
    return best, (
        f"its {metric} exceeds linear's by {difference['estimate']:.3f} (95 % interval "
        f"{difference['low']:.3f} to {difference['high']:.3f})"
    )


def describe_scores(scores: dict[str, dict], task: str) -> list[str]:
    """One console line per model: its primary metric and interval."""
    from bids_dl.models.classifier_metrics import PRIMARY_METRIC

    metric = PRIMARY_METRIC[task]
    return [
        f"{name}: {metric} {m['estimate']:.3f} (95 % CI {m['low']:.3f} to {m['high']:.3f})"
        for name, entry in scores.items()
        for m in [entry["metrics"][metric]]
    ]


def write_cv_predictions(results: dict, plan: CohortPlan, path: Path) -> Path:
    """``cv_predictions.tsv`` (participant_id, fold, target, one column per model) and its
    data dictionary. The models share the outer folds (same splitter and seed)."""
    first = next(iter(results.values()))
    table = pd.DataFrame({"participant_id": first.participant_ids, "fold": first.fold})
    table["target"] = first.target
    for name, cv in results.items():
        if not np.array_equal(cv.fold, first.fold):
            table[f"fold_{name}"] = cv.fold
        table[name] = cv.prediction
    target = plan.spec.target
    what = (
        f"probability of class {target.class_names[1]!r}"
        if target.task == "classification"
        else f"predicted {target.column}"
    )
    dictionary = {
        "participant_id": {"Description": "BIDS participant label"},
        "fold": {"Description": "the outer cross-validation fold that held the participant out"},
        "target": {"Description": target_description(target)},
        **{
            name: {"Description": f"{what} by the {name} model, fitted without this participant"}
            for name in results
        },
    }
    write_tsv(table, path)
    write_json_atomic(dictionary, path.with_suffix(".json"))
    return path


def target_description(target) -> str:
    if target.task == "regression":
        return f"{target.column} (participants.tsv)"
    classes = ", ".join(f"{i}: {name}" for i, name in enumerate(target.class_names))
    return f"class of {target.column} (participants.tsv): {classes}"


def write_tsv(table: pd.DataFrame, path: Path) -> Path:
    buffer = io.StringIO()
    table.to_csv(buffer, sep="\t", index=False, na_rep="n/a", lineterminator="\n")
    return write_text_atomic(buffer.getvalue(), path)


def training_summary(training: TrainingPlan, cohort, scores: dict, final: tuple[str, str]) -> dict:
    """The content of ``metrics.json`` (its importances and timings aside)."""
    from bids_dl.models.classifier_metrics import PRIMARY_METRIC

    plan, options = training.cohort, training.options
    spec = plan.spec
    counts = {"participants": len(cohort)}
    if cohort.task == "classification":
        counts.update(
            {
                name: int((cohort.target == i).sum())
                for i, name in enumerate(spec.target.class_names)
            }
        )
    return {
        "command": options.command,
        "version": __version__,
        "target": spec.target.column,
        "task": cohort.task,
        "threshold": spec.target.threshold,
        "class_names": list(spec.target.class_names),
        "primary_metric": PRIMARY_METRIC[cohort.task],
        "counts": counts,
        "left_out": plan.left_out,
        "top_coded_values_read_as_numbers": plan.top_coded,
        "features": {"tabular": list(spec.feature_names), "images": list(spec.images)},
        "cross_validation": {
            **training.folds.to_json(),
            "groups": plan.groups_column or "participant_id",
            "seed": options.seed,
            "bootstrap_samples": options.bootstrap,
            "interval": "95 % percentile bootstrap over participants",
        },
        "models": scores,
        "final": {"model": final[0], "reason": final[1], "bundle": BUNDLE},
    }


def fit_final_model(cohort, name: str, folds: FoldPlan, options: TrainingOptions):
    """Refit model ``name`` on every participant: its grid searched on inner folds of all of
    them, or at its defaults where a class is too small for 2 folds."""
    from bids_dl.models.classifier_bundle import fit_final

    return fit_final(
        cohort, name, seed=options.seed, inner_folds=folds.final_inner, threads=options.threads
    )


def importances(fitted, cohort, training: TrainingPlan, results: dict) -> dict:
    """Feature weights of the final model and, when it is another, of the linear model refitted
    on every participant (its coefficients are the easiest to read)."""
    found = {fitted.model: feature_importance(fitted, cohort, training.options)}
    if fitted.model != "linear" and "linear" in results:
        linear = fit_final_model(cohort, "linear", training.folds, training.options)
        found["linear"] = feature_importance(linear, cohort, training.options)
    return found


def feature_importance(fitted, cohort, options: TrainingOptions) -> dict:
    """Per tabular feature, sorted by |weight|: the linear model's standardised coefficients;
    for the MLP and SVM, the permutation importance on the final model's own training data
    (cheap, but optimistic: no held-out participant); none for the CNN."""
    from bids_dl.models.classifier_estimators import design_matrix, limited_threads
    from bids_dl.models.classifier_validation import INNER_SCORING

    if fitted.model == "cnn" or cohort.tabular is None:
        return {"method": "not computed for the cnn (its features are voxels)", "features": []}
    if fitted.model == "linear":
        estimator = getattr(fitted.estimator, "regressor_", fitted.estimator)
        weights = np.ravel(estimator.named_steps["linear"].coef_)
        unit = "SD of the target" if cohort.task == "regression" else "log-odds"
        method = f"standardised coefficients: {unit} per SD of the feature"
    else:
        from sklearn.inspection import permutation_importance

        scoring = INNER_SCORING[cohort.task]
        x = design_matrix(fitted.model, cohort.tabular, cohort.images)
        with limited_threads(options.threads):
            found = permutation_importance(
                fitted.estimator,
                x,
                cohort.target,
                scoring=scoring,
                n_repeats=PERMUTATION_REPEATS,
                random_state=options.seed,
            )
        weights = found.importances_mean
        method = (
            f"permutation importance: mean drop of {scoring} when the feature is shuffled "
            f"({PERMUTATION_REPEATS} times), on the final model's own training data (optimistic: "
            "no held-out participant)"
        )
    order = np.argsort(-np.abs(weights), kind="stable")
    features = [
        {"feature": cohort.feature_names[i], "weight": round(float(weights[i]), 6)} for i in order
    ]
    return {"method": method, "features": features}


def save_final_model(fitted, training: TrainingPlan, summary: dict) -> Path:
    """Save the bundle: its card holds the feature spec that a prediction follows, the package
    version, and the metrics of the nested cross-validation; the atlas, if any, beside it."""
    import nibabel as nb

    from bids_dl.models.classifier_bundle import save_classifier

    plan, options, cohort, name = training.cohort, training.options, fitted.cohort, fitted.model
    metric = summary["primary_metric"]
    value = json_safe(summary["models"][name]["metrics"][metric])
    folds = training.folds
    inner = f"{folds.inner} inner" if folds.inner else "no inner search"
    headline = (
        f"{metric} {_number(value['estimate'])} (95 % CI {_number(value['low'])} to "
        f"{_number(value['high'])}) in nested cross-validation ({folds.outer} outer folds, "
        f"{inner}) of {len(cohort)} participants"
    )
    training_extra = {
        "command": options.command,
        "derivatives": str(training.source.resolve()),
        "final_model_choice": summary["final"]["reason"],
        "cross_validation": summary["cross_validation"],
    }
    if fitted.inner_folds == 0:
        training_extra["hyperparameter_search"] = f"{NO_INNER_SEARCH}: fixed defaults"
    card_extra = {
        "name": f"{cohort.target_name}-{name}",
        "version": __version__,
        "metrics": {
            "headline": headline,
            "cross_validation": summary["models"][name],
            "feature_importance": summary["feature_importance"][name],
        },
        "inputs": {SPEC_KEY: plan.spec.to_json()},
        "training": training_extra,
    }
    folder = save_classifier(options.output_dir / BUNDLE, fitted, json_safe(card_extra))
    if plan.atlas is not None:
        atlas = plan.atlas.image
        labels = np.asarray(atlas.dataobj).astype(np.int32)
        write_nifti_atomic(nb.Nifti1Image(labels, atlas.affine), folder / ATLAS_FILE)
    return folder


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
