"""BOLD preprocessing steps (antspyx, scipy): the reference volume, slice-timing correction,
head-motion estimation, and the one-shot resampling of every volume through composed
transforms (motion, coregistration, normalisation).

Functions work on files and return files, so that nipype caches them and they can be used
without nipype.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    File,
    InputMultiObject,
    OutputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from bids_dl.images import save_image
from bids_dl.workflows.interfaces.ants import _set_threads
from bids_dl.workflows.interfaces.motion import (
    ants_template,
    as_ants,
    register_volume,
    write_confounds,
)

#: steady-state volumes whose voxel-wise median is the reference: enough to average the noise
#: out, few enough that slow drift does not blur it
REFERENCE_VOLUMES = 20
#: the file ANTs writes for the rigid transform of a registration with a given prefix
RIGID_TRANSFORM = "0GenericAffine.mat"


def load_bold(path: str) -> tuple[nb.Nifti1Image, np.ndarray]:
    image = nb.load(path)
    return image, np.asarray(image.dataobj, dtype=np.float32)


def bold_reference(in_file: str, non_steady_state: int, out_file: str) -> str:
    """The voxel-wise median of the first :data:`REFERENCE_VOLUMES` steady-state volumes (all
    volumes when fewer remain): the target of head-motion correction and coregistration."""
    image, data = load_bold(in_file)
    start = non_steady_state if non_steady_state < data.shape[3] else 0
    reference = np.median(data[..., start : start + REFERENCE_VOLUMES], axis=-1)
    return str(save_image(reference.astype(np.float32), image.affine, out_file))


def slice_times_aligned(
    data: np.ndarray, slice_timing: list[float], repetition_time: float, slice_axis: int
) -> np.ndarray:
    """Each slice's time series resampled, by a cubic spline through its samples, to the
    middle of the slice times (as fMRIPrep's reference time): the series then looks as if
    every slice of a volume was read at once. Slices read together (multiband) are shifted
    together; the first and last volumes hold the nearest sample where the spline would
    extrapolate."""
    from scipy.interpolate import CubicSpline

    times = np.asarray(slice_timing, dtype=float)
    target = (times.min() + times.max()) / 2
    volumes = np.arange(data.shape[3]) * repetition_time
    moved = np.moveaxis(data, slice_axis, 0)
    aligned = np.empty_like(moved)
    for index, slice_time in enumerate(times):
        acquired = volumes + slice_time
        wanted = np.clip(volumes + target, acquired[0], acquired[-1])
        spline = CubicSpline(acquired, moved[index], axis=-1)
        aligned[index] = spline(wanted)
    return np.moveaxis(aligned, 0, slice_axis)


def correct_slice_timing(
    in_file: str,
    slice_timing: list[float],
    repetition_time: float,
    slice_axis: int,
    out_file: str,
) -> str:
    """:func:`slice_times_aligned` on a file."""
    image, data = load_bold(in_file)
    aligned = slice_times_aligned(data, slice_timing, repetition_time, slice_axis)
    return str(save_image(aligned, image.affine, out_file, repetition_time))


def estimate_bold_motion(
    in_file: str, reference_file: str, repetition_time: float, out_dir: str, num_threads: int = 1
) -> dict:
    """Rigid registration (ANTs, mutual information) of every volume to the reference: the
    transforms (ITK, one file per volume), the series resampled on the reference's grid (cubic
    B-spline) and the motion confounds (six parameters and framewise displacement)."""
    import ants

    _set_threads(num_threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    image, data = load_bold(in_file)
    template = ants_template(in_file, out)
    reference = ants.image_read(reference_file)
    corrected = np.empty_like(data)
    transforms, motions = [], []
    for index in range(data.shape[3]):
        prefix = str(out / f"v{index:04d}_")
        warped, motion = register_volume(
            reference, as_ants(data[..., index], template), "Rigid", prefix
        )
        corrected[..., index] = warped.numpy()
        transforms.append(prefix + RIGID_TRANSFORM)
        motions.append(motion)
    return {
        "out_file": str(
            save_image(
                np.clip(corrected, 0, None), image.affine, out / "bold.nii.gz", repetition_time
            )
        ),
        "transforms": transforms,
        "motion_file": write_confounds(motions, str(out / "motion.tsv")),
    }


def grid_at_resolution(reference_file: str, zooms: tuple[float, ...], out_file: str) -> str:
    """An empty image covering ``reference_file``'s field of view with voxels of ``zooms``
    (mm): the T1w grid at the BOLD resolution, as fMRIPrep's ``space-T1w`` outputs."""
    reference = nb.load(reference_file)
    old_zooms = np.asarray(reference.header.get_zooms()[:3], dtype=float)
    new_zooms = np.asarray(zooms[:3], dtype=float)
    # rounded: header zooms are float32 (1.2 reads 1.2000000477)
    extent = np.round(np.asarray(reference.shape[:3]) * old_zooms / new_zooms, 3)
    shape = np.maximum(np.ceil(extent), 1)
    affine = reference.affine.copy()
    affine[:3, :3] = reference.affine[:3, :3] / old_zooms * new_zooms
    return str(save_image(np.zeros(tuple(shape.astype(int)), np.uint8), affine, out_file))


