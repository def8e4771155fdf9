"""Train a U-Net; log, checkpoint, resume, write a bundle.

    bids_dl-train CONFIG.json OUTPUT_FOLDER

Two data sources: ``synthetic`` (images of random contrast synthesised from label maps,
SynthSeg-style) and ``bids`` (a BIDS dataset's real images with label maps in a derivatives
folder, deformed and corrupted the same way, for users who retrain on their own data). The
config names the task, the data and their split, the working resolution, the network, the
schedule and the seed. The output folder receives ``log.tsv``, ``checkpoint/``
(resumed automatically when present) and, at the end, the bundle (weights + card).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nb
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from bids_dl.models.bundle import ModelCard, build_network, load_bundle, save_bundle
from bids_dl.models.inference import model_grid, resample
from bids_dl.models.labels import (
    BRAIN_LABEL_RANGE,
    LESION_VALUES,
    STRUCTURES,
    TUMOR_LABELS,
    TUMOR_REGIONS,
)
from bids_dl.models.lesions import LesionParameters, LesionSynthesiser
from bids_dl.models.metrics import dice
from bids_dl.models.sample_workers import inline_batches, worker_batches
from bids_dl.models.synthesis import (
    LabelSynthesiser,
    MixedSampler,
    PairedAugmenter,
    Sampler,
    SynthesisParameters,
)

TASKS = ("brain_mask", "structures", "tumor", "wmh")
LESION_TASKS = ("tumor", "wmh")


@dataclass
class TrainConfig:
    """Everything that defines a training run (copied into the model card)."""

    name: str
    task: str  # one of TASKS
    train_subjects: list[str]
    validation_subjects: list[str]
    test_subjects: list[str]
    source: str = "synthetic"  # or "bids"
    # synthetic source
    label_maps: str = ""  # folder of training_seg_XX.nii.gz
    generation_labels: str = ""  # .npy: label values
    generation_classes: str = ""  # .npy: their intensity class
    # bids source: sub-XX/anat/sub-XX*_<image_suffix>.nii.gz with sub-XX/anat/sub-XX*_dseg.nii.gz
    # (FreeSurfer values for structures, any non-zero value for brain_mask) in labels_dir
    bids_dir: str = ""
    labels_dir: str = ""
    image_suffix: str = "T1w"
    version: str = "0.1.0"
    voxel_size_mm: float = 2.0
    sample_shape: tuple[int, int, int] = (128, 128, 128)
    features: tuple[int, ...] = (8, 16, 32, 64)
    residual: bool = False
    norm: str = "instance"
    iterations: int = 1000
    batch_size: int = 1
    learning_rate: float = 1e-3
    validation_every: int = 100
    validation_samples: int = 4
    checkpoint_every: int = 50
    seed: int = 1
    threads: int = 2
    device: str = "auto"  # "auto" (CUDA when torch sees a GPU), "cpu" or "cuda"
    #: worker processes that synthesise the training samples (``models/sample_workers.py``);
    #: 0 draws them in the training process, whose stream a checkpoint then resumes exactly
    sample_workers: int = 0
    #: crop each label map to its brain (plus this margin, in voxels) before sampling windows, so
    #: windows are centred on the brain (inference then centres them on the brain mask); None
    #: keeps the whole head and its surroundings
    brain_crop_margin: int | None = None
    synthesis: dict = field(default_factory=dict)
    #: lesion tasks: the input contrasts, in channel order (e.g. FLAIR, T1ce, T1w, T2w), and the
    #: simulator's settings (``LesionParameters``)
    channels: list[str] = field(default_factory=list)
    lesions: dict = field(default_factory=dict)
    #: start from this bundle's weights (fine-tuning); the architecture must match
    init_from: str = ""
    #: label post-processing written into the card (``inference.POSTPROCESSING``)
    postprocessing: str = ""
    #: lesions smaller than this are dropped at inference (card ``inputs.min_lesion_mm3``)
    min_lesion_mm3: float = 0.0
    #: model-grid axes mirrored at inference, predictions averaged (card
    #: ``inputs.test_time_mirror_axes``; 0 is left-right)
    test_time_mirror_axes: list[int] = field(default_factory=list)
    #: lesion tasks with the bids source: share of training samples drawn from the lesion
    #: simulator (label maps ``synthetic_subjects`` of ``label_maps``, settings ``lesions``)
    #: instead, so that fine-tuning on a few real cases keeps what synthetic training taught
    synthetic_share: float = 0.0
    synthetic_subjects: list[str] = field(default_factory=list)
    #: lesion tasks: draw each sample at this larger shape, normalise it inside its brain
    #: mask there and train on its central ``sample_shape``; inference normalises over the
    #: whole brain, a window alone over a tissue mix skewed by whatever it holds
    normalisation_shape: tuple[int, int, int] | None = None
    #: tumour task: soft Dice over the BraTS regions (whole tumour, core, enhancing; sums of
    #: class probabilities) instead of over the classes
    brats_region_loss: bool = False
    #: tumour task: labels decoded by those nested regions at inference instead of the argmax
    #: (card ``inputs.nested_regions``, ``inference.decode_nested_regions``)
    brats_region_decoding: bool = False
    #: tumour task with ``synthetic_share``: real samples are scored on the whole tumour alone
    #: (tumour against the rest, ``whole_tumor_loss``), so how the tumour divides into core,
    #: edema and enhancing is learnt from the simulated samples only; fine-tuning on three
    #: real cases otherwise raised the whole tumour and lowered the core
    real_whole_tumor_only: bool = False

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TrainConfig:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
        for key in ("sample_shape", "features", "normalisation_shape"):
            if content.get(key) is not None:
                content[key] = tuple(content[key])
        return cls(**content)


def load_label_map(
    path: Path, voxel_mm: float, brain_crop_margin: int | None = None
) -> torch.Tensor:
    """A label map in RAS at ``voxel_mm`` (nearest neighbour), as int64, optionally cropped to
    the brain's bounding box plus a margin."""
    image = nb.as_closest_canonical(nb.load(str(path)))
    shape, affine = model_grid(image, voxel_mm, 1)
    data = np.asarray(image.dataobj).astype(np.int32)
    labels = resample(data, image.affine, shape, affine, order=0).astype(np.int64)
    if brain_crop_margin is not None:
        low, high = BRAIN_LABEL_RANGE
        corners = np.argwhere((labels >= low) & (labels <= high))
        start = np.maximum(corners.min(0) - brain_crop_margin, 0)
        stop = corners.max(0) + 1 + brain_crop_margin
        labels = labels[tuple(slice(a, b) for a, b in zip(start, stop, strict=True))]
    return torch.from_numpy(np.ascontiguousarray(labels))


