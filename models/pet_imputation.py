"""Missing-PET imputation: what the network reads and how it predicts an FDG SUVR image.

The network (``networks.UNet3D``) reads a T1w, its brain mask and its structures on a RAS grid
of 2 mm voxels that covers the mask's bounding box plus a margin, each size a multiple of 16;
channels: the T1w over its 95th percentile inside the mask (zero outside), the mask, and the
regional prior (``pet_prior``: the training population's SUVR of each structure painted on the
labels and blurred to PET resolution). It predicts the correction to the prior; prior plus
correction is the SUVR (reference: cerebellar cortex), mapped back to the input grid and set
to zero outside the mask. Inputs finer than 2 mm are smoothed before resampling, so that a
1 mm T1w reads like the 2 mm voxels (averages of finer ones) of training. Training prepares
its examples with the same :func:`network_inputs`.

The prediction is synthetic: it shows what the T1w implies (atrophy and the uptake that goes
with it), never a hypometabolism the MRI does not show.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nb
import numpy as np
import torch
from scipy import ndimage

from bids_dl.models.card import ModelCard
from bids_dl.models.geometry import mask_bounds, model_grid, resample, world_bounds
from bids_dl.models.pet_prior import RegionalPrior

VOXEL_MM = 2.0
#: each model-grid size is a multiple of this (the U-Net's pooling and some slack)
DIVISOR = 16
MARGIN_MM = 4.0
PERCENTILE = 95.0
#: the normalised T1w is clipped to this (vessels, fat left in the mask)
T1W_CLIP = 3.0
CHANNELS = ("T1w", "brain_mask", "regional_prior")
MASK_CHANNEL, PRIOR_CHANNEL = 1, 2
#: the SUVR's reference region: cerebellar cortex (FreeSurfer left and right)
REFERENCE_LABELS = (8, 47)
NORMALISATION = (
    f"T1w resampled (linear, after smoothing inputs finer than {VOXEL_MM:g} mm) to a RAS "
    f"{VOXEL_MM:g} mm grid over the brain mask's bounding box + {MARGIN_MM:g} mm (sizes a "
    f"multiple of {DIVISOR}), divided by its {PERCENTILE:g}th percentile inside the mask, "
    f"clipped to [0, {T1W_CLIP:g}], zero outside; second channel: the mask; third: the card's "
    "regional_prior painted on the structures (labels), blurred to its FWHM, resampled the same "
    "way; the network's output is added to the third channel"
)


@dataclass(frozen=True)
class NetworkInputs:
    """The network's channels (3, X, Y, Z) on the model grid, the mask there and the grid's
    affine."""

    channels: np.ndarray
    brain_mask: np.ndarray
    affine: np.ndarray


def _antialias(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Gaussian smoothing that gives voxels finer than ``VOXEL_MM`` the variance of a 2 mm
    box average (none for coarser voxels)."""
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
    ratio = VOXEL_MM / zooms
    sigmas = np.sqrt(np.clip(ratio**2 - 1, 0, None) / 12)
    return ndimage.gaussian_filter(volume, sigmas) if np.any(sigmas > 0.1) else volume


