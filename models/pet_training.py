"""Training of the missing-PET imputation network (``bids_dl-train`` with task ``pet``).

Two sources of T1w + FDG SUVR pairs, the config's ``source``:

- ``simulated``: ``pet_simulation`` cases of the label maps ``label_maps/training_seg_XX.nii.gz``
  (subjects ``train_subjects``; validation on fixed cases of ``validation_subjects``). A pool
  of ``cases_per_map`` cases per map is simulated at the start, and one of them is replaced by
  a fresh case every ``refresh_every`` steps. The card says the model saw simulation only.
- ``bids``: real same-subject pairs. ``bids_dir`` is a BIDS dataset where each participant
  (and session) has ``anat/sub-X[_ses-Y]_..._T1w.nii.gz`` and ``pet/sub-X[_ses-Y]_..._pet.nii.gz``;
  ``derivatives_dir`` (what the bids_dl participant level writes) holds, under
  ``sub-X[/ses-Y]/``, its brain mask ``sub-X[_ses-Y]_..._desc-brain_mask.nii.gz`` and its PET
  already in T1w space as SUVR, ``sub-X[_ses-Y]_..._space-T1w_desc-suvr_pet.nii.gz``, and its
  structures, ``sub-X[_ses-Y]_..._desc-aseg_dseg.nii.gz``. Mask, SUVR and structures may lie
  on their own grids (same world space); they are resampled to the T1w's.
  Sessions without both a T1w and a PET are skipped; a listed participant without any pair,
  or a pair without its derivatives, is an error.

The regional prior (``pet_prior``) is fitted on the training pairs (the first pool, for
simulation) and stored in the card. Each step reads ``batch_size`` random ``patch`` crops
(model grid: 2 mm RAS, see ``pet_imputation``) of pooled examples, flipped left-right at
random; the loss is the L1 error of prior plus correction inside the brain mask (Adam, cosine
learning-rate decay; the network's last layer starts at zero, so training starts from the
prior). Every ``validation_every`` steps the validation MAE in the brain (SUVR units, on
each case's own grid) is logged and printed, and the checkpoint and the bundle are
rewritten; a rerun resumes.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import nibabel as nb
import numpy as np
import torch

from bids_dl.models.asl_training import label_map_path
from bids_dl.models.bundle import save_bundle
from bids_dl.models.card import ModelCard
from bids_dl.models.checkpoints import load_checkpoint, save_checkpoint
from bids_dl.models.geometry import resample
from bids_dl.models.image_io import read_volume
from bids_dl.models.networks import UNet3D
from bids_dl.models.pet_imputation import (
    CHANNELS,
    MASK_CHANNEL,
    NORMALISATION,
    VOXEL_MM,
    impute_suvr,
    network_inputs,
    predicted_suvr,
    to_model_grid,
)
from bids_dl.models.pet_prior import RegionalPrior, TrainingRegions
from bids_dl.models.pet_simulation import PetSimulation, canonical_head, simulate_case

SOURCES = ("simulated", "bids")


@dataclass(frozen=True)
class PetTrainingConfig:
    """The settings of a PET-imputation run (copied whole into the card)."""

    name: str
    task: str = "pet"
    version: str = "0.1.0"
    seed: int = 1
    steps: int = 1000
    batch_size: int = 2
    learning_rate: float = 1e-3
    features: tuple[int, ...] = (8, 16, 32, 64)
    #: ``UNet3D`` normalisation: "none" keeps a patch-trained network's output independent of
    #: the size it runs on (instance statistics of a whole brain differ from a patch's)
    norm: str = "none"
    patch: tuple[int, int, int] = (64, 64, 64)
    validation_every: int = 100
    log_every: int = 10
    source: str = "simulated"
    label_maps: str = "../shared/data/synthseg_label_maps"
    train_subjects: tuple[str, ...] = tuple(f"{i:02d}" for i in range(1, 17))
    validation_subjects: tuple[str, ...] = ("17", "18")
    test_subjects: tuple[str, ...] = ("19", "20")
    bids_dir: str = ""
    derivatives_dir: str = ""
    #: overrides of ``PetSimulation``'s ranges
    simulation: dict | None = None
    cases_per_map: int = 2
    refresh_every: int = 10
    validation_cases: int = 4
    #: the PET resolution the regional prior is fitted and painted at (real pairs; a simulated
    #: case is fitted at its own)
    prior_fwhm_mm: float = 7.0
    threads: int = 1

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, not {self.source!r}")
        if self.source == "bids" and not (self.bids_dir and self.derivatives_dir):
            raise ValueError("source 'bids' needs bids_dir and derivatives_dir")
        if any(p % 16 for p in self.patch):
            raise ValueError(f"patch {self.patch}: each size must be a multiple of 16")

    @classmethod
    def from_file(cls, path: Path) -> PetTrainingConfig:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
        for key in ("features", "patch", "train_subjects", "validation_subjects", "test_subjects"):
            if key in content:
                content[key] = tuple(content[key])
        return cls(**content)

    def simulation_settings(self) -> PetSimulation:
        """The simulator's ranges: the defaults, overridden by ``simulation``."""
        overrides = {
            k: tuple(v) if isinstance(v, list) else v for k, v in (self.simulation or {}).items()
        }
        return replace(PetSimulation(), **overrides)


