"""Write one ASL series' results as BIDS derivatives and draw its report figures.

Names follow ASLPrep: ``_cbf`` for the mean CBF, ``desc-timeseries_cbf`` for CBF per pair,
``_att`` for the arterial transit time, ``desc-qualitycontrol_cbf.tsv`` for the quality row,
``desc-enhanced_cbf`` for the network's prediction; the ASL grid has no ``space`` entity,
``space-T1w`` and ``space-<template>`` the resampled maps.
"""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_dl.asl_inputs import AslSeries
from bids_dl.models.asl_kinetics import label_control_pairs
from bids_dl.templates import TEMPLATE_NAME
from bids_dl.workflows.asl import (
    ASL_PREPROC_OUTPUTS,
    cbf_outputs,
    enhancement_pairs,
    quantification_parameters,
)
from bids_dl.workflows.interfaces.asl_cbf import QUALITY_COLUMNS
from bids_dl.workflows.interfaces.bids import data_dictionary, sink_node
from bids_dl.workflows.interfaces.motion import MOTION_COLUMNS, MOTION_DESCRIPTIONS
from bids_dl.workflows.interfaces.reports import CBFFigure, CoregistrationFigure, MotionFigure
from bids_dl.workflows.resources import MEM_GB

#: the network's ``desc`` entity
ENHANCED_DESC = "enhanced"
QUALITY_DESCRIPTIONS = {
    "mean_fd": ("mean framewise displacement (Power et al. 2012)", "mm"),
    "max_fd": ("largest framewise displacement", "mm"),
    "qei_cbf": ("quality evaluation index of the mean CBF (Dolui et al. 2017), 0-1, higher is "
                "better", None),
    "mean_gm_cbf": ("mean CBF in grey matter (probability > 0.7)", "mL/100 g/min"),
    "mean_wm_cbf": ("mean CBF in white matter (probability > 0.7)", "mL/100 g/min"),
    "ratio_gm_wm_cbf": ("mean GM CBF over mean WM CBF", None),
    "percentage_negative_cbf": ("share of grey-matter voxels with negative CBF (ASLPrep's)",
                                "%"),
    "percentage_negative_cbf_brain": ("share of brain voxels with negative CBF", "%"),
    "percentage_implausible_cbf_brain": ("share of brain voxels with CBF above 150 "
                                         "mL/100 g/min", "%"),
}  # fmt: skip


def cbf_model_metadata(series: AslSeries) -> dict:
    """The sidecar of the measured CBF: units and the model with every constant it used."""
    parameters = quantification_parameters(series)
    multi_delay = "att" in cbf_outputs(series)
    bolus = "BolusCutOffDelayTime" if series.labeling_type == "PASL" else "LabelingDuration"
    model = {
        "Description": "Buxton general kinetic model, CBF and ATT fitted by least squares to "
        "the mean difference at each delay"
        if multi_delay
        else "consensus single-compartment model (Alsop et al., MRM 2015), mean of the pairs",
        "Parameters": {
            "ArterialSpinLabelingType": series.labeling_type,
            "LabelingEfficiency": round(parameters["efficiency"], 4),
            "BackgroundSuppressionNumberPulses": series.background_pulses,
            "BloodT1": parameters["t1_blood"],
            "PartitionCoefficient": 0.9,
            "PostLabelingDelay": sorted({float(d) for d in series.post_labeling_delays}),
            bolus: parameters["bolus_duration"],
            "SliceTimingCorrected": bool(parameters["slice_timing"]),
            "M0Type": series.m0_type,
            "Differences": len(label_control_pairs(parameters["context"])),
        },
    }
    relative = series.m0_type == "Absent"
    return {
        "Units": "arbitrary" if relative else "mL/100 g/min",
        "Model": model,
        **(
            {"Notes": "no M0 was acquired: scaled by the mean control, relative perfusion only"}
            if relative
            else {}
        ),
    }


def enhanced_metadata(series: AslSeries, bundle: str) -> dict:
    """The network's sidecar: a prediction, and the pairs (volume indices) it read."""
    return {
        "Units": "arbitrary" if series.m0_type == "Absent" else "mL/100 g/min",
        "Description": "PREDICTED, not measured: the CBF the average of many repetitions would "
        "give, predicted by the bids_dl perfusion network from the pairs listed ((label, "
        "control) volume indices; a scanner difference is (i, i)) and M0, then "
        "quantified with the same model as the measured CBF; see DeepLearningModel and the "
        "model card",
        "PairsUsed": [list(pair) for pair in enhancement_pairs(series, bundle)],
    }


