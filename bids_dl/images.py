"""Reading anatomical images with a clear reason when they cannot be used."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nb
import numpy as np

from bids_dl.models.image_io import ImageError, read_volume

LOGGER = logging.getLogger("bids_dl.images")


def load_3d_image(path: str | Path, require_signal: bool = False) -> nb.Nifti1Image:
    """Load a NIfTI file as one 3D volume, or raise :class:`ImageError` saying why not.

    The whole data block is read (a truncated file fails here, not in a workflow node); with
    ``require_signal``, an image whose finite voxels all hold one value (an empty or all-NaN
    acquisition, a failed conversion) is refused too: registration and normalisation need
    contrast.
    """
    image, data = read_volume(path)
    if require_signal:
        finite = data[np.isfinite(data)] if data.dtype.kind == "f" else data
        if finite.size == 0 or finite.min() == finite.max():
            value = "no finite value" if finite.size == 0 else f"the value {finite.min()} only"
            raise ImageError(f"{path}: the image holds {value}: there is no contrast to process")
    return image


def save_image(
    data: np.ndarray, affine: np.ndarray, path: str | Path, repetition_time: float | None = None
) -> Path:
    """Save ``data`` as NIfTI with millimetre units and both qform and sform set (scanner);
    a 4D series gets ``repetition_time`` (s) as its fourth zoom when given."""
    image = nb.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm", "sec" if data.ndim == 4 else None)
    if repetition_time is not None and data.ndim == 4:
        image.header.set_zooms((*image.header.get_zooms()[:3], repetition_time))
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nb.save(image, str(path))
    return Path(path)


#: The largest brain (mL) an already skull-stripped image is taken to hold: adult brain masks
#: hold 1.0-1.8 L, a whole head with scalp and skull 3-5 L.
STRIPPED_BRAIN_MAX_ML = 2500.0
#: The smallest share of face voxels that must hold the background value.
STRIPPED_FACE_SHARE = 0.5


def face_voxels(data: np.ndarray) -> np.ndarray:
    """The values on the six faces of a volume (where a head image shows air or scalp)."""
    return np.concatenate([
        data[[0, -1]].ravel(), data[:, [0, -1]].ravel(), data[:, :, [0, -1]].ravel()
    ])  # fmt: skip


def face_background(data: np.ndarray) -> tuple[float, float]:
    """The most frequent value on the faces of a volume, and the share of face voxels holding it.

    Skull stripping leaves one value around the brain: 0, or what a later normalisation made
    of it (the z-scored BraTS images hold a negative constant there); the brain may touch a
    face where the field of view is tight (3 voxels in BraTS pat0006). A raw head image has
    noise there instead.
    """
    values, counts = np.unique(face_voxels(data), return_counts=True)
    most = int(np.argmax(counts))
    return float(values[most]), float(counts[most] / counts.sum())


def finite_data(image: nb.Nifti1Image) -> np.ndarray:
    """The image as float32 with non-finite values set to 0 (as ``conform`` does)."""
    data = image.get_fdata(dtype=np.float32)
    data[~np.isfinite(data)] = 0
    return data


def finite_copy(in_file: str | Path, out_file: str | Path) -> str:
    """``in_file`` itself when all its voxels are finite, else a copy at ``out_file`` with the
    non-finite ones set to 0 (as ``conform`` does), and a warning: a registration then gets the
    same input whatever its reader makes of NaN."""
    image = load_3d_image(in_file)
    data = image.get_fdata(dtype=np.float32)
    if not zero_non_finite(data, in_file):
        return str(in_file)
    return str(save_image(data, image.affine, out_file))


def zero_non_finite(data: np.ndarray, source: str | Path) -> int:
    """Set the non-finite voxels of ``data`` to 0 in place, warn about ``source`` when there
    are any, and return how many there were."""
    non_finite = ~np.isfinite(data)
    count = int(np.count_nonzero(non_finite))
    if count:
        LOGGER.warning("%s: %d non-finite voxels set to 0", source, count)
        data[non_finite] = 0
    return count


def foreground_ml(path: str | Path) -> float | None:
    """The volume (mL) of what differs from the image's background, or None when it has no
    background: fewer than ``STRIPPED_FACE_SHARE`` of its face voxels share one value."""
    image = load_3d_image(path)
    data = finite_data(image)
    background, share = face_background(data)
    if share < STRIPPED_FACE_SHARE:
        return None
    voxel_ml = float(np.prod(image.header.get_zooms()[:3])) / 1000
    return float(np.count_nonzero(data != background) * voxel_ml)


def is_skull_stripped(path: str | Path) -> bool:
    """Whether an image already shows the brain alone: most of its faces hold one value and,
    apart from that background, no more than a brain's volume remains (sMRIPrep's test looks
    at the faces only, which a zero-padded head also passes)."""
    volume = foreground_ml(path)
    return volume is not None and 0 < volume <= STRIPPED_BRAIN_MAX_ML
