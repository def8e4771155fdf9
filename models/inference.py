"""Run a bundle on a NIfTI image: conform to the model grid, predict, map back to the native grid.

The model grid is axis-aligned in RAS at the card's voxel size and covers the whole input
field of view, so oblique and anisotropic inputs work the same way. Probabilities, not labels,
are resampled back to the native grid (slab by slab, to keep memory low), and the labels are
their argmax there.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import nibabel as nb
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from bids_dl.models.bundle import ModelCard
from bids_dl.models.metrics import connected_lesions
from bids_dl.models.synthesis import normalise_in_mask, normalise_intensities


def model_grid(
    image: nb.Nifti1Image,
    voxel_mm: float,
    divisor: int,
    bounds: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[tuple[int, ...], np.ndarray]:
    """RAS grid at ``voxel_mm`` covering the image (or the world ``bounds`` low, high), each
    size a multiple of ``divisor``."""
    if bounds is None:
        bounds = world_bounds(image.affine, [(0, n - 1) for n in image.shape[:3]])
    low, high = bounds
    shape = np.ceil((high - low) / voxel_mm).astype(int) + 1
    shape = (np.ceil(shape / divisor) * divisor).astype(int)
    centre = (low + high) / 2
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = centre - (shape - 1) * voxel_mm / 2
    return tuple(int(s) for s in shape), affine


def world_bounds(affine: np.ndarray, ranges) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest world coordinates of the corners of a box of voxel ``ranges``."""
    corners = np.array(np.meshgrid(*ranges, indexing="ij")).reshape(3, -1).T
    world = nb.affines.apply_affine(affine, corners)
    return world.min(0), world.max(0)


def mask_bounds(
    mask: np.ndarray, affine: np.ndarray, margin_mm: float
) -> tuple[np.ndarray, np.ndarray] | None:
    """World bounds of a mask's bounding box plus ``margin_mm`` (None for an empty mask)."""
    voxels = np.argwhere(mask)
    if not len(voxels):
        return None
    low, high = world_bounds(affine, list(zip(voxels.min(0), voxels.max(0), strict=True)))
    return low - margin_mm, high + margin_mm


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


@functools.cache
def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX-BF16: recent Xeon and
    EPYC), where oneDNN runs bfloat16 convolutions ~3x faster than float32; elsewhere bfloat16
    is emulated and slower, so float32 is kept. Read from /proc/cpuinfo (Linux)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _autocast(device: str, cpu_bfloat16: bool):
    """Mixed precision: always on CUDA; on a CPU only when the card asks for it
    (``inputs.cpu_bfloat16``) and the CPU has bfloat16 instructions."""
    if device == "cuda":
        return torch.autocast(device_type="cuda")
    enabled = cpu_bfloat16 and cpu_has_native_bfloat16()
    return torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def predict_probabilities(
    network: torch.nn.Module,
    volume: torch.Tensor,
    n_classes: int,
    window: tuple[int, int, int] | None,
    overlap: float = 0.5,
    device: str = "cpu",
    mirror_axes: tuple[int, ...] = (),
    cpu_bfloat16: bool = False,
) -> torch.Tensor:
    """Softmax probabilities ``[C, D, H, W]`` of normalised input channels ``[channels, D, H, W]``.

    With a ``window``, overlapping windows are blended with Gaussian weights; without, the
    whole volume goes through the network at once. With ``mirror_axes`` (axes of the volume),
    the probabilities are averaged over every combination of mirroring along them (test-time
    augmentation as in nnU-Net: 2^k passes for k axes). ``cpu_bfloat16``: see ``_autocast``.
    """
    passes = [
        [axis + 1 for axis in axes]
        for count in range(len(mirror_axes) + 1)
        for axes in itertools.combinations(mirror_axes, count)
    ]
    total = None
    for dims in passes:
        mirrored = volume.flip(dims) if dims else volume
        probabilities = _predict_volume(
            network, mirrored, n_classes, window, overlap, device, cpu_bfloat16
        )
        probabilities = probabilities.flip(dims) if dims else probabilities
        total = probabilities if total is None else total + probabilities
    return total / len(passes)


