"""Write one diffusion series' results as BIDS derivatives and draw its report figures.

Names follow BIDS and the diffusion-derivatives proposal (BEP016):
``model-tensor_param-fa_dwimap`` for the measured fit, ``model-tensor_desc-dtinet_param-fa_
dwimap`` for the network's prediction, ``space-T1w``/``space-<template>`` for resampled maps,
``param-v1`` for the principal eigenvector (world RAS+ axes).
"""

from __future__ import annotations

import numpy as np
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_dl.models.gradients import B0_THRESHOLD, Gradients, read_gradients
from bids_dl.models.tensor_features import shell_volumes
from bids_dl.templates import TEMPLATE_NAME
from bids_dl.workflows.dwi import DWI_PREPROC_OUTPUTS, TEMPLATE_MAPS
from bids_dl.workflows.interfaces.bids import data_dictionary, sink_node
from bids_dl.workflows.interfaces.dwi_preproc import CONFOUND_COLUMNS
from bids_dl.workflows.interfaces.dwi_tensor import MAPS, TENSOR_BIAS_B
from bids_dl.workflows.interfaces.motion import MOTION_DESCRIPTIONS
from bids_dl.workflows.interfaces.reports import (
    ColorFAFigure,
    CoregistrationFigure,
    FAFigure,
    MotionFigure,
)
from bids_dl.workflows.resources import MEM_GB

#: the network's ``desc`` entity
NETWORK_DESC = "dtinet"
MAP_DESCRIPTIONS = {
    "fa": ("fractional anisotropy", "arbitrary"),
    "md": ("mean diffusivity", "mm^2/s"),
    "ad": ("axial diffusivity (largest eigenvalue)", "mm^2/s"),
    "rd": ("radial diffusivity (mean of the two smaller eigenvalues)", "mm^2/s"),
    "v1": ("principal eigenvector, world RAS+ axes (x, y, z in the 4th dimension)", "arbitrary"),
}
CONFOUND_DESCRIPTIONS = {
    **MOTION_DESCRIPTIONS,
    "trans_x": ("translation along x (RAS+) at the image centre; for diffusion-weighted "
                "volumes the rigid part of the eddy-current affine, so a shift along the "
                "phase-encoding axis is partly eddy current", "mm"),
    "b_value": ("the volume's b-value", "s/mm^2"),
}  # fmt: skip


def tensor_model_metadata(bvals: np.ndarray) -> dict:
    """The BEP016 ``Model`` sidecar object of the measured fit: method, b-values, directions,
    and a note where the shell is high enough to bias a tensor."""
    weighted = bvals[bvals > B0_THRESHOLD]
    shells = sorted({float(round(b, -2)) for b in weighted})
    model = {
        "Description": "diffusion tensor, weighted least squares (dipy TensorModel WLS), "
        "every volume",
        "Parameters": {"FitMethod": "WLS", "BValues": shells, "Directions": int(weighted.size),
                       "B0Volumes": int(bvals.size - weighted.size)},
    }  # fmt: skip
    if max(shells) > TENSOR_BIAS_B:
        model["Notes"] = (
            f"fitted at b up to {max(shells):g} s/mm^2: non-Gaussian diffusion (kurtosis) lowers "
            "the apparent diffusivities and FA relative to b~1000; compare only with maps of "
            "the same b-value"
        )
    return model


def init_dwi_outputs_wf(
    *,
    output_dir: str,
    bids_dir: str,
    dwi_file: str,
    bval_file: str,
    bvec_file: str,
    network: bool,
    name: str = "dwi_outputs_wf",
) -> pe.Workflow:
    """Save one series' preprocessed data, confounds and tensor maps (DWI, T1w and template
    space; the network's with ``network``) and draw its FA, colour-FA, coregistration and
    motion figures.

    Inputs
    ------
    the outputs of :func:`~bids_dl.workflows.dwi.init_dwi_preproc_wf` and
    :func:`~bids_dl.workflows.dwi.init_dwi_tensor_wf`, plus ``t1w_preproc`` and ``t1w_mask``
    """
    import nibabel as nb

    workflow = pe.Workflow(name=name)
    kinds = ["fit", "net"] if network else ["fit"]
    fields = DWI_PREPROC_OUTPUTS + ["t1w_preproc", "t1w_mask", "net_model"]
    fields += [f"{k}_{s}{m}" for k in kinds for s in ("", "t1w_") for m in MAPS]
    fields += [f"fit_std_{m}" for m in TEMPLATE_MAPS]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    gradients = read_gradients(bval_file, bvec_file, nb.load(dwi_file).shape[3])
    model = tensor_model_metadata(gradients.bvals)
    sink_args = {"output_dir": output_dir, "bids_dir": bids_dir, "source_file": dwi_file}
    connections = _series_sinks(sink_args, inputnode)
    connections += _map_sinks(sink_args, inputnode, "fit", {"model": "tensor"}, {"Model": model})
    if network:
        connections += _network_sinks(sink_args, inputnode, model, gradients)
    connections += _figure_sinks(sink_args, inputnode)
    workflow.connect(connections)
    return workflow


