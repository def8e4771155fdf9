"""Run the DTI network on a series: the tensor a dense scheme would give, from the acquired
directions of its main shell."""

from __future__ import annotations

import numpy as np
import torch

from bids_dl.models.gradients import B0_THRESHOLD
from bids_dl.models.tensor_features import network_inputs

#: voxels of context kept around the brain's bounding box (the network sees 5x5x5)
CONTEXT_MARGIN = 3


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    corners = np.argwhere(mask)
    low = np.maximum(corners.min(0) - margin, 0)
    high = np.minimum(corners.max(0) + margin + 1, mask.shape)
    return tuple(slice(a, b) for a, b in zip(low, high, strict=True))


@torch.no_grad()
def predict_tensor(
    network: torch.nn.Module,
    series: np.ndarray,
    bvals: np.ndarray,
    world_bvecs: np.ndarray,
    mask: np.ndarray,
    device: str = "cpu",
    b0_threshold: float = B0_THRESHOLD,
) -> np.ndarray:
    """Tensor elements (X, Y, Z, 6; xx, yy, zz, xy, xz, yz in 10^-3 mm^2/s, world axes) inside
    ``mask`` of a series (X, Y, Z, N) with its b-values and world b-vectors; zero outside."""
    mask = np.asarray(mask, dtype=bool)
    elements = np.zeros((*mask.shape, 6), dtype=np.float32)
    if not mask.any():
        return elements
    box = _bounding_box(mask, CONTEXT_MARGIN)
    inputs = network_inputs(series[box], bvals, world_bvecs, mask[box], b0_threshold)
    network = network.to(device)
    output = network(torch.from_numpy(inputs)[None].to(device))[0].float().cpu().numpy()
    elements[box] = np.moveaxis(output, 0, -1)
    elements[~mask] = 0.0
    return elements