def init_asl_outputs_wf(
    *,
    output_dir: str,
    bids_dir: str,
    series: AslSeries,
    anatomy: bool,
    asl_bundle: str | None,
    name: str = "asl_outputs_wf",
) -> pe.Workflow:
    """Save one series' reference, mask, confounds, CBF maps and quality row (and the
    network's CBF with ``asl_bundle``), and draw its CBF, coregistration and motion figures.

    Inputs
    ------
    the outputs of :func:`~bids_dl.workflows.asl.init_asl_preproc_wf` and
    :func:`~bids_dl.workflows.asl.init_asl_cbf_wf`, plus ``t1w_preproc`` and ``t1w_mask``
    """
    workflow = pe.Workflow(name=name)
    maps = cbf_outputs(series)
    fields = ASL_PREPROC_OUTPUTS + maps + ["quality_file", "t1w_preproc", "t1w_mask"]
    fields += ["cbf_t1w", "cbf_std"] + ["enhanced_cbf", "enhanced_model", "enhanced_cbf_t1w"]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    sink_args = {"output_dir": output_dir, "bids_dir": bids_dir, "source_file": series.path}
    cbf_metadata = cbf_model_metadata(series)
    connections = _series_sinks(sink_args, inputnode)
    connections += _map_sinks(sink_args, inputnode, maps, cbf_metadata, anatomy)
    if asl_bundle:
        metadata = enhanced_metadata(series, asl_bundle)
        connections += _enhanced_sinks(sink_args, inputnode, metadata, anatomy)
    connections += _figure_sinks(sink_args, inputnode, series, anatomy, asl_bundle is not None)
    workflow.connect(connections)
    return workflow


def _series_sinks(sink_args: dict, inputnode: pe.Node) -> list:
    """The reference, its brain mask, the confounds and the quality row."""
    perf = {"datatype": "perf"}
    sinks = {
        "aslref": sink_node(**sink_args, name="ds_aslref", suffix="aslref",
                            metadata={"Description": "the series' reference: the mean control "
                                      "(else M0) after motion correction"}, **perf),
        "brain_mask": sink_node(**sink_args, name="ds_asl_mask", suffix="mask",
                                entities={"desc": "brain"}, metadata={"Type": "Brain"}, **perf),
        "confounds": sink_node(**sink_args, name="ds_asl_confounds", suffix="timeseries",
                               extension=".tsv", entities={"desc": "confounds"},
                               metadata=data_dictionary(MOTION_DESCRIPTIONS, MOTION_COLUMNS),
                               **perf),
        "quality_file": sink_node(**sink_args, name="ds_cbf_quality", suffix="cbf",
                                  extension=".tsv", entities={"desc": "qualitycontrol"},
                                  metadata=data_dictionary(QUALITY_DESCRIPTIONS, QUALITY_COLUMNS),
                                  **perf),
    }  # fmt: skip
    return [(inputnode, node, [(field, "in_file")]) for field, node in sinks.items()]


def _map_sinks(
    sink_args: dict, inputnode: pe.Node, maps: list[str], metadata: dict, anatomy: bool
) -> list:
    """The measured maps on the ASL grid, and the mean CBF on the T1w and template grids."""
    named = {
        "cbf": ("cbf", {}, {"Description": "mean cerebral blood flow"}),
        "cbf_timeseries": ("cbf", {"desc": "timeseries"},
                           {"Description": "cerebral blood flow of each pair"}),
        "att": ("att", {}, {"Description": "arterial transit time", "Units": "s"}),
    }  # fmt: skip
    outputs = [(field, *named[field]) for field in maps]
    if anatomy:
        outputs += [
            ("cbf_t1w", "cbf", {"space": "T1w"}, named["cbf"][2]),
            ("cbf_std", "cbf", {"space": TEMPLATE_NAME}, named["cbf"][2]),
        ]
    connections = []
    for field, suffix, entities, extra in outputs:
        node = sink_node(**sink_args, name=f"ds_{field}", suffix=suffix, datatype="perf",
                         entities=entities, metadata={**metadata, **extra})  # fmt: skip
        connections.append((inputnode, node, [(field, "in_file")]))
    return connections


def _enhanced_sinks(sink_args: dict, inputnode: pe.Node, metadata: dict, anatomy: bool) -> list:
    """The network's CBF on the ASL grid (and the T1w grid), with its model's identity."""
    spaces = [("enhanced_cbf", {})] + ([("enhanced_cbf_t1w", {"space": "T1w"})] if anatomy else [])
    connections = []
    for field, space in spaces:
        node = sink_node(**sink_args, name=f"ds_{field}", suffix="cbf", datatype="perf",
                         entities={**space, "desc": ENHANCED_DESC}, metadata=metadata)  # fmt: skip
        connections += [(inputnode, node, [(field, "in_file"), ("enhanced_model", "model")])]
    return connections


def _figure_sinks(
    sink_args: dict, inputnode: pe.Node, series: AslSeries, anatomy: bool, network: bool
) -> list:
    """CBF (measured and enhanced, one colour scale), coregistration and motion figures."""
    cbf = CBFFigure(relative=series.m0_type == "Absent")
    cbf_inputs = [("cbf", "cbf"), ("brain_mask", "brain_mask")]
    cbf_inputs += [("enhanced_cbf", "enhanced")] if network else []
    figures = {"cbf": (cbf, cbf_inputs), "motion": (MotionFigure(), [("confounds", "confounds")])}
    if anatomy:
        figures["coreg"] = (
            CoregistrationFigure(),
            [("aslref_t1w", "moving"), ("t1w_preproc", "reference"), ("t1w_mask", "brain_mask")],
        )
    connections = []
    for desc, (interface, inputs) in figures.items():
        figure = pe.Node(interface, name=f"asl_{desc}_figure", mem_gb=MEM_GB["figure"])
        sink = sink_node(**sink_args, name=f"ds_asl_{desc}_figure", suffix="asl",
                         datatype="figures", extension=".png", entities={"desc": desc},
                         sidecar=False)  # fmt: skip
        connections += [(inputnode, figure, inputs), (figure, sink, [("out_file", "in_file")])]
    return connections