def lookup_tables(
    config: TrainConfig, source: str | None = None
) -> tuple[torch.Tensor, torch.Tensor, dict[int, str]]:
    """Label value -> generation class, label value -> target index, and the target names.

    ``source`` (default: the config's) decides how label values read: BraTS values for a
    ``bids`` tumour source, the simulator's lesion values for a ``synthetic`` one. For the
    ``bids`` source and the lesion tasks (whose images follow contrast tables) there are no
    generation classes (None), and for ``brain_mask`` every non-zero label is brain.
    """
    source = source or config.source
    if source == "bids" or config.task in LESION_TASKS:
        generation, values = None, np.arange(1024)
        brain = values[values > 0]
    else:
        values = np.load(config.generation_labels, allow_pickle=False).astype(int)
        classes = np.load(config.generation_classes, allow_pickle=False).astype(int)
        generation = torch.zeros(int(values.max()) + 1, dtype=torch.long)
        generation[torch.from_numpy(values)] = torch.from_numpy(classes)
        low, high = BRAIN_LABEL_RANGE
        brain = [v for v in values if low <= v <= high]
    size = int(values.max()) + 1
    target = torch.zeros(size, dtype=torch.long)
    if config.task == "brain_mask":
        target[brain] = 1
        return generation, target, {0: "background", 1: "brain"}
    if config.task == "structures":
        # channel i predicts the i-th label value in sorted order (what inference assumes)
        for channel, value in enumerate(sorted(STRUCTURES), start=1):
            if value < size:
                target[value] = channel
        return (
            generation,
            target,
            {0: "background"} | {value: row[0] for value, row in STRUCTURES.items()},
        )
    if config.task == "tumor":
        if source == "bids":  # BraTS values; 2013's 3 (non-enhancing) joins the core
            target[[1, 3]], target[2], target[4] = 1, 2, 3
        else:
            for channel, (_, (_, members)) in enumerate(sorted(TUMOR_LABELS.items()), start=1):
                target[[LESION_VALUES[m] for m in members]] = channel
        return (
            generation,
            target,
            {0: "background"} | {value: row[0] for value, row in TUMOR_LABELS.items()},
        )
    if config.task == "wmh":
        target[LESION_VALUES["wmh"]] = 1
        return generation, target, {0: "background", 1: "white-matter hyperintensity"}
    raise ValueError(f"unknown task {config.task!r} (known: {', '.join(TASKS)})")


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, regions: list[list[int]] | None = None
) -> torch.Tensor:
    """1 - mean soft Dice over the foreground classes, or over ``regions`` (lists of class
    indices, e.g. the BraTS whole tumour, core and enhancing tumour) whose probabilities are
    the sums of their classes' (what region-based BraTS models optimise)."""
    probabilities = torch.softmax(logits, dim=1)
    one_hot = F.one_hot(target, logits.shape[1]).permute(0, 4, 1, 2, 3).float()
    if regions:
        background = torch.zeros_like(probabilities[:, :1])  # dropped below, as class 0 is
        probabilities = torch.cat(
            [background, *(probabilities[:, r].sum(1, keepdim=True) for r in regions)], dim=1
        )
        one_hot = torch.cat(
            [background, *(one_hot[:, r].sum(1, keepdim=True) for r in regions)], dim=1
        )
    dims = (0, 2, 3, 4)
    intersection = (probabilities * one_hot).sum(dims)
    total = probabilities.sum(dims) + one_hot.sum(dims)
    dice = (2 * intersection + 1e-5) / (total + 1e-5)
    return 1 - dice[1:].mean()