def to_model_grid(
    volume: np.ndarray, affine: np.ndarray, shape: tuple[int, ...], grid_affine: np.ndarray
) -> np.ndarray:
    """``volume`` (on ``affine``) anti-aliased and resampled (linear) onto the model grid."""
    volume = np.nan_to_num(np.asarray(volume, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    box = _box(volume.shape, affine, shape, grid_affine)
    cropped, cropped_affine = volume[box], _shifted(affine, box)
    return resample(_antialias(cropped, affine), cropped_affine, shape, grid_affine, order=1)


def _box(
    native_shape: tuple[int, ...],
    affine: np.ndarray,
    shape: tuple[int, ...],
    grid_affine: np.ndarray,
) -> tuple[slice, ...]:
    """The voxels of a native grid (``native_shape``, ``affine``) that the model grid covers,
    plus a few for smoothing."""
    low, high = world_bounds(np.linalg.inv(affine) @ grid_affine, [(0, n - 1) for n in shape])
    low = np.clip(np.floor(low).astype(int) - 3, 0, native_shape[:3])
    high = np.clip(np.ceil(high).astype(int) + 4, 0, native_shape[:3])
    return tuple(slice(a, b) for a, b in zip(low, high, strict=True))


def _shifted(affine: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    shifted = np.array(affine, float)
    shifted[:3, 3] = shifted[:3, :3] @ [s.start for s in box] + shifted[:3, 3]
    return shifted


def network_inputs(
    t1w: np.ndarray,
    brain_mask: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    prior: RegionalPrior,
) -> NetworkInputs:
    """The network's input channels of a T1w, its brain mask and its structures (integer
    FreeSurfer labels), all on one grid (``affine``)."""
    if not t1w.shape[:3] == brain_mask.shape[:3] == labels.shape[:3]:
        raise ValueError(
            f"T1w {t1w.shape}, brain mask {brain_mask.shape} and labels {labels.shape} differ "
            "in shape"
        )
    brain_mask = np.asarray(brain_mask) > 0
    bounds = mask_bounds(brain_mask, affine, MARGIN_MM)
    if bounds is None:
        raise ValueError("the brain mask is empty")
    shape, grid_affine = model_grid(
        nb.Nifti1Image(brain_mask.view(np.uint8), affine), VOXEL_MM, DIVISOR, bounds
    )
    mask = to_model_grid(brain_mask, affine, shape, grid_affine) > 0.5
    if not mask.any():
        raise ValueError("the brain mask is smaller than a 2 mm voxel")
    image = to_model_grid(np.squeeze(t1w), affine, shape, grid_affine)
    scale = max(float(np.percentile(image[mask], PERCENTILE)), 1e-6)
    image = np.where(mask, np.clip(image / scale, 0, T1W_CLIP), 0)
    painted = prior.paint(labels, affine)
    regional = np.where(mask, to_model_grid(painted, affine, shape, grid_affine), 0)
    channels = np.stack([image, mask, regional]).astype(np.float32)
    return NetworkInputs(channels, mask, grid_affine)


def predicted_suvr(network: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """The SUVR of a batch of network inputs: the regional prior plus the network's
    correction."""
    return batch[:, PRIOR_CHANNEL : PRIOR_CHANNEL + 1] + network(batch)


def card_prior(card: ModelCard) -> RegionalPrior:
    """The regional prior a card stores."""
    return RegionalPrior.from_dict(card.inputs["regional_prior"])


def check_card(card: ModelCard) -> None:
    """Refuse a card whose model reads other inputs than :func:`network_inputs` makes."""
    if card.task != "pet" or float(card.inputs.get("voxel_size_mm", 0)) != VOXEL_MM:
        raise ValueError(
            f"{card.name}: not a {VOXEL_MM:g} mm PET imputation model (task {card.task!r}, "
            f"voxel size {card.inputs.get('voxel_size_mm')!r})"
        )
    if list(card.inputs.get("channels", [])) != list(CHANNELS):
        raise ValueError(f"{card.name}: its input channels are not {list(CHANNELS)}")
    if "regional_prior" not in card.inputs:
        raise ValueError(f"{card.name}: its card has no regional_prior")


def predict_on_grid(network: torch.nn.Module, inputs: NetworkInputs, device: str = "cpu"):
    """The network's SUVR (X, Y, Z) on the model grid, non-negative, zero outside the mask."""
    network = network.to(device).eval()
    batch = torch.from_numpy(inputs.channels[None]).to(device)
    with (
        torch.no_grad(),
        torch.autocast("cuda", dtype=torch.float16, enabled=device.startswith("cuda")),
    ):
        suvr = predicted_suvr(network, batch)[0, 0].float().clamp_min(0).cpu().numpy()
    return np.where(inputs.brain_mask, suvr, 0).astype(np.float32)


def impute_suvr(
    t1w: np.ndarray,
    brain_mask: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    network: torch.nn.Module,
    card: ModelCard,
    device: str = "cpu",
) -> np.ndarray:
    """An FDG-like SUVR image (float32) predicted from a T1w, its brain mask and its
    structures (same grid, ``affine``), on that grid, zero outside the mask, divided by its
    own mean over the cerebellar cortex (where the labels have one) so that its reference
    region reads 1, as a measured SUVR's does."""
    check_card(card)
    inputs = network_inputs(t1w, brain_mask, labels, affine, card_prior(card))
    suvr = predict_on_grid(network, inputs, device)
    mask = np.asarray(brain_mask) > 0
    box = _box(mask.shape, affine, suvr.shape, inputs.affine)
    out = np.zeros(mask.shape, dtype=np.float32)
    out[box] = resample(suvr, inputs.affine, out[box].shape, _shifted(affine, box), order=1)
    out[~mask] = 0
    reference = mask & np.isin(labels, REFERENCE_LABELS)
    if reference.any():
        out /= max(float(out[reference].mean()), 1e-6)
    return out
