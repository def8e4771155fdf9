"""ASL perfusion workflows: preprocessing of one ASL series, then its CBF (measured and, with
a model, enhanced by the perfusion network) on the ASL grid, the T1w grid and the template."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_dl.asl_inputs import AslSeries
from bids_dl.models.asl_kinetics import blood_t1, label_control_pairs, labeling_efficiency
from bids_dl.workflows.interfaces.ants import (
    ApplyTransformToTemplate,
    RegisterEpiToT1w,
    ResampleThroughTransform,
)
from bids_dl.workflows.interfaces.asl_cbf import (
    CBFQuality,
    EnhancePerfusion,
    PerfusionMeasures,
    QuantifyCBF,
    difference_delays,
)
from bids_dl.workflows.interfaces.asl_preproc import ComputeM0, CorrectAslMotion
from bids_dl.workflows.interfaces.dwi_preproc import MedianOtsuBrainMask
from bids_dl.workflows.resources import MEM_GB

ASL_PREPROC_OUTPUTS = [
    "asl_preproc",
    "aslref",
    "brain_mask",
    "confounds",
    "m0",
    "asl_to_t1w",
    "aslref_t1w",
]


def quantification_parameters(series: AslSeries) -> dict:
    """What the CBF model needs of a series: its volume types and delays, and the labelling
    scheme with the consensus defaults where the sidecar is silent."""
    return {
        "context": list(series.context),
        "delays": list(series.post_labeling_delays),
        "labeling_type": series.labeling_type,
        "bolus_duration": series.labeling_duration,
        "efficiency": labeling_efficiency(
            series.labeling_type, series.labeling_efficiency, series.background_pulses
        ),
        "t1_blood": blood_t1(series.field_strength),
        "slice_timing": list(series.slice_timing) if series.slice_timing else None,
        "slice_axis": series.slice_axis,
        "relative": series.m0_type == "Absent",
    }


def enhancement_pairs(series: AslSeries, bundle: str) -> list[tuple[int, int]]:
    """The pairs the perfusion network reads: the first of the series, as many as it was
    trained on (``max_input_pairs`` of the card's training config; all without one). With more
    pairs than that, the measured mean is the better estimate anyway."""
    from bids_dl.models.card import load_card

    trained = load_card(bundle).training.get("config", {}).get("max_input_pairs")
    pairs = label_control_pairs(list(series.context))
    return pairs[:trained] if trained else pairs


def cbf_outputs(series: AslSeries) -> list[str]:
    """The CBF maps a series gives: the mean always; one delay and several differences add
    the series per pair, several delays the arrival time."""
    delays = difference_delays(quantification_parameters(series))
    if np.unique(delays).size > 1:
        return ["cbf", "att"]
    return ["cbf", "cbf_timeseries"] if delays.size > 1 else ["cbf"]


def init_asl_preproc_wf(
    *,
    series: AslSeries,
    anatomy: bool,
    omp_nthreads: int,
    name: str = "asl_preproc_wf",
) -> pe.Workflow:
    """Correct head motion per volume type, mask the brain, compute M0 and (with a T1w)
    register the ASL reference to the T1w.

    Inputs
    ------
    asl, m0scan
        the raw series and its separate M0 scan (``M0Type`` Separate)
    t1w_preproc, t1w_mask
        the preprocessed T1w and its brain mask (with ``anatomy``)

    Outputs
    -------
    asl_preproc, aslref, confounds
        the corrected series on the reference's grid, the reference (mean control, else M0)
        and the motion confounds
    brain_mask, m0
        the brain mask on the ASL grid (the T1w's mask carried back with ``anatomy``, else
        median Otsu of the reference) and the smoothed M0
    asl_to_t1w, aslref_t1w
        the rigid transform onto the T1w (ANTs) and the reference resampled there
    """
    workflow = pe.Workflow(name=name)
    workflow.__desc__ = _preproc_description(series, anatomy)
    fields = ["asl", "m0scan", "t1w_preproc", "t1w_mask"]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=ASL_PREPROC_OUTPUTS), name="outputnode")
    threads = {"n_procs": omp_nthreads}
    motion = pe.Node(
        CorrectAslMotion(context=list(series.context), num_threads=omp_nthreads),
        name="motion_correct",
        mem_gb=MEM_GB["asl_motion"],
        **threads,
    )
    otsu = pe.Node(MedianOtsuBrainMask(), name="aslref_mask", mem_gb=MEM_GB["light"])
    m0 = pe.Node(
        ComputeM0(context=list(series.context), m0_type=series.m0_type),
        name="m0",
        mem_gb=MEM_GB["asl_cbf"],
    )
    if series.m0_type == "Estimate":
        m0.inputs.m0_estimate = series.m0_estimate
    workflow.connect([
        (inputnode, motion, [("asl", "in_file")]),
        (motion, otsu, [("aslref", "in_file")]),
        (motion, m0, [("out_file", "in_file"), ("aslref", "aslref")]),
        (motion, outputnode, [("out_file", "asl_preproc"), ("aslref", "aslref"),
                              ("confounds", "confounds")]),
        (m0, outputnode, [("out_file", "m0")]),
    ])  # fmt: skip
    if series.m0_type == "Separate":
        workflow.connect([(inputnode, m0, [("m0scan", "m0scan")])])
    if not anatomy:
        workflow.connect([
            (otsu, m0, [("out_file", "brain_mask")]),
            (otsu, outputnode, [("out_file", "brain_mask")]),
        ])  # fmt: skip
        return workflow
    registration = pe.Node(
        RegisterEpiToT1w(num_threads=omp_nthreads),
        name="aslref_to_t1w",
        mem_gb=MEM_GB["coregister"],
        **threads,
    )
    t1w_mask = pe.Node(
        ResampleThroughTransform(invert=True, labels=True),
        name="t1w_mask_to_asl",
        mem_gb=MEM_GB["asl_resample"],
    )
    workflow.connect([
        (motion, registration, [("aslref", "reference")]),
        (otsu, registration, [("out_file", "reference_mask")]),
        (inputnode, registration, [("t1w_preproc", "t1w"), ("t1w_mask", "t1w_mask")]),
        (inputnode, t1w_mask, [("t1w_mask", "in_file")]),
        (motion, t1w_mask, [("aslref", "reference")]),
        (registration, t1w_mask, [("transform", "transform")]),
        (t1w_mask, m0, [("out_file", "brain_mask")]),
        (t1w_mask, outputnode, [("out_file", "brain_mask")]),
        (registration, outputnode, [("transform", "asl_to_t1w"),
                                    ("reference_t1w", "aslref_t1w")]),
    ])  # fmt: skip
    return workflow


def _preproc_description(series: AslSeries, anatomy: bool) -> str:
    m0 = {
        "Included": "the mean of the series' M0 volumes",
        "Separate": "the separate M0 scan, rigidly registered to the ASL reference",
        "Estimate": f"the sidecar's M0Estimate ({series.m0_estimate:g})"
        if series.m0_estimate is not None
        else "the sidecar's M0Estimate",
        "Absent": "the mean control image (no M0 was acquired: CBF is relative, not in "
        "mL/100 g/min)",
    }[series.m0_type]
    text = (
        "Head motion of the ASL series was corrected per volume type, as ASLPrep [@aslprep]: "
        "each volume was rigidly registered (ANTs [@ants], mutual information) to the mean of "
        "its type (label, control, M0), that mean first aligned to the series' reference (the "
        f"mean control, else the M0). M0 was {m0}, smoothed by a 5 mm FWHM Gaussian inside the "
        "brain mask."
    )
    if anatomy:
        return text + (
            " The reference was rigidly registered to the T1w (mutual information), and the "
            "T1w's brain mask was carried back onto the ASL grid."
        )
    return text + (
        " The participant has no T1w: the brain was masked on the reference by dipy's median "
        "Otsu, and no T1w or template outputs were made."
    )


def init_asl_cbf_wf(
    *,
    series: AslSeries,
    template_dir: str,
    anatomy: bool,
    asl_bundle: str | None = None,
    structures: bool = False,
    omp_nthreads: int = 1,
    device: str = "auto",
    name: str = "asl_cbf_wf",
) -> pe.Workflow:
    """CBF of a preprocessed series: the consensus model (or, with several delays, a CBF and
    arrival-time fit) on the ASL grid, its quality row, and with ``anatomy`` the CBF on the
    T1w and template grids and the mean CBF per tissue (and structure); with ``asl_bundle``
    the network's enhanced CBF too.

    Inputs
    ------
    asl_preproc, m0, brain_mask, confounds, aslref, asl_to_t1w
        from :func:`init_asl_preproc_wf`
    t1w_preproc, probseg, dseg, aseg, forward_transform
        the T1w, its tissue probabilities and labels (and structures) and template transform

    Outputs
    -------
    cbf, cbf_timeseries, att
        measured maps on the ASL grid (the last two as :func:`cbf_outputs` says)
    quality_file, enhanced_cbf, enhanced_model
        ``desc-qualitycontrol_cbf.tsv``; the network's CBF and identity (with ``asl_bundle``)
    cbf_t1w, cbf_std, enhanced_cbf_t1w, measures
        with ``anatomy``: CBF on the T1w and template grids, the network's on the T1w grid,
        mean CBF per region (dict)
    """
    parameters = quantification_parameters(series)
    workflow = pe.Workflow(name=name)
    workflow.__desc__ = _cbf_description(series, parameters, asl_bundle)
    fields = ["asl_preproc", "m0", "brain_mask", "confounds", "aslref", "asl_to_t1w"]
    fields += ["t1w_preproc", "probseg", "dseg", "aseg", "forward_transform"]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    outputs = [*cbf_outputs(series), "quality_file"]
    outputs += ["cbf_t1w", "cbf_std", "measures"] if anatomy else []
    outputs += ["enhanced_cbf", "enhanced_model"] if asl_bundle else []
    outputs += ["enhanced_cbf_t1w"] if asl_bundle and anatomy else []
    outputnode = pe.Node(niu.IdentityInterface(fields=outputs), name="outputnode")
    quantify = pe.Node(QuantifyCBF(parameters=parameters), name="quantify_cbf",
                       mem_gb=MEM_GB["asl_cbf"])  # fmt: skip
    quality = pe.Node(CBFQuality(), name="cbf_quality", mem_gb=MEM_GB["measures"])
    workflow.connect([
        (inputnode, quantify, [("asl_preproc", "in_file"), ("m0", "m0"),
                               ("brain_mask", "brain_mask")]),
        (quantify, outputnode, [(f, f) for f in cbf_outputs(series)]),
        (quantify, quality, [("cbf", "cbf")]),
        (inputnode, quality, [("brain_mask", "brain_mask"), ("confounds", "confounds")]),
        (quality, outputnode, [("out_file", "quality_file")]),
    ])  # fmt: skip
    if asl_bundle:
        enhance = pe.Node(
            EnhancePerfusion(bundle=asl_bundle, parameters=parameters, device=device,
                             num_threads=omp_nthreads,
                             pairs=len(enhancement_pairs(series, asl_bundle))),
            name="enhance_perfusion", mem_gb=MEM_GB["model"], n_procs=omp_nthreads,
        )  # fmt: skip
        workflow.connect([
            (inputnode, enhance, [("asl_preproc", "in_file"), ("m0", "m0"),
                                  ("brain_mask", "brain_mask")]),
            (enhance, outputnode, [("out_file", "enhanced_cbf"), ("model", "enhanced_model")]),
        ])  # fmt: skip
    if anatomy:
        cbf_t1w = _connect_t1w_outputs(
            workflow, template_dir, inputnode, quantify, quality, outputnode
        )
        measures = pe.Node(PerfusionMeasures(), name="asl_measures", mem_gb=MEM_GB["measures"])
        workflow.connect([
            (cbf_t1w, measures, [("out_file", "cbf")]),
            (inputnode, measures, [("dseg", "dseg")] + ([("aseg", "aseg")] if structures else [])),
            (measures, outputnode, [("measures", "measures")]),
        ])  # fmt: skip
        if asl_bundle:
            enhanced_t1w = _to_t1w(workflow, inputnode, "enhanced")
            workflow.connect([
                (enhance, enhanced_t1w, [("out_file", "in_file")]),
                (enhanced_t1w, outputnode, [("out_file", "enhanced_cbf_t1w")]),
            ])  # fmt: skip
    return workflow


def _to_t1w(workflow: pe.Workflow, inputnode: pe.Node, kind: str) -> pe.Node:
    """A node resampling an ASL-grid map onto the T1w grid (linear)."""
    node = pe.Node(ResampleThroughTransform(), name=f"{kind}_to_t1w", mem_gb=MEM_GB["resample"])
    workflow.connect([
        (inputnode, node, [("t1w_preproc", "reference"), ("asl_to_t1w", "transform")]),
    ])  # fmt: skip
    return node


def _connect_t1w_outputs(
    workflow: pe.Workflow,
    template_dir: str,
    inputnode: pe.Node,
    quantify: pe.Node,
    quality: pe.Node,
    outputnode: pe.Node,
) -> pe.Node:
    """CBF to the T1w and template grids (the T1w node returned); tissue probabilities to
    the ASL grid for QEI."""
    cbf_t1w = _to_t1w(workflow, inputnode, "cbf")
    cbf_std = pe.Node(ApplyTransformToTemplate(template_dir=template_dir), name="cbf_to_std",
                      mem_gb=MEM_GB["resample"])  # fmt: skip
    probseg = pe.MapNode(
        ResampleThroughTransform(invert=True),
        iterfield=["in_file"],
        name="probseg_to_asl",
        mem_gb=MEM_GB["asl_resample"],
    )
    workflow.connect([
        (quantify, cbf_t1w, [("cbf", "in_file")]),
        (cbf_t1w, outputnode, [("out_file", "cbf_t1w")]),
        (cbf_t1w, cbf_std, [("out_file", "in_file")]),
        (inputnode, cbf_std, [("forward_transform", "transform")]),
        (cbf_std, outputnode, [("out_file", "cbf_std")]),
        (inputnode, probseg, [("probseg", "in_file"), ("aslref", "reference"),
                              ("asl_to_t1w", "transform")]),
        (probseg, quality, [("out_file", "probseg")]),
    ])  # fmt: skip
    return cbf_t1w


def _cbf_description(series: AslSeries, parameters: dict, asl_bundle: str | None) -> str:
    scheme = (
        f"QUIPSS II PASL (bolus width TI1 {parameters['bolus_duration']:g} s)"
        if series.labeling_type == "PASL"
        else f"{series.labeling_type} (labelling duration {parameters['bolus_duration']:g} s)"
    )
    suppression = (
        f", times 0.95 for each of {series.background_pulses} background-suppression pulses"
        if series.background_pulses
        else ""
    )
    efficiency = (
        "the sidecar's LabelingEfficiency" if series.labeling_efficiency is not None else
        "the consensus value for the labelling type"
    )  # fmt: skip
    text = (
        "Control-minus-label differences of each pair were quantified as CBF by the consensus "
        f"single-compartment model [@alsop2015] for {scheme}: labelling efficiency "
        f"{parameters['efficiency']:.3f} ({efficiency}{suppression}), blood T1 "
        f"{parameters['t1_blood']:g} s at {series.field_strength:g} T, blood-brain partition "
        "coefficient 0.9 mL/g"
    )
    if parameters["slice_timing"]:
        text += ", the delay of each slice corrected by its acquisition time"
    if "att" in cbf_outputs(series):
        text += (
            ". With several delays, CBF and the arterial transit time were fitted to the mean "
            "difference at each delay by least squares under Buxton's general kinetic model "
            "[@buxton1998]"
        )
    text += (
        ". Quality: the quality evaluation index (QEI) [@dolui2017] and the shares of negative "
        "and implausible (> 150 mL/100 g/min) CBF."
    )
    if asl_bundle:
        text += (
            f" A deep network trained by bids_dl on simulated ASL (bundle "
            f"{Path(asl_bundle).name}) also predicted the CBF the average of many repetitions "
            f"would give from the first {len(enhancement_pairs(series, asl_bundle))} pair(s) and "
            "M0; its map is written apart (desc-enhanced) and is a prediction, not a "
            "measurement."
        )
    return text
