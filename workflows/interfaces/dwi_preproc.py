"""Diffusion preprocessing steps (dipy, antspyx): MP-PCA denoising, then head-motion and
eddy-current correction with the b-vectors rotated, the b=0 reference and the motion
confounds; and the brain mask of the b=0 reference when no model gives one.

Functions work on files and return files, so that nipype caches them and they can be used
without nipype.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import File, SimpleInterface, TraitedSpec, traits

from bids_dl.derivatives import write_text_atomic
from bids_dl.images import save_image
from bids_dl.models.gradients import (
    B0_THRESHOLD,
    bvecs_to_voxel,
    bvecs_to_world,
    read_gradients,
    rotate_bvecs,
)
from bids_dl.workflows.interfaces.ants import _set_threads
from bids_dl.workflows.interfaces.images import largest_component_filled
from bids_dl.workflows.interfaces.motion import (
    IDENTITY_MOTION,
    MOTION_COLUMNS,
    ants_template,
    as_ants,
    register_volume,
    write_confounds,
)

LOGGER = logging.getLogger("bids_dl.dwi")
#: ``--dwi-denoise auto`` applies MP-PCA to series of at least this many volumes: the
#: Marchenko-Pastur fit separates noise from signal components only with enough of them
#: (Veraart et al., NeuroImage 2016 used 30 and more; with 7-12 it removes little)
MIN_MPPCA_VOLUMES = 12
#: fMRIPrep's confound columns, then the b-value
CONFOUND_COLUMNS = (*MOTION_COLUMNS, "b_value")


def should_denoise(mode: str, n_volumes: int) -> bool:
    """Whether ``--dwi-denoise`` ``mode`` applies MP-PCA to a series of ``n_volumes``."""
    return mode == "mppca" or (mode == "auto" and n_volumes >= MIN_MPPCA_VOLUMES)


def denoise_mppca(in_file: str, out_file: str) -> str:
    """MP-PCA denoising (dipy, 5x5x5 patches) of the raw series, inside a generous head mask
    (the mean volume above a tenth of its 99th percentile, dilated): the background, and the
    few voxels whose patches MP-PCA cannot estimate (NaN), keep their raw values."""
    from dipy.denoise.localpca import mppca
    from scipy import ndimage

    image = nb.load(in_file)
    data = np.asarray(image.dataobj, dtype=np.float32)
    mean = data.mean(-1)
    head = ndimage.binary_dilation(mean > 0.1 * np.percentile(mean, 99), iterations=3)
    denoised = mppca(data, mask=head, patch_radius=2)
    # patches without variance come back NaN: those voxels keep their raw values
    keep = head[..., None] & np.isfinite(denoised)
    denoised = np.where(keep, np.clip(denoised, 0, None), data).astype(np.float32)
    save_image(denoised, image.affine, out_file)
    return out_file


def _b0_reference(series: np.ndarray, b0_volumes: np.ndarray, template, work: Path):
    """The first b~0 volume, the others rigidly aligned to it, all averaged; and each b~0
    volume's motion."""
    first = as_ants(series[..., b0_volumes[0]], template)
    aligned, motions = [first.numpy()], {int(b0_volumes[0]): IDENTITY_MOTION}
    for index in b0_volumes[1:]:
        moving = as_ants(series[..., index], template)
        warped, motions[int(index)] = register_volume(
            first, moving, "Rigid", str(work / f"b0_{index}_")
        )
        aligned.append(warped.numpy())
    return as_ants(np.mean(aligned, axis=0), template), motions


def _write_gradients(bvals: np.ndarray, bvecs: np.ndarray, stem: Path) -> tuple[str, str]:
    bval_file, bvec_file = stem.with_suffix(".bval"), stem.with_suffix(".bvec")
    write_text_atomic(" ".join(f"{b:g}" for b in bvals) + "\n", bval_file)
    rows = (" ".join(f"{v:.6f}" for v in axis) for axis in np.asarray(bvecs).T)
    write_text_atomic("\n".join(rows) + "\n", bvec_file)
    return str(bval_file), str(bvec_file)


