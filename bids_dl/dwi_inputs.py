"""Checks of a diffusion series before any work: the image, its gradient table, and whether
that table can support a tensor. Each problem is one sentence naming the file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nb
import numpy as np

from bids_dl.models.gradients import GradientError, check_tensor_design, read_gradients

#: fewest volumes of a diffusion series: one b~0 and six directions
MIN_DWI_VOLUMES = 7


class DwiInputError(ValueError):
    """A diffusion series that cannot be processed, with the reason."""


@dataclass(frozen=True)
class DwiSeries:
    """One diffusion series and its gradient files (found by pybids, inheritance included)."""

    path: str
    bval: str | None
    bvec: str | None


def _load_series(path: str) -> tuple[nb.Nifti1Image, np.ndarray]:
    name = Path(path).name
    try:
        image = nb.load(path)
        data = np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel raises many types for unreadable or truncated files
        raise DwiInputError(f"{name}: not a readable NIfTI image ({error})") from None
    if data.ndim != 4:
        raise DwiInputError(
            f"{name}: a diffusion series is 4D (one volume per gradient); this image is "
            f"{data.ndim}D {data.shape}"
        )
    if data.shape[3] < MIN_DWI_VOLUMES:
        raise DwiInputError(
            f"{name}: {data.shape[3]} volumes; a tensor needs at least {MIN_DWI_VOLUMES} "
            "(one b~0 and six directions)"
        )
    if min(data.shape[:3]) < 2:
        raise DwiInputError(f"{name}: volumes of shape {data.shape[:3]} are not 3D images")
    if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
        bad = np.flatnonzero(~np.isfinite(data).all(axis=(0, 1, 2)))
        raise DwiInputError(
            f"{name}: NaN or infinite values in volume(s) {', '.join(map(str, bad[:10]))}"
        )
    return image, data


def check_dwi_series(series: DwiSeries) -> None:
    """Raise DwiInputError unless the series is a readable 4D image with finite values, a
    readable gradient table of as many entries as volumes, a b~0 volume, unit b-vectors and
    directions that support a tensor (``models.gradients.check_tensor_design``)."""
    name = Path(series.path).name
    for kind, path in (("bval", series.bval), ("bvec", series.bvec)):
        if path is None:
            raise DwiInputError(f"{name}: no .{kind} file (beside it or inherited)")
    _, data = _load_series(series.path)
    try:
        gradients = read_gradients(series.bval, series.bvec, data.shape[3])
        check_tensor_design(gradients.bvals, gradients.bvecs, source=Path(series.bvec).name)
    except GradientError as error:
        raise DwiInputError(f"{name}: {error}") from None
