"""ASL preprocessing steps (antspyx, scipy): head-motion correction per volume type, and the
M0 image the CBF is scaled by.

Functions work on files and return files, so that nipype caches them and they can be used
without nipype.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import File, SimpleInterface, TraitedSpec, isdefined, traits

from bids_dl.images import save_image
from bids_dl.workflows.interfaces.ants import _set_threads
from bids_dl.workflows.interfaces.motion import (
    IDENTITY_MOTION,
    ants_template,
    as_ants,
    register_volume,
    write_confounds,
)

#: the volume type whose mean is the series' reference, by preference: a control looks most
#: like the label and the M0 (without background suppression)
REFERENCE_TYPES = ("control", "m0scan", "deltam", "label", "cbf")
#: types registered straight to the reference type's first volume: label and control differ
#: by ~1 % in contrast, and a chained label -> first label -> control registration would move
#: every label by the same error, a systematic edge in every difference
SAME_TARGET = {"control": ("label",), "label": ("control",)}
#: full width at half maximum (mm) of the smoothing of M0 (as ASLPrep)
M0_SMOOTHING_FWHM_MM = 5.0


def load_series(path: str) -> tuple[nb.Nifti1Image, np.ndarray]:
    """An ASL series as 4D float32 (a single 3D ``deltam`` or ``cbf`` volume gets one
    volume axis)."""
    image = nb.load(path)
    series = np.asarray(image.dataobj, dtype=np.float32)
    return image, series if series.ndim == 4 else series[..., None]


def _type_mean(series: np.ndarray, context: list[str], kind: str) -> np.ndarray:
    return series[..., [i for i, c in enumerate(context) if c == kind]].mean(-1)


def correct_asl_motion(
    in_file: str, context: list[str], out_dir: str, num_threads: int = 1
) -> dict[str, str]:
    """Head-motion correction per volume type, as ASLPrep: label, control and M0 volumes
    differ in contrast, so each volume is rigidly registered (mutual information) to the first
    volume of its own type, that volume first aligned to the series' reference (the first
    control, else M0); volumes are resampled onto the reference (cubic B-spline). The first
    volume, not the mean, is the target: a mean of volumes that moved is blurred.

    Returns the corrected series, the reference (``aslref``) and the confounds TSV.
    """
    _set_threads(num_threads)
    out = Path(out_dir)
    image, series = load_series(in_file)
    reference_type = next(t for t in REFERENCE_TYPES if t in context)
    corrected, motions = series, [IDENTITY_MOTION]
    if series.shape[3] > 1:  # one deltam or cbf volume has nothing to align
        template = ants_template(in_file, out)
        first = context.index(reference_type)
        reference = as_ants(series[..., first], template)
        corrected, motions = series.copy(), [IDENTITY_MOTION] * series.shape[3]
        for kind in dict.fromkeys(context):
            target = reference
            if kind not in (reference_type, *SAME_TARGET.get(reference_type, ())):
                moving = as_ants(series[..., context.index(kind)], template)
                target = register_volume(reference, moving, "Rigid", str(out / f"{kind}_"))[0]
            for index in (i for i, c in enumerate(context) if c == kind and i != first):
                moving = as_ants(series[..., index], template)
                warped, motions[index] = register_volume(
                    target, moving, "Rigid", str(out / f"v{index}_")
                )
                corrected[..., index] = warped.numpy()
    reference_array = _type_mean(corrected, context, reference_type)
    return {
        "out_file": str(save_image(np.clip(corrected, 0, None), image.affine, out / "asl.nii.gz")),
        "aslref": str(save_image(reference_array, image.affine, out / "aslref.nii.gz")),
        "confounds": write_confounds(motions, str(out / "confounds.tsv")),
    }


def smooth_in_mask(volume: np.ndarray, mask: np.ndarray, zooms, fwhm_mm: float) -> np.ndarray:
    """Gaussian smoothing that only averages voxels inside ``mask`` (normalised
    convolution), so the brain edge is not darkened by the background; zero outside."""
    from scipy import ndimage

    sigma = [fwhm_mm / np.sqrt(8 * np.log(2)) / z for z in zooms]
    weights = ndimage.gaussian_filter(mask.astype(np.float32), sigma)
    smoothed = ndimage.gaussian_filter(np.where(mask, volume, 0).astype(np.float32), sigma)
    return np.where(mask & (weights > 1e-3), smoothed / np.maximum(weights, 1e-3), 0)


def _separate_m0(m0scan_file: str, reference_file: str, out: Path) -> np.ndarray:
    """The mean of a separate M0 scan, rigidly registered to the ASL reference."""
    import ants

    _, m0 = load_series(m0scan_file)
    reference = ants.image_read(reference_file)
    warped, _ = register_volume(
        reference, as_ants(m0.mean(-1), reference), "Rigid", str(out / "m0_")
    )
    return warped.numpy()


def asl_m0(
    series_file: str,
    context: list[str],
    m0_type: str,
    reference_file: str,
    mask_file: str,
    out_file: str,
    m0scan_file: str | None = None,
    m0_estimate: float | None = None,
) -> str:
    """The M0 image on the reference's grid, smoothed inside the brain mask (5 mm FWHM):
    the ``m0scan`` volumes of the series (``Included``), the separate M0 scan registered to
    the reference (``Separate``), the ``M0Estimate`` everywhere (``Estimate``), or, with no
    M0 (``Absent``), the mean control, which only gives relative perfusion."""
    image, series = load_series(series_file)
    mask = np.asarray(nb.load(mask_file).dataobj) > 0
    if m0_type == "Estimate":
        return str(
            save_image(np.where(mask, m0_estimate, 0).astype(np.float32), image.affine, out_file)
        )
    if m0_type == "Included":
        m0 = _type_mean(series, context, "m0scan")
    elif m0_type == "Separate":
        m0 = _separate_m0(m0scan_file, reference_file, Path(out_file).parent)
    else:
        m0 = _type_mean(series, context, "control")
    smoothed = smooth_in_mask(m0, mask, image.header.get_zooms()[:3], M0_SMOOTHING_FWHM_MM)
    return str(save_image(smoothed.astype(np.float32), image.affine, out_file))


class _MotionInputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True, desc="ASL series")
    context = traits.List(traits.Str, mandatory=True, desc="volume types (aslcontext.tsv)")
    num_threads = traits.Int(1, usedefault=True)


class _MotionOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="corrected series on the reference's grid")
    aslref = File(exists=True, desc="the reference: mean control (else M0), corrected")
    confounds = File(exists=True)


class CorrectAslMotion(SimpleInterface):
    """Head-motion correction per volume type (:func:`correct_asl_motion`)."""

    input_spec = _MotionInputSpec
    output_spec = _MotionOutputSpec

    def _run_interface(self, runtime):
        self._results.update(
            correct_asl_motion(
                self.inputs.in_file, self.inputs.context, runtime.cwd, self.inputs.num_threads
            )
        )
        return runtime


class _M0InputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True, desc="motion-corrected ASL series")
    context = traits.List(traits.Str, mandatory=True)
    m0_type = traits.Enum("Included", "Separate", "Estimate", "Absent", mandatory=True)
    aslref = File(exists=True, mandatory=True)
    brain_mask = File(exists=True, mandatory=True)
    m0scan = File(exists=True, desc="the separate M0 scan (M0Type Separate)")
    m0_estimate = traits.Float(desc="M0Estimate (M0Type Estimate)")


class _M0OutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="smoothed M0 on the reference's grid")


class ComputeM0(SimpleInterface):
    """The M0 image (:func:`asl_m0`)."""

    input_spec = _M0InputSpec
    output_spec = _M0OutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        self._results["out_file"] = asl_m0(
            inputs.in_file,
            inputs.context,
            inputs.m0_type,
            inputs.aslref,
            inputs.brain_mask,
            str(Path(runtime.cwd) / "m0.nii.gz"),
            m0scan_file=inputs.m0scan if isdefined(inputs.m0scan) else None,
            m0_estimate=inputs.m0_estimate if isdefined(inputs.m0_estimate) else None,
        )
        return runtime
