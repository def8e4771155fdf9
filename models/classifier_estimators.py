"""The named models of group-level prediction, each an sklearn estimator with its grid.

Every preprocessing step sits inside the estimator (a ``Pipeline``), so that a
cross-validation fits it on training rows only:

- ``linear``: standardised features, then L2 logistic regression (classification; grid over C)
  or ridge regression (regression; grid over alpha).
- ``svm``: regression only, standardised features then an RBF support-vector regression (grid
  over C), the baseline of the stroke-outcome literature. A classification has no ``svm``: its
  probabilities would need a Platt calibration whose own inner folds ignore the groups.
- ``mlp``: standardised features, then a small torch MLP (:mod:`classifier_networks`; grid over
  width and weight decay).
- ``cnn``: a small 3D CNN on the maps, the tabular features joined before its head (the
  network standardises them itself, from its training rows). A fixed recipe: its grid is
  empty, so the nested cross-validation fits it without an inner search.

A regression standardises its target on the training rows (``TransformedTargetRegressor``), so
that the grids mean the same for a target in years or in NIHSS points.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.compose import TransformedTargetRegressor
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVR
from threadpoolctl import threadpool_limits

from bids_dl.models.classifier_data import Cohort, Task
from bids_dl.models.classifier_networks import NetworkClassifier, NetworkRegressor

MODELS = ("linear", "svm", "mlp", "cnn")
#: the MLP's settings outside its grid (one hidden layer, full batch)
MLP_RECIPE = {"depth": 1, "dropout": 0.5, "learning_rate": 1e-2, "epochs": 100}
#: the CNN's recipe; its epochs and width keep 900 participants x 24^3 within minutes on a CPU
CNN_RECIPE = {
    "width": 8,
    "depth": 3,
    "dropout": 0.2,
    "weight_decay": 1e-2,
    "learning_rate": 1e-3,
    "epochs": 10,
    "batch_size": 16,
}


def model_names(cohort: Cohort) -> tuple[str, ...]:
    """The models that apply to ``cohort``: tabular ones with tabular features, the CNN with
    images, the SVM for a regression only."""
    names: tuple[str, ...] = ()
    if cohort.tabular is not None:
        names += ("linear", "svm", "mlp") if cohort.task == "regression" else ("linear", "mlp")
    if cohort.images is not None:
        names += ("cnn",)
    return names


def _final_step(
    name: str, task: Task, seed: int, image_shape: tuple[int, ...] | None
) -> tuple[BaseEstimator, dict[str, list]]:
    """The model after the preprocessing, and its grid (parameter names without a prefix)."""
    classification = task == "classification"
    if name == "linear":
        if classification:
            return LogisticRegression(max_iter=2000), {"C": [0.001, 0.01, 0.1, 1.0, 10.0]}
        return Ridge(), {"alpha": [1.0, 10.0, 100.0, 1000.0]}
    if name == "svm" and not classification:
        # gamma 1/p is sklearn's "scale" on standardised features, and needs no training data
        return SVR(kernel="rbf", gamma="auto"), {"C": [0.1, 1.0, 10.0]}
    network = NetworkClassifier if classification else NetworkRegressor
    if name == "mlp":
        grid = {"width": [16, 64], "weight_decay": [1e-2, 1.0]}
        return network(architecture="TabularMLP", seed=seed, **MLP_RECIPE), grid
    if name == "cnn":
        if image_shape is None:
            raise ValueError("the cnn model needs the maps' shape")
        return network(
            architecture="ImageCNN", image_shape=image_shape, seed=seed, **CNN_RECIPE
        ), {}
    raise ValueError(f"no {name!r} model for a {task} (known: {', '.join(MODELS)})")


def make_estimator(
    name: str, task: Task, seed: int = 0, image_shape: tuple[int, ...] | None = None
) -> tuple[BaseEstimator, dict[str, list]]:
    """A fresh estimator for model ``name`` and its hyper-parameter grid (``{}``: a fixed
    recipe), in the parameter names of ``GridSearchCV``. ``image_shape``: the CNN's maps."""
    step, grid = _final_step(name, task, seed, image_shape)
    steps = [] if name == "cnn" else [("scale", StandardScaler())]
    estimator: BaseEstimator = Pipeline([*steps, (name, step)])
    grid = {f"{name}__{key}": values for key, values in grid.items()}
    if task == "regression":
        estimator = TransformedTargetRegressor(estimator, transformer=StandardScaler())
        grid = {f"regressor__{key}": values for key, values in grid.items()}
    return estimator, grid


def design_matrix(name: str, tabular: np.ndarray | None, images: np.ndarray | None) -> np.ndarray:
    """The rows that model ``name`` reads: the tabular features, and for the CNN the maps'
    voxels after them (float32, C order)."""
    if name != "cnn":
        if tabular is None:
            raise ValueError(f"the {name} model needs tabular features")
        return np.asarray(tabular, dtype=float)
    if images is None:
        raise ValueError("the cnn model needs images")
    columns = [] if tabular is None else [tabular]
    return np.hstack([*columns, images.reshape(len(images), -1)], dtype=np.float32)


def image_shape(cohort: Cohort) -> tuple[int, ...] | None:
    """The maps' grid, or ``None`` without images."""
    return None if cohort.images is None else tuple(cohort.images.shape[1:])


def predict(estimator: BaseEstimator, x: np.ndarray, task: Task) -> np.ndarray:
    """Probability of class 1 for a classification, the predicted value for a regression."""
    if task == "classification":
        return estimator.predict_proba(x)[:, 1]
    return estimator.predict(x)


@contextmanager
def limited_threads(threads: int) -> Iterator[None]:
    """Run with at most ``threads`` BLAS/OpenMP and torch threads, then restore both."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(threads):
            yield
    finally:
        torch.set_num_threads(previous)
