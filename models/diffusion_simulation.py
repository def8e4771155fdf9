"""Diffusion-MRI physics simulator: multi-compartment voxel signals, gradient schemes, Rician
noise, and the tensor metrics a DTI network is trained to predict.

A voxel is free water (a *ball*) plus up to three fibre populations, each an intra-axonal
*stick* inside an extra-axonal *zeppelin* along the same direction (the compartments of
Panagiotaki et al., NeuroImage 2012; ball-and-stick of Behrens et al., MRM 2003; NODDI's
tortuosity link between them, Zhang et al., NeuroImage 2012):

    S/S0 = f_iso exp(-b d_iso) + (1 - f_iso) sum_k w_k [v stick_k + (1 - v) zeppelin_k]

with ``stick_k = exp(-b d_par (g.u_k)^2)`` and
``zeppelin_k = exp(-b [d_perp + (d_par - d_perp) (g.u_k)^2])``, ``d_perp = d_par (1 - v)``.
Units: b in s/mm^2, diffusivities in mm^2/s, directions in world axes.

The training target is what the real-data reference measures: the dipy WLS tensor fit on all
of a scan's directions. For a simulated voxel that is the fit of its noiseless signal on a dense
scheme (64 well-spread directions per shell of the input scheme, one b=0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from dipy.core.gradients import gradient_table
from dipy.reconst.dti import TensorModel

#: number of directions per shell of the dense scheme that defines the ground truth
REFERENCE_DIRECTIONS = 64
#: the dense scheme is the same for every call, so the truth does not depend on the caller's seed
REFERENCE_SEED = 0
#: b-values closer than this (s/mm^2) belong to one shell (scanners write 995, 1000, 1005...)
SHELL_ROUNDING = 100.0

Scheme = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class TissueParameters:
    """Ranges of the random draws of one tissue class (uniform within each range).

    ``fibre_count_probabilities``: chance of 1, 2 and 3 fibre populations; ``intra_fraction``:
    stick share of each population (v); ``d_par``: axial diffusivity of stick and zeppelin;
    ``iso_fraction`` and ``d_iso``: the free-water ball.
    """

    fibre_count_probabilities: tuple[float, float, float]
    intra_fraction: tuple[float, float]
    d_par: tuple[float, float]
    iso_fraction: tuple[float, float]
    d_iso: tuple[float, float]


#: Literature values. White-matter d_par 1.7-2.2e-3: NODDI fixes 1.7e-3 (Zhang et al. 2012),
#: spherical-mean estimates reach 2.0-2.3e-3 (Kaden et al., NeuroImage 2016). Grey-matter d_par
#: 1.0-1.5e-3: the cortical optimum of NODDI's d_par is ~1.1e-3 (Guerrero et al., NeuroImage
#: 2019). d_iso 3.0e-3: free water at 37 C (Holz et al., PCCP 2000; NODDI's d_iso), CSF
#: 3.0-3.2e-3 in vivo (Pierpaoli et al., Radiology 1996). Intra-neurite fraction: white matter
#: 0.4-0.75, grey matter 0.1-0.35 (NODDI maps, Zhang et al. 2012). Crossing fibres in 60-90%
#: of white-matter voxels (Jeurissen et al., HBM 2013). Grey matter's dispersed neurites are two
#: or three random populations. Populations have no dispersion of their own, so white-matter
#: FA runs higher than in vivo (median ~0.7 against ~0.5 at 2 mm).
TISSUES: dict[str, TissueParameters] = {
    "wm": TissueParameters((0.35, 0.4, 0.25), (0.4, 0.75), (1.7e-3, 2.2e-3), (0.0, 0.1),
                           (2.9e-3, 3.1e-3)),
    "gm": TissueParameters((0.0, 0.3, 0.7), (0.1, 0.35), (1.0e-3, 1.5e-3), (0.0, 0.2),
                           (2.9e-3, 3.1e-3)),
    "csf": TissueParameters((1.0, 0.0, 0.0), (0.1, 0.35), (1.0e-3, 1.5e-3), (0.95, 1.0),
                            (2.9e-3, 3.1e-3)),
}  # fmt: skip


@dataclass(frozen=True)
class VoxelParameters:
    """Microstructure of n voxels with up to K fibre populations (absent ones have weight 0)."""

    directions: np.ndarray  # (n, K, 3) unit fibre directions
    fibre_fractions: np.ndarray  # (n, K) weights w_k, rows sum to 1
    intra_fraction: np.ndarray  # (n,) v
    d_par: np.ndarray  # (n,)
    d_perp: np.ndarray  # (n,)
    iso_fraction: np.ndarray  # (n,) f_iso
    d_iso: np.ndarray  # (n,)


class TensorMetrics(NamedTuple):
    """Scalar DTI maps: fractional anisotropy, mean, axial and radial diffusivity (mm^2/s)."""

    fa: np.ndarray
    md: np.ndarray
    ad: np.ndarray
    rd: np.ndarray


@dataclass(frozen=True)
class SimulatedVoxels:
    """Noisy signals on the acquired scheme and the dense-scheme tensor truth."""

    signal: np.ndarray  # (n, n_volumes), S/S0
    metrics: TensorMetrics  # each (n,)
    principal_direction: np.ndarray  # (n, 3)
    parameters: VoxelParameters


def _cos2(bvecs: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Squared cosine between every direction (..., 3) and every gradient (m, 3): (..., m)."""
    return (directions @ bvecs.T) ** 2


