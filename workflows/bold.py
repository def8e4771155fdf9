"""BOLD preprocessing of one run: non-steady-state volumes, reference, slice timing, head
motion, coregistration to the T1w, confounds, and the run resampled once onto the T1w and
template grids."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_dl.bold_inputs import BoldSeries
from bids_dl.workflows.interfaces.ants import RegisterEpiToT1w, ResampleThroughTransform
from bids_dl.workflows.interfaces.bold_confounds import BoldConfounds, NonSteadyStateDetector
from bids_dl.workflows.interfaces.bold_preproc import (
    BoldReference,
    EstimateBoldMotion,
    GridAtResolution,
    ResampleBoldSeries,
    SliceTimingCorrection,
    TemplateGridFiles,
)
from bids_dl.workflows.interfaces.dwi_preproc import MedianOtsuBrainMask
from bids_dl.workflows.resources import MEM_GB, bold_mem_gb

BOLD_PREPROC_OUTPUTS = [
    "bold_native",
    "boldref",
    "brain_mask",
    "dseg_bold",
    "confounds",
    "confounds_metadata",
    "motion_file",
    "non_steady_state",
    "bold_to_t1w",
    "boldref_t1w",
    "bold_t1w",
    "mask_t1w",
    "bold_std",
    "mask_std",
]
#: tissue probability maps of the anatomical workflow, in fMRIPrep's order (GM, WM, CSF)
WM_INDEX, CSF_INDEX = 1, 2


def init_bold_preproc_wf(
    *,
    series: BoldSeries,
    template_dir: str,
    dummy_scans: int | None,
    omp_nthreads: int,
    name: str = "bold_preproc_wf",
) -> pe.Workflow:
    """Preprocess one BOLD run as fMRIPrep does, without susceptibility-distortion correction.

    Inputs
    ------
    bold
        the raw run
    t1w_preproc, t1w_mask, probseg, dseg, forward_transform
        the anatomical workflow's T1w, brain mask, tissue probabilities (GM, WM, CSF) and
        labels, and its T1w -> template transform

    Outputs
    -------
    bold_native, boldref, brain_mask, dseg_bold
        the motion-corrected run, its reference and the T1w's mask and tissues on its grid
    confounds, confounds_metadata, motion_file, non_steady_state
        ``desc-confounds_timeseries`` TSV and JSON, the motion parameters, the volumes flagged
    bold_to_t1w, boldref_t1w
        the rigid reference -> T1w transform and the reference on the T1w grid
    bold_t1w, mask_t1w, bold_std, mask_std
        the run and its brain mask on the T1w grid (BOLD voxel size) and the 2 mm template
    """
    workflow = pe.Workflow(name=name)
    workflow.__desc__ = _description(series, dummy_scans)
    fields = ["bold", "t1w_preproc", "t1w_mask", "probseg", "dseg", "forward_transform"]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=BOLD_PREPROC_OUTPUTS), name="outputnode")
    threads = {"n_procs": omp_nthreads}
    tr = series.repetition_time
    run_gb = bold_mem_gb(series.shape)
    nss = pe.Node(NonSteadyStateDetector(), name="non_steady_state", mem_gb=run_gb)
    if dummy_scans is not None:
        nss.inputs.dummy_scans = dummy_scans
    reference = pe.Node(BoldReference(), name="boldref", mem_gb=run_gb)
    motion = pe.Node(
        EstimateBoldMotion(repetition_time=tr, num_threads=omp_nthreads),
        name="motion_correct",
        mem_gb=run_gb,
        **threads,
    )
    reference_mask = pe.Node(MedianOtsuBrainMask(), name="boldref_mask", mem_gb=MEM_GB["light"])
    registration = pe.Node(
        RegisterEpiToT1w(num_threads=omp_nthreads),
        name="boldref_to_t1w",
        mem_gb=MEM_GB["coregister"],
        **threads,
    )
    workflow.connect([
        (inputnode, nss, [("bold", "in_file")]),
        (inputnode, reference, [("bold", "in_file")]),
        (nss, reference, [("n_volumes", "non_steady_state")]),
        (reference, motion, [("out_file", "reference")]),
        (reference, reference_mask, [("out_file", "in_file")]),
        (reference, registration, [("out_file", "reference")]),
        (reference_mask, registration, [("out_file", "reference_mask")]),
        (inputnode, registration, [("t1w_preproc", "t1w"), ("t1w_mask", "t1w_mask")]),
        (nss, outputnode, [("n_volumes", "non_steady_state")]),
        (reference, outputnode, [("out_file", "boldref")]),
        (motion, outputnode, [("out_file", "bold_native"), ("motion_file", "motion_file")]),
        (registration, outputnode, [("transform", "bold_to_t1w"),
                                    ("reference_t1w", "boldref_t1w")]),
    ])  # fmt: skip
    timed = _connect_slice_timing(workflow, series, inputnode, motion)
    mask = _connect_confounds(workflow, series, inputnode, reference, motion, registration, nss,
                              outputnode)  # fmt: skip
    _connect_resampling(workflow, template_dir, omp_nthreads, series, inputnode, timed, motion,
                        registration, mask, outputnode)  # fmt: skip
    return workflow


def _connect_slice_timing(
    workflow: pe.Workflow, series: BoldSeries, inputnode: pe.Node, motion: pe.Node
) -> tuple[pe.Node, str]:
    """Slice-timing correction where the sidecar has SliceTiming; the node and field of the
    series that motion correction and resampling read."""
    if not series.slice_timing or len(set(series.slice_timing)) < 2:
        workflow.connect([(inputnode, motion, [("bold", "in_file")])])
        return inputnode, "bold"
    stc = pe.Node(
        SliceTimingCorrection(
            slice_timing=list(series.slice_timing),
            repetition_time=series.repetition_time,
            slice_axis=series.slice_axis,
        ),
        name="slice_timing",
        mem_gb=bold_mem_gb(series.shape),
    )
    workflow.connect([
        (inputnode, stc, [("bold", "in_file")]),
        (stc, motion, [("out_file", "in_file")]),
    ])  # fmt: skip
    return stc, "out_file"


def _connect_confounds(
    workflow: pe.Workflow,
    series: BoldSeries,
    inputnode: pe.Node,
    reference: pe.Node,
    motion: pe.Node,
    registration: pe.Node,
    nss: pe.Node,
    outputnode: pe.Node,
) -> pe.Node:
    """The T1w's brain mask, tissue probabilities and labels carried onto the BOLD grid (the
    mask's node returned), and the confounds computed there."""
    mask = pe.Node(ResampleThroughTransform(invert=True, labels=True), name="t1w_mask_to_bold",
                   mem_gb=MEM_GB["asl_resample"])  # fmt: skip
    dseg = pe.Node(ResampleThroughTransform(invert=True, labels=True), name="dseg_to_bold",
                   mem_gb=MEM_GB["asl_resample"])  # fmt: skip
    probseg = pe.MapNode(ResampleThroughTransform(invert=True), iterfield=["in_file"],
                         name="probseg_to_bold", mem_gb=MEM_GB["asl_resample"])  # fmt: skip
    select = pe.Node(niu.Select(index=[WM_INDEX, CSF_INDEX]), name="select_wm_csf",
                     run_without_submitting=True)  # fmt: skip
    split = pe.Node(niu.Split(splits=[1, 1], squeeze=True), name="split_wm_csf",
                    run_without_submitting=True)  # fmt: skip
    confounds = pe.Node(BoldConfounds(repetition_time=series.repetition_time),
                        name="bold_confounds", mem_gb=bold_mem_gb(series.shape))  # fmt: skip
    workflow.connect([
        (inputnode, mask, [("t1w_mask", "in_file")]),
        (inputnode, dseg, [("dseg", "in_file")]),
        (inputnode, probseg, [("probseg", "in_file")]),
        (reference, mask, [("out_file", "reference")]),
        (reference, dseg, [("out_file", "reference")]),
        (reference, probseg, [("out_file", "reference")]),
        (registration, mask, [("transform", "transform")]),
        (registration, dseg, [("transform", "transform")]),
        (registration, probseg, [("transform", "transform")]),
        (probseg, select, [("out_file", "inlist")]),
        (select, split, [("out", "inlist")]),
        (motion, confounds, [("out_file", "in_file"), ("motion_file", "motion_file")]),
        (mask, confounds, [("out_file", "brain_mask")]),
        (split, confounds, [("out1", "wm_mask"), ("out2", "csf_mask")]),
        (nss, confounds, [("n_volumes", "non_steady_state")]),
        (mask, outputnode, [("out_file", "brain_mask")]),
        (dseg, outputnode, [("out_file", "dseg_bold")]),
        (confounds, outputnode, [("confounds_file", "confounds"),
                                 ("metadata_file", "confounds_metadata")]),
    ])  # fmt: skip
    return mask


