"""The data a training run draws from: label maps and BIDS image/label pairs on the working
grid, the label-value lookup tables of each task, and the samplers built from them."""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
import torch

from bids_dl.models.geometry import model_grid, resample
from bids_dl.models.labels import (
    BRAIN_LABEL_RANGE,
    LESION_VALUES,
    STRUCTURES,
    TUMOR_LABELS,
    TUMOR_REGIONS,
)
from bids_dl.models.lesion_simulation import LesionParameters, LesionSynthesiser
from bids_dl.models.samplers import MixedSampler, Sampler
from bids_dl.models.synthesis import LabelSynthesiser, PairedAugmenter, SynthesisParameters
from bids_dl.models.train_config import LESION_TASKS, TASKS, TrainConfig


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
        labels = labels[_box((labels >= low) & (labels <= high), brain_crop_margin)]
    return torch.from_numpy(np.ascontiguousarray(labels))


def _box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The bounding box of a (non-empty) mask plus ``margin`` voxels, clipped at the start."""
    corners = np.argwhere(mask)
    start = np.maximum(corners.min(0) - margin, 0)
    stop = corners.max(0) + 1 + margin
    return tuple(slice(a, b) for a, b in zip(start, stop, strict=True))


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


def brats_region_classes(config: TrainConfig, names: dict[int, str]) -> list[list[int]]:
    """The BraTS regions as lists of class indices (tumour task)."""
    if config.task != "tumor":
        raise ValueError(f"BraTS regions are for the tumor task, not {config.task!r}")
    values = sorted(names)
    return [[values.index(v) for v in members] for members in TUMOR_REGIONS.values()]


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
        box = _box(mask, config.brain_crop_margin)
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
        return PairedAugmenter(pairs, target, config.sample_shape, params, seed)
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
