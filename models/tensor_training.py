"""Training of the DTI network on simulated phantoms (``bids_dl-train`` with task ``dti``).

Every phantom is a random crop of the MNI152 tissue maps (nilearn's templates, at a random
voxel size, axis order and flips) given random microstructure and fibre fields
(``diffusion_phantom``) and a truth at a random b-value; it is then scanned with several random
acquisitions: 6 to ``max_directions`` directions, random or well spread, 1 to 5 b=0 volumes,
random SNR. The network learns the truth (the dense-scheme tensor) from the inputs of
``tensor_features``. Data is simulated only: the card says so, and real-data figures come from
``bench/dwi_network.py``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from bids_dl.models.bundle import save_bundle
from bids_dl.models.card import ModelCard
from bids_dl.models.diffusion_phantom import acquire, draw_phantom
from bids_dl.models.diffusion_simulation import random_scheme, well_spread_scheme
from bids_dl.models.networks import TensorNet
from bids_dl.models.tensor_features import INPUT_CHANNELS, network_inputs, tensor_maps

TENSOR_ELEMENTS = ["xx", "yy", "zz", "xy", "xz", "yz"]


@dataclass(frozen=True)
class TensorTrainingConfig:
    """The settings of a DTI-network run (copied whole into the card)."""

    name: str
    task: str = "dti"
    version: str = "0.1.0"
    seed: int = 1
    steps: int = 3000
    batch_size: int = 4
    crop: int = 24
    learning_rate: float = 2e-3
    features: int = 32
    context_layers: int = 2
    voxel_layers: int = 2
    b_range: tuple[float, float] = (700.0, 3000.0)
    max_directions: int = 15
    max_b0_volumes: int = 5
    snr_range: tuple[float, float] = (8.0, 40.0)
    voxel_sizes_mm: tuple[float, ...] = (1.5, 2.0, 2.5, 3.0)
    well_spread_fraction: float = 0.5
    scans_per_phantom: int = 4
    fa_weight: float = 1.0
    validation_every: int = 250
    validation_phantoms: int = 4
    threads: int = 1

    @classmethod
    def from_file(cls, path: Path) -> TensorTrainingConfig:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
        for key in ("b_range", "snr_range", "voxel_sizes_mm"):
            if key in content:
                content[key] = tuple(content[key])
        return cls(**content)


def tissue_layouts(voxel_sizes_mm: tuple[float, ...]) -> list[np.ndarray]:
    """The MNI152 2009 tissue fractions (CSF, GM, WM; 3, X, Y, Z) at each voxel size."""
    from nilearn import datasets

    gm = datasets.load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32)
    wm = datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
    brain = datasets.load_mni152_brain_mask(resolution=1).get_fdata(dtype=np.float32)
    csf = np.clip(brain - gm - wm, 0, 1) * brain
    return [
        np.stack([ndimage.zoom(t, 1 / size, order=1) for t in (csf, gm, wm)])
        for size in voxel_sizes_mm
    ]


def random_crop(layouts: list[np.ndarray], crop: int, rng: np.random.Generator) -> np.ndarray:
    """A crop (3, crop, crop, crop) centred on a random brain voxel of a random layout, with
    random axis order and flips."""
    layout = layouts[rng.integers(len(layouts))]
    layout = np.transpose(layout, (0, *(1 + rng.permutation(3))))
    for axis in np.flatnonzero(rng.random(3) < 0.5):
        layout = np.flip(layout, axis + 1)
    brain = np.argwhere(layout.sum(0) > 0.5)
    centre = brain[rng.integers(len(brain))]
    start = np.clip(centre - crop // 2, 0, np.array(layout.shape[1:]) - crop)
    box = tuple(slice(s, s + crop) for s in start)
    return np.ascontiguousarray(layout[(slice(None), *box)])


def random_acquisition(
    config: TensorTrainingConfig, b_value: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A scheme of 6 to ``max_directions`` directions (random or well spread) and 1 to
    ``max_b0_volumes`` b=0 volumes; six directions are drawn as often as all others together."""
    n = 6 if rng.random() < 0.5 else int(rng.integers(7, config.max_directions + 1))
    n_b0 = int(rng.integers(1, config.max_b0_volumes + 1))
    if rng.random() < config.well_spread_fraction:
        return well_spread_scheme(n, b_value, n_b0, rng, iterations=100)
    return random_scheme(n, b_value, n_b0, rng)