def _connect_resampling(
    workflow: pe.Workflow,
    template_dir: str,
    omp_nthreads: int,
    bold: BoldSeries,
    inputnode: pe.Node,
    timed: tuple[pe.Node, str],
    motion: pe.Node,
    registration: pe.Node,
    mask: pe.Node,
    outputnode: pe.Node,
) -> None:
    """The run resampled once onto the T1w grid (at the BOLD voxel size) and the template's
    2 mm grid, each volume through its motion transform composed with the coregistration (and
    the normalisation); the brain mask (the T1w's on the BOLD grid) carried along."""
    source, field = timed
    grid = pe.Node(GridAtResolution(), name="t1w_grid_bold_resolution", mem_gb=MEM_GB["light"])
    template = pe.Node(TemplateGridFiles(template_dir=template_dir), name="template_grid",
                       mem_gb=MEM_GB["light"])  # fmt: skip
    to_template = pe.Node(niu.Merge(2), name="bold_to_template_transforms",
                          run_without_submitting=True)  # fmt: skip
    series = {
        space: pe.Node(
            ResampleBoldSeries(repetition_time=bold.repetition_time, num_threads=omp_nthreads),
            name=f"bold_to_{space}", mem_gb=bold_mem_gb(bold.shape, resampled=True),
            n_procs=omp_nthreads,
        )
        for space in ("t1w", "std")
    }  # fmt: skip
    masks = {
        space: pe.Node(ResampleThroughTransform(labels=True), name=f"bold_mask_to_{space}",
                       mem_gb=MEM_GB["resample"])
        for space in ("t1w", "std")
    }  # fmt: skip
    workflow.connect([
        (inputnode, grid, [("t1w_preproc", "reference"), ("bold", "zooms_from")]),
        (inputnode, to_template, [("forward_transform", "in1")]),
        (registration, to_template, [("transform", "in2")]),
        (grid, series["t1w"], [("out_file", "reference")]),
        (registration, series["t1w"], [("transform", "to_reference")]),
        (template, series["std"], [("t1w", "reference")]),
        (to_template, series["std"], [("out", "to_reference")]),
        (grid, masks["t1w"], [("out_file", "reference")]),
        (registration, masks["t1w"], [("transform", "transform")]),
        (template, masks["std"], [("t1w", "reference")]),
        (to_template, masks["std"], [("out", "transform")]),
        (mask, masks["t1w"], [("out_file", "in_file")]),
        (mask, masks["std"], [("out_file", "in_file")]),
        (series["t1w"], outputnode, [("out_file", "bold_t1w")]),
        (series["std"], outputnode, [("out_file", "bold_std")]),
        (masks["t1w"], outputnode, [("out_file", "mask_t1w")]),
        (masks["std"], outputnode, [("out_file", "mask_std")]),
    ])  # fmt: skip
    for node in series.values():
        workflow.connect([
            (source, node, [(field, "in_file")]),
            (motion, node, [("transforms", "motion_transforms")]),
        ])  # fmt: skip