@dataclass(frozen=True)
class PetPair:
    """A T1w, its brain mask, structures (labels) and SUVR on one grid (``affine``), and the
    PET's resolution: a training or validation case. ``regions`` names extra masks to score
    separately (the simulated hypometabolisms)."""

    name: str
    t1w: np.ndarray
    brain_mask: np.ndarray
    labels: np.ndarray
    suvr: np.ndarray
    affine: np.ndarray
    fwhm_mm: float
    regions: dict[str, np.ndarray]

    def prior_regions(self) -> TrainingRegions:
        return TrainingRegions(self.labels, self.suvr, self.brain_mask, self.affine, self.fwhm_mm)


def training_example(pair: PetPair, prior: RegionalPrior) -> tuple[np.ndarray, np.ndarray]:
    """The network's inputs (3, X, Y, Z) and the SUVR target (1, X, Y, Z) of a pair, on its
    model grid (``pet_imputation.network_inputs``)."""
    inputs = network_inputs(pair.t1w, pair.brain_mask, pair.labels, pair.affine, prior)
    target = to_model_grid(pair.suvr, pair.affine, inputs.brain_mask.shape, inputs.affine)
    return inputs.channels, np.where(inputs.brain_mask, target, 0)[None].astype(np.float32)


def load_label_maps(folder: str | Path, subjects: tuple[str, ...]) -> list[tuple]:
    """Each subject's label map in RAS, cropped to the head (int16), and its affine."""
    maps = []
    for subject in subjects:
        path = label_map_path(folder, subject)
        if not path.is_file():
            raise ValueError(f"{path}: no label map for subject {subject}")
        image = nb.load(str(path))
        maps.append(canonical_head(np.asarray(image.dataobj).astype(np.int16), image.affine))
    return maps


def simulated_pair(name: str, label_map: tuple, rng, settings: PetSimulation) -> PetPair:
    case = simulate_case(*label_map, rng, settings)
    regions = {"tied_region": case.tied_region, "independent_region": case.independent_region}
    return PetPair(
        name, case.t1w, case.brain_mask, case.labels, case.suvr, case.affine,
        float(case.parameters["fwhm_mm"]), regions,
    )  # fmt: skip


def _one(folder: Path, pattern: str) -> Path | None:
    """The first file (sorted) under ``folder`` matching ``pattern`` (recursively); files in
    another space than T1w are passed over."""
    found = [p for p in sorted(folder.rglob(pattern)) if "_space-" not in p.name]
    found += [p for p in sorted(folder.rglob(pattern)) if "_space-T1w_" in p.name]
    return found[0] if found else None


def _on_grid(path: Path, shape: tuple, affine: np.ndarray, order: int) -> np.ndarray:
    image, data = read_volume(path)
    data = np.asarray(data, np.float32)
    if image.shape[:3] == tuple(shape) and np.allclose(image.affine, affine, atol=1e-3):
        return data
    return resample(data, image.affine, shape, affine, order=order)


