"""The model card of a trained network: what its inputs must be, how it was trained (config,
data, split, every stage of a fine-tuned model) and its validation Dice."""

from __future__ import annotations

from dataclasses import asdict

from bids_dl.models.card import ModelCard
from bids_dl.models.labels import TUMOR_REGIONS
from bids_dl.models.lesion_simulation import LesionParameters
from bids_dl.models.synthesis import SynthesisParameters
from bids_dl.models.train_config import LESION_TASKS, TrainConfig


def training_card(
    config: TrainConfig,
    names: dict[int, str],
    params: SynthesisParameters,
    iterations_done: int,
    validation_dice: float | None,
    command: str = "",
    earlier_stages: list[dict] | None = None,
) -> ModelCard:
    """The card of a network trained by ``config`` for ``iterations_done`` iterations.

    ``names`` are the output labels, ``params`` the synthesis ranges drawn from,
    ``earlier_stages`` the stages of the bundle it was fine-tuned from (``init_from``).
    """
    training = {
        "config": asdict(config),
        "command": command,
        "seed": config.seed,
        "data": data_description(config),
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
        "iterations_done": iterations_done,
    }
    if config.init_from:
        training["stages"] = [*(earlier_stages or []), training_stages(training)[0]]
    return ModelCard(
        name=config.name,
        version=config.version,
        task=config.task,
        architecture=config.architecture(len(names)),
        inputs=card_inputs(config),
        outputs={"labels": {str(k): v for k, v in names.items()}},
        training=training,
        metrics={validation_metric_name(config): validation_dice},
    )


def card_inputs(config: TrainConfig) -> dict:
    """The card's ``inputs``: what inference must feed the network and do with its labels."""
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
    optional = {
        "postprocessing": config.postprocessing,
        "min_lesion_mm3": config.min_lesion_mm3,
        "test_time_mirror_axes": list(config.test_time_mirror_axes),
        "nested_regions": [list(values) for values in TUMOR_REGIONS.values()]
        if config.brats_region_decoding
        else None,
    }
    inputs.update({key: value for key, value in optional.items() if value})
    if config.brain_crop_margin is not None:
        inputs["brain_crop_margin_mm"] = config.brain_crop_margin * config.voxel_size_mm
    return inputs


def data_description(config: TrainConfig) -> str:
    """What the network was trained on, in words."""
    if config.source != "bids":
        return (
            "synthetic images of random contrast from real label maps "
            f"({config.label_maps}), SynthSeg-style"
        )
    description = (
        f"real images of {config.bids_dir} with the label maps of {config.labels_dir}, "
        "randomly deformed and corrupted"
    )
    if config.synthetic_share:
        description += (
            f"; {config.synthetic_share:.0%} of the samples simulated lesions in the label "
            f"maps {', '.join(config.synthetic_subjects)} of {config.label_maps}"
        )
        if config.real_whole_tumor_only:
            description += "; real samples scored on the whole tumour only"
    return description


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
