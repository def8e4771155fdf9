"""Write one BOLD run's results as BIDS derivatives (fMRIPrep's names) and draw its report
figures: the preprocessed run on the T1w and template grids with their masks, the reference,
the confounds, the atlas connectome, and the carpet, coregistration, motion and connectivity
figures."""

from __future__ import annotations

import logging
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_dl.bold_inputs import BoldSeries
from bids_dl.connectivity import MIN_CONNECTIVITY_VOLUMES
from bids_dl.derivatives import derivative_path
from bids_dl.templates import BOLD_TEMPLATE_RESOLUTION, TEMPLATE_NAME
from bids_dl.workflows.bold import BOLD_PREPROC_OUTPUTS
from bids_dl.workflows.interfaces.bids import sink_node
from bids_dl.workflows.interfaces.bold_reports import CarpetFigure, ConnectivityFigure
from bids_dl.workflows.interfaces.connectivity import AtlasConnectivity
from bids_dl.workflows.interfaces.reports import CoregistrationFigure, MotionFigure
from bids_dl.workflows.resources import MEM_GB, bold_mem_gb

LOGGER = logging.getLogger("bids_dl.workflows")
#: the coordinate atlas of the participant-level connectome (nilearn ships its coordinates)
ATLAS = "Power2011"
TEMPLATE_SPACE = {"space": TEMPLATE_NAME, "res": str(BOLD_TEMPLATE_RESOLUTION)}
#: what BIDS asks of an output with a ``res`` entity
TEMPLATE_METADATA = {
    "Resolution": f"{BOLD_TEMPLATE_RESOLUTION} mm isotropic: nilearn's MNI152 2009a template "
    f"resampled to {BOLD_TEMPLATE_RESOLUTION} mm (99 x 117 x 95)"
}


def preproc_metadata(series: BoldSeries) -> dict:
    """The sidecar of a preprocessed run, as fMRIPrep writes it."""
    corrected = bool(series.slice_timing) and len(set(series.slice_timing)) > 1
    metadata = {
        "RepetitionTime": series.repetition_time,
        "SkullStripped": False,
        "SliceTimingCorrected": corrected,
    }
    if corrected:
        metadata["StartTime"] = round((min(series.slice_timing) + max(series.slice_timing)) / 2, 6)
    return metadata


def init_bold_outputs_wf(
    *,
    output_dir: str,
    bids_dir: str,
    series: BoldSeries,
    t1w_file: str,
    name: str = "bold_outputs_wf",
) -> pe.Workflow:
    """Save one run's derivatives, compute its atlas connectome, and draw its figures;
    ``t1w_file`` (the raw T1w) names the preprocessed T1w that ``space-T1w`` refers to.

    Inputs
    ------
    the outputs of :func:`~bids_dl.workflows.bold.init_bold_preproc_wf`, plus ``t1w_preproc``
    and ``t1w_mask``
    """
    workflow = pe.Workflow(name=name)
    fields = [*BOLD_PREPROC_OUTPUTS, "t1w_preproc", "t1w_mask"]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    sink_args = {"output_dir": output_dir, "bids_dir": bids_dir, "source_file": series.path}
    t1w = derivative_path(t1w_file, "T1w", "anat", desc="preproc").as_posix()
    connections = _run_sinks(sink_args, inputnode, series, {"SpatialReference": f"bids::{t1w}"})
    if series.n_volumes >= MIN_CONNECTIVITY_VOLUMES:
        connections += _connectivity(sink_args, inputnode, series)
        workflow.__desc__ = (
            "A connectome was computed from the template-space run: the mean signal of each of "
            "the 264 spheres (5 mm radius) of the Power et al. atlas [@power2011] was cleaned "
            "by nilearn [@nilearn] (24 motion parameters, CSF and white-matter signals, cosine "
            "high-pass, linear detrend; non-steady-state volumes censored) and their "
            "correlation estimated with Ledoit-Wolf shrinkage [@ledoit2004]."
        )
    else:
        LOGGER.warning(
            "%s: %d volumes, no atlas connectome (it needs %d: the denoising's regressors "
            "leave too few degrees of freedom in shorter runs)",
            Path(series.path).name, series.n_volumes, MIN_CONNECTIVITY_VOLUMES,
        )  # fmt: skip
    connections += _figures(sink_args, inputnode)
    workflow.connect(connections)
    return workflow