def bids_pairs(
    bids_dir: str | Path, derivatives_dir: str | Path, subjects, fwhm_mm: float
) -> list[PetPair]:
    """The real T1w + SUVR pairs of ``subjects`` (labels with or without ``sub-``), their PET
    taken to have a resolution of ``fwhm_mm``."""
    bids_dir, derivatives_dir = Path(bids_dir), Path(derivatives_dir)
    pairs = []
    for subject in subjects:
        label = f"sub-{str(subject).removeprefix('sub-')}"
        folder = bids_dir / label
        if not folder.is_dir():
            raise ValueError(f"{folder}: participant {label} is not in the BIDS dataset")
        sessions = sorted(p for p in folder.glob("ses-*") if p.is_dir()) or [folder]
        found = 0
        for session in sessions:
            prefix = label if session == folder else f"{label}_{session.name}"
            t1w = _one(session / "anat", f"{prefix}_*T1w.nii*")
            pet = _one(session / "pet", f"{prefix}_*pet.nii*")
            if t1w is None or pet is None:
                continue
            derivatives = derivatives_dir / session.relative_to(bids_dir)
            mask = _one(derivatives, f"{prefix}_*desc-brain_mask.nii*")
            suvr = _one(derivatives, f"{prefix}_*space-T1w_desc-suvr_pet.nii*")
            aseg = _one(derivatives, f"{prefix}_*desc-aseg_dseg.nii*")
            needed = (("brain mask", mask), ("SUVR PET in T1w space", suvr), ("structures", aseg))
            for kind, path in needed:
                if path is None:
                    raise ValueError(
                        f"{derivatives}: no {kind} of {prefix} (run the bids_dl participant "
                        f"level first: {prefix}_desc-brain_mask.nii.gz, "
                        f"{prefix}_space-T1w_desc-suvr_pet.nii.gz, {prefix}_desc-aseg_dseg.nii.gz)"
                    )
            image, data = read_volume(t1w)
            shape, affine = image.shape[:3], image.affine
            brain = _on_grid(mask, shape, affine, order=0) > 0.5
            values = _on_grid(suvr, shape, affine, order=1)
            labels = np.rint(_on_grid(aseg, shape, affine, order=0)).astype(np.int16)
            t1w_data = np.asarray(data, np.float32)
            pairs.append(PetPair(prefix, t1w_data, brain, labels, values, affine, fwhm_mm, {}))
            found += 1
        if not found:
            raise ValueError(
                f"{folder}: no session with both anat/*_T1w.nii.gz and pet/*_pet.nii.gz"
            )
    return pairs


