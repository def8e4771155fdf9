"""PET preprocessing steps (antspyx, numpy): the frames a static image averages, frame-to-frame
head-motion correction, and regional time-activity curves.

Functions work on files and return files, so that nipype caches them and they can be used
without nipype.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import File, SimpleInterface, TraitedSpec, traits

from bids_dl.derivatives import write_text_atomic
from bids_dl.images import save_image
from bids_dl.models.labels import STRUCTURES
from bids_dl.workflows.interfaces.ants import _scratch_folder, _set_threads
from bids_dl.workflows.interfaces.asl_preproc import load_series
from bids_dl.workflows.interfaces.motion import (
    IDENTITY_MOTION,
    MOTION_COLUMNS,
    VolumeMotion,
    ants_template,
    as_ants,
    framewise_displacement,
    motion_parameters,
    register_volume,
    tsv_text,
)

#: frames whose mean is below this share of the static image's are not registered (the first
#: seconds of a dynamic scan: too little signal for mutual information); their motion is n/a
MIN_SIGNAL_SHARE = 0.2
#: registrations of every frame: the first to the mean of the frames, which motion blurs and
#: which pulls each frame toward the average position (3 mm of one frame in four read as
#: 2.7 mm), the second to the mean of the frames so corrected
REFERENCE_PASSES = 2


def _write_motion(motions: list[VolumeMotion | None], out_file: str) -> str:
    """The motion TSV (fMRIPrep's columns), n/a for the frames left unregistered (None)."""
    parameters = motion_parameters([m or IDENTITY_MOTION for m in motions])
    parameters[[m is None for m in motions]] = np.nan
    table = np.column_stack([parameters, framewise_displacement(parameters)])
    write_text_atomic(tsv_text(dict(zip(MOTION_COLUMNS, table.T, strict=True))), out_file)
    return out_file


def _register_frames(
    frames: np.ndarray, reference: np.ndarray, enough: np.ndarray, template, out: Path
) -> tuple[np.ndarray, list[VolumeMotion | None]]:
    """Each frame marked ``enough`` rigidly registered to the reference and resampled onto
    it; the others kept as they are, their motion None."""
    fixed = as_ants(reference, template)
    corrected = frames.copy()
    motions: list[VolumeMotion | None] = [None] * frames.shape[3]
    for index in np.flatnonzero(enough):
        moving = as_ants(frames[..., index], template)
        warped, motions[index] = register_volume(
            fixed, moving, "Rigid", str(out / f"f{index:03d}_")
        )
        corrected[..., index] = warped.numpy()
    return corrected, motions


def correct_frame_motion(
    in_file: str, weights: list[float], out_dir: str, num_threads: int = 1
) -> dict[str, str]:
    """Frame-to-frame head-motion correction. The reference is the ``weights``-weighted mean
    of the frames; each frame with at least :data:`MIN_SIGNAL_SHARE` of its mean is rigidly
    registered to it (ANTs, Mattes mutual information) and resampled onto it (cubic B-spline,
    not clipped: PET values are quantitative); the static image is the weighted mean of the
    corrected frames. That is done :data:`REFERENCE_PASSES` times, each pass registering the
    original frames to the previous pass's static image. A 3D image is its own static image.

    Returns the corrected series (``out_file``), the ``static`` image (3D) and the motion TSV
    (``motion_file``: translations in mm, rotations in radians, framewise displacement).
    """
    out = Path(out_dir)
    image, frames = load_series(in_file)
    weights = np.asarray(weights, dtype=float)
    if weights.shape != (frames.shape[3],) or weights.min() < 0 or weights.sum() <= 0:
        raise ValueError(
            f"{len(weights)} weights for {frames.shape[3]} frames of {in_file}: one non-negative "
            "weight per frame, not all zero"
        )
    weights = weights / weights.sum()
    static = (frames @ weights).astype(np.float32)
    corrected = frames
    motions: list[VolumeMotion | None] = [IDENTITY_MOTION]
    if frames.shape[3] > 1:
        _set_threads(num_threads)
        template = ants_template(in_file, out)
        enough = frames.mean(axis=(0, 1, 2)) >= MIN_SIGNAL_SHARE * static.mean()
        with _scratch_folder(out):
            for _ in range(REFERENCE_PASSES):
                corrected, motions = _register_frames(frames, static, enough, template, out)
                static = (corrected @ weights).astype(np.float32)
    series = corrected if image.ndim == 4 else corrected[..., 0]
    return {
        "out_file": str(save_image(series, image.affine, out / "pet.nii.gz")),
        "static": str(save_image(static, image.affine, out / "static.nii.gz")),
        "motion_file": _write_motion(motions, str(out / "motion.tsv")),
    }


def labels_on_grid(image_file: str, labels_file: str) -> np.ndarray:
    """The labels as integers; ValueError unless they are on the image's grid."""
    image, labels = nb.load(image_file), nb.load(labels_file)
    if image.shape[:3] != labels.shape[:3] or not np.allclose(
        image.affine, labels.affine, atol=1e-3
    ):
        raise ValueError(f"{image_file} and {labels_file} are not on the same grid")
    return np.rint(np.asarray(labels.dataobj)).astype(int)


def time_activity_curves(
    pet_file: str, labels_file: str, frame_starts, frame_durations, out_file: str
) -> str:
    """The mean activity per frame (the image's units) of each structure of
    :data:`STRUCTURES` present in the labels (FreeSurfer values, on the PET grid): a TSV
    with ``frame_start`` and ``frame_duration`` (s) then one column per structure, named as
    FreeSurfer names it (``Left-Hippocampus``)."""
    _, frames = load_series(pet_file)
    labels = labels_on_grid(pet_file, labels_file)
    if not len(frame_starts) == len(frame_durations) == frames.shape[3]:
        raise ValueError(
            f"{frames.shape[3]} frames in {pet_file}, but {len(frame_starts)} starts and "
            f"{len(frame_durations)} durations"
        )
    columns = {"frame_start": frame_starts, "frame_duration": frame_durations}
    for value, (name, *_) in STRUCTURES.items():
        inside = labels == value
        if inside.any():
            columns[name] = frames[inside].mean(axis=0)
    write_text_atomic(tsv_text(columns), out_file)
    return out_file


class _MotionInputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True, desc="PET series (3D or 4D)")
    weights = traits.List(traits.Float, mandatory=True, desc="one weight per frame")
    num_threads = traits.Int(1, usedefault=True)


