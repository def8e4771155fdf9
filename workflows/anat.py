"""Anatomical preprocessing: conform, bias correction, brain mask, registration, tissues."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_dl.templates import TEMPLATE_NAME
from bids_dl.workflows.interfaces.ants import (
    ApplyTransformToTemplate,
    AtroposSegmentation,
    N4BiasFieldCorrection,
    TemplateBrainMask,
    TemplateRegistration,
)
from bids_dl.workflows.interfaces.conform import Conform
from bids_dl.workflows.interfaces.deep_learning import ModelBrainMask, ModelSegmentation
from bids_dl.workflows.interfaces.images import ApplyBrainMask, BrainMaskFromBackground
from bids_dl.workflows.resources import MEM_GB


def init_brain_extraction_wf(
    *,
    template_dir: str,
    omp_nthreads: int,
    bundle: str | None = None,
    skull_stripped: bool = False,
    device: str = "auto",
    name: str = "brain_extraction_wf",
):
    """Brain extraction: a deep-learning bundle when given, else the template baseline.

    Parameters
    ----------
    bundle
        folder of a ``brain_mask`` model bundle; ``None`` selects the classical baseline
        (the template's brain mask carried onto the subject by registration)
    skull_stripped
        the image is already skull-stripped: its mask is the voxels that differ from its
        background (the most frequent value on its faces), and no extraction runs (``bundle``
        is not used)

    Inputs
    ------
    in_file
        bias-corrected anatomical image (whole head), or the conformed image when
        ``skull_stripped`` (bias correction changes a background that is not 0)

    Outputs
    -------
    brain_mask
        binary mask on the input grid
    model
        name, version and sha256 of the model (empty for the baseline)
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["in_file"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["brain_mask", "model"]), name="outputnode")
    if skull_stripped:
        workflow.__desc__ = (
            "The T1w was already skull-stripped (one background value around the brain); its "
            "brain mask was the voxels that differ from that background (the largest connected "
            "piece, holes filled), and no brain extraction was run."
        )
        masking = pe.Node(
            BrainMaskFromBackground(), name="background_mask", mem_gb=MEM_GB["skull_strip"]
        )
        outputnode.inputs.model = {}
    elif bundle is not None:
        workflow.__desc__ = (
            "A brain mask was predicted by a 3D U-Net trained by bids_dl on images of random "
            "contrast synthesised from real label maps [@synthseg; @synthstrip] "
            f"(bundle {Path(bundle).name}), keeping the largest connected component and filling "
            "its holes."
        )
        masking = pe.Node(
            ModelBrainMask(bundle=bundle, device=device, num_threads=omp_nthreads),
            name="model_mask",
            mem_gb=MEM_GB["model"],
            n_procs=omp_nthreads,
        )
        workflow.connect([(masking, outputnode, [("model", "model")])])
    else:
        workflow.__desc__ = (
            "A brain mask was obtained by registering the template brain to the bias-corrected "
            "T1w (affine, then SyN restricted to a 6 mm dilation of the affine mask, both at "
            "2 mm, ANTs [@ants]) and carrying the template's brain mask onto the T1w grid."
        )
        masking = pe.Node(
            TemplateBrainMask(template_dir=template_dir, num_threads=omp_nthreads),
            name="template_mask",
            mem_gb=MEM_GB["brain_extraction"],
            n_procs=omp_nthreads,
        )
        outputnode.inputs.model = {}
    workflow.connect([
        (inputnode, masking, [("in_file", "in_file")]),
        (masking, outputnode, [("out_file", "brain_mask")]),
    ])  # fmt: skip
    return workflow


