"""What the DTI network sees and what it returns, independent of the acquisition scheme.

Input: the b=0 image and one shell of diffusion-weighted volumes (any number >= 6 of any
directions). Their apparent diffusion coefficient ``-ln(S/S0) / b`` along each direction is
projected onto the six-element tensor basis by ridge-regularised least squares (the order-2
projection, i.e. a regularised linear tensor fit): that representation does not depend on how
many directions there are or where they point, so the scheme need not match training. The
ridge penalises the anisotropic (deviatoric) part only, which keeps ill-conditioned subsets
bounded (Laplace-Beltrami regularisation of spherical harmonics does the same for order 2).
Six more channels say how much the projection amplifies noise along each element, so the
network can weigh a badly placed subset less.

Tensors are six elements (xx, yy, zz, xy, xz, yz) in 10^-3 mm^2/s, in world (RAS+) axes.
"""

from __future__ import annotations

import numpy as np

from bids_dl.models.diffusion_simulation import TensorMetrics, tensor_metrics
from bids_dl.models.gradients import B0_THRESHOLD, tensor_design_matrix

#: tensor elements are in 10^-3 mm^2/s (um^2/ms): values of order 1
DIFFUSIVITY_SCALE = 1e3
#: weight of the deviatoric penalty; a well-spread 6-direction design's normal matrix has
#: eigenvalues ~1-3, so this damps only the directions a subset leaves unmeasured
RIDGE = 0.05
#: S/S0 is clipped to this range before the logarithm (noise can push it past 1 or to 0)
SIGNAL_RATIO_RANGE = (1e-3, 1.5)
#: channels: 6 projected tensor elements, 6 noise gains, b/1000, b=0 contrast, brain mask
INPUT_CHANNELS = 15


def deviatoric_penalty() -> np.ndarray:
    """The quadratic form of ||D - tr(D)/3 I||_F^2 over the six elements (6, 6)."""
    penalty = np.zeros((6, 6))
    penalty[:3, :3] = np.eye(3) - np.full((3, 3), 1 / 3)
    penalty[3:, 3:] = 2 * np.eye(3)
    return penalty


def projection_matrix(directions: np.ndarray) -> np.ndarray:
    """The ridge solution operator (6, n): tensor elements = H @ ADC along ``directions``."""
    design = tensor_design_matrix(directions)
    normal = design.T @ design + RIDGE * deviatoric_penalty()
    return np.linalg.solve(normal, design.T)


def main_shell(bvals: np.ndarray, b0_threshold: float = B0_THRESHOLD) -> float:
    """The b-value of the shell the network reads: the one with most directions (on a tie,
    the one nearest b=1000), b-values within 100 s/mm^2 counting as one shell."""
    weighted = bvals[bvals > b0_threshold]
    shells, counts = np.unique(np.round(weighted / 100.0), return_counts=True)
    best = max(zip(counts, -np.abs(shells * 100 - 1000), shells, strict=True))[2]
    return float(weighted[np.round(weighted / 100.0) == best].mean())


def shell_volumes(bvals: np.ndarray, b0_threshold: float = B0_THRESHOLD) -> np.ndarray:
    """Indices of the main shell's volumes."""
    b_value = main_shell(bvals, b0_threshold)
    return np.flatnonzero((bvals > b0_threshold) & (np.abs(bvals - b_value) < 100.0))


def project_adc(
    b0: np.ndarray, weighted: np.ndarray, b_value: float, directions: np.ndarray
) -> np.ndarray:
    """Tensor elements (..., 6) of the ADC of ``weighted`` (..., n) relative to ``b0`` (...)."""
    ratio = weighted / np.maximum(b0, 1e-6)[..., None]
    adc = -np.log(np.clip(ratio, *SIGNAL_RATIO_RANGE)) / b_value * DIFFUSIVITY_SCALE
    return adc @ projection_matrix(directions).T


def network_inputs(
    series: np.ndarray,
    bvals: np.ndarray,
    world_bvecs: np.ndarray,
    mask: np.ndarray,
    b0_threshold: float = B0_THRESHOLD,
) -> np.ndarray:
    """Input channels (15, X, Y, Z) float32 of a DWI series (X, Y, Z, N) inside ``mask``.

    b=0 is the mean of the b~0 volumes; its contrast channel is b=0 over its median in the
    mask, clipped to [0, 5]. Everything is zero outside the mask.
    """
    series = np.asarray(series, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    b0 = series[..., bvals <= b0_threshold].mean(-1)
    volumes = shell_volumes(bvals, b0_threshold)
    b_value = float(bvals[volumes].mean())
    directions = world_bvecs[volumes]
    tensor = project_adc(b0[mask], series[mask][:, volumes], b_value, directions)
    gains = np.log(np.linalg.norm(projection_matrix(directions), axis=1) * 1000.0 / b_value)
    reference = float(np.median(b0[mask])) if mask.any() else 1.0
    channels = np.zeros((INPUT_CHANNELS, *mask.shape), dtype=np.float32)
    channels[:6, mask] = tensor.T
    channels[6:12, mask] = gains[:, None]
    channels[12, mask] = b_value / 1000.0
    channels[13, mask] = np.clip(b0[mask] / max(reference, 1e-6), 0, 5)
    channels[14, mask] = 1.0
    return channels


def elements_to_matrix(elements: np.ndarray) -> np.ndarray:
    """(..., 6) elements (xx, yy, zz, xy, xz, yz) to symmetric (..., 3, 3) matrices."""
    xx, yy, zz, xy, xz, yz = np.moveaxis(np.asarray(elements, dtype=float), -1, 0)
    rows = [np.stack(r, -1) for r in ((xx, xy, xz), (xy, yy, yz), (xz, yz, zz))]
    return np.stack(rows, -2)


def matrix_to_elements(matrices: np.ndarray) -> np.ndarray:
    """Symmetric (..., 3, 3) matrices to (..., 6) elements (xx, yy, zz, xy, xz, yz)."""
    m = np.asarray(matrices, dtype=float)
    return np.stack(
        [m[..., 0, 0], m[..., 1, 1], m[..., 2, 2], m[..., 0, 1], m[..., 0, 2], m[..., 1, 2]], -1
    )


def tensor_maps(elements: np.ndarray) -> tuple[TensorMetrics, np.ndarray]:
    """FA, MD, AD, RD (mm^2/s) and the principal eigenvector (..., 3) of tensors given as
    elements in 10^-3 mm^2/s. Negative eigenvalues are clipped to 0, as dipy does."""
    evals, evecs = np.linalg.eigh(elements_to_matrix(elements))
    evals = np.clip(evals, 0, None) / DIFFUSIVITY_SCALE
    return tensor_metrics(evals), evecs[..., :, -1]
