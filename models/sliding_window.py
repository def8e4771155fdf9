"""Sliding-window inference: overlapping windows blended with Gaussian weights, test-time
mirroring, and mixed precision where it is fast.

A network sees windows of the size it was trained on; overlapping predictions are blended
so that window edges, where a network sees least context, weigh least.
"""

from __future__ import annotations

import functools
import itertools
import math
from pathlib import Path

import torch


def _gaussian_weights(window: tuple[int, ...]) -> torch.Tensor:
    """Importance of each voxel of a window: highest at its centre, for blending overlaps."""
    axes = [torch.exp(-0.5 * ((torch.arange(n) - (n - 1) / 2) / (n / 8)) ** 2) for n in window]
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return (weights / weights.max()).clamp_min(1e-3)


def _window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start of each window along one axis: ``overlap`` apart at most, the last one flush with
    the end."""
    if size <= window:
        return [0]
    step = max(1, int(window * (1 - overlap)))
    count = math.ceil((size - window) / step) + 1
    return sorted({min(i * step, size - window) for i in range(count)})


@functools.cache
def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX-BF16: recent Xeon and
    EPYC), where oneDNN runs bfloat16 convolutions ~3x faster than float32; elsewhere bfloat16
    is emulated and slower, so float32 is kept. Read from /proc/cpuinfo (Linux)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _autocast(device: str, cpu_bfloat16: bool) -> torch.autocast:
    """Mixed precision: always on CUDA; on a CPU only when the card asks for it
    (``inputs.cpu_bfloat16``) and the CPU has bfloat16 instructions."""
    if device == "cuda":
        return torch.autocast(device_type="cuda")
    enabled = cpu_bfloat16 and cpu_has_native_bfloat16()
    return torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def predict_probabilities(
    network: torch.nn.Module,
    volume: torch.Tensor,
    n_classes: int,
    window: tuple[int, int, int] | None,
    overlap: float = 0.5,
    device: str = "cpu",
    mirror_axes: tuple[int, ...] = (),
    cpu_bfloat16: bool = False,
) -> torch.Tensor:
    """Softmax probabilities ``[C, D, H, W]`` of normalised input channels ``[channels, D, H, W]``.

    With a ``window``, overlapping windows are blended with Gaussian weights; without, the
    whole volume goes through the network at once. With ``mirror_axes`` (axes of the volume),
    the probabilities are averaged over every combination of mirroring along them (test-time
    augmentation as in nnU-Net: 2^k passes for k axes). ``cpu_bfloat16``: see ``_autocast``.
    """
    passes = [
        [axis + 1 for axis in axes]
        for count in range(len(mirror_axes) + 1)
        for axes in itertools.combinations(mirror_axes, count)
    ]
    total = None
    for dims in passes:
        mirrored = volume.flip(dims) if dims else volume
        probabilities = _predict_volume(
            network, mirrored, n_classes, window, overlap, device, cpu_bfloat16
        )
        probabilities = probabilities.flip(dims) if dims else probabilities
        total = probabilities if total is None else total + probabilities
    return total / len(passes)


def _predict_volume(
    network: torch.nn.Module,
    volume: torch.Tensor,
    n_classes: int,
    window: tuple[int, int, int] | None,
    overlap: float,
    device: str,
    cpu_bfloat16: bool,
) -> torch.Tensor:
    """Probabilities of one pass over the volume: whole, or in blended windows."""
    shape = tuple(volume.shape[1:])
    if window is None or all(s <= w for s, w in zip(shape, window, strict=True)):
        return _probabilities(network, volume, device, cpu_bfloat16)
    window = tuple(min(w, s) for w, s in zip(window, shape, strict=True))
    weights = _gaussian_weights(window)
    total = torch.zeros((n_classes, *shape))
    norm = torch.zeros(shape)
    starts = [_window_starts(s, w, overlap) for s, w in zip(shape, window, strict=True)]
    for z in starts[0]:
        for y in starts[1]:
            for x in starts[2]:
                region = (slice(z, z + window[0]), slice(y, y + window[1]), slice(x, x + window[2]))
                probabilities = _probabilities(
                    network, volume[(slice(None), *region)], device, cpu_bfloat16
                )
                total[(slice(None), *region)] += probabilities * weights
                norm[region] += weights
    return total / norm


def _probabilities(
    network: torch.nn.Module, volume: torch.Tensor, device: str, cpu_bfloat16: bool
) -> torch.Tensor:
    """Softmax probabilities of one network pass over ``volume`` (channels first), on the CPU."""
    with _autocast(device, cpu_bfloat16):
        logits = network(volume[None].to(device))
    return torch.softmax(logits.float(), dim=1)[0].cpu()