def stick(
    bvals: np.ndarray, bvecs: np.ndarray, directions: np.ndarray, d_par: np.ndarray
) -> np.ndarray:
    """S/S0 of sticks (..., 3) with axial diffusivity ``d_par`` (...): (..., m)."""
    return np.exp(-bvals * np.asarray(d_par)[..., None] * _cos2(bvecs, directions))


def zeppelin(
    bvals: np.ndarray,
    bvecs: np.ndarray,
    directions: np.ndarray,
    d_par: np.ndarray,
    d_perp: np.ndarray,
) -> np.ndarray:
    """S/S0 of axially symmetric tensors (..., 3) with eigenvalues (d_par, d_perp, d_perp)."""
    d_par, d_perp = np.asarray(d_par)[..., None], np.asarray(d_perp)[..., None]
    return np.exp(-bvals * (d_perp + (d_par - d_perp) * _cos2(bvecs, directions)))


def ball(bvals: np.ndarray, d_iso: np.ndarray) -> np.ndarray:
    """S/S0 of isotropic diffusion ``d_iso`` (...): (..., m)."""
    return np.exp(-bvals * np.asarray(d_iso)[..., None])


def _check_scheme(bvals: np.ndarray, bvecs: np.ndarray) -> None:
    if bvals.ndim != 1 or bvecs.shape != (len(bvals), 3):
        raise ValueError(
            f"a scheme is bvals (m,) and bvecs (m, 3); got {bvals.shape} and {bvecs.shape}"
        )


def voxel_signal(params: VoxelParameters, bvals: np.ndarray, bvecs: np.ndarray) -> np.ndarray:
    """Noiseless S/S0 of every voxel on the scheme: (n, m)."""
    bvals, bvecs = np.asarray(bvals, float), np.asarray(bvecs, float)
    _check_scheme(bvals, bvecs)
    d_par, d_perp = params.d_par[:, None], params.d_perp[:, None]
    v = params.intra_fraction[:, None]
    sticks = stick(bvals, bvecs, params.directions, d_par)
    zeppelins = zeppelin(bvals, bvecs, params.directions, d_par, d_perp)
    tissue = np.einsum("nk,nkm->nm", params.fibre_fractions * v, sticks)
    tissue += np.einsum("nk,nkm->nm", params.fibre_fractions * (1 - v), zeppelins)
    f_iso = params.iso_fraction[:, None]
    return f_iso * ball(bvals, params.d_iso) + (1 - f_iso) * tissue