def whole_tumor_loss(
    logits: torch.Tensor, target: torch.Tensor, tumor_classes: list[int]
) -> torch.Tensor:
    """Soft Dice plus cross-entropy of the whole tumour (the sum of ``tumor_classes``
    against the rest): blind to how the tumour divides into its classes."""
    log_probabilities = logits.log_softmax(1)
    others = [c for c in range(logits.shape[1]) if c not in tumor_classes]
    binary = torch.stack(
        [
            log_probabilities[:, others].logsumexp(1),
            log_probabilities[:, tumor_classes].logsumexp(1),
        ],
        dim=1,
    )
    inside = torch.isin(target, torch.tensor(tumor_classes, device=target.device)).long()
    return soft_dice_loss(binary, inside) + F.nll_loss(binary, inside)


def batch_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    dice_regions: list[list[int]] | None,
    whole_tumor_only: torch.Tensor | None = None,
    tumor_classes: list[int] | None = None,
) -> torch.Tensor:
    """Soft Dice plus cross-entropy over the batch; the samples flagged in
    ``whole_tumor_only`` are scored by ``whole_tumor_loss`` instead, each part weighted by its
    share of the batch."""
    if whole_tumor_only is None or not whole_tumor_only.any():
        return soft_dice_loss(logits, target, dice_regions) + F.cross_entropy(logits, target)
    loss = whole_tumor_only.float().mean() * whole_tumor_loss(
        logits[whole_tumor_only], target[whole_tumor_only], tumor_classes
    )
    full = ~whole_tumor_only
    if full.any():
        loss = loss + full.float().mean() * batch_loss(logits[full], target[full], dice_regions)
    return loss


