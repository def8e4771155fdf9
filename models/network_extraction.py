"""Functional networks of a group from its cleaned resting-state runs.

The model is a sparse autoencoder trained on the group's own data each time by gradient descent
(reconstruction ICA, Le et al., NeurIPS 2011, applied to voxels as spatial ICA is): each voxel's
fingerprint (its loadings on the group's principal spatial patterns, whitened) is encoded into
K network weights, which are the voxel's values in the K spatial maps; the tied linear decoder
rebuilds the fingerprint from them. A log-cosh penalty makes the maps sparse, the reconstruction
keeps them from collapsing onto each other, and the maps are non-negative after orientation
(networks as positive blobs). The group reduction is CanICA's and MELODIC's: a PCA of each run,
then a PCA of their stack. Several starts are trained; the one with the lowest loss is kept and
the agreement of the others with it is the fit's stability. One unit more than the K networks
is trained and the least sparse map dropped, so that a broad non-network component
(physiological noise, residual motion) does not take a network's place.

Also here: matching estimated to true maps (Hungarian, on absolute spatial correlation),
FSL-style dual regression, and the cleaning and smoothing the model expects of its input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from torch import nn

#: hyper-parameters of ``fit_networks`` (the card's ``architecture.args`` override them)
DEFAULT_SETTINGS: dict = {
    "subject_components": 24,  # per-run PCA components kept, as CanICA's subject reduction
    "group_dimensions_per_network": 2,  # group PCA dimensions per requested network
    "steps": 150,  # full-batch Adam steps (the loss settles by about 100)
    "learning_rate": 0.02,
    "sparsity": 0.5,  # weight of the log-cosh sparsity of the maps against the reconstruction
    "restarts": 3,  # random starts; the lowest loss is kept, the others measure stability
    "extra_units": 1,  # units trained beyond K; the K sparsest maps are kept
    "nonnegative": True,  # negative map values (after orientation) set to 0
    "candidates": [4, 6, 8, 10, 12, 16],  # numbers of networks tried when none is given
    "stability_floor": 0.75,  # the chosen K is the largest candidate at least this stable
}
#: FWHM = this factor times a Gaussian sigma
FWHM_PER_SIGMA = 2.3548
#: Legendre polynomial order of the trends that ``clean_run`` removes
TREND_ORDER = 3
#: guards against division by zero for constant voxels and empty maps
EPSILON = 1e-8


@dataclass
class NetworkFit:
    """Group maps (K, V; each map's largest |value| positive and 1), each run's time courses
    (T_s, K), K, its stability (mean matched correlation of the other random starts' maps with
    the kept ones; NaN with one start) and, when K was chosen, each candidate's split-half
    stability."""

    maps: np.ndarray
    time_courses: list[np.ndarray]
    n_components: int
    stability: float
    candidates: dict[int, float]


class SparseAutoencoder(nn.Module):
    """Encoder: a voxel's whitened fingerprint (Q) -> its K map values (linear); decoder: the
    transposed weights (tied), so the codes must keep the fingerprint's information."""

    def __init__(self, n_inputs: int, n_networks: int) -> None:
        super().__init__()
        start = torch.linalg.qr(torch.randn(n_inputs, n_networks))[0].T
        self.weight = nn.Parameter(start.contiguous())

    def forward(self, fingerprints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes = fingerprints @ self.weight.T
        return codes, codes @ self.weight


def clean_run(run: np.ndarray, confounds: np.ndarray | None = None) -> np.ndarray:
    """(T, V) run without its polynomial trends (order TREND_ORDER) and the confounds' fit,
    z-scored per voxel: what ``fit_networks`` expects."""
    n_volumes = run.shape[0]
    grid = np.linspace(-1.0, 1.0, n_volumes)
    design = [np.polynomial.legendre.legvander(grid, TREND_ORDER)]
    if confounds is not None:
        design.append(np.asarray(confounds, dtype=float).reshape(n_volumes, -1))
    regressors = np.hstack(design)
    beta, *_ = np.linalg.lstsq(regressors, run.astype(float), rcond=None)
    residual = run - regressors @ beta
    residual /= residual.std(axis=0) + EPSILON
    return residual.astype(np.float32)


def smooth_run(run: np.ndarray, mask: np.ndarray, affine: np.ndarray, fwhm_mm: float) -> np.ndarray:
    """(T, V) in-mask run smoothed by a Gaussian of ``fwhm_mm`` within the mask (the kernel
    renormalised at the edge), re-z-scored: the smoothing CanICA applies by default."""
    sigma = fwhm_mm / FWHM_PER_SIGMA / np.linalg.norm(affine[:3, :3], axis=0)
    mask = mask.astype(bool)
    volumes = np.zeros((run.shape[0], *mask.shape), dtype=np.float32)
    volumes[:, mask] = run
    smoothed = ndimage.gaussian_filter(volumes, (0.0, *sigma))[:, mask]
    smoothed /= ndimage.gaussian_filter(mask.astype(np.float32), sigma)[mask] + EPSILON
    smoothed -= smoothed.mean(axis=0)
    return (smoothed / (smoothed.std(axis=0) + EPSILON)).astype(np.float32)


def _correlations(estimated: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(K_truth, K_estimated) spatial correlations between two sets of maps."""
    a = truth - truth.mean(axis=1, keepdims=True)
    b = estimated - estimated.mean(axis=1, keepdims=True)
    a /= np.linalg.norm(a, axis=1, keepdims=True) + EPSILON
    b /= np.linalg.norm(b, axis=1, keepdims=True) + EPSILON
    return a @ b.T


def match_maps(estimated: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """For each truth map, the absolute spatial correlation of the estimated map paired to it by
    the Hungarian assignment (0 where no estimated map is left)."""
    similarity = np.abs(_correlations(estimated, truth))
    rows, columns = linear_sum_assignment(similarity, maximize=True)
    matched = np.zeros(len(truth))
    matched[rows] = similarity[rows, columns]
    return matched


def _least_squares(design: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Coefficients of ``target`` on the few columns of ``design`` via the small normal equations
    (as fast as a product; a pseudo-inverse for collinear columns)."""
    return np.linalg.pinv(design.T @ design) @ (design.T @ target)


def dual_regression(group_maps: np.ndarray, run: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FSL dual regression: the run's time courses (T, K) by spatial regression on the group
    maps (K, V), normalised to unit sd, then the subject's maps (K, V) by temporal regression
    of the run on them."""
    demeaned_maps = (group_maps - group_maps.mean(axis=1, keepdims=True)).astype(np.float64)
    centred_run = run - run.mean(axis=1, keepdims=True)
    courses = _least_squares(demeaned_maps.T, centred_run.T).T
    courses -= courses.mean(axis=0)
    courses /= courses.std(axis=0) + EPSILON
    subject_maps = _least_squares(courses, run - run.mean(axis=0))
    return courses.astype(np.float32), subject_maps.astype(np.float32)


def _top_patterns(matrix: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` leading right singular vectors of ``matrix`` (rows x V) times their singular
    values, through the small Gram matrix (rows << V)."""
    gram = matrix @ matrix.T
    values, vectors = np.linalg.eigh(gram)
    order = np.argsort(values)[::-1][: min(count, len(values))]
    return vectors[:, order].T @ matrix


def group_basis(runs: list[np.ndarray], n_subject: int, n_group: int) -> np.ndarray:
    """(Q, V) orthonormal group spatial basis: each run reduced to its ``n_subject`` principal
    patterns, the stack reduced to its ``n_group`` leading directions."""
    stacked = np.vstack([_top_patterns(run.astype(np.float64), n_subject) for run in runs])
    patterns = _top_patterns(stacked, n_group)
    return patterns / np.linalg.norm(patterns, axis=1, keepdims=True)


def _train(fingerprints: torch.Tensor, n_networks: int, settings: dict, seed: int):
    """Train one autoencoder from a random start; return its maps (K, V) and final loss."""
    torch.manual_seed(seed)
    model = SparseAutoencoder(fingerprints.shape[1], n_networks).to(fingerprints.device)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings["learning_rate"])
    for _ in range(settings["steps"] + 1):
        optimiser.zero_grad()
        codes, rebuilt = model(fingerprints)
        error = torch.mean((rebuilt - fingerprints) ** 2)
        loss = error + settings["sparsity"] * torch.mean(torch.log(torch.cosh(codes)))
        loss.backward()
        optimiser.step()
    return codes.detach().cpu().numpy().T, float(loss.detach())


def _sparsest(codes: np.ndarray, n_networks: int) -> np.ndarray:
    """The ``n_networks`` sparsest rows of ``codes`` (lowest mean log-cosh at unit power): the
    spare units take broad, non-network components such as physiological noise."""
    unit_power = codes / (np.sqrt(np.mean(codes**2, axis=1, keepdims=True)) + EPSILON)
    spread = np.mean(np.log(np.cosh(unit_power)), axis=1)
    return codes[np.sort(np.argsort(spread)[:n_networks])]


def _orient(maps: np.ndarray) -> np.ndarray:
    """Each map signed so its largest |value| is positive, scaled to a maximum of 1."""
    peaks = maps[np.arange(len(maps)), np.abs(maps).argmax(axis=1)]
    return (maps / (peaks[:, None] + EPSILON)).astype(np.float32)


def _fits(
    runs: list[np.ndarray], n_networks: int, settings: dict, seed: int, device: str
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Maps (K, V) of the lowest-loss start, and the other starts' maps."""
    n_group = settings["group_dimensions_per_network"] * n_networks
    basis = group_basis(runs, settings["subject_components"], n_group)
    fingerprints = torch.as_tensor(
        (basis * np.sqrt(basis.shape[1])).T, dtype=torch.float32, device=device
    )
    n_units = n_networks + settings["extra_units"]
    starts = [
        _train(fingerprints, n_units, settings, seed * settings["restarts"] + start)
        for start in range(settings["restarts"])
    ]
    starts.sort(key=lambda fit: fit[1])
    maps = [_orient(_sparsest(codes, n_networks)) for codes, _ in starts]
    if settings["nonnegative"]:
        maps = [np.clip(m, 0.0, None) for m in maps]
    return maps[0], maps[1:]


def _split_half_stability(
    runs: list[np.ndarray], n_networks: int, settings: dict, seed: int, device: str
) -> float:
    """Mean matched correlation of the maps fitted on the odd and on the even runs."""
    first, _ = _fits(runs[0::2], n_networks, settings, seed, device)
    second, _ = _fits(runs[1::2], n_networks, settings, seed + 1, device)
    return float(match_maps(first, second).mean())


def choose_n_components(
    runs: list[np.ndarray], settings: dict, seed: int, device: str
) -> tuple[int, dict[int, float]]:
    """The largest candidate K whose split-half stability reaches ``stability_floor`` (the most
    stable one when none does), and every candidate's stability; needs two runs or more."""
    if len(runs) < 2:
        raise ValueError("choosing the number of networks needs at least two runs")
    stability = {
        int(k): _split_half_stability(runs, int(k), settings, seed, device)
        for k in settings["candidates"]
    }
    stable = [k for k, value in stability.items() if value >= settings["stability_floor"]]
    chosen = max(stable) if stable else max(stability, key=stability.get)
    return chosen, stability


def fit_networks(
    runs: list[np.ndarray],
    n_components: int | None = None,
    *,
    settings: dict | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> NetworkFit:
    """Group network maps and per-run time courses from cleaned (T_s, V) runs (see
    ``clean_run``, ``smooth_run``); K chosen by ``choose_n_components`` when ``n_components`` is
    None. Stability: mean matched correlation of the other starts' maps with the kept ones."""
    settings = {**DEFAULT_SETTINGS, **(settings or {})}
    candidates: dict[int, float] = {}
    if n_components is None:
        n_components, candidates = choose_n_components(runs, settings, seed, device)
    maps, others = _fits(runs, n_components, settings, seed, device)
    stability = float(np.mean([match_maps(other, maps).mean() for other in others] or [np.nan]))
    time_courses = [dual_regression(maps, run)[0] for run in runs]
    return NetworkFit(maps, time_courses, n_components, stability, candidates)