def correct_motion(
    in_file: str, bval_file: str, bvec_file: str, out_dir: str, num_threads: int = 1
) -> dict[str, str]:
    """Head-motion and eddy-current correction, as FSL's classical ``eddy_correct``: the b~0
    volumes rigidly and the diffusion-weighted ones affinely registered to the b=0
    reference (mutual information) and resampled onto it (cubic B-spline); each b-vector rotated by
    its volume's rotation (the affine's shears and scales, eddy currents, are not rotations).

    Returns the corrected series, the b=0 reference, the rotated ``.bval``/``.bvec`` (FSL
    convention of the output image), the world b-vectors (text, N x 3) and the confounds TSV.
    """
    _set_threads(num_threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    image = nb.load(in_file)
    series = np.asarray(image.dataobj, dtype=np.float32)
    gradients = read_gradients(bval_file, bvec_file, series.shape[3])
    b0_volumes = np.flatnonzero(gradients.bvals <= B0_THRESHOLD)
    template = ants_template(in_file, out)
    reference, motions = _b0_reference(series, b0_volumes, template, out)
    corrected = np.empty_like(series)
    for index in range(series.shape[3]):
        if index == b0_volumes[0]:
            corrected[..., index] = series[..., index]
            continue
        moving = as_ants(series[..., index], template)
        kind = "Rigid" if index in b0_volumes else "Affine"
        warped, motions[index] = register_volume(reference, moving, kind, str(out / f"v{index}_"))
        corrected[..., index] = warped.numpy()
    ordered = [motions[i] for i in range(series.shape[3])]
    world = bvecs_to_world(gradients.bvecs, image.affine)
    # a volume's matrix maps reference points to its own: its inverse carries its b-vector
    rotated = rotate_bvecs(world, np.array([np.linalg.inv(m.matrix) for m in ordered]))
    rotated[gradients.bvals <= B0_THRESHOLD] = 0.0
    outputs = {
        "out_file": str(save_image(np.clip(corrected, 0, None), image.affine, out / "dwi.nii.gz")),
        "b0_ref": str(save_image(reference.numpy(), image.affine, out / "b0_ref.nii.gz")),
        "confounds": write_confounds(
            ordered, str(out / "confounds.tsv"), {"b_value": gradients.bvals}
        ),
    }
    outputs["bval"], outputs["bvec"] = _write_gradients(
        gradients.bvals, bvecs_to_voxel(rotated, image.affine), out / "dwi"
    )
    np.savetxt(out / "bvecs_world.txt", rotated, fmt="%.6f")
    outputs["world_bvecs"] = str(out / "bvecs_world.txt")
    return outputs


def median_otsu_brain_mask(reference_file: str, out_file: str) -> str:
    """Brain mask of an EPI reference (b=0, ASL control mean) without a model: dipy's median
    Otsu (median filter radius 2, 4 passes), the largest component with holes filled."""
    from dipy.segment.mask import median_otsu

    image = nb.load(reference_file)
    _, mask = median_otsu(np.asarray(image.dataobj, dtype=np.float32), median_radius=2, numpass=4)
    save_image(largest_component_filled(mask).astype(np.uint8), image.affine, out_file)
    return out_file


class _DenoiseInputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True, desc="raw DWI series")
    mode = traits.Enum("auto", "mppca", "none", usedefault=True, desc="--dwi-denoise")


class _DenoiseOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the denoised series, or the input when not denoised")
    denoised = traits.Bool(desc="whether MP-PCA was applied")


class DenoiseDWI(SimpleInterface):
    """MP-PCA denoising as ``--dwi-denoise`` says (the input passes through otherwise)."""

    input_spec = _DenoiseInputSpec
    output_spec = _DenoiseOutputSpec

    def _run_interface(self, runtime):
        n_volumes = nb.load(self.inputs.in_file).shape[3]
        denoised = should_denoise(self.inputs.mode, n_volumes)
        if self.inputs.mode == "auto" and not denoised:
            LOGGER.info(
                "%s: %d volumes, fewer than %d: not denoised (--dwi-denoise mppca forces it)",
                self.inputs.in_file,
                n_volumes,
                MIN_MPPCA_VOLUMES,
            )
        out_file = self.inputs.in_file
        if denoised:
            out_file = denoise_mppca(self.inputs.in_file, str(Path(runtime.cwd) / "dwi.nii.gz"))
        self._results["out_file"] = out_file
        self._results["denoised"] = denoised
        return runtime


class _MotionInputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True, desc="DWI series")
    bval = File(exists=True, mandatory=True)
    bvec = File(exists=True, mandatory=True, desc="FSL convention of in_file")
    num_threads = traits.Int(1, usedefault=True)


class _MotionOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="corrected series on the b=0 reference's grid")
    b0_ref = File(exists=True)
    bval = File(exists=True)
    bvec = File(exists=True, desc="rotated, FSL convention of out_file")
    world_bvecs = File(exists=True, desc="rotated, world RAS+ axes (text, N x 3)")
    confounds = File(exists=True)


class CorrectMotion(SimpleInterface):
    """Head-motion and eddy-current correction (:func:`correct_motion`)."""

    input_spec = _MotionInputSpec
    output_spec = _MotionOutputSpec

    def _run_interface(self, runtime):
        self._results.update(
            correct_motion(
                self.inputs.in_file,
                self.inputs.bval,
                self.inputs.bvec,
                runtime.cwd,
                self.inputs.num_threads,
            )
        )
        return runtime


class _MedianOtsuInputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True, desc="EPI reference (b=0, ASL control mean)")


class _MedianOtsuOutputSpec(TraitedSpec):
    out_file = File(exists=True)


class MedianOtsuBrainMask(SimpleInterface):
    """Brain mask of an EPI reference by median Otsu (without a brain-mask model)."""

    input_spec = _MedianOtsuInputSpec
    output_spec = _MedianOtsuOutputSpec

    def _run_interface(self, runtime):
        out_file = str(Path(runtime.cwd) / "brain_mask.nii.gz")
        self._results["out_file"] = median_otsu_brain_mask(self.inputs.in_file, out_file)
        return runtime
