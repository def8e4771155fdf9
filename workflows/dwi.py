"""Diffusion workflows: preprocessing of one DWI series, then its tensor maps (measured and,
with a model, predicted by the DTI network) in DWI, T1w and template space."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_dl.workflows.interfaces.ants import ApplyTransformToTemplate, RegisterEpiToT1w
from bids_dl.workflows.interfaces.deep_learning import ModelBrainMask
from bids_dl.workflows.interfaces.dwi_preproc import (
    MIN_MPPCA_VOLUMES,
    CorrectMotion,
    DenoiseDWI,
    MedianOtsuBrainMask,
)
from bids_dl.workflows.interfaces.dwi_tensor import (
    MAPS,
    DiffusionMeasures,
    FitTensor,
    MapsToT1w,
    PredictTensor,
)
from bids_dl.workflows.resources import MEM_GB

DWI_PREPROC_OUTPUTS = [
    "dwi_preproc",
    "bval",
    "bvec",
    "world_bvecs",
    "b0_ref",
    "brain_mask",
    "brain_mask_model",
    "confounds",
    "b0_to_t1w",
    "b0_t1w",
]
#: maps in template space (the scalar maps people compare across subjects)
TEMPLATE_MAPS = ("fa", "md")


def init_dwi_preproc_wf(
    *,
    omp_nthreads: int,
    denoise: str = "auto",
    brain_mask_bundle: str | None = None,
    device: str = "auto",
    name: str = "dwi_preproc_wf",
) -> pe.Workflow:
    """Denoise (optional), correct head motion and eddy currents, mask the brain and register
    the b=0 reference to the T1w.

    Parameters
    ----------
    denoise
        ``--dwi-denoise``: auto, mppca or none
    brain_mask_bundle
        the brain-mask model run on the b=0 reference (None: dipy's median Otsu)

    Inputs
    ------
    dwi, bval, bvec
        the raw series and its gradient files
    t1w_preproc, t1w_mask
        the preprocessed T1w and its brain mask

    Outputs
    -------
    dwi_preproc, bval, bvec, world_bvecs
        the corrected series on the b=0 reference's grid, its b-values and rotated b-vectors
        (FSL convention of the series, and world axes as N x 3 text)
    b0_ref, brain_mask, brain_mask_model
        the b=0 reference, its brain mask and the model that made it (empty without one)
    confounds
        per-volume motion parameters and framewise displacement (TSV)
    b0_to_t1w, b0_t1w
        the rigid transform onto the T1w (ANTs) and the b=0 reference resampled there
    """
    workflow = pe.Workflow(name=name)
    workflow.__desc__ = _preproc_description(denoise, brain_mask_bundle)
    fields = ["dwi", "bval", "bvec", "t1w_preproc", "t1w_mask"]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=DWI_PREPROC_OUTPUTS), name="outputnode")
    threads = {"n_procs": omp_nthreads}
    denoising = pe.Node(DenoiseDWI(mode=denoise), name="denoise", mem_gb=MEM_GB["dwi_denoise"])
    motion = pe.Node(
        CorrectMotion(num_threads=omp_nthreads),
        name="motion_correct",
        mem_gb=MEM_GB["dwi_motion"],
        **threads,
    )
    if brain_mask_bundle is not None:
        masking = pe.Node(
            ModelBrainMask(bundle=brain_mask_bundle, device=device, num_threads=omp_nthreads),
            name="b0_model_mask",
            mem_gb=MEM_GB["model"],
            **threads,
        )
        workflow.connect([(masking, outputnode, [("model", "brain_mask_model")])])
    else:
        masking = pe.Node(MedianOtsuBrainMask(), name="b0_mask", mem_gb=MEM_GB["light"])
        outputnode.inputs.brain_mask_model = {}
    registration = pe.Node(
        RegisterEpiToT1w(num_threads=omp_nthreads),
        name="b0_to_t1w",
        mem_gb=MEM_GB["coregister"],
        **threads,
    )
    workflow.connect([
        (inputnode, denoising, [("dwi", "in_file")]),
        (denoising, motion, [("out_file", "in_file")]),
        (inputnode, motion, [("bval", "bval"), ("bvec", "bvec")]),
        (motion, masking, [("b0_ref", "in_file")]),
        (motion, registration, [("b0_ref", "reference")]),
        (masking, registration, [("out_file", "reference_mask")]),
        (inputnode, registration, [("t1w_preproc", "t1w"), ("t1w_mask", "t1w_mask")]),
        (motion, outputnode, [("out_file", "dwi_preproc"), ("bval", "bval"), ("bvec", "bvec"),
                              ("world_bvecs", "world_bvecs"), ("b0_ref", "b0_ref"),
                              ("confounds", "confounds")]),
        (masking, outputnode, [("out_file", "brain_mask")]),
        (registration, outputnode, [("transform", "b0_to_t1w"), ("reference_t1w", "b0_t1w")]),
    ])  # fmt: skip
    return workflow


def _preproc_description(denoise: str, brain_mask_bundle: str | None) -> str:
    steps = {
        "auto": f"Series of at least {MIN_MPPCA_VOLUMES} volumes were denoised by MP-PCA "
        "[@mppca] (dipy [@dipy]); with fewer volumes, MP-PCA can hardly tell noise from "
        "signal and was not applied. ",
        "mppca": "Each series was denoised by MP-PCA [@mppca] (dipy [@dipy]). ",
        "none": "",
    }
    mask = (
        f"the brain-mask model (bundle {Path(brain_mask_bundle).name})"
        if brain_mask_bundle
        else "dipy's median Otsu"
    )
    return (
        steps[denoise] + "Head motion and eddy currents were corrected by registering every "
        "volume to the b=0 reference (the b~0 volumes rigidly aligned to the first and "
        "averaged): rigidly for b~0 volumes, affinely for diffusion-weighted ones (ANTs "
        "[@ants], mutual information), as FSL's eddy_correct; each b-vector was rotated by its "
        "volume's rotation. Susceptibility distortions were not corrected. The brain was "
        f"masked on the b=0 reference by {mask}, and the b=0 reference was rigidly registered "
        "to the T1w (mutual information)."
    )


def init_dwi_tensor_wf(
    *,
    template_dir: str,
    dwi_bundle: str | None = None,
    structures: bool = False,
    omp_nthreads: int = 1,
    device: str = "auto",
    name: str = "dwi_tensor_wf",
) -> pe.Workflow:
    """Tensor maps of a preprocessed series: the measured WLS fit and, with ``dwi_bundle``,
    the network's prediction; both on the DWI and T1w grids (FA and MD also in template
    space), and mean FA/MD per tissue (and structure, with ``structures``).

    Inputs
    ------
    dwi_preproc, bval, world_bvecs, brain_mask, b0_to_t1w
        from :func:`init_dwi_preproc_wf`
    t1w_preproc, dseg, aseg, forward_transform
        the T1w, its tissue (and structure) labels and its template transform

    Outputs
    -------
    fit_<map>, fit_t1w_<map>, fit_std_<fa|md>
        measured maps (``fa``, ``md``, ``ad``, ``rd``, ``v1``) in DWI, T1w and template space
    net_<map>, net_t1w_<map>, net_model
        the network's maps and its identity (with ``dwi_bundle``)
    t1w_mask, measures
        the diffusion brain mask on the T1w grid; mean FA/MD per region (dict)
    """
    workflow = pe.Workflow(name=name)
    workflow.__desc__ = (
        "A diffusion tensor was fitted to every volume by weighted least squares (dipy "
        "[@dipy]), giving FA, MD, AD, RD and the principal eigenvector; the maps were resampled "
        "onto the T1w grid (principal directions rotated with the registration)."
    )
    fields = [
        "dwi_preproc",
        "bval",
        "world_bvecs",
        "brain_mask",
        "b0_to_t1w",
        "t1w_preproc",
        "dseg",
        "aseg",
        "forward_transform",
    ]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    kinds = ["fit", "net"] if dwi_bundle else ["fit"]
    outputs = [f"{k}_{s}{m}" for k in kinds for s in ("", "t1w_") for m in MAPS]
    outputs += [f"fit_std_{m}" for m in TEMPLATE_MAPS] + ["t1w_mask", "measures"]
    outputs += ["net_model"] if dwi_bundle else []
    outputnode = pe.Node(niu.IdentityInterface(fields=outputs), name="outputnode")
    series = [
        ("dwi_preproc", "in_file"),
        ("bval", "bval"),
        ("world_bvecs", "world_bvecs"),
        ("brain_mask", "brain_mask"),
    ]
    fit = pe.Node(FitTensor(), name="fit_tensor", mem_gb=MEM_GB["dwi_tensor"])
    fit_t1w = _to_t1w_node("fit", workflow, inputnode, fit)
    workflow.connect([
        (inputnode, fit, series),
        (fit, outputnode, [(m, f"fit_{m}") for m in MAPS]),
        (fit_t1w, outputnode, [(m, f"fit_t1w_{m}") for m in MAPS] + [("mask", "t1w_mask")]),
    ])  # fmt: skip
    _connect_template_maps(workflow, template_dir, inputnode, fit_t1w, outputnode)
    measures = pe.Node(DiffusionMeasures(), name="dwi_measures", mem_gb=MEM_GB["measures"])
    workflow.connect([
        (fit_t1w, measures, [("fa", "fa"), ("md", "md"), ("mask", "mask")]),
        (inputnode, measures, [("dseg", "dseg")] + ([("aseg", "aseg")] if structures else [])),
        (measures, outputnode, [("measures", "measures")]),
    ])  # fmt: skip
    if dwi_bundle:
        workflow.__desc__ += (
            " A deep network trained by bids_dl on simulated diffusion phantoms (bundle "
            f"{Path(dwi_bundle).name}) also predicted the tensor a dense scheme would give "
            "from the b=0 and the directions of the main shell; its maps are written apart "
            "(desc-dtinet) and are predictions, not measurements."
        )
        net = pe.Node(
            PredictTensor(bundle=dwi_bundle, device=device, num_threads=omp_nthreads),
            name="predict_tensor",
            mem_gb=MEM_GB["model"],
            n_procs=omp_nthreads,
        )
        net_t1w = _to_t1w_node("net", workflow, inputnode, net)
        workflow.connect([
            (inputnode, net, series),
            (net, outputnode, [(m, f"net_{m}") for m in MAPS]
             + [("model", "net_model")]),
            (net_t1w, outputnode, [(m, f"net_t1w_{m}") for m in MAPS]),
        ])  # fmt: skip
    return workflow


def _to_t1w_node(kind: str, workflow: pe.Workflow, inputnode: pe.Node, maps: pe.Node) -> pe.Node:
    """A node resampling ``maps``' outputs onto the T1w grid."""
    node = pe.Node(MapsToT1w(), name=f"{kind}_to_t1w", mem_gb=MEM_GB["resample"])
    workflow.connect([
        (maps, node, [(m, m) for m in MAPS]),
        (inputnode, node, [("brain_mask", "brain_mask"), ("b0_to_t1w", "transform"),
                           ("t1w_preproc", "t1w")]),
    ])  # fmt: skip
    return node


def _connect_template_maps(
    workflow: pe.Workflow,
    template_dir: str,
    inputnode: pe.Node,
    t1w_maps: pe.Node,
    outputnode: pe.Node,
) -> None:
    for name in TEMPLATE_MAPS:
        node = pe.Node(
            ApplyTransformToTemplate(template_dir=template_dir),
            name=f"std_{name}",
            mem_gb=MEM_GB["resample"],
        )
        workflow.connect([
            (t1w_maps, node, [(name, "in_file")]),
            (inputnode, node, [("forward_transform", "transform")]),
            (node, outputnode, [("out_file", f"fit_std_{name}")]),
        ])  # fmt: skip