def brats_region_classes(config: TrainConfig, names: dict[int, str]) -> list[list[int]]:
    """The BraTS regions as lists of class indices (tumour task)."""
    if config.task != "tumor":
        raise ValueError(f"BraTS regions are for the tumor task, not {config.task!r}")
    values = sorted(names)
    return [[values.index(v) for v in members] for members in TUMOR_REGIONS.values()]


def _save_checkpoint(folder: Path, network, optimizer, iteration: int, generator_state) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).cpu().contiguous()
    tensors["generator_state"] = generator_state.clone()
    save_file(tensors, str(folder / "state.tmp.safetensors"))
    os.replace(folder / "state.tmp.safetensors", folder / "state.safetensors")
    (folder / "progress.json").write_text(json.dumps({"iteration": iteration}))


def _load_checkpoint(folder: Path, network, optimizer) -> tuple[int, torch.Tensor] | None:
    if not (folder / "progress.json").exists():
        return None
    tensors = load_file(str(folder / "state.safetensors"))
    network.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state = optimizer.state_dict()
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state["state"].setdefault(int(index), {})[key] = value
    optimizer.load_state_dict(state)
    return json.loads((folder / "progress.json").read_text())["iteration"], tensors[
        "generator_state"
    ]


#: file-name patterns of each contrast in a BIDS ``anat`` folder
CONTRAST_PATTERNS = {"T1w": "_T1w", "T1ce": "_ce-*_T1w", "T2w": "_T2w", "FLAIR": "_FLAIR"}


def _bids_file(folder: str, label: str, pattern: str) -> Path | None:
    found = sorted(
        p
        for p in Path(folder).glob(f"sub-{label}/**/anat/sub-{label}*{pattern}.nii*")
        if pattern.startswith("_ce-") or "_ce-" not in p.name
    )
    return found[0] if found else None


def load_bids_pair(config: TrainConfig, subject: str) -> tuple[torch.Tensor, ...]:
    """A subject's image(s) and label map from a BIDS dataset, on the RAS working grid.

    Single-contrast tasks read ``image_suffix``; lesion tasks read every contrast of
    ``channels`` (zeros for a missing one) and the ``desc-brain_mask`` beside the labels, and
    crop to the mask's box plus ``brain_crop_margin``. Returns (image, labels[, mask]).
    """
    label = subject.removeprefix("sub-")
    patterns = [CONTRAST_PATTERNS.get(c, f"_{c}") for c in config.channels] or [
        f"_{config.image_suffix}"
    ]
    images = [_bids_file(config.bids_dir, label, p) for p in patterns]
    labels = _bids_file(config.labels_dir, label, "_dseg")
    mask_file = _bids_file(config.labels_dir, label, "_desc-brain_mask")
    needs_mask = bool(config.channels)
    if not any(images) or labels is None or (needs_mask and mask_file is None):
        wanted = " or ".join(config.channels or [config.image_suffix])
        raise ValueError(
            f"sub-{label}: need a {wanted} image in {config.bids_dir} and a dseg"
            + (" and a desc-brain_mask" if needs_mask else "")
            + f" in {config.labels_dir}"
        )
    reference = nb.as_closest_canonical(nb.load(str(next(i for i in images if i))))
    shape, affine = model_grid(reference, config.voxel_size_mm, 1)

    def on_grid(path: Path | None, order: int) -> np.ndarray:
        if path is None:
            return np.zeros(shape, dtype=np.float32)
        image = nb.load(str(path))
        data = np.nan_to_num(np.asarray(image.dataobj, dtype=np.float32))
        return resample(data, image.affine, shape, affine, order=order).astype(np.float32)

    channels = np.stack([on_grid(path, 1) for path in images])
    label_map = np.rint(on_grid(labels, 0)).astype(np.int64)
    if not needs_mask:
        return torch.from_numpy(channels[0]), torch.from_numpy(label_map)
    mask = on_grid(mask_file, 0) > 0.5
    box = (slice(None),) * 3
    if config.brain_crop_margin is not None and mask.any():
        corners = np.argwhere(mask)
        start = np.maximum(corners.min(0) - config.brain_crop_margin, 0)
        stop = corners.max(0) + 1 + config.brain_crop_margin
        box = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    return (
        torch.from_numpy(np.ascontiguousarray(channels[(slice(None), *box)])),
        torch.from_numpy(np.ascontiguousarray(label_map[box])),
        torch.from_numpy(np.ascontiguousarray(mask[box])),
    )


