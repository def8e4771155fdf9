"""``bids_dl-models`` (list, show, evaluate and ensemble bundles) and ``bids_dl-train``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


def _fail(message: str) -> None:
    click.echo(f"bids_dl-models: error: {message}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def models_main() -> None:
    """Manage deep-learning model bundles (weights + model card)."""


@models_main.command("list")
def list_bundles() -> None:
    """The bundles shipped with bids_dl."""
    from bids_dl.models.registry import describe, shipped_bundles

    bundles = shipped_bundles()
    if not bundles:
        click.echo("no bundles are shipped yet")
    for folder in bundles.values():
        click.echo(describe(folder))


@models_main.command("show")
@click.argument("bundle")
def show(bundle: str) -> None:
    """Print the model card of BUNDLE (a shipped name or a folder)."""
    from bids_dl.models.card import CARD, BundleError, load_card
    from bids_dl.models.registry import find_bundle

    try:
        folder = find_bundle(bundle)
        load_card(folder)
    except BundleError as error:
        _fail(str(error))
    click.echo((folder / CARD).read_text(encoding="utf-8"))


@models_main.command("evaluate")
@click.argument("bundle")
@click.option(
    "--image",
    "images",
    multiple=True,
    required=True,
    help="image of one case; for a model with several contrasts, one file per contrast of its "
    "card, comma-separated, with 'none' for a missing one (FLAIR.nii.gz,T1ce.nii.gz,none,none)",
)
@click.option(
    "--reference",
    "references",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="labels on the grid of the matching --image",
)
@click.option(
    "--mask",
    "masks",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="brain mask of the matching --image, to place a brain-centred model's window "
    "(structures); without it the model runs over the whole field of view",
)
@click.option(
    "--out", "output_dir", type=click.Path(file_okay=False, path_type=Path), required=True
)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
def evaluate_command(bundle, images, references, masks, output_dir, device) -> None:
    """Run BUNDLE on each --image and score it against its --reference (same order)."""
    from bids_dl.models.bundle import load_bundle
    from bids_dl.models.card import BundleError
    from bids_dl.models.evaluate import Case, evaluate
    from bids_dl.models.registry import find_bundle

    if len(images) != len(references):
        _fail(f"{len(images)} --image but {len(references)} --reference: give them in pairs")
    if masks and len(masks) != len(images):
        _fail(f"{len(images)} --image but {len(masks)} --mask: give one mask per image or none")
    try:
        card, network = load_bundle(find_bundle(bundle))
        cases = [
            Case(_case_name(i), _case_images(i), r, masks[n] if masks else None)
            for n, (i, r) in enumerate(zip(images, references, strict=True))
        ]
        summary = evaluate(card, network, cases, output_dir, device)
    except (BundleError, ValueError) as error:
        _fail(str(error))
    click.echo(json.dumps(summary, indent=2))
    click.echo(f"per-case metrics: {output_dir / 'metrics.tsv'}")


@models_main.command("ensemble")
@click.argument("output", type=click.Path(file_okay=False, path_type=Path))
@click.argument("members", nargs=-1, required=True)
@click.option("--version", required=True, help="the ensemble's version, for its card")
@click.option(
    "--cpu-bfloat16/--cpu-float32",
    default=True,
    show_default=True,
    help="run in bfloat16 on CPUs with bfloat16 instructions (~3x faster there; probabilities "
    "within rounding of float32)",
)
def ensemble_command(
    output: Path, members: tuple[str, ...], version: str, cpu_bfloat16: bool
) -> None:
    """Write OUTPUT: one bundle averaging the probabilities of the MEMBERS bundles (shipped
    names or folders; same architecture, task, labels and inputs)."""
    from bids_dl.models.bundle import ensemble_bundles
    from bids_dl.models.card import BundleError
    from bids_dl.models.registry import find_bundle

    try:
        ensemble_bundles([find_bundle(m) for m in members], output, version, cpu_bfloat16)
    except BundleError as error:
        _fail(str(error))
    click.echo(f"ensemble of {len(members)} bundles written to {output}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("output", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--max-minutes",
    type=click.FloatRange(min=0, min_open=True),
    help="stop (checkpoint and bundle written) once this much wall-clock time has passed; "
    "running the command again resumes",
)
def train_main(config: Path, output: Path, max_minutes: float | None) -> None:
    """Train a model from CONFIG (JSON); resume from OUTPUT/checkpoint when present."""
    command = " ".join(["bids_dl-train", *sys.argv[1:]])
    try:
        task = json.loads(config.read_text(encoding="utf-8")).get("task")
        if task == "dti":
            bundle = _train_tensor_network(config, output, command)
        elif task == "asl":
            bundle = _train_asl_network(config, output, command, max_minutes)
        elif task == "pet":
            bundle = _train_pet_imputation(config, output, command, max_minutes)
        else:
            bundle = _train_segmentation(config, output, command, max_minutes)
    except (ValueError, FileNotFoundError) as error:  # data that cannot be used: say why
        _fail(f"{config}: {error}")
    click.echo(f"bundle written to {bundle}")


def _train_segmentation(
    config: Path, output: Path, command: str, max_minutes: float | None
) -> Path:
    from bids_dl.models.train import train
    from bids_dl.models.train_config import TrainConfig

    try:
        settings = TrainConfig.from_file(config)
    except (TypeError, ValueError) as error:
        _fail(f"{config}: {error}")
    return train(settings, output, command=command, max_minutes=max_minutes)


def _train_tensor_network(config: Path, output: Path, command: str) -> Path:
    from bids_dl.models.tensor_training import TensorTrainingConfig, train_tensor_network

    try:
        settings = TensorTrainingConfig.from_file(config)
    except TypeError as error:
        _fail(f"{config}: {error}")
    return train_tensor_network(settings, output, command=command)


def _train_asl_network(config: Path, output: Path, command: str, max_minutes: float | None) -> Path:
    from bids_dl.models.asl_training import AslTrainingConfig, train_asl_network

    try:
        settings = AslTrainingConfig.from_file(config)
    except TypeError as error:
        _fail(f"{config}: {error}")
    return train_asl_network(settings, output, command=command, max_minutes=max_minutes)


def _train_pet_imputation(
    config: Path, output: Path, command: str, max_minutes: float | None
) -> Path:
    from bids_dl.models.pet_training import PetTrainingConfig, train_pet_imputation

    try:
        settings = PetTrainingConfig.from_file(config)
    except TypeError as error:
        _fail(f"{config}: {error}")
    return train_pet_imputation(settings, output, command=command, max_minutes=max_minutes)


def _case_images(argument: str) -> Path | tuple[Path | None, ...]:
    """One ``--image`` value: a path, or comma-separated paths with ``none`` for a missing one."""
    paths = tuple(None if p == "none" else Path(p) for p in argument.split(","))
    missing = [str(p) for p in paths if p is not None and not p.is_file()]
    if missing or all(p is None for p in paths):
        raise ValueError(f"--image {argument}: no such file {', '.join(missing) or '(all none)'}")
    return paths if len(paths) > 1 else paths[0]


def _case_name(argument: str) -> str:
    first = next(p for p in argument.split(",") if p != "none")
    return Path(first).name.split(".")[0]