def _run_sinks(sink_args: dict, inputnode: pe.Node, series: BoldSeries, t1w: dict) -> list:
    """Reference, masks, confounds and the preprocessed run in T1w and template space
    (``t1w``: the T1w outputs' SpatialReference)."""
    func = {"datatype": "func"}
    preproc = preproc_metadata(series) | {
        "Description": "the run after slice-timing and head-motion correction, resampled once "
        "(motion, coregistration and normalisation composed)"
    }
    brain = {"Type": "Brain", "Description": "the T1w's brain mask on the run's grid"}
    outputs = {
        "boldref": ("boldref", {}, {"Description": "the run's reference: the median of its "
                                                   "first steady-state volumes"}),
        "brain_mask": ("mask", {"desc": "brain"}, brain),
        "bold_t1w": ("bold", {"space": "T1w", "desc": "preproc"}, preproc | t1w),
        "mask_t1w": ("mask", {"space": "T1w", "desc": "brain"}, brain | t1w),
        "bold_std": ("bold", {**TEMPLATE_SPACE, "desc": "preproc"}, preproc | TEMPLATE_METADATA),
        "mask_std": ("mask", {**TEMPLATE_SPACE, "desc": "brain"}, brain | TEMPLATE_METADATA),
    }  # fmt: skip
    connections = []
    for field, (suffix, entities, metadata) in outputs.items():
        node = sink_node(**sink_args, name=f"ds_{field}", suffix=suffix, entities=entities,
                         metadata=metadata, **func)  # fmt: skip
        connections.append((inputnode, node, [(field, "in_file")]))
    confounds = sink_node(**sink_args, name="ds_bold_confounds", suffix="timeseries",
                          extension=".tsv", entities={"desc": "confounds"}, **func)  # fmt: skip
    fields = [("confounds", "in_file"), ("confounds_metadata", "metadata_file")]
    connections.append((inputnode, confounds, fields))
    return connections


def _connectivity(sink_args: dict, inputnode: pe.Node, series: BoldSeries) -> list:
    """The atlas connectome of the template-space run (Ledoit-Wolf correlation between
    sphere time series after confound regression), its time series, and its figure."""
    connectivity = pe.Node(AtlasConnectivity(repetition_time=series.repetition_time),
                           name="atlas_connectivity",
                           mem_gb=bold_mem_gb(series.shape, resampled=True))  # fmt: skip
    entities = {**TEMPLATE_SPACE, "seg": ATLAS}
    measure = {**entities, "meas": "PearsonCorrelation"}
    relmat = sink_node(**sink_args, name="ds_relmat", suffix="relmat", extension=".tsv",
                       datatype="func", entities=measure, metadata=TEMPLATE_METADATA)  # fmt: skip
    timeseries = sink_node(**sink_args, name="ds_atlas_timeseries", suffix="timeseries",
                           extension=".tsv", datatype="func", entities=entities,
                           metadata=TEMPLATE_METADATA)  # fmt: skip
    figure = pe.Node(ConnectivityFigure(kind="matrix", title=f"{ATLAS} regions"),
                     name="connectivity_figure", mem_gb=MEM_GB["figure"])  # fmt: skip
    figure_sink = _figure_sink(sink_args, "connectivity")
    return [
        (inputnode, connectivity, [("bold_std", "bold_std"), ("mask_std", "brain_mask"),
                                   ("confounds", "confounds_file")]),
        (connectivity, relmat, [("relmat", "in_file"), ("relmat_json", "metadata_file")]),
        (connectivity, timeseries, [("timeseries", "in_file"),
                                    ("timeseries_json", "metadata_file")]),
        (connectivity, figure, [("relmat", "in_file")]),
        (figure, figure_sink, [("out_file", "in_file")]),
    ]  # fmt: skip


def _figure_sink(sink_args: dict, desc: str) -> pe.Node:
    return sink_node(**sink_args, name=f"ds_bold_{desc}_figure", suffix="bold",
                     datatype="figures", extension=".png", entities={"desc": desc},
                     sidecar=False)  # fmt: skip


def _figures(sink_args: dict, inputnode: pe.Node) -> list:
    """Carpet plot with FD and DVARS, coregistration, and head motion."""
    figures = {
        "carpet": (CarpetFigure(), [("bold_native", "in_file"), ("brain_mask", "brain_mask"),
                                    ("confounds", "confounds_file"), ("dseg_bold", "dseg")]),
        "coreg": (CoregistrationFigure(), [("boldref_t1w", "moving"),
                                           ("t1w_preproc", "reference"),
                                           ("t1w_mask", "brain_mask")]),
        "motion": (MotionFigure(), [("confounds", "confounds")]),
    }  # fmt: skip
    connections = []
    for desc, (interface, inputs) in figures.items():
        figure = pe.Node(interface, name=f"bold_{desc}_figure", mem_gb=MEM_GB["figure"])
        sink = _figure_sink(sink_args, desc)
        connections += [(inputnode, figure, inputs), (figure, sink, [("out_file", "in_file")])]
    return connections