def resample_bold_series(
    in_file: str,
    repetition_time: float,
    reference_file: str,
    motion_transforms: list[str],
    to_reference: list[str],
    out_file: str,
    num_threads: int = 1,
) -> str:
    """Every volume resampled once onto ``reference_file``'s grid through its own motion
    transform composed with ``to_reference`` (BOLD reference -> T1w, then T1w -> template):
    one interpolation (cubic B-spline) instead of one per step. ``to_reference`` lists the
    transforms as ANTs does, the one nearest the output grid first."""
    import ants

    _set_threads(num_threads)
    out = Path(out_file).parent
    _, data = load_bold(in_file)
    template = ants_template(in_file, out)
    grid = ants.image_read(reference_file)
    series = np.empty((*grid.shape, len(motion_transforms)), np.float32)  # one copy, filled
    for index, motion in enumerate(motion_transforms):
        moving = as_ants(data[..., index], template)
        warped = ants.apply_transforms(
            grid, moving, [*to_reference, motion], interpolator="bSpline"
        )
        series[..., index] = np.clip(warped.numpy(), 0, None)
    return str(save_image(series, nb.load(reference_file).affine, out_file, repetition_time))


class _ReferenceInputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True, desc="the BOLD run")
    non_steady_state = traits.Int(0, usedefault=True, desc="initial volumes left out")


class _OutFileSpec(TraitedSpec):
    out_file = File(exists=True)


class BoldReference(SimpleInterface):
    """The run's reference volume (:func:`bold_reference`)."""

    input_spec = _ReferenceInputSpec
    output_spec = _OutFileSpec

    def _run_interface(self, runtime):
        self._results["out_file"] = bold_reference(
            self.inputs.in_file,
            self.inputs.non_steady_state,
            str(Path(runtime.cwd) / "boldref.nii.gz"),
        )
        return runtime


class _SliceTimingInputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True)
    slice_timing = traits.List(traits.Float, mandatory=True, desc="seconds, one per slice")
    repetition_time = traits.Float(mandatory=True, desc="seconds")
    slice_axis = traits.Int(2, usedefault=True, desc="voxel axis of the slices")


class SliceTimingCorrection(SimpleInterface):
    """Every slice shifted to the middle of the slice times (:func:`correct_slice_timing`)."""

    input_spec = _SliceTimingInputSpec
    output_spec = _OutFileSpec

    def _run_interface(self, runtime):
        self._results["out_file"] = correct_slice_timing(
            self.inputs.in_file,
            list(self.inputs.slice_timing),
            self.inputs.repetition_time,
            self.inputs.slice_axis,
            str(Path(runtime.cwd) / "bold_stc.nii.gz"),
        )
        return runtime


class _MotionInputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True)
    reference = File(exists=True, mandatory=True, desc="the run's reference volume")
    repetition_time = traits.Float(mandatory=True, desc="seconds")
    num_threads = traits.Int(1, usedefault=True)


class _MotionOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the run on the reference's grid, motion corrected")
    transforms = OutputMultiObject(File(exists=True), desc="one ANTs rigid transform per volume")
    motion_file = File(exists=True, desc="motion parameters and framewise displacement (TSV)")


class EstimateBoldMotion(SimpleInterface):
    """Head motion of every volume (:func:`estimate_bold_motion`)."""

    input_spec = _MotionInputSpec
    output_spec = _MotionOutputSpec

    def _run_interface(self, runtime):
        self._results.update(
            estimate_bold_motion(
                self.inputs.in_file,
                self.inputs.reference,
                self.inputs.repetition_time,
                runtime.cwd,
                self.inputs.num_threads,
            )
        )
        return runtime


class _GridInputSpec(TraitedSpec):
    reference = File(exists=True, mandatory=True, desc="the field of view (the T1w)")
    zooms_from = File(exists=True, mandatory=True, desc="an image with the wanted voxel size")


class GridAtResolution(SimpleInterface):
    """The T1w's field of view at the BOLD voxel size (:func:`grid_at_resolution`)."""

    input_spec = _GridInputSpec
    output_spec = _OutFileSpec

    def _run_interface(self, runtime):
        zooms = nb.load(self.inputs.zooms_from).header.get_zooms()[:3]
        self._results["out_file"] = grid_at_resolution(
            self.inputs.reference, zooms, str(Path(runtime.cwd) / "grid.nii.gz")
        )
        return runtime


class _ResampleSeriesInputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True, desc="the run (slice-timing corrected)")
    repetition_time = traits.Float(mandatory=True, desc="seconds")
    reference = File(exists=True, mandatory=True, desc="the output grid")
    motion_transforms = InputMultiObject(File(exists=True), mandatory=True)
    to_reference = InputMultiObject(
        File(exists=True), desc="BOLD reference -> output grid transforms, nearest the grid first"
    )
    num_threads = traits.Int(1, usedefault=True)


class ResampleBoldSeries(SimpleInterface):
    """Every volume resampled once through composed transforms (:func:`resample_bold_series`)."""

    input_spec = _ResampleSeriesInputSpec
    output_spec = _OutFileSpec

    def _run_interface(self, runtime):
        to_reference = self.inputs.to_reference if isdefined(self.inputs.to_reference) else []
        self._results["out_file"] = resample_bold_series(
            self.inputs.in_file,
            self.inputs.repetition_time,
            self.inputs.reference,
            list(self.inputs.motion_transforms),
            list(to_reference),
            str(Path(runtime.cwd) / "bold_resampled.nii.gz"),
            self.inputs.num_threads,
        )
        return runtime


class _TemplateGridInputSpec(TraitedSpec):
    template_dir = traits.Str(mandatory=True, desc="folder the template files are written to")


class _TemplateGridOutputSpec(TraitedSpec):
    t1w = File(exists=True, desc="the template on the BOLD output grid (res-2)")
    brain_mask = File(exists=True)


class TemplateGridFiles(SimpleInterface):
    """The template's 2 mm grid the BOLD runs are resampled onto."""

    input_spec = _TemplateGridInputSpec
    output_spec = _TemplateGridOutputSpec

    def _run_interface(self, runtime):
        from bids_dl.templates import write_template_grid

        grid = write_template_grid(self.inputs.template_dir)
        self._results.update(t1w=str(grid.t1w), brain_mask=str(grid.brain_mask))
        return runtime
