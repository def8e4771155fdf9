"""Run a bundle on a NIfTI image: conform to the model grid, predict, map back to the native grid.

The model grid is axis-aligned in RAS at the card's voxel size and covers the whole input
field of view, so oblique and anisotropic inputs work the same way. Probabilities, not labels,
are resampled back to the native grid (slab by slab, to keep memory low), and the labels are
their argmax there.
"""

from __future__ import annotations

import nibabel as nb
import numpy as np
import torch
import torch.nn.functional as F

from bids_dl.models.card import ModelCard
from bids_dl.models.geometry import image_bounds, mask_bounds, model_grid, resample, world_bounds
from bids_dl.models.postprocessing import decode_nested_regions
from bids_dl.models.sliding_window import predict_probabilities
from bids_dl.models.transforms import normalise_in_mask, normalise_intensities


def segment(
    image: nb.Nifti1Image | list[nb.Nifti1Image | None],
    card: ModelCard,
    network: torch.nn.Module,
    device: str = "cpu",
    mask: np.ndarray | None = None,
    groups: dict[str, list[int]] | None = None,
    coverage: list[np.ndarray | None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities of ``image``, both on the (first) image's own grid.

    ``image`` is one image, or one per contrast of the card (``inputs.contrasts``) on the same
    grid, with None for a missing contrast (fed as zeros, as in training with channel dropout).
    With a ``mask`` (on the image grid) and a card that asks for it (``brain_crop_margin_mm``),
    the model grid covers only the mask's bounding box plus that margin, as in training; cards
    with ``needs_brain_mask`` normalise each contrast inside the mask.
    ``coverage`` gives, per contrast, the voxels it was acquired in (a registered contrast's
    field of view, on the image grid; None: all): with a mask, a contrast is normalised inside
    the mask and its coverage only, and fed as zeros (as missing) outside its coverage.
    ``groups`` (name -> label values) sums probabilities per group (see ``to_native``).

    Returns ``labels`` (uint8/uint16, label values of the card) and ``probabilities`` (float32,
    ``[C, *image.shape]`` in the card's label order, or one map per group).
    """
    channels = image if isinstance(image, list) else [image]
    reference = _check_inputs(channels, card, mask, groups)
    shape, affine = _card_grid(card, network, reference, mask)
    volumes = _model_inputs(channels, card, mask, coverage, reference.affine, shape, affine)
    labels = sorted(card.labels)
    window = card.inputs.get("window")
    probabilities = predict_probabilities(
        network.to(device),
        volumes,
        len(labels),
        tuple(window) if window else None,
        device=device,
        mirror_axes=tuple(card.inputs.get("test_time_mirror_axes", ())),
        cpu_bfloat16=bool(card.inputs.get("cpu_bfloat16")),
    )
    positions = None
    if groups:
        positions = {
            name: [labels.index(v) for v in values if v in labels]
            for name, values in groups.items()
        }
    index, native = to_native(
        probabilities, affine, reference.shape[:3], reference.affine, positions
    )
    nested = card.inputs.get("nested_regions")
    if nested:
        index = decode_nested_regions(
            native,
            [[labels.index(v) for v in region] for region in nested],
            card.inputs.get("nested_region_thresholds"),
        )
    dtype = np.uint8 if max(labels) < 256 else np.uint16
    return np.asarray(labels, dtype=dtype)[index], native


def _check_inputs(
    channels: list[nb.Nifti1Image | None],
    card: ModelCard,
    mask: np.ndarray | None,
    groups: dict[str, list[int]] | None,
) -> nb.Nifti1Image:
    """The reference image (the first given contrast), after checking that the inputs are
    what the card needs."""
    contrasts = card.inputs.get("contrasts") or ["image"]
    if len(channels) != len(contrasts):
        raise ValueError(
            f"{card.name} takes {len(contrasts)} image(s) ({', '.join(contrasts)}), "
            f"got {len(channels)}"
        )
    reference = next((c for c in channels if c is not None), None)
    if reference is None:
        raise ValueError("no input image: every contrast is missing")
    if card.inputs.get("needs_brain_mask") and mask is None:
        raise ValueError(f"{card.name} needs a brain mask")
    if card.inputs.get("nested_regions") and groups:
        raise ValueError(f"{card.name}: nested_regions decoding needs every class")
    return reference


def _card_grid(
    card: ModelCard, network: torch.nn.Module, reference: nb.Nifti1Image, mask: np.ndarray | None
) -> tuple[tuple[int, ...], np.ndarray]:
    """The model grid of ``reference``: the mask's box plus the card's margin for brain-centred
    models, else the whole field of view, at least a training window wide."""
    voxel_mm = float(card.inputs["voxel_size_mm"])
    bounds = None
    margin = card.inputs.get("brain_crop_margin_mm")
    if mask is not None and margin is not None:
        bounds = mask_bounds(mask, reference.affine, float(margin))
    window = card.inputs.get("window")
    if bounds is None and window:  # whole-head models: at least the field of view of training
        low, high = image_bounds(reference)
        half = (np.asarray(window) - 1) * voxel_mm / 2
        centre = (low + high) / 2
        bounds = (np.minimum(low, centre - half), np.maximum(high, centre + half))
    return model_grid(reference, voxel_mm, getattr(network, "divisor", 1), bounds)


def _model_inputs(
    channels: list[nb.Nifti1Image | None],
    card: ModelCard,
    mask: np.ndarray | None,
    coverage: list[np.ndarray | None] | None,
    reference_affine: np.ndarray,
    shape: tuple[int, ...],
    affine: np.ndarray,
) -> torch.Tensor:
    """The network's input channels ``[C, *shape]`` on the model grid, each normalised as the
    card says; zeros for a missing contrast."""
    grid_mask = None
    if card.inputs.get("needs_brain_mask"):
        on_grid = resample(mask.astype(np.float32), reference_affine, shape, affine, order=1)
        grid_mask = torch.from_numpy(on_grid > 0.5)
    volumes = []
    for position, channel in enumerate(channels):
        if channel is None:
            volumes.append(torch.zeros(shape))
            continue
        data = np.nan_to_num(channel.get_fdata(dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        on_grid = torch.from_numpy(
            resample(data, channel.affine, shape, affine, order=1).astype(np.float32)
        )
        if grid_mask is None:
            volumes.append(normalise_intensities(on_grid))
            continue
        inside = grid_mask
        if coverage is not None and coverage[position] is not None:
            covered = resample(
                coverage[position].astype(np.float32), channel.affine, shape, affine, order=1
            )
            inside = grid_mask & torch.from_numpy(covered > 0.999)  # edge voxels mix in zeros
        volumes.append(normalise_in_mask(on_grid, inside))
    return torch.stack(volumes)


def to_native(
    probabilities: torch.Tensor,
    model_affine: np.ndarray,
    native_shape: tuple[int, int, int],
    native_affine: np.ndarray,
    groups: dict[str, list[int]] | None = None,
    slab: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities on the model grid -> argmax index and probabilities on the native grid.

    Trilinear interpolation of all classes at once, slab by slab (matrix products when the grids
    are axis-aligned, else torch ``grid_sample``), only
    over the native voxels the model grid covers; the rest is background (class 0). With
    ``groups``, the returned probabilities are the sums over each group's classes (e.g. GM, WM,
    CSF) instead of every class, which keeps memory low for many-class models.
    """
    n_classes = probabilities.shape[0]
    index = np.zeros(native_shape, dtype=np.int16)
    n_out = len(groups) if groups else n_classes
    out = np.zeros((n_out, *native_shape), dtype=np.float32)
    if not groups:
        out[0] = 1.0
    # model-grid voxel coordinates of native voxel (i, j, k): linear in (i, j, k)
    to_model = np.linalg.inv(model_affine) @ native_affine
    model_shape = np.array(probabilities.shape[1:])
    inverse = np.linalg.inv(to_model)
    low, high = world_bounds(inverse, [(0, n - 1) for n in model_shape])  # native voxel bounds
    start = np.clip(np.floor(low).astype(int), 0, np.array(native_shape))
    stop = np.clip(np.ceil(high).astype(int) + 1, 0, np.array(native_shape))
    if np.any(stop <= start):
        return index, out
    order = np.abs(to_model[:3, :3]).argmax(0)  # model axis along each native axis
    permuted = to_model[np.r_[order, 3]]
    aligned = len(set(order)) == 3 and np.allclose(
        permuted[:3, :3], np.diag(np.diag(permuted[:3, :3])), atol=1e-6
    )  # axis-aligned grids (any RAS/LIA/LPS... image without obliquity): separable, faster
    if aligned:
        volume = probabilities.permute(0, *(1 + order)).contiguous()
        mx, my, mz = (
            _interpolation_matrix(
                permuted[a, a], permuted[a, 3], start[a], stop[a], volume.shape[1 + a]
            )
            for a in range(3)
        )
    else:
        volume = probabilities[None]
        scale = torch.tensor(2.0 / np.maximum(model_shape - 1, 1), dtype=torch.float32)
        j, k = np.meshgrid(
            np.arange(start[1], stop[1]), np.arange(start[2], stop[2]), indexing="ij"
        )
        plane = torch.from_numpy(np.stack([j, k], -1).astype(np.float32))
        matrix = torch.from_numpy(to_model[:3, :3].astype(np.float32))
        offset = torch.from_numpy(to_model[:3, 3].astype(np.float32))
    for first in range(start[0], stop[0], slab):
        last = min(first + slab, stop[0])
        if aligned:  # trilinear interpolation as three small matrix products
            rows = mx[first - start[0] : last - start[0]]
            sampled = torch.einsum("cxyz,ix,jy,kz->cijk", volume, rows, my, mz)
        else:
            i = torch.arange(first, last, dtype=torch.float32)
            ijk = torch.cat(
                [
                    i[:, None, None, None].expand(-1, *plane.shape[:2], 1),
                    plane[None].expand(len(i), -1, -1, -1),
                ],
                dim=-1,
            )
            grid = ((ijk @ matrix.T + offset) * scale - 1).flip(-1)  # (x, y, z) = (W, H, D)
            sampled = F.grid_sample(
                volume, grid[None], mode="bilinear", padding_mode="zeros", align_corners=True
            )[0]
        region = (slice(first, last), slice(start[1], stop[1]), slice(start[2], stop[2]))
        _store(sampled, region, index, out, groups)
    return index, out


def _store(sampled: torch.Tensor, region, index: np.ndarray, out: np.ndarray, groups) -> None:
    """Normalise interpolated probabilities (background outside the grid), keep argmax/groups."""
    sampled[0][sampled.sum(0) < 1e-3] = 1.0  # outside the model grid: background
    sampled /= sampled.sum(0, keepdim=True)
    best, best_index = sampled[0].clone(), torch.zeros(sampled.shape[1:], dtype=torch.int16)
    for channel in range(1, sampled.shape[0]):  # a running max: faster than argmax(0) here
        better = sampled[channel] > best
        best = torch.where(better, sampled[channel], best)
        best_index[better] = channel
    index[region] = best_index.numpy()
    if groups:
        for position, members in enumerate(groups.values()):
            out[(position, *region)] = sampled[members].sum(0).numpy()
    else:
        out[(slice(None), *region)] = sampled.numpy()


def _interpolation_matrix(scale: float, shift: float, first: int, last: int, size: int):
    """Linear-interpolation weights ``[last - first, size]`` for one axis, with zeros beyond the
    grid (as ``grid_sample`` pads)."""
    position = scale * np.arange(first, last) + shift
    below = np.floor(position).astype(int)
    weight = (position - below).astype(np.float32)
    matrix = np.zeros((last - first, size + 2), dtype=np.float32)  # one spare column each side
    rows = np.arange(last - first)
    matrix[rows, np.clip(below, -1, size) + 1] += 1 - weight
    matrix[rows, np.clip(below + 1, -1, size) + 1] += weight
    return torch.from_numpy(np.ascontiguousarray(matrix[:, 1:-1]))