def _predict_volume(
    network: torch.nn.Module,
    volume: torch.Tensor,
    n_classes: int,
    window: tuple[int, int, int] | None,
    overlap: float,
    device: str,
    cpu_bfloat16: bool,
) -> torch.Tensor:
    """Probabilities of one pass over the volume: whole, or in blended windows."""
    shape = tuple(volume.shape[1:])
    if window is None or all(s <= w for s, w in zip(shape, window, strict=True)):
        with _autocast(device, cpu_bfloat16):
            logits = network(volume[None].to(device))
        return torch.softmax(logits.float(), dim=1)[0].cpu()
    window = tuple(min(w, s) for w, s in zip(window, shape, strict=True))
    weights = _gaussian_weights(window)
    total = torch.zeros((n_classes, *shape))
    norm = torch.zeros(shape)
    starts = [_window_starts(s, w, overlap) for s, w in zip(shape, window, strict=True)]
    for z in starts[0]:
        for y in starts[1]:
            for x in starts[2]:
                region = (slice(z, z + window[0]), slice(y, y + window[1]), slice(x, x + window[2]))
                with _autocast(device, cpu_bfloat16):
                    logits = network(volume[(slice(None), *region)][None].to(device))
                probabilities = torch.softmax(logits.float(), dim=1)[0].cpu()
                total[(slice(None), *region)] += probabilities * weights
                norm[region] += weights
    return total / norm


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
    contrasts = card.inputs.get("contrasts") or ["image"]
    if len(channels) != len(contrasts):
        raise ValueError(
            f"{card.name} takes {len(contrasts)} image(s) ({', '.join(contrasts)}), "
            f"got {len(channels)}"
        )
    reference = next((c for c in channels if c is not None), None)
    if reference is None:
        raise ValueError("no input image: every contrast is missing")
    needs_mask = bool(card.inputs.get("needs_brain_mask"))
    if needs_mask and mask is None:
        raise ValueError(f"{card.name} needs a brain mask")
    voxel_mm = float(card.inputs["voxel_size_mm"])
    divisor = getattr(network, "divisor", 1)
    bounds = None
    margin = card.inputs.get("brain_crop_margin_mm")
    if mask is not None and margin is not None:
        bounds = mask_bounds(mask, reference.affine, float(margin))
    window = card.inputs.get("window")
    if bounds is None and window:  # whole-head models: at least the field of view of training
        low, high = world_bounds(reference.affine, [(0, n - 1) for n in reference.shape[:3]])
        half = (np.asarray(window) - 1) * voxel_mm / 2
        centre = (low + high) / 2
        bounds = (np.minimum(low, centre - half), np.maximum(high, centre + half))
    shape, affine = model_grid(reference, voxel_mm, divisor, bounds)
    grid_mask = None
    if needs_mask:
        on_grid = resample(mask.astype(np.float32), reference.affine, shape, affine, order=1)
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
    labels = sorted(card.labels)
    network = network.to(device)
    probabilities = predict_probabilities(
        network,
        torch.stack(volumes),
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
        if groups:
            raise ValueError(f"{card.name}: nested_regions decoding needs every class")
        index = decode_nested_regions(
            native,
            [[labels.index(v) for v in region] for region in nested],
            card.inputs.get("nested_region_thresholds"),
        )
    dtype = np.uint8 if max(labels) < 256 else np.uint16
    return np.asarray(labels, dtype=dtype)[index], native


def decode_nested_regions(
    probabilities: np.ndarray,
    regions: list[list[int]],
    thresholds: Sequence[float] | None = None,
) -> np.ndarray:
    """Class index per voxel from nested regions (outer to inner, class positions), as
    region-based BraTS models decode: a voxel belongs to a region when the summed probability of
    its classes exceeds its threshold (0.5 unless ``thresholds`` gives one per region) and it
    lies in the enclosing region; it takes the most probable
    class of its innermost region that no inner region holds (the inner region's classes when
    none is left, e.g. enhancing tumour).

    The whole tumour is then everything that is more likely tumour than not, where the argmax
    over classes leaves out voxels whose tumour probability is split between classes.
    """
    index = np.zeros(probabilities.shape[1:], dtype=np.int16)
    inside = np.ones(probabilities.shape[1:], dtype=bool)
    thresholds = [0.5] * len(regions) if thresholds is None else thresholds
    for position, (region, threshold) in enumerate(zip(regions, thresholds, strict=True)):
        inside &= probabilities[region].sum(0) > threshold
        inner = set(regions[position + 1]) if position + 1 < len(regions) else set()
        own = [c for c in region if c not in inner] or region
        index[inside] = np.asarray(own, dtype=np.int16)[probabilities[own][:, inside].argmax(0)]
    return index


def keep_largest_component(labels: np.ndarray, **_) -> np.ndarray:
    """Labels with every foreground voxel outside the largest 26-connected component cleared."""
    components, count = connected_lesions(labels)
    if count < 2:
        return labels
    largest = int(np.argmax(np.bincount(components.ravel())[1:])) + 1
    return np.where(components == largest, labels, 0).astype(labels.dtype)


#: Components smaller than this cannot win ``keep_most_confident_component`` (unless all are).
CONFIDENT_COMPONENT_MIN_MM3 = 1000.0


def keep_most_confident_component(
    labels: np.ndarray, foreground_probability: np.ndarray | None = None, voxel_mm3: float = 1.0
) -> np.ndarray:
    """Labels of the 26-connected component with the highest mean foreground probability.

    False tumour (on enhancing vessels, the posterior fossa, CSF) comes as separate components
    that can outgrow a small tumour but are less certain; components under
    ``CONFIDENT_COMPONENT_MIN_MM3`` only count when nothing larger is found, so a few confident
    voxels cannot win.
    """
    if foreground_probability is None:
        raise ValueError("the most-confident-component step needs the model's probabilities")
    components, count = connected_lesions(labels)
    if count < 2:
        return labels
    index = np.arange(1, count + 1)
    sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
    confidence = ndimage.mean(foreground_probability, components, index)
    eligible = sizes * voxel_mm3 >= CONFIDENT_COMPONENT_MIN_MM3
    if not eligible.any():
        eligible[:] = True
    chosen = index[eligible][int(np.argmax(np.asarray(confidence)[eligible]))]
    return np.where(components == chosen, labels, 0).astype(labels.dtype)


def remove_small_components(labels: np.ndarray, min_voxels: float) -> np.ndarray:
    """Labels with every 26-connected foreground component under ``min_voxels`` cleared."""
    components, _ = connected_lesions(labels)
    small = np.bincount(components.ravel()) < min_voxels
    small[0] = False
    return np.where(small[components], 0, labels).astype(labels.dtype)


#: Label post-processing a card may ask for (``inputs.postprocessing``).
POSTPROCESSING = {
    "largest_component": keep_largest_component,
    "most_confident_component": keep_most_confident_component,
}


def postprocess(
    labels: np.ndarray,
    card: ModelCard,
    voxel_mm3: float = 1.0,
    probabilities: np.ndarray | None = None,
) -> np.ndarray:
    """Apply the card's post-processing: a named step (``inputs.postprocessing``) and the
    removal of lesions under ``inputs.min_lesion_mm3`` (``voxel_mm3``: one voxel's volume).
    ``probabilities`` (``segment``'s, background first) feed the steps that weigh confidence."""
    name = card.inputs.get("postprocessing")
    if name:
        if name not in POSTPROCESSING:
            raise ValueError(f"{card.name}: unknown post-processing {name!r}")
        foreground = None if probabilities is None else 1 - probabilities[0]
        labels = POSTPROCESSING[name](
            labels, foreground_probability=foreground, voxel_mm3=voxel_mm3
        )
    min_lesion_mm3 = float(card.inputs.get("min_lesion_mm3") or 0)
    if min_lesion_mm3 > 0:
        labels = remove_small_components(labels, min_lesion_mm3 / voxel_mm3)
    return labels
