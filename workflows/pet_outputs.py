"""Write one PET's results, and an imputed PET, as BIDS derivatives and draw their figures.

Names follow the BIDS PET derivatives as PETPrep writes them: ``desc-preproc_pet`` for the
motion-corrected frames on the PET grid, ``desc-confounds_timeseries.tsv`` for the motion,
``desc-tacs_timeseries.tsv`` for the time-activity curves, ``space-T1w_desc-suvr_pet`` and
``space-<template>_desc-suvr_pet`` for SUVR, ``space-T1w_desc-suv_pet`` for SUV, and
``desc-imputed_pet`` for the network's synthetic SUVR (named after the T1w it comes from).
"""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_dl.derivatives import derivative_path
from bids_dl.pet_inputs import PetSeries
from bids_dl.templates import TEMPLATE_NAME
from bids_dl.workflows.interfaces.bids import data_dictionary, sink_node
from bids_dl.workflows.interfaces.motion import MOTION_COLUMNS, MOTION_DESCRIPTIONS
from bids_dl.workflows.interfaces.pet_quant import REFERENCE_NAMES, REFERENCE_REGIONS
from bids_dl.workflows.interfaces.pet_reports import SuvrFigure, TimeActivityFigure
from bids_dl.workflows.interfaces.reports import CoregistrationFigure, MotionFigure
from bids_dl.workflows.pet import PET_PREPROC_OUTPUTS
from bids_dl.workflows.resources import MEM_GB

IMPUTED_DESC = "imputed"


def suvr_metadata(series: PetSeries, reference: str, window: tuple[float, float] | None) -> dict:
    """The sidecar of the measured SUVR: its reference region and the frames summed."""
    name = REFERENCE_NAMES[reference]
    return {
        "Units": "unitless",
        "Description": f"standardized uptake value ratio of {series.tracer}: the static image "
        f"over its mean in {name}",
        "ReferenceRegion": name,
        "ReferenceRegionLabels": list(REFERENCE_REGIONS[reference]),
        "Window": list(window) if window else "late frames (starting in the last third)",
        "WindowUnits": "min after injection",
        "PartialVolumeCorrection": "none",
        "SkullStripped": False,
    }


def t1w_reference(t1w_file: str) -> dict:
    """``SpatialReference`` of a ``space-T1w`` output: the preprocessed T1w of ``t1w_file``."""
    t1w = derivative_path(t1w_file, "T1w", "anat", desc="preproc").as_posix()
    return {"SpatialReference": f"bids::{t1w}"}


def imputed_metadata() -> dict:
    """The imputed PET's sidecar: SYNTHETIC, from which inputs, and what it can show."""
    return {
        "Units": "unitless",
        "Synthetic": True,
        "Description": "SYNTHETIC, not measured: an FDG-like SUVR image (reference: cerebellar "
        "grey matter) predicted from the T1w by the bids_dl PET imputation network; see "
        "DeepLearningModel (TrainingData says whether it learnt from real or simulated pairs) "
        "and the model card. It reproduces what the anatomy predicts (e.g. hypometabolism "
        "tied to atrophy), not metabolism the T1w cannot show.",
        "ImputedFrom": ["T1w"],
        "SkullStripped": True,
    }


