"""Which torch device a model runs on."""

from __future__ import annotations

import torch


def resolve_device(device: str) -> str:
    """``auto`` is CUDA when torch sees a GPU, else the CPU; any other name stays as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