def _sampler(
    config: TrainConfig,
    source: str,
    subjects: list[str],
    seed: int,
    target: torch.Tensor,
    generation: torch.Tensor | None,
    params: SynthesisParameters,
) -> Sampler:
    """A sampler of ``subjects`` from ``source`` (real images or the synthesiser)."""
    if source == "bids":
        pairs = [load_bids_pair(config, s) for s in subjects]
        return PairedAugmenter(
            pairs, target, config.sample_shape, params, seed, config.normalisation_shape
        )
    if source != "synthetic":
        raise ValueError(f"unknown source {source!r} (known: synthetic, bids)")
    folder = Path(config.label_maps)
    maps = [
        load_label_map(
            folder / f"training_seg_{s}.nii.gz", config.voxel_size_mm, config.brain_crop_margin
        )
        for s in subjects
    ]
    if config.task in LESION_TASKS:
        return LesionSynthesiser(
            maps, target, config.sample_shape, config.channels, config.task,
            config.voxel_size_mm, params, LesionParameters(**config.lesions), seed,
            config.normalisation_shape,
        )  # fmt: skip
    return LabelSynthesiser(maps, generation, target, config.sample_shape, params, seed)


def make_samplers(config: TrainConfig, target: torch.Tensor, generation: torch.Tensor | None):
    """The training and validation samplers of the config's data source (training mixes in
    simulated lesions when ``synthetic_share`` is set)."""
    params = SynthesisParameters(**config.synthesis)
    training, validation = (
        _sampler(config, config.source, subjects, seed, target, generation, params)
        for subjects, seed in (
            (config.train_subjects, config.seed),
            (config.validation_subjects, config.seed + 1),
        )
    )
    if config.synthetic_share:
        if config.source != "bids" or config.task not in LESION_TASKS:
            raise ValueError("synthetic_share mixes simulated lesions into a bids lesion source")
        if not 0 < config.synthetic_share <= 1:
            raise ValueError(f"synthetic_share {config.synthetic_share}: a share in (0, 1]")
        _, synthetic_target, _ = lookup_tables(config, "synthetic")
        synthetic = _sampler(
            config, "synthetic", config.synthetic_subjects, config.seed + 2,
            synthetic_target, None, params,
        )  # fmt: skip
        training = MixedSampler(
            [training, synthetic], [1 - config.synthetic_share, config.synthetic_share],
            config.seed,
        )  # fmt: skip
    return training, validation, params


