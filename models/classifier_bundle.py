"""A group-level model refitted on the whole cohort, saved as a bundle and loaded without sklearn.

The bundle is the folder every bids_dl model is (``weights.safetensors`` + ``model.json``, task
``classify``), written whole or not at all. The weights hold every array a prediction needs:
the scalers' means and SDs, a linear model's coefficients, an SVR's support vectors and dual
coefficients, a network's state_dict; the card's ``architecture.steps`` says how to apply them
in order. Loading rebuilds the predictions from these with numpy and torch: no pickle, no
sklearn object.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from scipy.special import expit
from sklearn.base import BaseEstimator
from sklearn.compose import TransformedTargetRegressor
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVR

from bids_dl.models.card import WEIGHTS, BundleError, ModelCard, load_card, write_card
from bids_dl.models.classifier_data import Cohort, Task
from bids_dl.models.classifier_estimators import (
    design_matrix,
    image_shape,
    limited_threads,
    make_estimator,
)
from bids_dl.models.classifier_metrics import THRESHOLD
from bids_dl.models.classifier_networks import (
    NetworkClassifier,
    NetworkRegressor,
    build_network,
    network_outputs,
)
from bids_dl.models.classifier_validation import check_folds, tune_and_fit

CARD_EXTRA_KEYS = ("name", "version", "metrics", "inputs", "training")


@dataclass(frozen=True)
class FittedClassifier:
    """A model refitted on a whole cohort, with what its card records."""

    model: str
    task: Task
    estimator: BaseEstimator
    hyperparameters: dict
    grid: dict
    seed: int
    #: None: too few participants to search the grid (its defaults were taken)
    inner_folds: int | None
    cohort: Cohort


def fit_final(
    cohort: Cohort, model: str, seed: int = 0, inner_folds: int | None = 5, threads: int = 1
) -> FittedClassifier:
    """Pick ``model``'s hyper-parameters on grouped folds of all participants, then refit on
    all of them (a fixed recipe is fitted once; without ``inner_folds``, at the grid's
    defaults)."""
    if inner_folds is not None:
        check_folds(cohort.target, cohort.groups, cohort.task, inner_folds, "in the cohort")
    estimator, grid = make_estimator(model, cohort.task, seed, image_shape(cohort))
    x = design_matrix(model, cohort.tabular, cohort.images)
    with limited_threads(threads):
        fitted, chosen = tune_and_fit(
            estimator,
            grid,
            x,
            cohort.target,
            cohort.groups,
            task=cohort.task,
            inner_folds=inner_folds,
            seed=seed,
        )
    return FittedClassifier(model, cohort.task, fitted, chosen, grid, seed, inner_folds, cohort)


def _export_step(step: BaseEstimator) -> tuple[dict, dict[str, np.ndarray]]:
    """A fitted step as its card entry and its arrays."""
    if isinstance(step, StandardScaler):
        return {"kind": "standardise"}, {"mean": step.mean_, "scale": step.scale_}
    if isinstance(step, LogisticRegression | Ridge):
        kind = "logistic" if isinstance(step, LogisticRegression) else "ridge"
        coef, intercept = np.ravel(step.coef_), np.ravel(step.intercept_)
        return {"kind": kind}, {"coef": coef, "intercept": intercept}
    if isinstance(step, SVR):
        arrays = {
            "support_vectors": step.support_vectors_,
            "dual_coef": np.ravel(step.dual_coef_),
            "intercept": np.ravel(step.intercept_),
        }
        # make_estimator's gamma="auto": 1 / p
        return {"kind": "rbf_svr", "gamma": 1 / step.n_features_in_}, arrays
    if isinstance(step, NetworkClassifier | NetworkRegressor):
        state = {k: v.detach().cpu().numpy() for k, v in step.network_.state_dict().items()}
        output = "probability" if isinstance(step, NetworkClassifier) else "value"
        return {"kind": "network", "architecture": step.architecture_, "output": output}, state
    raise TypeError(f"a bundle cannot store a {type(step).__name__}")


def _export(estimator: BaseEstimator) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Every step of a fitted estimator, in order, and their arrays (keyed ``<step>.<name>``)."""
    target_scaler = None
    if isinstance(estimator, TransformedTargetRegressor):
        target_scaler, estimator = estimator.transformer_, estimator.regressor_
    fitted_steps = [step for _, step in estimator.steps]
    steps, arrays = [], {}
    for index, step in enumerate(fitted_steps):
        spec, values = _export_step(step)
        steps.append(spec)
        arrays.update({f"{index}.{key}": value for key, value in values.items()})
    if target_scaler is not None:
        index = len(steps)
        steps.append({"kind": "target_unstandardise"})
        arrays[f"{index}.mean"] = target_scaler.mean_
        arrays[f"{index}.scale"] = target_scaler.scale_
    return steps, {key: np.ascontiguousarray(value) for key, value in arrays.items()}


