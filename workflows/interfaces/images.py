"""Small voxel-wise image operations."""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import File, SimpleInterface, TraitedSpec
from scipy import ndimage

from bids_dl.images import face_background, finite_data, save_image


def largest_component_filled(mask: np.ndarray) -> np.ndarray:
    """Keep the largest connected part of a mask and fill its holes (a brain is one piece)."""
    labels, count = ndimage.label(mask)
    if count > 1:
        sizes = ndimage.sum(mask, labels, range(1, count + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(mask)


def regional_means(
    maps: dict[str, np.ndarray],
    inside: np.ndarray,
    labels: dict[str, np.ndarray],
    regions: dict[str, tuple[str, int, str]],
    prefix: str,
) -> dict[str, float | str]:
    """``<prefix>_<map>_mean_<region>`` of each map inside ``inside``, per region of
    ``regions`` (column part -> (label image, value, name)) whose label image is in
    ``labels``; n/a below 10 voxels."""
    measures: dict[str, float | str] = {}
    for region, (image, value, _) in regions.items():
        if image not in labels:
            continue
        voxels = inside & (labels[image] == value)
        for name, values in maps.items():
            enough = voxels.sum() >= 10
            measures[f"{prefix}_{name}_mean_{region}"] = (
                round(float(values[voxels].mean()), 4) if enough else "n/a"
            )
    return measures


def label_images(dseg_file: str, aseg_file: str | None) -> dict[str, np.ndarray]:
    """The tissue labels and, when given, the structure labels, keyed as in the regions."""
    labels = {"dseg": np.asarray(nb.load(dseg_file).dataobj)}
    if aseg_file:
        labels["aseg"] = np.asarray(nb.load(aseg_file).dataobj)
    return labels


def apply_brain_mask(in_file: str, mask_file: str, out_file: str) -> str:
    """Zero everything outside the brain mask (same grid required)."""
    image = nb.load(in_file)
    mask = nb.load(mask_file)
    if image.shape[:3] != mask.shape[:3] or not np.allclose(image.affine, mask.affine, atol=1e-3):
        raise ValueError(f"{in_file} and {mask_file} are not on the same grid")
    data = image.get_fdata(dtype=np.float32) * (mask.get_fdata() > 0.5)
    save_image(data, image.affine, out_file)
    return out_file


class _ApplyMaskInputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True)
    mask_file = File(exists=True, mandatory=True)


class _ApplyMaskOutputSpec(TraitedSpec):
    out_file = File(exists=True)


class ApplyBrainMask(SimpleInterface):
    """Skull-strip an image with a brain mask."""

    input_spec = _ApplyMaskInputSpec
    output_spec = _ApplyMaskOutputSpec

    def _run_interface(self, runtime):
        out_file = str(Path(runtime.cwd) / "brain.nii.gz")
        self._results["out_file"] = apply_brain_mask(
            self.inputs.in_file, self.inputs.mask_file, out_file
        )
        return runtime


def brain_mask_from_background(in_file: str, out_file: str) -> str:
    """The brain of an already skull-stripped image: the voxels that differ from its
    background (the most frequent value on its faces), as one piece with its holes filled."""
    image = nb.load(in_file)
    data = finite_data(image)
    background, _ = face_background(data)
    mask = largest_component_filled(data != background)
    save_image(mask.astype(np.uint8), image.affine, out_file)
    return out_file


class _BackgroundMaskInputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True, desc="an already skull-stripped image")


class _BackgroundMaskOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="binary brain mask on the same grid")


class BrainMaskFromBackground(SimpleInterface):
    """Brain mask of an image that is already skull-stripped (``--skull-strip-t1w``)."""

    input_spec = _BackgroundMaskInputSpec
    output_spec = _BackgroundMaskOutputSpec

    def _run_interface(self, runtime):
        out_file = str(Path(runtime.cwd) / "brain_mask.nii.gz")
        self._results["out_file"] = brain_mask_from_background(self.inputs.in_file, out_file)
        return runtime
