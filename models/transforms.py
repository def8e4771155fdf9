"""Deterministic image transforms shared by training and inference: intensity normalisation,
Gaussian blur.

Inference normalises with the same functions that training samples went through, so that a
model sees the intensity scale it learnt on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def normalise_intensities(
    image: torch.Tensor, low: float = 0.5, high: float = 99.5
) -> torch.Tensor:
    """Clip to the [low, high] percentiles of the non-zero voxels and rescale to [0, 1]."""
    values = image[image > 0]
    if values.numel() < 10:
        return torch.zeros_like(image)
    if values.numel() > 1_000_000:  # quantile() refuses huge inputs; a strided subset is enough
        values = values[:: values.numel() // 1_000_000 + 1]
    lo, hi = torch.quantile(values.float(), torch.tensor([low / 100, high / 100]))
    return ((image - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)


def normalise_in_mask(image: torch.Tensor, mask: torch.Tensor, clip: float = 5.0) -> torch.Tensor:
    """z-score inside ``mask`` (clipped to +-``clip``), zero outside: the normalisation of
    the lesion models, as nnU-Net and the BraTS data do.

    Unlike percentile clipping, it keeps a small hyperintense lesion brighter than white
    matter; skull-stripped z-scored images (BraTS) and raw scans with a brain mask end up alike.
    """
    values = image[mask].float()
    if values.numel() < 10:
        return torch.zeros_like(image)
    scaled = ((image - values.mean()) / values.std().clamp_min(1e-6)).clamp(-clip, clip)
    return torch.where(mask, scaled, torch.zeros_like(scaled))


def rescale_in_mask(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Min-max to [0, 1] inside ``mask``, zero outside: non-negative input for the acquisition
    artefacts (real images may be z-scores) that keeps every hyperintensity."""
    values = image[mask]
    if values.numel() == 0:
        return torch.zeros_like(image)
    scaled = (image - values.min()) / (values.max() - values.min()).clamp_min(1e-6)
    return torch.where(mask, scaled, torch.zeros_like(scaled))


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    """A normalised 1D Gaussian, 2.5 sigma each side."""
    radius = max(1, int(math.ceil(2.5 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def blur_axis(image: torch.Tensor, axis: int, sigma: float) -> torch.Tensor:
    """Gaussian blur of a 3D volume along one axis (sigma in voxels, at least 0.1)."""
    kernel = _gaussian_kernel(max(sigma, 0.1))
    shape = [1, 1, 1, 1, 1]
    shape[2 + axis] = kernel.numel()
    padding = [0, 0, 0]
    padding[axis] = kernel.numel() // 2
    return F.conv3d(image[None, None], kernel.view(shape), padding=tuple(padding))[0, 0]


def blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (sigma in voxels); no-op under 0.1 voxel."""
    if sigma < 0.1:
        return image
    for axis in range(3):
        image = blur_axis(image, axis, sigma)
    return image