def init_segmentation_wf(
    *,
    omp_nthreads: int,
    bundle: str | None = None,
    device: str = "auto",
    name: str = "segmentation_wf",
):
    """Brain structures and tissues: a deep-learning bundle when given, else Atropos tissues.

    Parameters
    ----------
    bundle
        folder of a ``structures`` model bundle; ``None`` selects the classical baseline
        (Atropos GM/WM/CSF, no structures)

    Inputs
    ------
    in_file
        bias-corrected anatomical image
    brain_mask
        brain mask on the same grid

    Outputs
    -------
    probseg
        GM, WM and CSF probability maps
    dseg
        tissue labels (1 GM, 2 WM, 3 CSF)
    aseg
        structure labels (FreeSurfer values; only with a bundle)
    model
        name, version and sha256 of the model (empty for the baseline)
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["in_file", "brain_mask"]), name="inputnode")
    outputnode = pe.Node(
        niu.IdentityInterface(fields=["probseg", "dseg", "aseg", "model"]), name="outputnode"
    )
    if bundle is not None:
        workflow.__desc__ = (
            "Brain structures (the 32 SynthSeg labels: cerebral white matter and cortex, lateral "
            "ventricles, cerebellum, deep grey nuclei, hippocampus, amygdala, brainstem, CSF) "
            "were segmented by a 3D U-Net trained by bids_dl on images of random contrast "
            f"synthesised from real label maps [@synthseg] (bundle {Path(bundle).name}); grey "
            "matter, white matter and CSF probabilities are the sums of the structures' "
            "probabilities."
        )
        segmentation = pe.Node(
            ModelSegmentation(bundle=bundle, device=device, num_threads=omp_nthreads),
            name="model_segmentation",
            mem_gb=MEM_GB["structures"],
            n_procs=omp_nthreads,
        )
        workflow.connect([
            (inputnode, segmentation, [("brain_mask", "brain_mask")]),
            (segmentation, outputnode, [("aseg", "aseg"), ("model", "model")]),
        ])  # fmt: skip
    else:
        workflow.__desc__ = (
            "Grey matter, white matter and CSF were segmented inside the brain mask with Atropos "
            "[@atropos] (three classes, k-means start, MRF weight 0.1)."
        )
        segmentation = pe.Node(
            AtroposSegmentation(num_threads=omp_nthreads),
            name="tissues",
            mem_gb=MEM_GB["tissues"],
            n_procs=omp_nthreads,
        )
        workflow.connect([(inputnode, segmentation, [("brain_mask", "mask_file")])])
        outputnode.inputs.model = {}
    workflow.connect([
        (inputnode, segmentation, [("in_file", "in_file")]),
        (segmentation, outputnode, [("probseg", "probseg"), ("dseg", "dseg")]),
    ])  # fmt: skip
    return workflow


def init_anat_preproc_wf(
    *,
    template_dir: str,
    omp_nthreads: int,
    sloppy: bool = False,
    brain_extraction_bundle: str | None = None,
    segmentation_bundle: str | None = None,
    skull_stripped: bool = False,
    device: str = "auto",
    name: str = "anat_preproc_wf",
):
    """Preprocess one T1w and register it to the MNI152NLin2009aSym template.

    ``skull_stripped``: the T1w is already skull-stripped (its background gives the mask).

    Inputs
    ------
    t1w
        the raw T1w image

    Outputs
    -------
    t1w_preproc
        bias-corrected T1w, RAS+ on the native grid
    brain_mask
        brain mask on the same grid
    brain_mask_model
        the model that made the mask (empty for the classical baseline)
    probseg
        GM, WM and CSF probability maps
    dseg
        tissue labels (1 GM, 2 WM, 3 CSF)
    aseg, segmentation_model
        structure labels and the model that made them (with a segmentation bundle only)
    std_t1w, std_dseg
        T1w and labels resampled on the 1 mm template grid
    forward_transform, reverse_transform
        T1w -> template and template -> T1w composite transforms (HDF5)
    conform_summary
        what conforming did (original orientation, voxel size, non-finite voxels)
    """
    workflow = pe.Workflow(name=name)
    workflow.__desc__ = (
        "The T1w image was reoriented to RAS+ on its own voxel grid (nibabel [@nibabel]) and "
        "corrected for intensity non-uniformity with N4 [@n4] (antspyx [@antspy]), fitted inside "
        "an Otsu head mask on a ~4 mm grid."
    )
    workflow.__postdesc__ = (
        f"The skull-stripped T1w was registered to the ICBM 152 Nonlinear Symmetrical template "
        f"version 2009a [@mni2009] (TemplateFlow ID: {TEMPLATE_NAME}, as shipped by nilearn "
        "[@nilearn]) with rigid, affine and SyN stages [@ants] (Mattes mutual information, SyN "
        "levels at 8, 4 and 2 mm)."
    )
    fields_out = [
        "t1w_preproc", "brain_mask", "brain_mask_model", "probseg", "dseg", "aseg",
        "segmentation_model", "std_t1w", "std_dseg", "forward_transform", "reverse_transform",
        "conform_summary",
    ]  # fmt: skip
    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=fields_out), name="outputnode")

    conform = pe.Node(Conform(), name="conform", mem_gb=MEM_GB["conform"])
    n4 = pe.Node(
        N4BiasFieldCorrection(num_threads=omp_nthreads),
        name="n4",
        mem_gb=MEM_GB["n4"],
        n_procs=omp_nthreads,
    )
    brain_extraction_wf = init_brain_extraction_wf(
        template_dir=template_dir,
        omp_nthreads=omp_nthreads,
        bundle=brain_extraction_bundle,
        skull_stripped=skull_stripped,
        device=device,
    )
    segmentation_wf = init_segmentation_wf(
        omp_nthreads=omp_nthreads, bundle=segmentation_bundle, device=device
    )
    skull_strip = pe.Node(ApplyBrainMask(), name="skull_strip", mem_gb=MEM_GB["skull_strip"])
    registration = pe.Node(
        TemplateRegistration(template_dir=template_dir, num_threads=omp_nthreads, sloppy=sloppy),
        name="registration",
        mem_gb=MEM_GB["registration"],
        n_procs=omp_nthreads,
    )
    std_t1w = pe.Node(
        ApplyTransformToTemplate(template_dir=template_dir),
        name="std_t1w",
        mem_gb=MEM_GB["resample"],
    )
    std_dseg = pe.Node(
        ApplyTransformToTemplate(template_dir=template_dir, labels=True),
        name="std_dseg",
        mem_gb=MEM_GB["resample"],
    )
    workflow.connect([
        (inputnode, conform, [("t1w", "in_file")]),
        (conform, n4, [("out_file", "in_file")]),
        (conform if skull_stripped else n4, brain_extraction_wf, [
            ("out_file", "inputnode.in_file"),
        ]),
        (n4, skull_strip, [("out_file", "in_file")]),
        (brain_extraction_wf, skull_strip, [("outputnode.brain_mask", "mask_file")]),
        (skull_strip, registration, [("out_file", "in_file")]),
        (n4, segmentation_wf, [("out_file", "inputnode.in_file")]),
        (brain_extraction_wf, segmentation_wf, [("outputnode.brain_mask", "inputnode.brain_mask")]),
        (n4, std_t1w, [("out_file", "in_file")]),
        (registration, std_t1w, [("forward_transform", "transform")]),
        (segmentation_wf, std_dseg, [("outputnode.dseg", "in_file")]),
        (registration, std_dseg, [("forward_transform", "transform")]),
        (conform, outputnode, [("summary", "conform_summary")]),
        (n4, outputnode, [("out_file", "t1w_preproc")]),
        (brain_extraction_wf, outputnode, [
            ("outputnode.brain_mask", "brain_mask"),
            ("outputnode.model", "brain_mask_model"),
        ]),
        (segmentation_wf, outputnode, [
            ("outputnode.probseg", "probseg"),
            ("outputnode.dseg", "dseg"),
            ("outputnode.aseg", "aseg"),
            ("outputnode.model", "segmentation_model"),
        ]),
        (registration, outputnode, [
            ("forward_transform", "forward_transform"),
            ("reverse_transform", "reverse_transform"),
        ]),
        (std_t1w, outputnode, [("out_file", "std_t1w")]),
        (std_dseg, outputnode, [("out_file", "std_dseg")]),
    ])  # fmt: skip
    return workflow
