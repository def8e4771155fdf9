"""Segmentation metrics with voxel spacing taken into account: Dice, HD95, volume difference."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


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


def label_metrics(
    prediction: np.ndarray, reference: np.ndarray, labels: dict[int, str], spacing: Sequence[float]
) -> list[dict[str, float | str | int]]:
    """One row per label: Dice, HD95 (mm) and volume difference (mm^3)."""
    voxel_mm3 = float(np.prod(spacing))
    rows = []
    for index, name in labels.items():
        p, r = prediction == index, reference == index
        rows.append({
            "label": index,
            "name": name,
            "dice": dice(p, r),
            "hd95_mm": hausdorff95(p, r, spacing),
            "volume_difference_mm3": volume_difference(p, r, voxel_mm3),
        })  # fmt: skip
    return rows