def phantom_scans(
    config: TensorTrainingConfig, layouts: list[np.ndarray], rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray]]:
    """One phantom's scans: ``scans_per_phantom`` (inputs, truth) pairs, channels first."""
    b_value = float(rng.uniform(*config.b_range))
    phantom = draw_phantom(
        random_crop(layouts, config.crop, rng),
        b_value,
        rng,
        smoothness_voxels=float(rng.uniform(1.5, 4.0)),
    )
    truth = np.moveaxis(phantom.truth, -1, 0)
    scans = []
    for _ in range(config.scans_per_phantom):
        bvals, bvecs = random_acquisition(config, b_value, rng)
        series = acquire(phantom, (bvals, bvecs), float(rng.uniform(*config.snr_range)), rng)
        scans.append((network_inputs(series, bvals, bvecs, phantom.mask), truth))
    return scans


class PhantomStream(torch.utils.data.IterableDataset):
    """An endless stream of (inputs, truth) samples, seeded by the config and the worker."""

    def __init__(self, config: TensorTrainingConfig) -> None:
        super().__init__()
        self.config = config

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.config.seed, info.id if info else 0])
        layouts = tissue_layouts(self.config.voxel_sizes_mm)
        while True:
            for inputs, truth in phantom_scans(self.config, layouts, rng):
                yield torch.from_numpy(inputs), torch.from_numpy(truth)


def fractional_anisotropy(elements: torch.Tensor) -> torch.Tensor:
    """FA of tensors given as six element channels (dim 1), without an eigendecomposition."""
    xx, yy, zz, xy, xz, yz = elements.unbind(1)
    md = (xx + yy + zz) / 3
    off = 2 * (xy**2 + xz**2 + yz**2)
    deviation = (xx - md) ** 2 + (yy - md) ** 2 + (zz - md) ** 2 + off
    norm = xx**2 + yy**2 + zz**2 + off
    return torch.sqrt(1.5 * deviation / (norm + 1e-6) + 1e-8)


def tensor_loss(
    predicted: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor, fa_weight: float
) -> torch.Tensor:
    """Mean squared error of the elements plus ``fa_weight`` times FA's mean absolute error,
    over the brain voxels."""
    count = mask.sum().clamp_min(1)
    squared = ((predicted - truth) ** 2).sum(1) * mask
    fa_error = (fractional_anisotropy(predicted) - fractional_anisotropy(truth)).abs() * mask
    return (squared.sum() + fa_weight * fa_error.sum()) / count


