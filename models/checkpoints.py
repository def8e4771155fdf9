"""Training checkpoints: network, optimiser state and the sampler's generator state, in
safetensors (no pickle), so that a stopped run resumes where it was."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def save_checkpoint(
    folder: Path,
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    iteration: int,
    generator_state: torch.Tensor,
) -> None:
    """Save the run's state after ``iteration`` into ``folder`` (the state file atomically,
    then the progress that points at it)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).cpu().contiguous()
    tensors["generator_state"] = generator_state.clone()
    save_file(tensors, str(folder / "state.tmp.safetensors"))
    os.replace(folder / "state.tmp.safetensors", folder / "state.safetensors")
    (folder / "progress.json").write_text(json.dumps({"iteration": iteration}))


def load_checkpoint(
    folder: Path, network: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[int, torch.Tensor] | None:
    """Load a saved state into ``network`` and ``optimizer``; the iteration it was saved after
    and the sampler's generator state, or None when there is no checkpoint."""
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