class _MotionOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the frames, motion-corrected")
    static = File(exists=True, desc="their weighted mean (3D)")
    motion_file = File(exists=True, desc="motion parameters and framewise displacement (TSV)")


class CorrectFrameMotion(SimpleInterface):
    """Frame-to-frame head-motion correction (:func:`correct_frame_motion`)."""

    input_spec = _MotionInputSpec
    output_spec = _MotionOutputSpec

    def _run_interface(self, runtime):
        self._results.update(
            correct_frame_motion(
                self.inputs.in_file, self.inputs.weights, runtime.cwd, self.inputs.num_threads
            )
        )
        return runtime


class _CurvesInputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True, desc="PET series (3D or 4D)")
    labels = File(exists=True, mandatory=True, desc="structure labels on the PET grid")
    frame_starts = traits.List(traits.Float, mandatory=True, desc="s after TimeZero")
    frame_durations = traits.List(traits.Float, mandatory=True, desc="s")


class _CurvesOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="time-activity curves (TSV)")


class TimeActivityCurves(SimpleInterface):
    """Mean activity per frame and structure (:func:`time_activity_curves`)."""

    input_spec = _CurvesInputSpec
    output_spec = _CurvesOutputSpec

    def _run_interface(self, runtime):
        self._results["out_file"] = time_activity_curves(
            self.inputs.in_file,
            self.inputs.labels,
            self.inputs.frame_starts,
            self.inputs.frame_durations,
            str(Path(runtime.cwd) / "tacs.tsv"),
        )
        return runtime
