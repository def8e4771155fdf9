"""Segmentation metrics with voxel spacing taken into account: Dice, HD95, volume difference;
and image similarity inside a mask (SSIM)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def voxel_volume_mm3(image) -> float:
    """Volume of one voxel of a nibabel image, from the affine (not the header zooms, which
    can disagree)."""
    return float(abs(np.linalg.det(image.affine[:3, :3])))


def connected_lesions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components of a mask's non-zero voxels (lesions, as the MICCAI 2017 WMH
    challenge counts them) and their number."""
    return ndimage.label(np.asarray(mask) > 0, np.ones((3, 3, 3), dtype=bool))


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice overlap of two boolean masks; 1.0 when both are empty."""
    prediction, reference = prediction.astype(bool), reference.astype(bool)
    total = prediction.sum() + reference.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(prediction, reference).sum() / total)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hausdorff95(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> float:
    """95th percentile of the symmetric surface distances, in mm.

    ``nan`` when exactly one mask is empty (the distance is undefined), 0 when both are.
    """
    prediction, reference = prediction.astype(bool), reference.astype(bool)
    if not prediction.any() and not reference.any():
        return 0.0
    if not prediction.any() or not reference.any():
        return float("nan")
    # distances only matter around the two masks: crop to their joint bounding box (+1 voxel)
    corners = np.argwhere(prediction | reference)
    box = tuple(
        slice(max(low - 1, 0), high + 2)
        for low, high in zip(corners.min(0), corners.max(0), strict=True)
    )
    prediction, reference = np.pad(prediction[box], 1), np.pad(reference[box], 1)
    surface_p, surface_r = _surface(prediction), _surface(reference)
    to_reference = ndimage.distance_transform_edt(~surface_r, sampling=spacing)[surface_p]
    to_prediction = ndimage.distance_transform_edt(~surface_p, sampling=spacing)[surface_r]
    return float(np.percentile(np.concatenate([to_reference, to_prediction]), 95))


def volume_difference(prediction: np.ndarray, reference: np.ndarray, voxel_mm3: float) -> float:
    """Predicted minus reference volume, in mm^3."""
    return float((prediction.astype(bool).sum() - reference.astype(bool).sum()) * voxel_mm3)


def _mask_metrics(p: np.ndarray, r: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Dice, HD95 (mm) and volume difference (mm^3) of one predicted and reference mask."""
    return {
        "dice": dice(p, r),
        "hd95_mm": hausdorff95(p, r, spacing),
        "volume_difference_mm3": volume_difference(p, r, float(np.prod(spacing))),
    }


def label_metrics(
    prediction: np.ndarray, reference: np.ndarray, labels: dict[int, str], spacing: Sequence[float]
) -> list[dict[str, float | str | int]]:
    """One row per label: Dice, HD95 (mm) and volume difference (mm^3)."""
    return [
        {"label": index, "name": name,
         **_mask_metrics(prediction == index, reference == index, spacing)}
        for index, name in labels.items()
    ]  # fmt: skip


def region_metrics(
    prediction: np.ndarray,
    reference: np.ndarray,
    regions: dict[str, Sequence[int]],
    spacing: Sequence[float],
) -> list[dict[str, float | str]]:
    """One row per region (a union of labels, e.g. the BraTS whole tumour, core, enhancing):
    Dice, HD95 (mm) and volume difference (mm^3)."""
    return [
        {"label": name, "name": name,
         **_mask_metrics(np.isin(prediction, members), np.isin(reference, members), spacing)}
        for name, members in regions.items()
    ]  # fmt: skip


def lesion_detection(prediction: np.ndarray, reference: np.ndarray) -> dict[str, float | int]:
    """Lesion-wise detection, as in the MICCAI 2017 WMH challenge: lesions are 3D connected
    components (26-connectivity); a reference lesion is detected when a predicted voxel touches
    it, a predicted lesion is true when it touches a reference lesion.

    Returns the lesion counts, recall, precision and F1. Recall is 1.0 without reference
    lesions and precision 1.0 without predicted ones (nothing was missed, nothing was false);
    F1 is 0 when only one of the two is empty and 1.0 when both are.
    """
    prediction, reference = prediction.astype(bool), reference.astype(bool)
    reference_components, n_reference = connected_lesions(reference)
    prediction_components, n_prediction = connected_lesions(prediction)
    detected = len(np.setdiff1d(np.unique(reference_components[prediction]), [0]))
    true_predicted = len(np.setdiff1d(np.unique(prediction_components[reference]), [0]))
    recall = detected / n_reference if n_reference else 1.0
    precision = true_predicted / n_prediction if n_prediction else 1.0
    f1 = 2 * recall * precision / (recall + precision) if recall + precision else 0.0
    if not n_reference and not n_prediction:
        f1 = 1.0
    return {
        "reference_lesions": int(n_reference),
        "predicted_lesions": int(n_prediction),
        "lesion_recall": float(recall),
        "lesion_precision": float(precision),
        "lesion_f1": float(f1),
    }


def absolute_volume_difference_percent(prediction: np.ndarray, reference: np.ndarray) -> float:
    """|predicted - reference| volume as a percentage of the reference (the WMH challenge's
    AVD); ``nan`` for an empty reference."""
    reference_voxels = int(reference.astype(bool).sum())
    if reference_voxels == 0:
        return float("nan")
    difference = abs(int(prediction.astype(bool).sum()) - reference_voxels)
    return float(100 * difference / reference_voxels)


def masked_smooth(volume: np.ndarray, mask: np.ndarray, sigma) -> np.ndarray:
    """Normalised Gaussian smoothing inside the mask (``sigma`` in voxels, one value or one per
    axis): voxels outside neither contribute nor dilute; zero outside."""
    weight = ndimage.gaussian_filter(mask.astype(np.float64), sigma)
    smooth = ndimage.gaussian_filter(np.where(mask, volume, 0.0).astype(np.float64), sigma)
    return np.where(mask, smooth / np.maximum(weight, 1e-6), 0.0)


def ssim(x: np.ndarray, y: np.ndarray, mask: np.ndarray, sigma) -> float:
    """Mean SSIM of ``x`` against the reference ``y`` inside the mask: local statistics from a
    Gaussian window (``sigma`` in voxels per axis; 0 on an axis keeps it out of the window)
    over brain voxels only, constants from the reference's 1-99th percentile span."""
    values = y[mask]
    span = float(np.percentile(values, 99) - np.percentile(values, 1)) or 1.0
    c1, c2 = (0.01 * span) ** 2, (0.03 * span) ** 2
    mx, my = masked_smooth(x, mask, sigma), masked_smooth(y, mask, sigma)
    sxx = masked_smooth(x * x, mask, sigma) - mx**2
    syy = masked_smooth(y * y, mask, sigma) - my**2
    sxy = masked_smooth(x * y, mask, sigma) - mx * my
    index = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return float(np.mean(index[mask]))
