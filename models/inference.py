"""Run a bundle on a NIfTI image: conform to the model grid, predict, map back to the native grid.

The model grid is axis-aligned in RAS at the card's voxel size and covers the whole input
field of view, so oblique and anisotropic inputs work the same way. Probabilities, not labels,
are resampled back to the native grid (one class at a time, to keep memory low), and the labels
are their argmax there.
"""

from __future__ import annotations

import math

import nibabel as nb
import numpy as np
import torch
from scipy import ndimage

from bids_dl.models.bundle import ModelCard
from bids_dl.models.synthesis import normalise_intensities


def model_grid(
    image: nb.Nifti1Image, voxel_mm: float, divisor: int
) -> tuple[tuple[int, ...], np.ndarray]:
    """RAS grid at ``voxel_mm`` covering the image, each size a multiple of ``divisor``."""
    corners = (
        np.array(np.meshgrid(*[[0, n - 1] for n in image.shape[:3]], indexing="ij"))
        .reshape(3, -1)
        .T
    )
    world = nb.affines.apply_affine(image.affine, corners)
    low, high = world.min(0), world.max(0)
    shape = np.ceil((high - low) / voxel_mm).astype(int) + 1
    shape = (np.ceil(shape / divisor) * divisor).astype(int)
    centre = (low + high) / 2
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = centre - (shape - 1) * voxel_mm / 2
    return tuple(int(s) for s in shape), affine


def resample(
    data: np.ndarray,
    source_affine: np.ndarray,
    target_shape,
    target_affine: np.ndarray,
    order: int = 1,
) -> np.ndarray:
    """Resample ``data`` (on ``source_affine``) onto a target grid, zeros outside."""
    voxel_map = np.linalg.inv(source_affine) @ target_affine
    return ndimage.affine_transform(
        data,
        voxel_map[:3, :3],
        voxel_map[:3, 3],
        output_shape=tuple(target_shape),
        order=order,
        cval=0.0,
    )


def _gaussian_weights(window: tuple[int, ...]) -> torch.Tensor:
    """Importance of each voxel of a window: highest at its centre, for blending overlaps."""
    axes = [torch.exp(-0.5 * ((torch.arange(n) - (n - 1) / 2) / (n / 8)) ** 2) for n in window]
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return (weights / weights.max()).clamp_min(1e-3)


def _window_starts(size: int, window: int, overlap: float) -> list[int]:
    if size <= window:
        return [0]
    step = max(1, int(window * (1 - overlap)))
    count = math.ceil((size - window) / step) + 1
    return sorted({min(i * step, size - window) for i in range(count)})


@torch.no_grad()
def predict_probabilities(
    network: torch.nn.Module,
    volume: torch.Tensor,
    n_classes: int,
    window: tuple[int, int, int] | None,
    overlap: float = 0.5,
    device: str = "cpu",
) -> torch.Tensor:
    """Softmax probabilities ``[C, D, H, W]`` of a normalised volume ``[D, H, W]``.

    With a ``window``, overlapping windows are blended with Gaussian weights; without, the
    whole volume goes through the network at once.
    """
    use_amp = device == "cuda"
    if window is None or all(s <= w for s, w in zip(volume.shape, window, strict=True)):
        with torch.autocast(device_type="cuda", enabled=use_amp):
            logits = network(volume[None, None].to(device))
        return torch.softmax(logits.float(), dim=1)[0].cpu()
    window = tuple(min(w, s) for w, s in zip(window, volume.shape, strict=True))
    weights = _gaussian_weights(window)
    total = torch.zeros((n_classes, *volume.shape))
    norm = torch.zeros(volume.shape)
    starts = [_window_starts(s, w, overlap) for s, w in zip(volume.shape, window, strict=True)]
    for z in starts[0]:
        for y in starts[1]:
            for x in starts[2]:
                region = (slice(z, z + window[0]), slice(y, y + window[1]), slice(x, x + window[2]))
                with torch.autocast(device_type="cuda", enabled=use_amp):
                    logits = network(volume[region][None, None].to(device))
                probabilities = torch.softmax(logits.float(), dim=1)[0].cpu()
                total[(slice(None), *region)] += probabilities * weights
                norm[region] += weights
    return total / norm


def segment(
    image: nb.Nifti1Image,
    card: ModelCard,
    network: torch.nn.Module,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and per-class probabilities of ``image``, both on the image's own grid.

    Returns ``labels`` (uint8/uint16, label values of the card) and ``probabilities`` (float32,
    ``[C, *image.shape]``, in the card's label order).
    """
    voxel_mm = float(card.inputs["voxel_size_mm"])
    divisor = getattr(network, "divisor", 1)
    shape, affine = model_grid(image, voxel_mm, divisor)
    data = np.nan_to_num(image.get_fdata(dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    on_grid = resample(data, image.affine, shape, affine, order=1)
    volume = normalise_intensities(torch.from_numpy(on_grid.astype(np.float32)))
    window = card.inputs.get("window")
    labels = sorted(card.labels)
    network = network.to(device)
    probabilities = predict_probabilities(
        network, volume, len(labels), tuple(window) if window else None, device=device
    ).numpy()
    native = np.zeros((len(labels), *image.shape[:3]), dtype=np.float32)
    for index in range(len(labels)):
        native[index] = resample(
            probabilities[index], affine, image.shape[:3], image.affine, order=1
        )
    native[0][native.sum(0) < 1e-3] = 1.0  # outside the model grid: background
    native /= native.sum(0, keepdims=True)
    dtype = np.uint8 if max(labels) < 256 else np.uint16
    return np.asarray(labels, dtype=dtype)[native.argmax(0)], native
