"""Training of the ASL enhancement network (``bids_dl-train`` with task ``asl``).

Every case is a simulated ASL acquisition (``asl_phantom``) of one of the training label maps
(SynthSeg maps, subjects of ``train_subjects`` only) with ``pairs`` label/control pairs; from it
``draws_per_case`` inputs are taken: the mean dm of k random pairs (k = 1 half of the time,
else 2 to ``max_input_pairs``), each with the noise-free dm as the target. The network's
inputs are ``asl_enhancement``'s; the loss is the squared error inside the brain mask in units
of the input's scale (its noise sd estimated from the input). Slices are shuffled across cases
and flipped at random. Data is simulated only: the card says so, and the real-data figures come
from ``bench/asl_enhance.py``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nb
import numpy as np
import torch
from scipy import ndimage

from bids_dl.models.asl_enhancement import (
    INPUT_CHANNELS,
    RESIDUAL_CHANNEL,
    enhancement_inputs,
    normalised_differences,
    predict_dm,
)
from bids_dl.models.asl_phantom import AslCase, AslSimulation, simulate_from_fractions
from bids_dl.models.asl_phantom import tissue_fractions as label_fractions
from bids_dl.models.bundle import save_bundle
from bids_dl.models.card import ModelCard
from bids_dl.models.checkpoints import load_checkpoint, save_checkpoint
from bids_dl.models.networks import PerfusionNet

#: label maps are read at 1 mm and averaged to fractions at this factor (2 mm)
FRACTION_FACTOR = 2
#: voxels of brain a training slice needs
MIN_SLICE_VOXELS = 50
#: what the network reads (``asl_enhancement``), for the card
REPRESENTATION = (
    "asl_enhancement: per slice, dm = (control - label) / M0 (the mean of the first k pairs) "
    "over its noise sd estimated from the input: the slice's and its two neighbours', and dm "
    "smoothed inside the brain (Gaussian sigma 2, 2, 0.5 and 8, 8, 2 voxels); M0 over its "
    "brain median; dm's brain mean over the noise sd; 1/sqrt(k); the brain mask. Output: the "
    "finer smoothed dm plus a learned correction, times the noise sd"
)
#: in-plane Gaussian sigma (voxels) of the smoothing the validation log compares with
REFERENCE_SMOOTHING = 3.0


@dataclass(frozen=True)
class AslTrainingConfig:
    """The settings of an ASL-network run (copied whole into the card)."""

    name: str
    task: str = "asl"
    version: str = "0.1.0"
    seed: int = 1
    steps: int = 3000
    batch_size: int = 16
    learning_rate: float = 1e-3
    gradient_clip: float = 1.0
    features: tuple[int, ...] = (32, 64, 96)
    label_maps: str = "../shared/data/synthseg_label_maps"
    train_subjects: tuple[str, ...] = tuple(f"{i:02d}" for i in range(1, 17))
    validation_subjects: tuple[str, ...] = ("17", "18")
    test_subjects: tuple[str, ...] = ("19", "20")
    pairs: int = 6
    max_input_pairs: int = 4
    draws_per_case: int = 3
    shuffle_cases: int = 4
    simulation: dict | None = None
    validation_every: int = 250
    validation_cases: int = 6
    threads: int = 1
    workers: int = 1

    @classmethod
    def from_file(cls, path: Path) -> AslTrainingConfig:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
        for key in ("features", "train_subjects", "validation_subjects", "test_subjects"):
            if key in content:
                content[key] = tuple(content[key])
        return cls(**content)

    def simulation_settings(self) -> AslSimulation:
        """The phantom's ranges: the defaults, overridden by ``simulation``, with ``pairs``."""
        settings = {**AslSimulation().to_dict(), **(self.simulation or {}), "pairs": self.pairs}
        return AslSimulation(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}
        )


def label_map_path(folder: str | Path, subject: str) -> Path:
    return Path(folder) / f"training_seg_{subject}.nii.gz"


def load_fractions(folder: str | Path, subject: str) -> tuple[np.ndarray, np.ndarray]:
    """Tissue fractions (5, X, Y, Z; float16, cropped to the head) of a subject's label map
    at ``FRACTION_FACTOR`` mm, and their affine."""
    image = nb.as_closest_canonical(nb.load(str(label_map_path(folder, subject))))
    labels = np.asarray(image.dataobj).astype(np.int32)
    fractions = label_fractions(labels, FRACTION_FACTOR)
    affine = image.affine.copy()
    affine[:3, :3] *= FRACTION_FACTOR
    affine[:3, 3] = image.affine[:3, 3] + image.affine[:3, :3] @ (
        (FRACTION_FACTOR - 1) / 2 * np.ones(3)
    )
    head = np.argwhere(fractions.sum(0) > 0)
    low, high = np.maximum(head.min(0) - 2, 0), head.max(0) + 3
    affine[:3, 3] += affine[:3, :3] @ low
    box = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
    return fractions[(slice(None), *box)].astype(np.float16), affine


