"""What the ASL enhancement network reads, and running it on a label/control series.

The network sees the normalised difference ``dm = (control - label) / M0`` of one pair (or the
mean of the first k pairs) and predicts the dm that averaging every repetition would give. Its
input is 2.5D: for each slice, the dm of that slice and of its two neighbours, the dm smoothed
in 3D inside the brain at two scales (Gaussian sigma 2 and 8 voxels in-plane, 0.5 and 2
through the slices: the context of distant slices a 2D network would not see), the M0 over its
median in the brain (the structural input: a proton-density image; no T1w is used), the mean
signal over the noise, 1/sqrt(k) and the brain mask. The network returns the finer smoothed dm
plus a learned correction. dm is divided by its noise sd estimated
from the input itself (the scale) before, and the output multiplied by it after, so the network
works in units of the input's own noise whatever the labelling, delay, background suppression
or number of pairs. Everything is zero outside the mask.

CBF follows downstream: the single-delay quantification (``asl_kinetics.cbf_from_difference``)
is linear in dm.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from bids_dl.models.asl_kinetics import label_control_pairs

#: channels: dm of slices z-1, z, z+1; dm smoothed finely and coarsely; M0 contrast; mean
#: signal / noise; 1/sqrt(k); mask
INPUT_CHANNELS = 9
#: the input channel the network adds its correction to (the finely smoothed dm)
RESIDUAL_CHANNEL = 3
#: Gaussian sigmas (voxels: in-plane, in-plane, through the slices) of the smoothed channels
SMOOTHING_SIGMAS = ((2.0, 2.0, 0.5), (8.0, 8.0, 2.0))
#: M0 below this share of its brain median is treated as no signal (dm set to 0)
MIN_M0_SHARE = 0.05
#: the scale is at least this share of dm's root mean square in the brain
MIN_SCALE_SHARE = 0.02
#: the mean signal over noise channel is clipped to this range, then divided by 10
SIGNAL_TO_NOISE_RANGE = (-5.0, 50.0)
#: the M0 contrast channel is clipped to this range
M0_CONTRAST_RANGE = (0.0, 5.0)


def normalised_differences(
    series: np.ndarray, pairs: list[tuple[int, int]], m0: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """``(control - label) / M0`` (X, Y, Z, len(pairs)) float32 of the given pairs, zero
    outside ``mask`` and where M0 is below ``MIN_M0_SHARE`` of its brain median."""
    m0 = np.asarray(m0, dtype=np.float32)
    reference = float(np.median(m0[mask])) if mask.any() else 1.0
    usable = mask & (m0 > MIN_M0_SHARE * max(reference, 1e-12))
    out = np.zeros((*mask.shape, len(pairs)), dtype=np.float32)
    for index, (label, control) in enumerate(pairs):
        difference = series[..., control] - (0.0 if label == control else series[..., label])
        out[usable, index] = difference[usable] / m0[usable]
    return out


def input_scale(dm: np.ndarray, mask: np.ndarray) -> float:
    """dm's noise sd (``noise_level``), at least ``MIN_SCALE_SHARE`` of its root mean square
    in the brain."""
    values = np.asarray(dm, dtype=np.float64)[mask]
    if not values.size:
        return 1.0
    rms = float(np.sqrt(np.mean(values**2)))
    return max(noise_level(dm, mask), MIN_SCALE_SHARE * rms, 1e-12)


def noise_level(dm: np.ndarray, mask: np.ndarray) -> float:
    """Robust sd of dm's noise in the brain: the median absolute deviation of each voxel
    from the mean of its four in-plane neighbours (scaled for white Gaussian noise), over the
    voxels whose neighbours are all in the brain."""
    dm = np.asarray(dm, dtype=np.float64)
    cross = np.zeros((3, 3, 1), dtype=bool)
    cross[1, :, 0] = cross[:, 1, 0] = True
    inner = ndimage.binary_erosion(mask, cross)
    if inner.sum() < 10:
        inner = mask
    if not inner.any():
        return 0.0
    neighbours = (ndimage.correlate(dm, cross.astype(float), mode="constant") - dm) / 4
    residual = (dm - neighbours)[inner]
    mad = float(np.median(np.abs(residual - np.median(residual))))
    return 1.4826 * mad / np.sqrt(1.25)


def smooth_in_mask(volume: np.ndarray, mask: np.ndarray, sigma) -> np.ndarray:
    """Gaussian smoothing restricted to the mask (normalised convolution), zero outside."""
    weight = ndimage.gaussian_filter(mask.astype(np.float32), sigma)
    total = ndimage.gaussian_filter(np.where(mask, volume, 0.0).astype(np.float32), sigma)
    return np.where(mask, total / np.maximum(weight, 1e-6), 0.0)


def enhancement_inputs(
    pairs_dm: np.ndarray, m0: np.ndarray, mask: np.ndarray, k: int
) -> tuple[np.ndarray, float]:
    """The network's inputs (Z, 9, X, Y) float32 for the mean dm (X, Y, Z) of ``k`` pairs,
    and the scale (the estimated noise sd) the dm channels were divided by."""
    mask = np.asarray(mask, dtype=bool)
    dm = np.where(mask, np.asarray(pairs_dm, dtype=np.float32), 0.0)
    scale = input_scale(dm, mask)
    m0 = np.asarray(m0, dtype=np.float32)
    reference = float(np.median(m0[mask])) if mask.any() else 1.0
    volume = np.zeros((INPUT_CHANNELS, *mask.shape), dtype=np.float32)
    scaled = dm / scale
    volume[1] = scaled
    volume[0, ..., 1:] = scaled[..., :-1]
    volume[2, ..., :-1] = scaled[..., 1:]
    for channel, sigma in enumerate(SMOOTHING_SIGMAS, start=3):
        volume[channel] = smooth_in_mask(scaled, mask, sigma)
    volume[5] = np.clip(m0 / max(reference, 1e-12), *M0_CONTRAST_RANGE)
    mean = float(dm[mask].mean()) if mask.any() else 0.0
    volume[6] = np.clip(mean / scale, *SIGNAL_TO_NOISE_RANGE) / 10
    volume[7] = 1 / np.sqrt(max(k, 1))
    volume[8] = 1.0
    volume[:, ~mask] = 0.0
    return np.ascontiguousarray(np.moveaxis(volume, -1, 0)), scale


@torch.no_grad()
def predict_dm(
    network: torch.nn.Module, pairs_dm: np.ndarray, m0: np.ndarray, mask: np.ndarray, k: int,
    device: str = "cpu",
) -> np.ndarray:  # fmt: skip
    """The network's dm (X, Y, Z) from the mean dm of ``k`` pairs; zero outside ``mask``."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.float32)
    inputs, scale = enhancement_inputs(pairs_dm, m0, mask, k)
    network = network.to(device).eval()
    output = network(torch.from_numpy(inputs).to(device))[:, 0].float().cpu().numpy()
    return np.where(mask, np.moveaxis(output, 0, -1) * scale, 0.0).astype(np.float32)


def enhance_difference(
    network: torch.nn.Module,
    series: np.ndarray,
    context: list[str],
    m0: np.ndarray,
    mask: np.ndarray,
    pairs: int = 1,
    device: str = "cpu",
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The enhanced ``(control - label) / M0`` (X, Y, Z) from the first ``pairs`` label/control
    pairs of ``series`` (X, Y, Z, N; volumes named by ``context``), and those pairs as
    (label, control) volume indices. ``pairs`` larger than the series has uses them all.
    For a multi-delay series, call it once per delay with that delay's volumes."""
    available = label_control_pairs(context)
    if not available:
        raise ValueError("the series has no label/control pair (nor deltam volume)")
    used = available[: max(1, pairs)]
    mask = np.asarray(mask, dtype=bool)
    dm = normalised_differences(np.asarray(series, dtype=np.float32), used, m0, mask).mean(-1)
    return predict_dm(network, dm, m0, mask, len(used), device), used