def _card(fitted: FittedClassifier, steps: list[dict], card_extra: dict) -> ModelCard:
    cohort = fitted.cohort
    classes = cohort.class_names or ("0", "1")
    if fitted.task == "classification":
        outputs = {
            "labels": dict(enumerate(classes)),
            "prediction": f"probability of {classes[1]}",
            "threshold": THRESHOLD,
        }
        counts = {name: int(np.sum(cohort.target == label)) for label, name in enumerate(classes)}
    else:
        outputs = {
            "channels": [cohort.target_name],
            "prediction": f"predicted {cohort.target_name}",
        }
        counts = {}
    shape, uses_images = image_shape(cohort), fitted.model == "cnn"
    search = "none: a fixed recipe"
    if fitted.grid:
        search = (
            f"grid search on {fitted.inner_folds} grouped folds of all participants"
            if fitted.inner_folds
            else "none: too few participants, the grid's defaults"
        )
    return ModelCard(
        name=card_extra.get("name", f"{cohort.target_name}-{fitted.model}"),
        version=card_extra.get("version", "0.1.0"),
        task="classify",
        architecture={
            "name": fitted.model,
            "hyperparameters": fitted.hyperparameters,
            "steps": steps,
        },
        inputs={
            "features": [] if cohort.tabular is None else list(cohort.feature_names),
            "images": list(cohort.image_names) if uses_images else [],
            "image_shape": list(shape) if uses_images else None,
            **card_extra.get("inputs", {}),
        },
        outputs={"target": cohort.target_name, "task": fitted.task, **outputs},
        training={
            "participants": len(cohort),
            "participants_per_class": counts,
            "left_out": dict(cohort.left_out),
            "seed": fitted.seed,
            "hyperparameter_search": search,
            "grid": {key.rsplit("__", 1)[-1]: values for key, values in fitted.grid.items()},
            **card_extra.get("training", {}),
        },
        metrics=card_extra.get("metrics", {}),
    )