def input_dm(case: AslCase, chosen: np.ndarray) -> np.ndarray:
    """The mean dm (X, Y, Z) of the chosen pairs (indices) of a case."""
    pairs = [(2 * int(i), 2 * int(i) + 1) for i in chosen]
    return normalised_differences(case.series, pairs, case.m0, case.mask).mean(-1)


def draw_k(config: AslTrainingConfig, rng: np.random.Generator) -> int:
    """1 half of the time, else 2 to ``max_input_pairs``."""
    if config.max_input_pairs < 2 or rng.random() < 0.5:
        return 1
    return int(rng.integers(2, config.max_input_pairs + 1))


def case_samples(
    case: AslCase, config: AslTrainingConfig, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(inputs (7, X, Y), target (1, X, Y)) slices of ``draws_per_case`` inputs of a case."""
    samples = []
    keep = case.mask.sum((0, 1)) >= MIN_SLICE_VOXELS
    for _ in range(config.draws_per_case):
        k = min(draw_k(config, rng), config.pairs)
        chosen = rng.choice(config.pairs, size=k, replace=False)
        inputs, scale = enhancement_inputs(input_dm(case, chosen), case.m0, case.mask, k)
        target = np.where(case.mask, case.clean_dm / scale, 0.0).astype(np.float32)
        for z in np.flatnonzero(keep):
            samples.append((inputs[z], target[None, ..., z]))
    return samples


def _flip(inputs: np.ndarray, target: np.ndarray, rng: np.random.Generator):
    for axis in np.flatnonzero(rng.random(2) < 0.5):
        inputs, target = np.flip(inputs, axis + 1), np.flip(target, axis + 1)
    return np.ascontiguousarray(inputs), np.ascontiguousarray(target)


class CaseStream(torch.utils.data.IterableDataset):
    """An endless stream of training slices, shuffled over ``shuffle_cases`` cases, seeded by
    the config, the step it starts at and the worker."""

    def __init__(self, config: AslTrainingConfig, start_step: int = 0) -> None:
        super().__init__()
        self.config = config
        self.start_step = start_step

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.config.seed, self.start_step, info.id if info else 0])
        subjects = [load_fractions(self.config.label_maps, s) for s in self.config.train_subjects]
        settings = self.config.simulation_settings()
        while True:
            buffer = []
            for _ in range(self.config.shuffle_cases):
                fractions, affine = subjects[rng.integers(len(subjects))]
                case = simulate_from_fractions(fractions.astype(np.float32), affine, rng, settings)
                buffer += case_samples(case, self.config, rng)
            for index in rng.permutation(len(buffer)):
                inputs, target = _flip(*buffer[index], rng)
                yield torch.from_numpy(inputs), torch.from_numpy(target)


def masked_mse(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the brain voxels of a batch."""
    return (((predicted - target) ** 2) * mask).sum() / mask.sum().clamp_min(1)


def validation_set(config: AslTrainingConfig) -> list[tuple[AslCase, int, np.ndarray]]:
    """Fixed cases of the validation subjects, each read with k = 1 and k = 2 pairs."""
    rng = np.random.default_rng([config.seed, 999])
    settings = config.simulation_settings()
    subjects = [load_fractions(config.label_maps, s) for s in config.validation_subjects]
    cases = []
    for index in range(config.validation_cases):
        fractions, affine = subjects[index % len(subjects)]
        case = simulate_from_fractions(fractions.astype(np.float32), affine, rng, settings)
        cases += [(case, k, input_dm(case, np.arange(k))) for k in (1, 2)]
    return cases


def relative_rmse(dm: np.ndarray, case: AslCase) -> float:
    """Brain RMSE against the noise-free dm, in % of the noise-free mean grey-matter dm."""
    grey = case.tissues[0] > 0.5
    reference = float(case.clean_dm[grey].mean()) if grey.any() else 1.0
    error = (dm - case.clean_dm)[case.mask]
    return 100 * float(np.sqrt(np.mean(error**2))) / reference


def smoothed(dm: np.ndarray, mask: np.ndarray, sigma: float = REFERENCE_SMOOTHING) -> np.ndarray:
    """In-plane Gaussian smoothing inside the mask (normalised convolution): a reference."""
    sigmas = (sigma, sigma, 0.0)
    weight = ndimage.gaussian_filter(mask.astype(np.float64), sigmas)
    total = ndimage.gaussian_filter(np.where(mask, dm, 0.0).astype(np.float64), sigmas)
    return np.where(mask, total / np.maximum(weight, 1e-6), 0.0)


def validate(network: PerfusionNet, cases: list) -> dict[str, dict[str, float]]:
    """Mean relative RMSE (%) of the network, of its input and of the input smoothed with
    ``REFERENCE_SMOOTHING``, per k."""
    network.eval()
    scores: dict[str, dict[str, list[float]]] = {}
    for case, k, dm in cases:
        entry = scores.setdefault(f"k={k}", {"network": [], "input": [], "smoothed": []})
        entry["network"].append(relative_rmse(predict_dm(network, dm, case.m0, case.mask, k), case))
        entry["input"].append(relative_rmse(dm, case))
        entry["smoothed"].append(relative_rmse(smoothed(dm, case.mask), case))
    network.train()
    return {k: {m: round(float(np.mean(v)), 2) for m, v in e.items()} for k, e in scores.items()}


def architecture(config: AslTrainingConfig) -> dict:
    return {
        "name": "PerfusionNet",
        "args": {
            "in_channels": INPUT_CHANNELS,
            "out_channels": 1,
            "features": list(config.features),
            "residual_channel": RESIDUAL_CHANNEL,
        },
    }


def asl_card(config: AslTrainingConfig, record: dict, command: str, validation: dict) -> ModelCard:
    """The card of an ASL network trained by ``train_asl_network``."""
    return ModelCard(
        name=config.name,
        version=config.version,
        task="asl",
        architecture=architecture(config),
        inputs={
            "modality": "asl",
            "representation": REPRESENTATION,
            "structural": "M0 only (a proton-density image); no T1w: one of the two real "
            "evaluation scans has none",
            "pairs": f"k = 1 to {config.max_input_pairs} label/control pairs (trained), one delay",
            "voxel_size_mm": "2D EPI, trained at 3-4 mm in-plane, 4-7.5 mm slices",
            "needs_brain_mask": True,
        },
        outputs={
            "channels": ["dm"],
            "units": "(control - label) / M0",
            "meaning": "the noise-free normalised difference that averaging every repetition "
            "tends to; CBF follows from it by the single-delay quantification (linear in dm)",
        },
        training={
            "config": asdict(config),
            "command": command,
            "seed": config.seed,
            "data": "SIMULATED only: asl_phantom cases (Buxton kinetics, vessels, M0 by tissue, "
            f"thick-slice 2D EPI, thermal + physiological noise, motion) from the label maps "
            f"of {config.label_maps}",
            "split": {
                "train": list(config.train_subjects),
                "validation": list(config.validation_subjects),
                "test": list(config.test_subjects),
            },
            "simulation": config.simulation_settings().to_dict(),
            **record,
        },
        metrics={"simulated_validation_rmse_percent_gm": validation},
    )


def _network(config: AslTrainingConfig) -> PerfusionNet:
    return PerfusionNet(INPUT_CHANNELS, 1, tuple(config.features), RESIDUAL_CHANNEL)


def train_asl_network(
    config: AslTrainingConfig, output: Path, command: str = "", max_minutes: float | None = None
) -> Path:
    """Train, validating every ``validation_every`` steps (log in ``output/log.jsonl``); the
    bundle in ``output/bundle`` and the checkpoint in ``output/checkpoint`` are rewritten at
    each validation; a run stopped by ``max_minutes`` resumes from the checkpoint."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    output.mkdir(parents=True, exist_ok=True)
    network = _network(config)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.learning_rate)
    resumed = load_checkpoint(output / "checkpoint", network, optimizer)
    start = resumed[0] if resumed else 0
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: 0.5 * (1 + math.cos(math.pi * min(step, config.steps) / config.steps)),
    )
    for _ in range(start):
        schedule.step()
    loader = torch.utils.data.DataLoader(
        CaseStream(config, start), batch_size=config.batch_size, num_workers=config.workers
    )
    cases = validation_set(config)
    started, losses = time.time(), []
    step = start
    with (output / "log.jsonl").open("a", encoding="utf-8") as log:
        for inputs, target in loader:
            if step >= config.steps:
                break
            step += 1
            loss = masked_mse(network(inputs), target, inputs[:, -1:])
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), config.gradient_clip)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            out_of_time = max_minutes is not None and time.time() - started > max_minutes * 60
            if step % config.validation_every == 0 or step == config.steps or out_of_time:
                validation = validate(network, cases)
                record = {
                    "steps": step,
                    "seconds": round(time.time() - started, 1),
                    "loss_last_100": float(np.mean(losses[-100:])),
                }
                log.write(json.dumps(record | {"validation": validation}) + "\n")
                log.flush()
                save_checkpoint(output / "checkpoint", network, optimizer, step, torch.zeros(1))
                save_bundle(
                    output / "bundle", asl_card(config, record, command, validation), network
                )
            if out_of_time:
                print(f"stopped after {max_minutes} min, at step {step}", file=sys.stderr)
                break
    return output / "bundle"