def train(
    config: TrainConfig, output: Path, command: str = "", max_minutes: float | None = None
) -> Path:
    """Run (or resume) training and write the bundle into ``output/bundle``.

    ``max_minutes`` stops the run after the first iteration that ends past that wall-clock
    time (a GPU lease, a cluster job's limit): the checkpoint is saved, so running again
    resumes, and the bundle's card counts the iterations actually done.
    """
    if config.sample_workers < 0:
        raise ValueError(f"sample_workers {config.sample_workers}: 0 or more processes")
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    output.mkdir(parents=True, exist_ok=True)
    generation, target, names = lookup_tables(config)
    synthesiser, validation, params = make_samplers(config, target, generation)
    validation_set = [validation.sample() for _ in range(config.validation_samples)]

    architecture = {
        "name": "UNet3D",
        "args": {"in_channels": max(len(config.channels), 1), "out_channels": len(names),
                 "features": list(config.features),
                 "norm": config.norm, "residual": config.residual},
    }  # fmt: skip
    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    network = build_network(architecture)
    earlier_stages = []
    if config.init_from:
        pretrained_card, pretrained = load_bundle(config.init_from)
        earlier_stages = training_stages(pretrained_card.training)
        shapes = {name: tuple(t.shape) for name, t in network.state_dict().items()}
        if {name: tuple(t.shape) for name, t in pretrained.state_dict().items()} != shapes:
            raise ValueError(f"init_from {config.init_from}: not the architecture of this config")
        network.load_state_dict(pretrained.state_dict())
    network = network.to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.learning_rate)
    start = 0
    resumed = _load_checkpoint(output / "checkpoint", network, optimizer)
    if resumed:
        start, generator_state = resumed
        synthesiser.generator.set_state(generator_state)
    # polynomial decay, counted from the first iteration of the whole run (resumes included)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: max(0.0, 1 - (start + i) / max(config.iterations, 1)) ** 0.9
    )
    log = output / "log.tsv"
    if start == 0:
        log.write_text("iteration\tloss\tvalidation_dice\tseconds\n")
    best = {"validation_dice": None}
    regions = None
    if config.brats_region_loss or config.brats_region_decoding:
        regions = brats_region_classes(config, names)  # refuses other tasks before training
    dice_regions = regions if config.brats_region_loss else None
    tumor_classes = None
    if config.real_whole_tumor_only:
        if config.task != "tumor" or not config.synthetic_share:
            raise ValueError(
                "real_whole_tumor_only is for the tumor task with synthetic_share: the "
                "simulated samples are what teach the tumour's sub-regions"
            )
        tumor_classes = brats_region_classes(config, names)[0]
    if config.sample_workers:  # a resumed run's workers draw a new stream, seeded by `start`
        batches = worker_batches(
            synthesiser, config.batch_size, config.sample_workers, (config.seed, start),
            pin_memory=device == "cuda",
        )  # fmt: skip
    else:
        batches = inline_batches(synthesiser, config.batch_size)
    clock = time.perf_counter()
    iteration = start
    for iteration in range(start + 1, config.iterations + 1):
        network.train()
        images, targets, sources = next(batches)
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        # bfloat16 on a GPU: mixed precision without a gradient scaler
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            logits = network(images).float()
        whole_tumor_only = None
        if config.real_whole_tumor_only:  # real images are the MixedSampler's first source
            whole_tumor_only = torch.tensor([s == 0 for s in sources])
            whole_tumor_only = whole_tumor_only.to(device)
        loss = batch_loss(logits, targets, dice_regions, whole_tumor_only, tumor_classes)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        out_of_time = max_minutes is not None and time.perf_counter() - clock > max_minutes * 60
        last = iteration == config.iterations or out_of_time
        dice = ""
        if iteration % config.validation_every == 0 or last:
            dice = f"{validate(network, validation_set):.4f}"
            best["validation_dice"] = float(dice)
        with log.open("a") as handle:
            handle.write(
                f"{iteration}\t{loss.item():.4f}\t{dice}\t{time.perf_counter() - clock:.1f}\n"
            )
        if iteration % config.checkpoint_every == 0 or last:
            _save_checkpoint(
                output / "checkpoint",
                network,
                optimizer,
                iteration,
                synthesiser.generator.get_state(),
            )
        if iteration % 10 == 0 or last:
            print(
                f"\r[{iteration}/{config.iterations}] loss {loss.item():.4f} {dice}",
                end="",
                file=sys.stderr,
                flush=True,
            )
        if out_of_time:
            print(f"\nstopped after {max_minutes} min, at iteration {iteration}", file=sys.stderr)
            break
    print(file=sys.stderr)

    inputs = {
        "contrasts": [config.image_suffix] if config.source == "bids" else ["any"],
        "voxel_size_mm": config.voxel_size_mm,
        "orientation": "RAS",
        "normalisation": "clip to the 0.5-99.5 percentiles of non-zero voxels, rescale to [0, 1]",
        "window": list(config.sample_shape),
    }
    if config.channels:
        inputs["contrasts"] = list(config.channels)
        inputs["normalisation"] = (
            "z-score inside the brain mask, clipped to [-5, 5]; zero outside the mask and for "
            "a missing contrast"
        )
        inputs["needs_brain_mask"] = True
    if config.postprocessing:
        inputs["postprocessing"] = config.postprocessing
    if config.min_lesion_mm3:
        inputs["min_lesion_mm3"] = config.min_lesion_mm3
    if config.test_time_mirror_axes:
        inputs["test_time_mirror_axes"] = list(config.test_time_mirror_axes)
    if config.brats_region_decoding:
        inputs["nested_regions"] = [list(values) for values in TUMOR_REGIONS.values()]
    if config.brain_crop_margin is not None:
        inputs["brain_crop_margin_mm"] = config.brain_crop_margin * config.voxel_size_mm
    training = {
        "config": asdict(config),
        "command": command,
        "seed": config.seed,
        "data": (
            f"real images of {config.bids_dir} with the label maps of {config.labels_dir}, "
            "randomly deformed and corrupted"
            + (
                f"; {config.synthetic_share:.0%} of the samples simulated lesions in the label "
                f"maps {', '.join(config.synthetic_subjects)} of {config.label_maps}"
                + (
                    "; real samples scored on the whole tumour only"
                    if config.real_whole_tumor_only
                    else ""
                )
                if config.synthetic_share
                else ""
            )
            if config.source == "bids"
            else "synthetic images of random contrast from real label maps "
            f"({config.label_maps}), SynthSeg-style"
        ),
        "split": {
            "train": config.train_subjects,
            "validation": config.validation_subjects,
            "test": config.test_subjects,
        },
        "synthesis": params.to_dict(),
        **(
            {"lesion_simulator": LesionParameters(**config.lesions).to_dict()}
            if config.task in LESION_TASKS
            else {}
        ),
        "iterations_done": iteration,
    }
    if config.init_from:
        training["stages"] = [*earlier_stages, training_stages(training)[0]]
    card = ModelCard(
        name=config.name,
        version=config.version,
        task=config.task,
        architecture=architecture,
        inputs=inputs,
        outputs={"labels": {str(k): v for k, v in names.items()}},
        training=training,
        metrics={validation_metric_name(config): best["validation_dice"]},
    )
    return save_bundle(output / "bundle", card, network.cpu())