def validation_set(config: TensorTrainingConfig) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Fixed phantoms scanned with six directions, random and well spread, at SNR 20."""
    rng = np.random.default_rng([config.seed, 999])
    layouts = tissue_layouts((2.0,))
    cases = []
    for index in range(config.validation_phantoms):
        b_value = 1000.0 if index % 2 == 0 else 2500.0
        phantom = draw_phantom(random_crop(layouts, 40, rng), b_value, rng)
        for kind, draw in (("random", random_scheme), ("well_spread", well_spread_scheme)):
            bvals, bvecs = draw(6, b_value, 1, rng)
            series = acquire(phantom, (bvals, bvecs), 20.0, rng)
            inputs = network_inputs(series, bvals, bvecs, phantom.mask)
            cases.append((kind, inputs, np.moveaxis(phantom.truth, -1, 0)))
    return cases


def _fa_rmse(elements: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    predicted, _ = tensor_maps(np.moveaxis(elements, 0, -1)[mask])
    reference, _ = tensor_maps(np.moveaxis(truth, 0, -1)[mask])
    return float(np.sqrt(np.mean((predicted.fa - reference.fa) ** 2)))


def validate(network: TensorNet, cases: list) -> dict[str, dict[str, float]]:
    """Brain FA RMSE against the truth of the network and of its input projection, per kind."""
    network.eval()
    scores: dict[str, dict[str, list[float]]] = {}
    with torch.no_grad():
        for kind, inputs, truth in cases:
            mask = inputs[-1] > 0
            output = network(torch.from_numpy(inputs)[None])[0].numpy()
            entry = scores.setdefault(kind, {"network": [], "projection": []})
            entry["network"].append(_fa_rmse(output, truth, mask))
            entry["projection"].append(_fa_rmse(inputs[:6], truth, mask))
    network.train()
    return {k: {m: float(np.mean(v)) for m, v in e.items()} for k, e in scores.items()}


def tensor_card(
    config: TensorTrainingConfig, record: dict, command: str, validation: dict
) -> ModelCard:
    """The card of a DTI network trained by ``train_tensor_network``."""
    architecture = {
        "name": "TensorNet",
        "args": {"in_channels": INPUT_CHANNELS, "out_channels": 6, "features": config.features,
                 "context_layers": config.context_layers, "voxel_layers": config.voxel_layers},
    }  # fmt: skip
    return ModelCard(
        name=config.name,
        version=config.version,
        task="dti",
        architecture=architecture,
        inputs={
            "modality": "dwi",
            "representation": "tensor_features: ridge projection of -ln(S/S0)/b of the main "
            "shell onto the tensor elements, its noise gains, b/1000, b=0 contrast, mask",
            "b_range": list(config.b_range),
            "min_directions": 6,
            "frame": "world (RAS+) axes; b-vectors converted from the FSL voxel convention",
            "voxel_size_mm": "any (trained at 1.5-3 mm)",
        },
        outputs={
            "channels": TENSOR_ELEMENTS,
            "units": "1e-3 mm^2/s",
            "meaning": "the tensor a WLS fit of a dense scheme (64 directions at the input's "
            "b-value) would give",
        },
        training={
            "config": asdict(config),
            "command": command,
            "data": "SIMULATED only: MNI152 tissue maps with multi-compartment phantoms",
            **record,
        },
        metrics={"simulated_validation_fa_rmse": validation},
    )


def train_tensor_network(config: TensorTrainingConfig, output: Path, command: str = "") -> Path:
    """Train, validating every ``validation_every`` steps (log in ``output/log.jsonl``); the
    bundle in ``output/bundle`` is rewritten at each validation."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    output.mkdir(parents=True, exist_ok=True)
    network = TensorNet(
        INPUT_CHANNELS, 6, config.features, config.context_layers, config.voxel_layers
    )
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / config.steps))
    )
    loader = torch.utils.data.DataLoader(
        PhantomStream(config), batch_size=config.batch_size, num_workers=1
    )
    cases = validation_set(config)
    started, losses = time.time(), []
    with (output / "log.jsonl").open("a", encoding="utf-8") as log:
        for step, (inputs, truth) in enumerate(loader, start=1):
            loss = tensor_loss(network(inputs), truth, inputs[:, -1], config.fa_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            if step % config.validation_every == 0 or step == config.steps:
                validation = validate(network, cases)
                record = {
                    "steps": step,
                    "seconds": round(time.time() - started, 1),
                    "loss_last_100": float(np.mean(losses[-100:])),
                }
                log.write(json.dumps(record | {"validation": validation}) + "\n")
                log.flush()
                save_bundle(
                    output / "bundle", tensor_card(config, record, command, validation), network
                )
            if step >= config.steps:
                break
    return output / "bundle"