def _description(series: BoldSeries, dummy_scans: int | None) -> str:
    nss = (
        f"The first {dummy_scans} volumes were flagged as non-steady-state (--dummy-scans)"
        if dummy_scans is not None
        else "Non-steady-state volumes at the start of the run were detected as outliers of "
        "the global signal and flagged"
    )
    text = (
        f"{nss}; they are kept in the outputs and listed as non_steady_state_outlier "
        "confounds. The reference volume was the voxel-wise median of the first 20 "
        "steady-state volumes. "
    )
    if series.slice_timing and len(set(series.slice_timing)) > 1:
        simultaneous = len(series.slice_timing) - len(set(series.slice_timing))
        text += (
            "Slice timing was corrected by resampling each slice's time series with a cubic "
            "spline to the middle of the slice times"
            + (
                f" (a multiband acquisition: slices read at the same time, {simultaneous} "
                "of them sharing another slice's time, were shifted together)"
                if simultaneous
                else ""
            )
            + ". "
        )
    else:
        text += "No slice-timing correction was done (the sidecar gives no SliceTiming). "
    return text + (
        "Head motion was estimated by rigid registration of each volume to the reference "
        "(ANTs [@ants], mutual information), giving six parameters, framewise displacement "
        "[@power2012] and DVARS [@nichols2017]. The reference was rigidly registered to the "
        "T1w (mutual information) and the T1w's brain mask and tissue maps carried onto the "
        "BOLD grid. "
        "Confounds were computed as fMRIPrep names them [@fmriprep]: global, white-matter "
        "and CSF signals, the motion parameters with their derivatives and squares, DVARS, "
        "discrete cosine high-pass regressors (128 s), anatomical CompCor [@behzadi2007] "
        "components from the white-matter and CSF masks, and outlier indicators. Each "
        "volume was resampled once onto the T1w grid (at the BOLD voxel size) and the 2 mm "
        "template grid, its motion transform, the coregistration and the normalisation "
        "composed into one interpolation (cubic B-spline). Susceptibility distortions were "
        "not corrected: bids_dl does not use field maps."
    )
