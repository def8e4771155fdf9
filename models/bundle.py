"""Model bundles: a folder with ``weights.safetensors`` and the ``model.json`` card.

Loading never runs code: weights are safetensors only (a pickle is refused), and the card is
checked against the weights before the network is built.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from bids_dl.models.card import (
    CARD,
    WEIGHTS,
    BundleError,
    ModelCard,
    load_card,
    weights_sha256,
    write_card,
)
from bids_dl.models.networks import PerfusionNet, TensorNet, UNet3D, UNet3DEnsemble

ARCHITECTURES = {
    "UNet3D": UNet3D,
    "UNet3DEnsemble": UNet3DEnsemble,
    "TensorNet": TensorNet,
    "PerfusionNet": PerfusionNet,
}
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")


def build_network(architecture: dict) -> torch.nn.Module:
    """Instantiate the network a card describes (``{"name": ..., "args": {...}}``)."""
    name = architecture.get("name")
    if name not in ARCHITECTURES:
        raise BundleError(f"unknown architecture {name!r} (known: {sorted(ARCHITECTURES)})")
    args = dict(architecture.get("args", {}))
    if isinstance(args.get("features"), list):
        args["features"] = tuple(args["features"])
    return ARCHITECTURES[name](**args)


def save_bundle(
    folder: str | os.PathLike,
    card: ModelCard,
    network: torch.nn.Module,
    weights_dtype: torch.dtype | None = None,
) -> Path:
    """Write weights then card (each atomically) into ``folder``; floating-point weights are
    stored as ``weights_dtype`` when given (loading casts them back to the network's)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    if weights_dtype is not None:
        state = {k: v.to(weights_dtype) if v.is_floating_point() else v for k, v in state.items()}
    fd, tmp = tempfile.mkstemp(prefix=".weights.", suffix=".safetensors", dir=folder)
    os.close(fd)
    save_file(state, tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, folder / WEIGHTS)
    write_card(folder, card)
    return folder


def load_bundle(folder: str | os.PathLike) -> tuple[ModelCard, torch.nn.Module]:
    """Load a bundle: check the card, refuse pickles, build the network, load the weights.

    The card must match the weights: same parameter names and shapes, and as many output
    channels as the card names (labels, or regressed channels).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"{folder}: a model bundle is a folder with {WEIGHTS} and {CARD}")
    pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if not (folder / WEIGHTS).is_file():
        hint = f" (found {', '.join(pickles)}: pickled weights are refused)" if pickles else ""
        raise BundleError(f"{folder}: no {WEIGHTS}{hint}")
    card = load_card(folder)
    network = build_network(card.architecture)
    try:
        state = load_file(str(folder / WEIGHTS))
    except Exception as error:  # safetensors raises its own error types
        raise BundleError(f"{folder / WEIGHTS}: not a safetensors file ({error})") from error
    expected = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        differing = sorted(set(expected.items()) ^ set(found.items()))[:3]
        raise BundleError(f"{folder}: the weights do not match the card's architecture {differing}")
    out_channels = card.architecture.get("args", {}).get("out_channels")
    if out_channels != card.output_channels:
        raise BundleError(
            f"{folder}: {out_channels} output channels but the card names {card.output_channels}"
        )
    network.load_state_dict(state)
    network.eval()
    return card, network


def ensemble_bundles(
    bundles: list[str | os.PathLike],
    folder: str | os.PathLike,
    version: str,
    cpu_bfloat16: bool = True,
) -> Path:
    """Write one bundle whose network averages the probabilities of ``bundles`` (U-Nets of one
    architecture trained for the same task, e.g. with other seeds or folds).

    The card is the first member's, with the ensemble's architecture, ``version``, and under
    ``training.members`` each member's name, version, weights SHA-256 and training record;
    the members' metrics are not the ensemble's, so ``metrics`` starts empty. Weights are
    stored as float16 (half the size; each weight within 0.05 % of its float32 value). An
    ensemble costs a network pass per member, so by default it runs in bfloat16 on CPUs that
    have bfloat16 instructions (``inputs.cpu_bfloat16``; ~3x faster there).
    """
    if len(bundles) < 2:
        raise BundleError("an ensemble needs at least two bundles")
    loaded = [load_bundle(b) for b in bundles]
    first = loaded[0][0]
    for path, (card, _) in zip(bundles, loaded, strict=True):
        if card.architecture != first.architecture or card.architecture["name"] != "UNet3D":
            raise BundleError(f"{path}: members must all be UNet3D with the same arguments")
        differing = sorted(
            key
            for key in set(card.inputs) | set(first.inputs)
            if card.inputs.get(key) != first.inputs.get(key)
        )
        if differing or card.labels != first.labels or card.task != first.task:
            raise BundleError(
                f"{path}: task, labels and inputs must match the first member's "
                f"(differing inputs: {', '.join(differing) or 'none'})"
            )
    architecture = {
        "name": "UNet3DEnsemble",
        "args": {**first.architecture["args"], "members": len(loaded)},
    }
    network = build_network(architecture)
    for member, (_, trained) in zip(network.members, loaded, strict=True):
        member.load_state_dict(trained.state_dict())
    members = [
        {
            "name": card.name,
            "version": card.version,
            "weights_sha256": weights_sha256(path),
            "training": card.training,
        }
        for path, (card, _) in zip(bundles, loaded, strict=True)
    ]
    card = ModelCard(
        name=first.name,
        version=version,
        task=first.task,
        architecture=architecture,
        inputs={**first.inputs, "cpu_bfloat16": cpu_bfloat16},
        outputs=first.outputs,
        training={
            "ensemble": "mean of the members' softmax probabilities",
            "weights_stored_as": "float16",
            "members": members,
        },
    )
    return save_bundle(folder, card, network, weights_dtype=torch.float16)