def validation_metric_name(config: TrainConfig) -> str:
    """The card's name for the validation Dice: what it was measured on, and a warning when
    the validation cases were also trained on (then it is no validation)."""
    kind = "synthetic" if config.source == "synthetic" else "real"
    if set(config.validation_subjects) & set(config.train_subjects):
        return f"dice_on_training_cases_{kind}"
    return f"validation_dice_{kind}"


def training_stages(training: dict) -> list[dict]:
    """A card's training as a list of stages (one per run, a fine-tuned model's earlier runs
    first), so that a model trained in steps says how it was made."""
    if "stages" in training:
        return list(training["stages"])
    config = training.get("config", {})
    return [{
        "command": training.get("command", ""),
        "iterations": training.get("iterations_done"),
        "seed": training.get("seed"),
        "init_from": config.get("init_from", ""),
        "data": training.get("data", ""),
    }]  # fmt: skip


@torch.no_grad()
def validate(network: torch.nn.Module, samples) -> float:
    """Mean foreground Dice over fixed synthetic validation samples."""
    network.eval()
    device = next(network.parameters()).device
    scores = []
    for image, target in samples:
        prediction = network(image[None].to(device)).argmax(1)[0].cpu()
        labels = [int(v) for v in torch.unique(target) if v > 0]
        scores.extend(
            dice((prediction == label).numpy(), (target == label).numpy()) for label in labels
        )
    return float(np.mean(scores)) if scores else 0.0