def _series_sinks(sink_args: dict, inputnode: pe.Node) -> list:
    """The corrected series with its gradient files, b=0 reference, mask and confounds."""
    nifti = {"datatype": "dwi"}
    text = {"datatype": "dwi", "sidecar": False}
    sinks = {
        "dwi_preproc": sink_node(**sink_args, name="ds_dwi_preproc", suffix="dwi",
                             entities={"desc": "preproc"}, metadata={"SkullStripped": False,
                                 "Description": "denoising as the methods say, head motion and "
                                 "eddy currents corrected, on the b=0 reference's grid; "
                                 "b-vectors rotated (.bvec beside it)"}, **nifti),
        "bval": sink_node(**sink_args, name="ds_bval", suffix="dwi", extension=".bval",
                      entities={"desc": "preproc"}, **text),
        "bvec": sink_node(**sink_args, name="ds_bvec", suffix="dwi", extension=".bvec",
                      entities={"desc": "preproc"}, **text),
        "b0_ref": sink_node(**sink_args, name="ds_b0_ref", suffix="dwiref",
                        metadata={"Description": "b=0 reference: the b~0 volumes aligned and "
                                  "averaged"}, **nifti),
        "brain_mask": sink_node(**sink_args, name="ds_dwi_mask", suffix="mask",
                            entities={"desc": "brain"}, metadata={"Type": "Brain",
                            "Description": "brain mask of the b=0 reference"}, **nifti),
        "confounds": sink_node(**sink_args, name="ds_dwi_confounds", suffix="timeseries",
                           extension=".tsv", entities={"desc": "confounds"},
                           metadata=data_dictionary(CONFOUND_DESCRIPTIONS, CONFOUND_COLUMNS),
                           **nifti),
    }  # fmt: skip
    connections = [(inputnode, node, [(field, "in_file")]) for field, node in sinks.items()]
    connections.append((inputnode, sinks["brain_mask"], [("brain_mask_model", "model")]))
    return connections


def _map_sinks(
    sink_args: dict, inputnode: pe.Node, kind: str, entities: dict, metadata: dict
) -> list:
    """Sinks of one kind's maps in DWI and T1w space (and template space for the fit)."""
    spaces = [("", None), ("t1w_", "T1w")]
    if kind == "fit":
        spaces.append(("std_", TEMPLATE_NAME))
    connections = []
    for prefix, space in spaces:
        for name in MAPS if prefix != "std_" else TEMPLATE_MAPS:
            description, units = MAP_DESCRIPTIONS[name]
            node = sink_node(
                **sink_args,
                name=f"ds_{kind}_{prefix}{name}",
                suffix="dwimap",
                datatype="dwi",
                entities={**entities, "param": name} | ({"space": space} if space else {}),
                metadata={**metadata, "Description": description, "Units": units},
            )
            connections.append((inputnode, node, [(f"{kind}_{prefix}{name}", "in_file")]))
            if kind == "net":
                connections.append((inputnode, node, [("net_model", "model")]))
    return connections


def _network_sinks(sink_args: dict, inputnode: pe.Node, model: dict, gradients: Gradients) -> list:
    """Sinks of the network's maps; the sidecar says they are predictions and what they read."""
    volumes = shell_volumes(gradients.bvals)
    metadata = {
        "Model": {
            "Description": "PREDICTED, not measured: the tensor a dense scheme would give, "
            "predicted by the bids_dl DTI network (trained on simulated phantoms only) from "
            "the b~0 volumes and the main shell's directions; see DeepLearningModel and the "
            "model card",
            "Parameters": {
                "BValue": round(float(gradients.bvals[volumes].mean()), 1),
                "Directions": int(volumes.size),
                "DirectionVolumes": volumes.tolist(),
                "B0Volumes": int((gradients.bvals <= B0_THRESHOLD).sum()),
            },
            "MeasuredFit": model["Parameters"],
        },
    }
    entities = {"model": "tensor", "desc": NETWORK_DESC}
    return _map_sinks(sink_args, inputnode, "net", entities, metadata)


def _figure_sinks(sink_args: dict, inputnode: pe.Node) -> list:
    """FA, colour FA (on the T1w), b=0-to-T1w coregistration and motion figures."""
    figures = {
        "fa": (FAFigure(), [("fit_t1w_fa", "fa"), ("t1w_mask", "brain_mask")]),
        "colorfa": (ColorFAFigure(), [("fit_t1w_fa", "fa"), ("fit_t1w_v1", "v1"),
                                      ("t1w_mask", "brain_mask")]),
        "coreg": (CoregistrationFigure(), [("b0_t1w", "moving"), ("t1w_preproc", "reference"),
                                           ("t1w_mask", "brain_mask")]),
        "motion": (MotionFigure(), [("confounds", "confounds")]),
    }  # fmt: skip
    connections = []
    for desc, (interface, inputs) in figures.items():
        figure = pe.Node(interface, name=f"dwi_{desc}_figure", mem_gb=MEM_GB["figure"])
        sink = sink_node(
            **sink_args,
            name=f"ds_dwi_{desc}_figure",
            suffix="dwi",
            datatype="figures",
            extension=".png",
            entities={"desc": desc},
            sidecar=False,
        )
        connections += [(inputnode, figure, inputs), (figure, sink, [("out_file", "in_file")])]
    return connections
