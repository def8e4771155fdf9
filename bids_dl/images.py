"""Reading anatomical images with a clear reason when they cannot be used."""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np


class ImageError(ValueError):
    """An input image that cannot be processed, with the reason in plain words."""


def load_3d_image(path: str | Path) -> nb.Nifti1Image:
    """Load a NIfTI file as one 3D volume, or raise :class:`ImageError` saying why not."""
    try:
        image = nb.load(str(path))
    except Exception as error:  # nibabel raises many types for unreadable files
        raise ImageError(f"{path}: not a readable NIfTI image ({error})") from error
    if not isinstance(image, nb.Nifti1Image | nb.Nifti2Image):
        raise ImageError(f"{path}: not a NIfTI image ({type(image).__name__})")
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
    try:
        image.dataobj[tuple(s // 2 for s in image.shape)]
        np.asanyarray(image.dataobj[..., -1])
    except Exception as error:
        raise ImageError(f"{path}: the image data cannot be read, truncated? ({error})") from error
    return image


def save_image(data: np.ndarray, affine: np.ndarray, path: str | Path) -> Path:
    """Save ``data`` as NIfTI with millimetre units and both qform and sform set (scanner)."""
    image = nb.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nb.save(image, str(path))
    return Path(path)
