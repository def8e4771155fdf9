"""Classical anatomical steps (antspyx): bias correction, brain mask, registration, tissues.

Each function works on files and returns files, so that nipype caches it and the functions can
be used without nipype. Parameters were chosen for a 2-core machine (see README, Performance).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import File, InputMultiObject, SimpleInterface, TraitedSpec, traits
from scipy import ndimage

from bids_dl.derivatives import TISSUE_LOOKUP
from bids_dl.images import finite_copy, save_image
from bids_dl.templates import TemplateFiles, write_template_files
from bids_dl.workflows.interfaces.images import largest_component_filled

#: Tissue labels of the ``dseg`` output, in fMRIPrep's order.
TISSUE_LABELS = {index: abbreviation for index, _, abbreviation, _ in TISSUE_LOOKUP}


def _set_threads(num_threads: int) -> None:
    """ITK reads its thread count from the environment when a filter starts."""
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(max(1, int(num_threads)))


@contextlib.contextmanager
def _scratch_folder(parent: Path):
    """Point Python's temporary files into a folder under ``parent``, deleted afterwards.

    Some antspyx functions write to ``tempfile`` names and never delete them; on a cluster
    node that fills ``/tmp``.
    """
    previous = tempfile.tempdir
    with tempfile.TemporaryDirectory(dir=parent, prefix="scratch_") as scratch:
        tempfile.tempdir = scratch
        try:
            yield Path(scratch)
        finally:
            tempfile.tempdir = previous


def _shrink_factor(image, target_mm: float) -> int:
    return max(1, int(round(target_mm / min(image.spacing))))


def n4_bias_correct(in_file: str, out_file: str, num_threads: int = 1) -> str:
    """N4 bias-field correction inside an Otsu head mask, fitted on a ~4 mm grid.

    The head mask keeps N4 from fitting the noisy background, which is both more accurate and
    five times faster than fitting the whole field of view.
    """
    import ants

    _set_threads(num_threads)
    image = ants.image_read(in_file)
    image = image - min(0.0, float(image.min()))
    head = ants.threshold_image(image, "Otsu", 1)
    corrected = ants.n4_bias_field_correction(
        image,
        mask=head,
        shrink_factor=_shrink_factor(image, 4.0),
        convergence={"iters": [50, 50, 30], "tol": 1e-7},
    )
    ants.image_write(corrected, out_file)
    return out_file


def brain_mask_from_template(
    in_file: str,
    template: TemplateFiles,
    out_file: str,
    work_prefix: str,
    num_threads: int = 1,
) -> str:
    """Brain mask by registering the template brain onto the (bias-corrected) head.

    Two stages: an affine fit of the template brain to the whole head, then a quick SyN
    restricted to the affine mask dilated by 6 mm, so that scalp and neck cannot pull the
    deformation. Both run on the head resampled to 2 mm (five times faster than 1 mm, same
    mask within a voxel); the warped template mask is thresholded at 0.5 on the native grid,
    holes filled, and only the largest connected part kept.
    """
    import ants

    _set_threads(num_threads)
    native = ants.image_read(in_file)
    head = native
    if min(native.spacing) < 2.0:
        head = ants.resample_image(native, (2.0, 2.0, 2.0), use_voxels=False, interp_type=0)
    template_t1w = ants.image_read(str(template.t1w))
    template_mask = ants.image_read(str(template.brain_mask))
    affine = ants.registration(
        fixed=head,
        moving=template_t1w,
        type_of_transform="antsRegistrationSyNQuick[a]",
        outprefix=f"{work_prefix}affine_",
    )
    affine_mask = ants.apply_transforms(head, template_mask, affine["fwdtransforms"]).numpy() > 0.5
    distance = ndimage.distance_transform_edt(~affine_mask, sampling=head.spacing)
    dilated = head.new_image_like((distance <= 6.0).astype(np.float32))
    deformable = ants.registration(
        fixed=head * dilated,
        moving=template_t1w,
        type_of_transform="antsRegistrationSyNQuick[s]",
        initial_transform=affine["fwdtransforms"][0],
        outprefix=f"{work_prefix}syn_",
    )
    warped = ants.apply_transforms(native, template_mask, deformable["fwdtransforms"])
    mask = largest_component_filled(warped.numpy() > 0.5)
    reference = nb.load(in_file)
    save_image(mask.astype(np.uint8), reference.affine, out_file)
    return out_file


def register_to_template(
    brain_file: str,
    template: TemplateFiles,
    out_prefix: str,
    num_threads: int = 1,
    sloppy: bool = False,
) -> dict[str, str]:
    """Rigid -> affine -> SyN registration of the skull-stripped T1w to the template brain.

    The optimisation runs against the template resampled to 2 mm (SyN levels at 8, 4 and 2 mm,
    Mattes mutual information throughout), which keeps it near a minute on two cores; the
    transforms are physical, so the outputs are still resampled on the 1 mm template grid.
    ``sloppy`` (tests) stops SyN at 4 mm. Writes forward and inverse composite transforms
    (HDF5).
    """
    import ants

    _set_threads(num_threads)
    moving = ants.image_read(brain_file)
    fixed = ants.image_read(str(template.t1w))
    fixed_2mm = ants.resample_image(fixed, (2.0, 2.0, 2.0), use_voxels=False, interp_type=0)
    result = ants.registration(
        fixed=fixed_2mm,
        moving=moving,
        type_of_transform="SyNRA",
        aff_iterations=(1000, 500, 250) if not sloppy else (500, 250, 0),
        aff_shrink_factors=(4, 2, 1),
        aff_smoothing_sigmas=(2, 1, 0),
        reg_iterations=(100, 70, 40) if not sloppy else (60, 30, 0),
        write_composite_transform=True,
        outprefix=out_prefix,
    )
    return {
        "forward_transform": result["fwdtransforms"],
        "reverse_transform": result["invtransforms"],
    }


def segment_tissues(in_file: str, mask_file: str, out_prefix: str, num_threads: int = 1) -> dict:
    """Three-class Atropos (k-means start, MRF 0.1) inside the brain mask.

    Classes are named by their mean intensity on a T1w: darkest CSF, then GM, brightest WM.
    Returns the GM/WM/CSF probability maps and the ``dseg`` (1 GM, 2 WM, 3 CSF).
    """
    import ants

    _set_threads(num_threads)
    image = ants.image_read(in_file)
    mask = ants.image_read(mask_file)
    # antspyx leaves Atropos' probability files in the temporary folder: keep them in ours
    with _scratch_folder(Path(out_prefix).parent):
        segmentation = ants.atropos(a=image, x=mask, i="kmeans[3]", m="[0.1,1x1x1]", c="[3,0]")
        probabilities = [p.numpy() for p in segmentation["probabilityimages"]]
    intensities = image.numpy()
    inside = mask.numpy() > 0
    means = [
        float((p * intensities)[inside].sum() / max(p[inside].sum(), 1e-6)) for p in probabilities
    ]
    csf, gm, wm = (probabilities[i] for i in np.argsort(means))
    reference = nb.load(in_file)
    outputs = {}
    for name, probability in (("GM", gm), ("WM", wm), ("CSF", csf)):
        path = f"{out_prefix}label-{name}_probseg.nii.gz"
        data = np.where(inside, np.clip(probability, 0, 1), 0).astype(np.float32)
        save_image(data, reference.affine, path)
        outputs[name] = path
    dseg = (np.argmax(np.stack([gm, wm, csf]), axis=0) + 1).astype(np.uint8)
    dseg[~inside] = 0
    outputs["dseg"] = f"{out_prefix}dseg.nii.gz"
    save_image(dseg, reference.affine, outputs["dseg"])
    return outputs


def apply_transform(
    in_file: str,
    reference_file: str,
    transform: str | list[str],
    out_file: str,
    labels: bool = False,
    invert: bool = False,
) -> str:
    """Resample ``in_file`` onto ``reference_file``'s grid through an ANTs transform (or the
    inverse of an affine one), or through a chain of them composed (one interpolation; the
    transform nearest the reference first)."""
    import ants

    transforms = [transform] if isinstance(transform, str) else list(transform)
    if invert and len(transforms) != 1:
        raise ValueError("only a single transform is inverted")
    moving = ants.image_read(in_file)
    reference = ants.image_read(reference_file)
    interpolator = "genericLabel" if labels else "linear"
    resampled = ants.apply_transforms(
        reference,
        moving,
        transforms,
        interpolator=interpolator,
        whichtoinvert=[invert] * len(transforms),
    )
    ants.image_write(resampled, out_file)
    return out_file


def coregister_rigid(
    in_file: str, reference_file: str, out_file: str, coverage_file: str, num_threads: int = 1
) -> tuple[str, str]:
    """Rigidly register another contrast of the subject (FLAIR, contrast T1w, T2w) to the
    preprocessed T1w by mutual information, and resample it onto the T1w grid (linear).

    ``coverage_file`` gets the T1w voxels inside the contrast's field of view: outside it the
    resampled image holds zeros that were never acquired (a FLAIR slab short of the vertex).
    Non-finite voxels of the contrast are set to 0 first, with a warning.
    """
    import ants

    _set_threads(num_threads)
    moving = ants.image_read(finite_copy(in_file, Path(out_file).parent / "finite.nii.gz"))
    reference = ants.image_read(reference_file)
    result = ants.registration(
        fixed=reference,
        moving=moving,
        type_of_transform="Rigid",
        aff_metric="mattes",
        outprefix=str(Path(out_file).parent / "rigid_"),
    )
    ants.image_write(result["warpedmovout"], out_file)
    field_of_view = moving.new_image_like(np.ones(moving.shape, dtype=np.float32))
    covered = ants.apply_transforms(reference, field_of_view, result["fwdtransforms"]).numpy()
    # ants arrays are in the reference's voxel order; voxels touching the edge count as outside
    save_image((covered > 0.999).astype(np.uint8), nb.load(reference_file).affine, coverage_file)
    return out_file, coverage_file


def register_epi_to_t1w(
    reference_file: str,
    reference_mask_file: str,
    t1w_file: str,
    t1w_mask_file: str,
    out_dir: str,
    num_threads: int = 1,
) -> dict[str, str]:
    """Rigid registration (Mattes mutual information) of the brain-masked reference of an
    EPI series (a b=0, an ASL control mean) to the brain-masked T1w; the transform (ANTs,
    T1w -> reference points) and the reference on the T1w grid."""
    import ants

    _set_threads(num_threads)
    out = Path(out_dir)
    moving = ants.image_read(reference_file) * ants.image_read(reference_mask_file)
    t1w = ants.image_read(t1w_file) * ants.image_read(t1w_mask_file)
    result = ants.registration(
        fixed=t1w,
        moving=moving,
        type_of_transform="Rigid",
        aff_metric="mattes",
        outprefix=str(out / "to_t1w_"),
    )
    warped = ants.apply_transforms(
        ants.image_read(t1w_file), ants.image_read(reference_file), result["fwdtransforms"]
    )
    ants.image_write(warped, str(out / "reference_t1w.nii.gz"))
    return {
        "transform": result["fwdtransforms"][0],
        "reference_t1w": str(out / "reference_t1w.nii.gz"),
    }


class _N4InputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True, desc="conformed anatomical image")
    num_threads = traits.Int(1, usedefault=True, desc="ITK threads")


class _OutFileSpec(TraitedSpec):
    out_file = File(exists=True)


class N4BiasFieldCorrection(SimpleInterface):
    """N4 bias-field correction (antspyx)."""

    input_spec = _N4InputSpec
    output_spec = _OutFileSpec

    def _run_interface(self, runtime):
        out_file = str(Path(runtime.cwd) / "corrected.nii.gz")
        self._results["out_file"] = n4_bias_correct(
            self.inputs.in_file, out_file, self.inputs.num_threads
        )
        return runtime


class _TemplateInputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True)
    template_dir = traits.Str(mandatory=True, desc="folder holding the template files")
    num_threads = traits.Int(1, usedefault=True, desc="ITK threads")


class TemplateBrainMask(SimpleInterface):
    """Brain mask from the registered template (classical baseline of brain extraction)."""

    input_spec = _TemplateInputSpec
    output_spec = _OutFileSpec

    def _run_interface(self, runtime):
        out_file = str(Path(runtime.cwd) / "brain_mask.nii.gz")
        self._results["out_file"] = brain_mask_from_template(
            self.inputs.in_file,
            write_template_files(self.inputs.template_dir),
            out_file,
            str(Path(runtime.cwd) / "bet_"),
            self.inputs.num_threads,
        )
        return runtime


class _RegistrationInputSpec(_TemplateInputSpec):
    sloppy = traits.Bool(False, usedefault=True, desc="skip the finest SyN level (tests)")


class _RegistrationOutputSpec(TraitedSpec):
    forward_transform = File(exists=True, desc="T1w -> template composite transform (HDF5)")
    reverse_transform = File(exists=True, desc="template -> T1w composite transform (HDF5)")


class TemplateRegistration(SimpleInterface):
    """Rigid -> affine -> SyN registration to the template (antspyx)."""

    input_spec = _RegistrationInputSpec
    output_spec = _RegistrationOutputSpec

    def _run_interface(self, runtime):
        self._results.update(
            register_to_template(
                self.inputs.in_file,
                write_template_files(self.inputs.template_dir),
                str(Path(runtime.cwd) / "t1w_to_template_"),
                self.inputs.num_threads,
                self.inputs.sloppy,
            )
        )
        return runtime


class _AtroposInputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True, desc="bias-corrected T1w")
    mask_file = File(exists=True, mandatory=True, desc="brain mask")
    num_threads = traits.Int(1, usedefault=True, desc="ITK threads")


class _AtroposOutputSpec(TraitedSpec):
    probseg = traits.List(File(exists=True), desc="GM, WM, CSF probability maps")
    dseg = File(exists=True, desc="1 GM, 2 WM, 3 CSF")


class AtroposSegmentation(SimpleInterface):
    """Three-class tissue segmentation (antspyx Atropos)."""

    input_spec = _AtroposInputSpec
    output_spec = _AtroposOutputSpec

    def _run_interface(self, runtime):
        outputs = segment_tissues(
            self.inputs.in_file,
            self.inputs.mask_file,
            str(Path(runtime.cwd) / "tissue_"),
            self.inputs.num_threads,
        )
        self._results["probseg"] = [outputs[name] for name in TISSUE_LABELS.values()]
        self._results["dseg"] = outputs["dseg"]
        return runtime


class _ApplyTransformInputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True)
    transform = File(exists=True, mandatory=True, desc="composite transform (HDF5)")
    template_dir = traits.Str(mandatory=True, desc="the template grid is the reference")
    labels = traits.Bool(False, usedefault=True, desc="label image: no blending of labels")


class ApplyTransformToTemplate(SimpleInterface):
    """Resample a T1w-space image onto the 1 mm template grid."""

    input_spec = _ApplyTransformInputSpec
    output_spec = _OutFileSpec

    def _run_interface(self, runtime):
        template = write_template_files(self.inputs.template_dir)
        out_file = str(Path(runtime.cwd) / "in_template.nii.gz")
        self._results["out_file"] = apply_transform(
            self.inputs.in_file,
            str(template.t1w),
            self.inputs.transform,
            out_file,
            self.inputs.labels,
        )
        return runtime


class _CoregisterInputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True, desc="another contrast of the subject")
    reference = File(exists=True, mandatory=True, desc="preprocessed T1w")
    num_threads = traits.Int(1, usedefault=True)


class _CoregisterOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the contrast on the T1w grid")
    coverage_file = File(exists=True, desc="T1w voxels inside the contrast's field of view")


class CoregisterToT1w(SimpleInterface):
    """Rigid registration of another contrast to the T1w, resampled on the T1w grid, and the
    part of that grid the contrast covers."""

    input_spec = _CoregisterInputSpec
    output_spec = _CoregisterOutputSpec

    def _run_interface(self, runtime):
        self._results["out_file"], self._results["coverage_file"] = coregister_rigid(
            self.inputs.in_file,
            self.inputs.reference,
            str(Path(runtime.cwd) / "coregistered.nii.gz"),
            str(Path(runtime.cwd) / "coverage.nii.gz"),
            self.inputs.num_threads,
        )
        return runtime


class _RegisterEpiInputSpec(TraitedSpec):
    reference = File(exists=True, mandatory=True, desc="the EPI series' reference")
    reference_mask = File(exists=True, mandatory=True)
    t1w = File(exists=True, mandatory=True, desc="preprocessed T1w")
    t1w_mask = File(exists=True, mandatory=True)
    num_threads = traits.Int(1, usedefault=True)


class _RegisterEpiOutputSpec(TraitedSpec):
    transform = File(exists=True, desc="ANTs rigid transform (resamples the EPI onto the T1w)")
    reference_t1w = File(exists=True, desc="the reference on the T1w grid")


class RegisterEpiToT1w(SimpleInterface):
    """Rigid EPI reference -> T1w registration (:func:`register_epi_to_t1w`)."""

    input_spec = _RegisterEpiInputSpec
    output_spec = _RegisterEpiOutputSpec

    def _run_interface(self, runtime):
        self._results.update(
            register_epi_to_t1w(
                self.inputs.reference,
                self.inputs.reference_mask,
                self.inputs.t1w,
                self.inputs.t1w_mask,
                runtime.cwd,
                self.inputs.num_threads,
            )
        )
        return runtime


class _ResampleInputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True)
    reference = File(exists=True, mandatory=True, desc="the grid to resample onto")
    transform = InputMultiObject(
        File(exists=True),
        mandatory=True,
        desc="ANTs transform(s) (reference -> in_file), the one nearest the reference first",
    )
    invert = traits.Bool(False, usedefault=True, desc="apply the (single) transform's inverse")
    labels = traits.Bool(False, usedefault=True, desc="label image: no blending of labels")


class ResampleThroughTransform(SimpleInterface):
    """Resample an image onto another grid of the subject through a rigid transform."""

    input_spec = _ResampleInputSpec
    output_spec = _OutFileSpec

    def _run_interface(self, runtime):
        self._results["out_file"] = apply_transform(
            self.inputs.in_file,
            self.inputs.reference,
            self.inputs.transform,
            str(Path(runtime.cwd) / Path(self.inputs.in_file).name),
            labels=self.inputs.labels,
            invert=self.inputs.invert,
        )
        return runtime