def save_classifier(
    folder: str | os.PathLike, fitted: FittedClassifier, card_extra: dict | None = None
) -> Path:
    """Write the bundle of ``fitted`` into ``folder`` (replacing it whole, through a temporary
    folder beside it and a rename).

    ``card_extra`` adds to the card: ``name`` and ``version`` (default ``<target>-<model>``,
    0.1.0), ``metrics`` (the nested CV's, with their intervals), and ``inputs`` and ``training``
    entries (e.g. ``inputs.covariates``, the dataset and command it came from).
    """
    card_extra = card_extra or {}
    unknown = set(card_extra) - set(CARD_EXTRA_KEYS)
    if unknown:
        raise ValueError(f"card_extra keys {sorted(unknown)} (known: {', '.join(CARD_EXTRA_KEYS)})")
    steps, arrays = _export(fitted.estimator)
    card = _card(fitted, steps, card_extra)
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        save_file(arrays, str(staging / WEIGHTS))
        write_card(staging, card)
        staging.chmod(0o755)
        if folder.exists():
            previous = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent))
            folder.rename(previous / folder.name)
            staging.rename(folder)
            shutil.rmtree(previous)
        else:
            staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _standardise(x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return (x - mean) / scale


def _linear(x: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    return x @ coef + intercept[0]


def _logistic(x: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    return expit(_linear(x, coef, intercept))


def _rbf_svr(
    x: np.ndarray,
    support_vectors: np.ndarray,
    dual_coef: np.ndarray,
    intercept: np.ndarray,
    gamma: float,
) -> np.ndarray:
    distances = (
        (x**2).sum(1)[:, None] - 2 * x @ support_vectors.T + (support_vectors**2).sum(1)[None]
    )
    return np.exp(-gamma * np.maximum(distances, 0)) @ dual_coef + intercept[0]


def _network(x: np.ndarray, network: torch.nn.Module, probability: bool) -> np.ndarray:
    outputs = network_outputs(network, x)
    return expit(outputs) if probability else outputs


def _unstandardise(x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return x * scale + mean


STEPS = {
    "standardise": (_standardise, ("mean", "scale")),
    "ridge": (_linear, ("coef", "intercept")),
    "logistic": (_logistic, ("coef", "intercept")),
    "rbf_svr": (_rbf_svr, ("support_vectors", "dual_coef", "intercept")),
    "target_unstandardise": (_unstandardise, ("mean", "scale")),
}


def _load_step(
    index: int, spec: dict, arrays: dict[str, np.ndarray]
) -> Callable[[np.ndarray], np.ndarray]:
    """Step ``index`` of a card as a function of the rows, its arrays bound."""
    prefix = f"{index}."
    mine = {key[len(prefix) :]: value for key, value in arrays.items() if key.startswith(prefix)}
    if spec["kind"] == "network":
        network = build_network(spec["architecture"])
        state = {key: torch.from_numpy(value) for key, value in mine.items()}
        try:
            network.load_state_dict(state)
        except RuntimeError as error:  # missing, extra or misshapen weights
            raise BundleError(f"step {index}: the weights do not match the network") from error
        return partial(
            _network, network=network.eval(), probability=spec["output"] == "probability"
        )
    if spec["kind"] not in STEPS:
        raise BundleError(f"unknown step {spec['kind']!r} (known: network, {', '.join(STEPS)})")
    function, names = STEPS[spec["kind"]]
    missing = set(names) - set(mine)
    if missing:
        raise BundleError(f"step {index} ({spec['kind']}) lacks the weights {sorted(missing)}")
    extra = {key: value for key, value in spec.items() if key != "kind"}
    return partial(function, **{name: mine[name] for name in names}, **extra)


class Classifier:
    """A loaded group-level model: :meth:`predict` as the fitted estimator did."""

    def __init__(self, card: ModelCard, steps: list[Callable[[np.ndarray], np.ndarray]]) -> None:
        self.card = card
        self.steps = steps

    def predict(self, tabular: np.ndarray | None, images: np.ndarray | None = None) -> np.ndarray:
        """Probability of class 1 (a classification) or the predicted value, per participant.

        ``tabular``: (n, p), the card's ``inputs.features`` in order; ``images``: (n, X, Y, Z)
        on the card's ``inputs.image_shape`` (the CNN only).
        """
        features, shape = self.card.inputs["features"], self.card.inputs["image_shape"]
        if len(features) and (tabular is None or np.shape(tabular)[1:] != (len(features),)):
            raise ValueError(f"tabular features must be (n, {len(features)}): {features}")
        if shape and (images is None or tuple(images.shape[1:]) != tuple(shape)):
            raise ValueError(f"images must be (n, {', '.join(map(str, shape))})")
        x = design_matrix(
            self.card.architecture["name"], tabular if len(features) else None, images
        )
        for step in self.steps:
            x = step(x)
        return x


def load_classifier(folder: str | os.PathLike) -> Classifier:
    """Read a bundle written by :func:`save_classifier` (the weights are safetensors only)."""
    folder = Path(folder)
    if not (folder / WEIGHTS).is_file():
        raise BundleError(f"{folder}: no {WEIGHTS}")
    card = load_card(folder)
    if card.task != "classify":
        raise BundleError(f"{folder}: a {card.task!r} model, not a group-level one (classify)")
    try:
        arrays = load_file(str(folder / WEIGHTS))
    except Exception as error:  # safetensors raises its own error types
        raise BundleError(f"{folder / WEIGHTS}: not a safetensors file ({error})") from error
    steps = [_load_step(i, spec, arrays) for i, spec in enumerate(card.architecture["steps"])]
    return Classifier(card, steps)
