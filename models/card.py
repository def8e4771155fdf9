"""The model card (``model.json``) of a bundle: what a model is and expects, read without torch.

A workflow or a command that only reads a card (its task, inputs, identity) imports this
module, not the weights' loader, so that torch stays out of processes that do not run a model.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

CARD_VERSION = 1
WEIGHTS = "weights.safetensors"
CARD = "model.json"
REQUIRED_CARD_KEYS = (
    "card_version",
    "name",
    "version",
    "task",
    "architecture",
    "inputs",
    "outputs",
)


class BundleError(ValueError):
    """A bundle that cannot be used, with the reason."""


@dataclass
class ModelCard:
    """What a model is, what it expects, how it was made and how well it did.

    ``inputs``: contrasts, voxel_size_mm, orientation, normalisation, window (voxels); optional
    postprocessing, min_lesion_mm3, test_time_mirror_axes (axes of the RAS model grid),
    cpu_bfloat16 (bfloat16 on CPUs that have it, as measured for the card's numbers).
    ``outputs``: labels as {index: name} for a segmentation, or ``channels`` (a list of names)
    for a network that regresses maps.
    """

    name: str
    version: str
    task: str
    architecture: dict
    inputs: dict
    outputs: dict
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    card_version: int = CARD_VERSION

    @property
    def labels(self) -> dict[int, str]:
        return {int(k): v for k, v in self.outputs.get("labels", {}).items()}

    @property
    def output_channels(self) -> int:
        """How many channels the network returns: one per label, or per named channel."""
        return len(self.outputs["channels"]) if "channels" in self.outputs else len(self.labels)


def write_card(folder: Path, card: ModelCard) -> None:
    """Write ``model.json`` into ``folder`` atomically (a reader never sees half a card)."""
    card_text = json.dumps(asdict(card), indent=2, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".model.", suffix=".json", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(card_text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, folder / CARD)


def weights_sha256(folder: str | os.PathLike) -> str:
    """SHA-256 of the weights file: what a derivative's sidecar records."""
    return hashlib.sha256((Path(folder) / WEIGHTS).read_bytes()).hexdigest()


def load_card(folder: str | os.PathLike) -> ModelCard:
    """Read and check ``model.json``."""
    path = Path(folder) / CARD
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise BundleError(f"{path}: cannot read the model card ({error})") from error
    missing = [key for key in REQUIRED_CARD_KEYS if key not in content]
    if missing:
        raise BundleError(f"{path}: the card lacks {', '.join(missing)}")
    if content["card_version"] != CARD_VERSION:
        raise BundleError(
            f"{path}: card version {content['card_version']}, this bids_dl reads {CARD_VERSION}"
        )
    if not {"labels", "channels"} & set(content["outputs"]):
        raise BundleError(f"{path}: the card's outputs name no labels and no channels")
    mirror_axes = content["inputs"].get("test_time_mirror_axes", [])
    if not isinstance(mirror_axes, list) or not set(mirror_axes) <= {0, 1, 2}:
        raise BundleError(
            f"{path}: inputs.test_time_mirror_axes must be a list of axes among 0, 1 and 2, "
            f"not {mirror_axes!r}"
        )
    return ModelCard(**content)