def rician_noise(
    signal: np.ndarray, snr: float | np.ndarray, rng: np.random.Generator, s0: float = 1.0
) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise, sigma = s0 / snr.

    SNR is defined on the b=0 signal, as scanners and papers quote it; ``snr`` is a number or
    one value per voxel (the signal's leading axes). ``np.inf`` gives the noiseless signal.
    """
    sigma = s0 / np.asarray(snr, float)[..., None]
    real = signal + sigma * rng.standard_normal(signal.shape)
    imaginary = sigma * rng.standard_normal(signal.shape)
    return np.hypot(real, imaginary)


def random_directions(n: int, rng: np.random.Generator) -> np.ndarray:
    """n unit vectors uniform on the sphere (normalised Gaussian draws): (n, 3)."""
    vectors = rng.standard_normal((n, 3))
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def _to_hemisphere(directions: np.ndarray) -> np.ndarray:
    """Flip each direction to z >= 0: the signal is antipodally symmetric."""
    return np.where(directions[:, 2:] < 0, -directions, directions)


def _with_b0(directions: np.ndarray, b_value: float, n_b0: int) -> Scheme:
    bvals = np.concatenate([np.zeros(n_b0), np.full(len(directions), float(b_value))])
    bvecs = np.concatenate([np.zeros((n_b0, 3)), directions])
    return bvals, bvecs


def random_scheme(n_directions: int, b_value: float, n_b0: int, rng: np.random.Generator) -> Scheme:
    """(bvals, bvecs): ``n_b0`` b=0 volumes then random directions on one shell, world axes."""
    return _with_b0(_to_hemisphere(random_directions(n_directions, rng)), b_value, n_b0)


def _repulsion(directions: np.ndarray) -> np.ndarray:
    """Coulomb force on each direction from all others and their antipodes: (n, 3)."""
    force = np.zeros_like(directions)
    for sign in (1.0, -1.0):
        offsets = directions[:, None, :] - sign * directions[None, :, :]
        distance = np.linalg.norm(offsets, axis=-1, keepdims=True)
        np.fill_diagonal(distance[..., 0], np.inf)
        force += (offsets / distance**3).sum(axis=1)
    return force


def well_spread_directions(n: int, rng: np.random.Generator, iterations: int = 300) -> np.ndarray:
    """n directions on the hemisphere spread by electrostatic repulsion (Jones et al., MRM
    1999), antipodes counting as charges: (n, 3). Deterministic given the generator's state."""
    directions = random_directions(n, rng)
    for step in np.geomspace(0.1, 1e-3, iterations):
        force = _repulsion(directions)
        force -= (force * directions).sum(-1, keepdims=True) * directions
        largest = np.linalg.norm(force, axis=-1).max()
        if largest > 0:
            directions = directions + step * force / largest
        directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    return _to_hemisphere(directions)


def well_spread_scheme(
    n: int, b_value: float, n_b0: int, rng: np.random.Generator, iterations: int = 300
) -> Scheme:
    """(bvals, bvecs): ``n_b0`` b=0 volumes then n well-spread directions on one shell."""
    return _with_b0(well_spread_directions(n, rng, iterations), b_value, n_b0)


def tensor_metrics(evals: np.ndarray) -> TensorMetrics:
    """FA, MD, AD, RD from eigenvalues (..., 3), in any order; FA is 0 where all are 0."""
    evals = np.sort(np.asarray(evals, float), axis=-1)[..., ::-1]
    md = evals.mean(-1)
    norm = np.sqrt((evals**2).sum(-1))
    spread = np.sqrt(((evals - md[..., None]) ** 2).sum(-1))
    fa = np.sqrt(1.5) * np.divide(spread, norm, out=np.zeros_like(norm), where=norm > 0)
    return TensorMetrics(fa=fa, md=md, ad=evals[..., 0], rd=evals[..., 1:].mean(-1))


def fit_tensor_wls(
    signal: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray, b0_threshold: float = 50.0
) -> tuple[np.ndarray, np.ndarray]:
    """dipy's WLS tensor fit, the real-data reference: eigenvalues (..., 3), largest first,
    and eigenvectors (..., 3, 3) as columns."""
    table = gradient_table(np.asarray(bvals, float), bvecs=np.asarray(bvecs, float),
                           b0_threshold=b0_threshold)  # fmt: skip
    fit = TensorModel(table, fit_method="WLS").fit(signal)
    return fit.evals, fit.evecs


def reference_scheme(bvals: np.ndarray, b0_threshold: float = 50.0) -> Scheme:
    """The dense scheme of the truth: one b=0, then 64 well-spread directions on each shell of
    ``bvals`` (shells are b-values within ``SHELL_ROUNDING``, at their mean b)."""
    bvals = np.asarray(bvals, float)
    weighted = bvals[bvals > b0_threshold]
    shells = np.round(weighted / SHELL_ROUNDING)
    directions = well_spread_directions(REFERENCE_DIRECTIONS, np.random.default_rng(REFERENCE_SEED))
    shell_bvals = [weighted[shells == shell].mean() for shell in np.unique(shells)]
    dense_bvals = np.concatenate([[0.0]] + [np.full(len(directions), b) for b in shell_bvals])
    dense_bvecs = np.concatenate([np.zeros((1, 3))] + [directions] * len(shell_bvals))
    return dense_bvals, dense_bvecs


def _uniform(bounds: tuple[float, float], n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(bounds[0], bounds[1], n)


def _fibre_fractions(
    n: int, probabilities: tuple[float, ...], rng: np.random.Generator
) -> np.ndarray:
    """Weights of the populations (n, K): Dirichlet(1) over the first 1..K, zero after."""
    counts = rng.choice(len(probabilities), size=n, p=probabilities) + 1
    weights = rng.exponential(size=(n, len(probabilities)))
    weights *= np.arange(len(probabilities)) < counts[:, None]
    return weights / weights.sum(-1, keepdims=True)


def sample_voxel_parameters(
    n: int, tissue: TissueParameters | str, rng: np.random.Generator
) -> VoxelParameters:
    """n random voxels of a tissue class (a ``TISSUES`` key or explicit ranges)."""
    tissue = TISSUES[tissue] if isinstance(tissue, str) else tissue
    fractions = _fibre_fractions(n, tissue.fibre_count_probabilities, rng)
    directions = random_directions(n * fractions.shape[1], rng).reshape(n, -1, 3)
    intra = _uniform(tissue.intra_fraction, n, rng)
    d_par = _uniform(tissue.d_par, n, rng)
    return VoxelParameters(
        directions=directions,
        fibre_fractions=fractions,
        intra_fraction=intra,
        d_par=d_par,
        d_perp=d_par * (1 - intra),
        iso_fraction=_uniform(tissue.iso_fraction, n, rng),
        d_iso=_uniform(tissue.d_iso, n, rng),
    )


def simulate_voxels(
    n: int,
    tissue: TissueParameters | str,
    scheme: Scheme,
    snr: float | tuple[float, float],
    rng: np.random.Generator,
    b0_threshold: float = 50.0,
) -> SimulatedVoxels:
    """n random voxels of a tissue: Rician-noisy S/S0 on ``scheme`` (SNR on b=0, fixed or drawn
    per voxel from a range) and the tensor truth of their noiseless signal on the dense scheme.
    """
    bvals, bvecs = (np.asarray(a, float) for a in scheme)
    params = sample_voxel_parameters(n, tissue, rng)
    snr = _uniform(snr, n, rng) if isinstance(snr, tuple) else snr
    signal = rician_noise(voxel_signal(params, bvals, bvecs), snr, rng)
    dense = reference_scheme(bvals, b0_threshold)
    evals, evecs = fit_tensor_wls(voxel_signal(params, *dense), *dense, b0_threshold)
    return SimulatedVoxels(signal, tensor_metrics(evals), evecs[..., 0], params)
