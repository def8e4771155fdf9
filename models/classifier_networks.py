"""Small torch networks for group-level prediction, and the sklearn estimators that train them.

A network reads one design row per participant: the tabular features, then (for the CNN) the
map's voxels flattened in C order, so that sklearn's pipelines, splitters and grid searches
handle it as any other estimator. Training is AdamW on a fixed number of epochs (full batch
unless ``batch_size``), seeded and run inside ``torch.random.fork_rng`` so that a fit neither
depends on nor disturbs the global generator; torch's thread count is the caller's.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.validation import check_array, check_is_fitted, check_X_y
from torch import nn


class TabularMLP(nn.Module):
    """A multilayer perceptron: ``layers`` hidden layers of ``hidden`` units (ReLU, dropout)
    and one output, a logit or a (standardised) value. Its inputs are already standardised."""

    def __init__(
        self, in_features: int, hidden: int = 32, layers: int = 1, dropout: float = 0.2
    ) -> None:
        super().__init__()
        body: list[nn.Module] = []
        width = in_features
        for _ in range(layers):
            body += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        self.body = nn.Sequential(*body, nn.Linear(width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).squeeze(1)


class ImageCNN(nn.Module):
    """A small 3D CNN on one map per participant, its tabular features joined before the head.

    ``stages`` blocks of 3x3x3 convolution with stride 2, batch normalisation and ReLU
    (``channels`` doubling at each; a stride rather than max-pooling runs 2-3x faster on a
    CPU, where most of the time goes to the first, full-resolution convolution), global
    average pooling, then the ``tabular_features``
    standardised with the training rows' mean and SD (buffers set by :meth:`standardise_from`,
    so that a bundle carries them), dropout and a linear head with one output.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        tabular_features: int = 0,
        channels: int = 8,
        stages: int = 3,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.tabular_features = tabular_features
        layers: list[nn.Module] = []
        width = 1
        for stage in range(stages):
            out = channels * 2**stage
            layers += [
                nn.Conv3d(width, out, 3, stride=2, padding=1),
                nn.BatchNorm3d(out),
                nn.ReLU(),
            ]
            width = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool3d(1), nn.Flatten())
        self.register_buffer("tabular_mean", torch.zeros(tabular_features))
        self.register_buffer("tabular_scale", torch.ones(tabular_features))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(width + tabular_features, 1))

    def standardise_from(self, x: torch.Tensor) -> None:
        """Take the tabular mean and SD from the training rows ``x`` (a constant column: SD 1)."""
        tabular = x[:, : self.tabular_features].double()
        scale = tabular.std(dim=0, unbiased=False)
        self.tabular_mean.copy_(tabular.mean(dim=0))
        self.tabular_scale.copy_(torch.where(scale > 0, scale, torch.ones_like(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.tabular_features
        tabular = (x[:, :k] - self.tabular_mean) / self.tabular_scale
        maps = x[:, k:].reshape(-1, 1, *self.image_shape)
        return self.head(torch.cat([self.features(maps), tabular], dim=1)).squeeze(1)


ARCHITECTURES = {"TabularMLP": TabularMLP, "ImageCNN": ImageCNN}


def build_network(architecture: dict) -> nn.Module:
    """The network an ``{"name": ..., "args": {...}}`` entry describes (as a card stores it)."""
    return ARCHITECTURES[architecture["name"]](**architecture["args"])


def network_outputs(network: nn.Module, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The network's output for each row of ``x`` (in evaluation mode, in batches)."""
    network.eval()
    inputs = torch.as_tensor(np.asarray(x, dtype=np.float32))
    with torch.inference_mode():
        outputs = [network(batch) for batch in inputs.split(batch_size)]
    return torch.cat(outputs).double().numpy()


class _NetworkEstimator(BaseEstimator):
    """What the classifier and the regressor share: the architecture from the hyper-parameters
    and the training loop.

    Args:
        architecture: ``"TabularMLP"`` or ``"ImageCNN"``.
        width: hidden units (MLP) or first-stage channels (CNN).
        depth: hidden layers (MLP) or convolution stages (CNN).
        dropout: dropout probability before each linear layer of the head.
        weight_decay: AdamW's decoupled weight decay.
        learning_rate: AdamW's learning rate.
        epochs: passes over the training rows.
        batch_size: rows per step (shuffled each epoch); ``None``: the full batch.
        image_shape: the map's shape (CNN only); the design row's other columns are tabular.
        seed: initial weights, dropout and batch order.
    """

    def __init__(
        self,
        architecture: str = "TabularMLP",
        width: int = 32,
        depth: int = 1,
        dropout: float = 0.2,
        weight_decay: float = 1e-2,
        learning_rate: float = 1e-2,
        epochs: int = 200,
        batch_size: int | None = None,
        image_shape: tuple[int, int, int] | None = None,
        seed: int = 0,
    ) -> None:
        self.architecture = architecture
        self.width = width
        self.depth = depth
        self.dropout = dropout
        self.weight_decay = weight_decay
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.batch_size = batch_size
        self.image_shape = image_shape
        self.seed = seed

    def _architecture(self, columns: int) -> dict:
        if self.architecture == "TabularMLP":
            args = {"in_features": columns, "hidden": self.width, "layers": self.depth}
        else:
            shape = [int(size) for size in self.image_shape]
            args = {
                "image_shape": shape,
                "tabular_features": columns - math.prod(shape),
                "channels": self.width,
                "stages": self.depth,
            }
        return {"name": self.architecture, "args": {**args, "dropout": self.dropout}}

    def _train(self, x: np.ndarray, target: np.ndarray, loss: nn.Module) -> None:
        inputs = torch.as_tensor(x)
        targets = torch.as_tensor(target, dtype=torch.float32)
        self.architecture_ = self._architecture(x.shape[1])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            network = build_network(self.architecture_)
            if isinstance(network, ImageCNN):
                network.standardise_from(inputs)
            optimiser = torch.optim.AdamW(
                network.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay
            )
            network.train()
            batch = self.batch_size or len(inputs)
            for _ in range(self.epochs):
                for rows in torch.randperm(len(inputs)).split(batch):
                    optimiser.zero_grad()
                    loss(network(inputs[rows]), targets[rows]).backward()
                    optimiser.step()
        self.network_ = network.eval()

    def _outputs(self, x: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "network_")
        return network_outputs(self.network_, check_array(x, dtype=np.float32))


class NetworkClassifier(ClassifierMixin, _NetworkEstimator):
    """A binary classifier: the network's output is the logit of the second class."""

    def fit(self, X: np.ndarray, y: np.ndarray) -> NetworkClassifier:
        x, y = check_X_y(X, y, dtype=np.float32)
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) != 2:
            raise ValueError(f"a binary classifier needs two classes, not {len(self.classes_)}")
        self._train(x, codes, nn.BCEWithLogitsLoss())
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        probability = expit(self._outputs(X))
        return np.column_stack([1 - probability, probability])

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[(self.predict_proba(X)[:, 1] >= 0.5).astype(int)]


class NetworkRegressor(RegressorMixin, _NetworkEstimator):
    """A regressor trained on the mean squared error; standardise the target around it
    (``TransformedTargetRegressor``) so that the learning rate suits any unit."""

    def fit(self, X: np.ndarray, y: np.ndarray) -> NetworkRegressor:
        x, y = check_X_y(X, y, dtype=np.float32, y_numeric=True)
        self._train(x, y, nn.MSELoss())
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self._outputs(X)