def init_pet_outputs_wf(
    *,
    output_dir: str,
    bids_dir: str,
    series: PetSeries,
    reference: str,
    window: tuple[float, float] | None,
    t1w_file: str,
    name: str = "pet_outputs_wf",
) -> pe.Workflow:
    """Save one PET's corrected frames, motion, curves, SUVR and SUV, and draw its SUVR,
    coregistration, motion and curve figures; ``t1w_file`` (the raw T1w) names the
    preprocessed T1w that ``space-T1w`` refers to.

    Inputs
    ------
    the outputs of :func:`~bids_dl.workflows.pet.init_pet_preproc_wf` and
    :func:`~bids_dl.workflows.pet.init_pet_quant_wf`, plus ``t1w_preproc`` and ``t1w_mask``
    """
    workflow = pe.Workflow(name=name)
    fields = PET_PREPROC_OUTPUTS + ["tacs", "suvr_t1w", "suvr_std", "suv_t1w"]
    fields += ["t1w_preproc", "t1w_mask"]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    sink_args = {"output_dir": output_dir, "bids_dir": bids_dir, "source_file": series.path}
    pet = {"datatype": "pet"}
    timing = {"FrameTimesStart": list(series.frame_starts),
              "FrameDuration": list(series.frame_durations)}  # fmt: skip
    suvr = suvr_metadata(series, reference, window)
    on_t1w = t1w_reference(t1w_file)
    sinks = {
        "pet_preproc": sink_node(**sink_args, name="ds_pet_preproc", suffix="pet",
                                 entities={"desc": "preproc"}, metadata={
                                     "Units": series.units, **timing, "SkullStripped": False,
                                     "Description": "frames corrected for head motion"}, **pet),
        "suvr_t1w": sink_node(**sink_args, name="ds_suvr_t1w", suffix="pet",
                              entities={"space": "T1w", "desc": "suvr"},
                              metadata=suvr | on_t1w, **pet),
        "suvr_std": sink_node(**sink_args, name="ds_suvr_std", suffix="pet",
                              entities={"space": TEMPLATE_NAME, "desc": "suvr"}, metadata=suvr,
                              **pet),
    }  # fmt: skip
    if series.is_dynamic:
        sinks["motion_file"] = sink_node(
            **sink_args, name="ds_pet_confounds", suffix="timeseries", extension=".tsv",
            entities={"desc": "confounds"},
            metadata=data_dictionary(MOTION_DESCRIPTIONS, MOTION_COLUMNS), **pet,
        )  # fmt: skip
        sinks["tacs"] = sink_node(
            **sink_args, name="ds_pet_tacs", suffix="timeseries", extension=".tsv",
            entities={"desc": "tacs"}, metadata={
                "Description": "mean activity of each structure per frame (time-activity curves)",
                "Units": series.units, "frame_start": {"Units": "s"},
                "frame_duration": {"Units": "s"}}, **pet,
        )  # fmt: skip
    if series.suv_ready:
        sinks["suv_t1w"] = sink_node(
            **sink_args, name="ds_suv_t1w", suffix="pet", entities={"space": "T1w", "desc": "suv"},
            metadata={"Units": "g/mL", "Description": "standardized uptake value: activity "
                      "concentration x body weight / injected dose (decayed to the image's "
                      "decay-correction time)", "SkullStripped": False, **on_t1w}, **pet,
        )  # fmt: skip
    connections = [(inputnode, node, [(field, "in_file")]) for field, node in sinks.items()]
    figures = {
        "suvr": (SuvrFigure(reference_region=REFERENCE_NAMES[reference]),
                 [("suvr_t1w", "suvr"), ("t1w_preproc", "t1w"), ("t1w_mask", "brain_mask")]),
        "coreg": (CoregistrationFigure(), [("static_t1w", "moving"), ("t1w_preproc", "reference"),
                                           ("t1w_mask", "brain_mask")]),
    }  # fmt: skip
    if series.is_dynamic:
        figures["motion"] = (MotionFigure(), [("motion_file", "confounds")])
        figures["tacs"] = (TimeActivityFigure(), [("tacs", "tacs")])
    connections += _figure_connections(sink_args, inputnode, figures)
    workflow.connect(connections)
    return workflow


def _figure_connections(sink_args: dict, inputnode: pe.Node, figures: dict) -> list:
    """One figure node and its sink per ``desc``: (interface, its inputs from inputnode)."""
    connections = []
    for desc, (interface, inputs) in figures.items():
        figure = pe.Node(interface, name=f"pet_{desc}_figure", mem_gb=MEM_GB["figure"])
        sink = sink_node(**sink_args, name=f"ds_pet_{desc}_figure", suffix="pet",
                         datatype="figures", extension=".png", entities={"desc": desc},
                         sidecar=False)  # fmt: skip
        connections += [(inputnode, figure, inputs), (figure, sink, [("out_file", "in_file")])]
    return connections


def init_imputed_pet_outputs_wf(
    *, output_dir: str, bids_dir: str, t1w_file: str, name: str = "imputed_pet_outputs_wf"
) -> pe.Workflow:
    """Save the imputed SUVR on the T1w and template grids (named after ``t1w_file``, the raw
    T1w it was predicted from) and draw its figure, marked as imputed.

    Inputs
    ------
    imputed_t1w, imputed_std, model
        from :func:`~bids_dl.workflows.pet.init_pet_imputation_wf`
    t1w_preproc, t1w_mask
        the preprocessed T1w and its brain mask
    """
    workflow = pe.Workflow(name=name)
    fields = ["imputed_t1w", "imputed_std", "model", "t1w_preproc", "t1w_mask"]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    sink_args = {"output_dir": output_dir, "bids_dir": bids_dir, "source_file": t1w_file}
    connections = []
    spaces = (("imputed_t1w", "T1w", t1w_reference(t1w_file)), ("imputed_std", TEMPLATE_NAME, {}))
    for field, space, reference in spaces:
        node = sink_node(**sink_args, name=f"ds_{field}", suffix="pet", datatype="pet",
                         entities={"space": space, "desc": IMPUTED_DESC},
                         metadata=imputed_metadata() | reference)  # fmt: skip
        connections.append((inputnode, node, [(field, "in_file"), ("model", "model")]))
    figure = (
        SuvrFigure(imputed=True, reference_region=REFERENCE_NAMES["cerebellum-gm"]),
        [("imputed_t1w", "suvr"), ("t1w_preproc", "t1w"), ("t1w_mask", "brain_mask")],
    )
    connections += _figure_connections(sink_args, inputnode, {IMPUTED_DESC: figure})
    workflow.connect(connections)
    return workflow