class PairSource:
    """Training examples and validation pairs of a config's source."""

    def __init__(self, config: PetTrainingConfig, rng: np.random.Generator) -> None:
        self.config, self.rng = config, rng
        if config.source == "bids":
            folders, fwhm = (config.bids_dir, config.derivatives_dir), config.prior_fwhm_mm
            train = bids_pairs(*folders, config.train_subjects, fwhm)
            self.validation = bids_pairs(*folders, config.validation_subjects, fwhm)
            self.prior = RegionalPrior.fit((p.prior_regions() for p in train), fwhm)
            self.pool = [training_example(p, self.prior) for p in train]
            return
        self.settings = config.simulation_settings()
        self.maps = load_label_maps(config.label_maps, config.train_subjects)
        validation_maps = load_label_maps(config.label_maps, config.validation_subjects)
        fixed = np.random.default_rng([config.seed, 999])
        self.validation = [
            simulated_pair(
                config.validation_subjects[i % len(validation_maps)],
                validation_maps[i % len(validation_maps)],
                fixed,
                self.settings,
            )
            for i in range(config.validation_cases)
        ]
        first = [
            self.fresh_pair(index)
            for _ in range(config.cases_per_map)
            for index in range(len(self.maps))
        ]
        self.prior = RegionalPrior.fit((p.prior_regions() for p in first), config.prior_fwhm_mm)
        self.pool = [training_example(p, self.prior) for p in first]

    def fresh_pair(self, index: int | None = None) -> PetPair:
        """A new simulated case of training map ``index`` (default: a random one)."""
        if index is None:
            index = int(self.rng.integers(len(self.maps)))
        return simulated_pair(
            self.config.train_subjects[index], self.maps[index], self.rng, self.settings
        )

    def refresh(self, step: int) -> None:
        """Replace a random pooled simulated example every ``refresh_every`` steps."""
        if self.config.source == "simulated" and step % self.config.refresh_every == 0:
            fresh = training_example(self.fresh_pair(), self.prior)
            self.pool[int(self.rng.integers(len(self.pool)))] = fresh

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` random patches (inputs, target) of pooled examples."""
        inputs, targets = [], []
        for _ in range(self.config.batch_size):
            channels, target = self.pool[int(self.rng.integers(len(self.pool)))]
            both = _crop(np.concatenate([channels, target]), self.config.patch, self.rng)
            if self.rng.random() < 0.5:
                both = both[:, ::-1]
            inputs.append(both[:-1])
            targets.append(both[-1:])
        return torch.from_numpy(np.stack(inputs)), torch.from_numpy(np.stack(targets))


def _crop(volume: np.ndarray, patch: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A random ``patch`` of (C, X, Y, Z), zero-padded where the volume is smaller."""
    out = np.zeros((volume.shape[0], *patch), dtype=np.float32)
    source, target = [slice(None)], [slice(None)]
    for size, wanted in zip(volume.shape[1:], patch, strict=True):
        start = int(rng.integers(size - wanted + 1)) if size > wanted else 0
        offset = int(rng.integers(wanted - size + 1)) if wanted > size else 0
        length = min(size, wanted)
        source.append(slice(start, start + length))
        target.append(slice(offset, offset + length))
    out[tuple(target)] = volume[tuple(source)]
    return out


def masked_l1(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the brain voxels of a batch."""
    return ((predicted - target).abs() * mask).sum() / mask.sum().clamp_min(1)


def validate(network: torch.nn.Module, card: ModelCard, pairs: list[PetPair]) -> dict:
    """Mean absolute SUVR error in the brain (and in each named region where a pair has
    one), each case on its own grid, averaged over cases."""
    scores: dict[str, list[float]] = {}
    for pair in pairs:
        predicted = impute_suvr(pair.t1w, pair.brain_mask, pair.labels, pair.affine, network, card)
        error = np.abs(predicted - pair.suvr)
        scores.setdefault("brain", []).append(float(error[pair.brain_mask].mean()))
        for name, region in pair.regions.items():
            if region.any():
                scores.setdefault(name, []).append(float(error[region].mean()))
    network.train()
    return {name: round(float(np.mean(v)), 4) for name, v in scores.items()}


def architecture(config: PetTrainingConfig) -> dict:
    return {
        "name": "UNet3D",
        "args": {
            "in_channels": len(CHANNELS),
            "out_channels": 1,
            "features": list(config.features),
            "norm": config.norm,
            "residual": False,
        },
    }


def _provenance(config: PetTrainingConfig) -> dict:
    if config.source == "bids":
        return {
            "data": f"real same-subject T1w + FDG PET pairs of {config.bids_dir} (SUVR in T1w "
            f"space and brain masks from {config.derivatives_dir})",
            "split": {
                "train": list(config.train_subjects),
                "validation": list(config.validation_subjects),
            },
        }
    return {
        "data": "SIMULATED only: pet_simulation cases (FDG SUVR by structure, age-like and "
        "disease-like atrophy, atrophy-tied and MRI-invisible hypometabolism, 6-8 mm "
        "resolution; T1w-like images with random contrast, bias and noise) from the real "
        f"label maps of {config.label_maps}; no real PET was seen",
        "split": {
            "train": list(config.train_subjects),
            "validation": list(config.validation_subjects),
            "test": list(config.test_subjects),
        },
        "simulation": config.simulation_settings().to_dict(),
    }


def pet_card(
    config: PetTrainingConfig,
    prior: RegionalPrior,
    record: dict,
    command: str,
    validation: dict,
) -> ModelCard:
    """The card of a network trained by ``train_pet_imputation``."""
    kind = "real" if config.source == "bids" else "simulated"
    subjects = ", ".join(config.validation_subjects)
    metrics = {}
    if validation:
        metrics = {
            "headline": f"{kind} validation MAE {validation['brain']} SUVR in the brain",
            f"{kind}_validation_mae_suvr": validation,
            "measured_on": f"{kind} validation cases of subjects {subjects}"
            + (" (noise-free simulated SUVR as the truth)" if kind == "simulated" else ""),
        }
    return ModelCard(
        name=config.name,
        version=config.version,
        task="pet",
        architecture=architecture(config),
        inputs={
            "contrasts": ["T1w"],
            "channels": list(CHANNELS),
            "voxel_size_mm": VOXEL_MM,
            "orientation": "RAS",
            "normalisation": NORMALISATION,
            "needs_brain_mask": True,
            "needs_labels": "the structures model's FreeSurfer labels (desc-aseg_dseg)",
            "regional_prior": prior.to_dict(),
        },
        outputs={
            "channels": ["SUVR"],
            "units": "SUVR, FDG-like, reference region cerebellar cortex",
            "meaning": "a synthetic PET predicted from the T1w alone: it shows the uptake the "
            "anatomy implies, never a hypometabolism the MRI does not show",
        },
        training={
            "config": asdict(config),
            "command": command,
            "seed": config.seed,
            "source": config.source,
            **_provenance(config),
            **record,
        },
        metrics=metrics,
    )


def _progress(message: str) -> None:
    """One line on stdout, flushed at once: readable in a background run's log."""
    print(message, flush=True)


def _learning_rate(config: PetTrainingConfig, step: int) -> float:
    """Cosine decay from ``learning_rate`` to zero at the last step."""
    progress = min(step, config.steps) / config.steps
    return config.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))


def train_pet_imputation(
    settings: PetTrainingConfig,
    output: Path,
    command: str = "",
    max_minutes: float | None = None,
) -> Path:
    """Train, validating every ``validation_every`` steps (log in ``output/log.jsonl`` and on
    stdout); the bundle in ``output/bundle`` and the checkpoint in ``output/checkpoint`` are
    rewritten at each validation; a run stopped by ``max_minutes`` resumes from the
    checkpoint."""
    torch.manual_seed(settings.seed)
    torch.set_num_threads(settings.threads)
    output.mkdir(parents=True, exist_ok=True)
    network = UNet3D(**architecture(settings)["args"])
    torch.nn.init.zeros_(network.head.weight)  # the untrained network predicts the prior
    torch.nn.init.zeros_(network.head.bias)
    optimizer = torch.optim.Adam(network.parameters(), lr=settings.learning_rate)
    resumed = load_checkpoint(output / "checkpoint", network, optimizer)
    start = resumed[0] if resumed else 0
    started = time.time()
    source = PairSource(settings, np.random.default_rng([settings.seed, start]))
    _progress(
        f"{settings.source} data ready: {len(source.pool)} training examples, "
        f"{len(source.validation)} validation cases ({time.time() - started:.0f} s)"
    )
    step, losses = start, []
    with (output / "log.jsonl").open("a", encoding="utf-8") as log:
        while step < settings.steps:
            step += 1
            source.refresh(step)
            inputs, target = source.batch()
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(settings, step)
            mask = inputs[:, MASK_CHANNEL : MASK_CHANNEL + 1]
            loss = masked_l1(predicted_suvr(network, inputs), target, mask)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            elapsed = time.time() - started
            out_of_time = max_minutes is not None and elapsed > max_minutes * 60
            if step % settings.log_every == 0:
                recent = float(np.mean(losses[-settings.log_every :]))
                _progress(f"step {step}/{settings.steps} loss {recent:.4f} elapsed {elapsed:.0f} s")
            if step % settings.validation_every == 0 or step == settings.steps or out_of_time:
                record = {
                    "steps": step,
                    "seconds": round(elapsed, 1),
                    "loss_last_100": round(float(np.mean(losses[-100:])), 5),
                }
                validation = validate(
                    network, pet_card(settings, source.prior, {}, command, {}), source.validation
                )
                log.write(json.dumps(record | {"validation_mae": validation}) + "\n")
                log.flush()
                _progress(
                    f"step {step}/{settings.steps} validation MAE {validation} "
                    f"elapsed {time.time() - started:.0f} s"
                )
                save_checkpoint(output / "checkpoint", network, optimizer, step, torch.zeros(1))
                card = pet_card(settings, source.prior, record, command, validation)
                save_bundle(output / "bundle", card, network)
            if out_of_time:
                print(f"stopped after {max_minutes} min, at step {step}", file=sys.stderr)
                break
    return output / "bundle"
