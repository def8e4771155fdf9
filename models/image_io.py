"""Reading a NIfTI file as one 3D volume, with a clear reason when it cannot be used."""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np


class ImageError(ValueError):
    """An input image that cannot be processed, with the reason in plain words."""


def read_volume(path: str | Path) -> tuple[nb.Nifti1Image, np.ndarray]:
    """A NIfTI file as one 3D volume and its data block, or :class:`ImageError` saying why not.

    The whole data block is read, so that a truncated file fails here and not later, in a
    workflow node or halfway through an evaluation.
    """
    try:
        image = nb.load(str(path))
    except Exception as error:  # nibabel raises many types for unreadable files
        raise ImageError(f"{path}: not a readable NIfTI image ({error})") from error
    if not isinstance(image, nb.Nifti1Image | nb.Nifti2Image):
        raise ImageError(f"{path}: not a NIfTI image ({type(image).__name__})")
    image = _as_3d(image, path)
    try:
        data = np.asanyarray(image.dataobj)
    except Exception as error:
        raise ImageError(f"{path}: the image data cannot be read, truncated? ({error})") from error
    return image, data


def load_volume(path: str | Path) -> nb.Nifti1Image:
    """A NIfTI file as one 3D volume (see :func:`read_volume`)."""
    return read_volume(path)[0]


def _as_3d(image: nb.Nifti1Image, path: str | Path) -> nb.Nifti1Image:
    """``image`` as a 3D volume (a single-volume 4D file is squeezed), with a usable voxel
    size and orientation."""
    shape = image.shape
    if len(shape) == 4 and shape[3] == 1:
        image = image.slicer[..., 0]
    elif len(shape) != 3:
        raise ImageError(f"{path}: expected a 3D volume, found shape {shape}")
    if min(image.shape) < 2:
        raise ImageError(f"{path}: a 3D volume needs at least 2 voxels per axis, found {shape}")
    zooms = np.asarray(image.header.get_zooms()[:3], dtype=float)
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        raise ImageError(f"{path}: invalid voxel size {tuple(zooms)}")
    if abs(np.linalg.det(image.affine[:3, :3])) < 1e-6:
        raise ImageError(f"{path}: the orientation matrix (affine) is singular")
    return image
