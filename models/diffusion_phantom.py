"""Whole-image diffusion phantoms: a tissue layout (CSF, GM, WM fractions) becomes a DWI series
and the tensor truth of every voxel.

White matter gets smooth fields: fibre orientations (up to three populations, each a smoothed
random vector field), the number and weights of the populations, and every microstructure
parameter (``diffusion_simulation.TISSUES`` ranges). Grey matter (dispersed neurites) and CSF are
drawn per voxel. A voxel's signal is the mix of its tissues weighted by fraction and by each
tissue's b=0 brightness (T2 weighting: CSF brighter than grey matter brighter than white
matter), with Rician noise at a given SNR on white matter's b=0. The truth is the tensor fitted
to the noiseless mixed signal on the dense reference scheme, as for ``simulate_voxels``.
A phantom is drawn once (its truth is the costly part) and can be scanned with many schemes.
The training set of the DTI network and the sample dataset's DWI both come from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, special

from bids_dl.models.diffusion_simulation import (
    TISSUES,
    Scheme,
    VoxelParameters,
    fit_tensor_wls,
    reference_scheme,
    rician_noise,
    sample_voxel_parameters,
    voxel_signal,
)
from bids_dl.models.tensor_features import DIFFUSIVITY_SCALE, matrix_to_elements

#: b=0 brightness of each tissue relative to white matter at a DTI echo time (~70-90 ms):
#: T2 of WM ~70 ms, GM ~100 ms, CSF > 1 s (Wansapura et al., JMRI 1999)
B0_BRIGHTNESS = {"csf": 2.5, "gm": 1.3, "wm": 1.0}
#: tissue order of the fraction maps
TISSUE_ORDER = ("csf", "gm", "wm")
#: voxels whose fractions sum below this are background (no signal)
MIN_BRAIN_FRACTION = 0.05


@dataclass(frozen=True)
class Phantom:
    """The microstructure of a tissue layout's brain voxels, ready to be scanned.

    ``weights`` (3, n): each tissue's fraction times its b=0 brightness; ``truth`` (X, Y, Z, 6):
    the tensor elements (10^-3 mm^2/s, world axes) for the shell ``b_value``, zero outside
    ``mask`` (or everywhere when the phantom was drawn without truth).
    """

    parameters: dict[str, VoxelParameters]
    weights: np.ndarray
    mask: np.ndarray
    b_value: float
    truth: np.ndarray


def smooth_uniform(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth random field with uniform marginals on [0, 1]: Gaussian-filtered white noise,
    standardised, through the normal CDF."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    field = (field - field.mean()) / (field.std() + 1e-12)
    return special.ndtr(field)


def smooth_directions(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth field of unit vectors (X, Y, Z, 3)."""
    field = np.stack(
        [ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap") for _ in "xyz"],
        -1,
    )
    return field / np.maximum(np.linalg.norm(field, axis=-1, keepdims=True), 1e-12)


def _within(bounds: tuple[float, float], uniform: np.ndarray) -> np.ndarray:
    return bounds[0] + (bounds[1] - bounds[0]) * uniform


def white_matter_parameters(
    shape: tuple[int, ...], mask: np.ndarray, sigma: float, rng: np.random.Generator
) -> VoxelParameters:
    """Smooth white-matter microstructure for the voxels of ``mask``."""
    tissue = TISSUES["wm"]

    def field(bounds: tuple[float, float]) -> np.ndarray:
        return _within(bounds, smooth_uniform(shape, sigma, rng)[mask])

    cumulative = np.cumsum(tissue.fibre_count_probabilities)
    counts = 1 + np.searchsorted(cumulative, smooth_uniform(shape, sigma, rng)[mask])
    counts = np.minimum(counts, len(cumulative))
    weights = np.stack([field((0.3, 1.0)) for _ in cumulative], -1)
    weights *= np.arange(len(cumulative)) < counts[:, None]
    directions = np.stack([smooth_directions(shape, sigma, rng)[mask] for _ in cumulative], axis=1)
    intra = field(tissue.intra_fraction)
    d_par = field(tissue.d_par)
    return VoxelParameters(
        directions=directions,
        fibre_fractions=weights / weights.sum(-1, keepdims=True),
        intra_fraction=intra,
        d_par=d_par,
        d_perp=d_par * (1 - intra),
        iso_fraction=field(tissue.iso_fraction),
        d_iso=field(tissue.d_iso),
    )


def _tissue_parameters(
    tissues: np.ndarray, mask: np.ndarray, sigma: float, rng: np.random.Generator
) -> dict[str, VoxelParameters]:
    count = int(mask.sum())
    return {
        "csf": sample_voxel_parameters(count, "csf", rng),
        "gm": sample_voxel_parameters(count, "gm", rng),
        "wm": white_matter_parameters(tissues.shape[1:], mask, sigma, rng),
    }


def mixed_signal(
    parameters: dict[str, VoxelParameters], weights: np.ndarray, scheme: Scheme
) -> np.ndarray:
    """Signal (n, m) of voxels mixing the tissues with b=0-weighted fractions ``weights`` (3, n)."""
    return sum(
        weight[:, None] * voxel_signal(parameters[name], *scheme)
        for name, weight in zip(TISSUE_ORDER, weights, strict=True)
    )


def truth_elements(
    parameters: dict[str, VoxelParameters], weights: np.ndarray, bvals: np.ndarray
) -> np.ndarray:
    """Tensor elements (n, 6) of the noiseless mixed signal fitted on the dense scheme."""
    dense = reference_scheme(bvals)
    signal = mixed_signal(parameters, weights, dense) / weights.sum(0)[:, None]
    evals, evecs = fit_tensor_wls(signal, *dense)
    matrices = np.einsum("nij,nj,nkj->nik", evecs, evals, evecs)
    return matrix_to_elements(matrices) * DIFFUSIVITY_SCALE


def draw_phantom(
    tissues: np.ndarray,
    b_value: float,
    rng: np.random.Generator,
    smoothness_voxels: float = 3.0,
    with_truth: bool = True,
) -> Phantom:
    """Microstructure for the tissue layout ``tissues`` (3, X, Y, Z; CSF, GM, WM fractions) and,
    with ``with_truth``, its tensor truth on a shell at ``b_value`` (the costly part: a dense
    fit of every voxel)."""
    tissues = np.clip(np.asarray(tissues, float), 0, 1)
    mask = tissues.sum(0) >= MIN_BRAIN_FRACTION
    parameters = _tissue_parameters(tissues, mask, smoothness_voxels, rng)
    brightness = np.array([B0_BRIGHTNESS[name] for name in TISSUE_ORDER])
    weights = tissues[:, mask] * brightness[:, None]
    truth = np.zeros((*mask.shape, 6), dtype=np.float32)
    if with_truth:
        truth[mask] = truth_elements(parameters, weights, np.array([0.0, b_value]))
    return Phantom(parameters, weights, mask, float(b_value), truth)


def acquire(phantom: Phantom, scheme: Scheme, snr: float, rng: np.random.Generator) -> np.ndarray:
    """The phantom's series (X, Y, Z, N) on ``scheme`` (b-vectors in world axes): white
    matter's b=0 at 1, Rician noise of sigma 1/``snr`` everywhere (background included)."""
    bvals, bvecs = (np.asarray(a, float) for a in scheme)
    series = np.zeros((*phantom.mask.shape, len(bvals)))
    series[phantom.mask] = mixed_signal(phantom.parameters, phantom.weights, (bvals, bvecs))
    return rician_noise(series, np.full(phantom.mask.shape, snr), rng).astype(np.float32)
