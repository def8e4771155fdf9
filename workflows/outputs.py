"""Write the anatomical results as BIDS derivatives and draw their report figures."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_dl.inputs import DEFAULT_QUERIES
from bids_dl.templates import TEMPLATE_NAME
from bids_dl.workflows.interfaces.bids import DerivativesDataSink
from bids_dl.workflows.interfaces.reports import (
    BrainMaskFigure,
    CoregistrationFigure,
    LabelsFigure,
    LesionsFigure,
    RegistrationFigure,
)
from bids_dl.workflows.lesion import LESION_CONTRASTS
from bids_dl.workflows.resources import MEM_GB

ANAT_OUTPUT_FIELDS = [
    "source_file", "t1w_preproc", "brain_mask", "brain_mask_model", "probseg", "dseg", "aseg",
    "segmentation_model", "std_t1w", "std_dseg", "forward_transform", "reverse_transform",
    "measures",
]  # fmt: skip


def init_anat_derivatives_wf(
    *, output_dir: str, bids_dir: str, structures: bool = False, name: str = "anat_derivatives_wf"
):
    """Save the anatomical outputs under their BIDS derivative names.

    Parameters
    ----------
    structures
        whether a structure segmentation (``aseg``) exists and is saved as ``desc-aseg_dseg``

    Inputs
    ------
    source_file
        the raw T1w (names and ``Sources`` derive from it)
    t1w_preproc, brain_mask, probseg, dseg, aseg, std_t1w, std_dseg
        images from :func:`~bids_dl.workflows.anat.init_anat_preproc_wf`
    brain_mask_model, segmentation_model
        the models that made the mask and the segmentations (empty for classical methods)
    forward_transform, reverse_transform
        composite transforms (HDF5)
    measures
        the one-row TSV of tissue volumes and registration quality
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=ANAT_OUTPUT_FIELDS), name="inputnode")

    def sink(node_name: str, suffix: str, **kwargs) -> pe.Node:
        return pe.Node(
            DerivativesDataSink(
                base_directory=output_dir, bids_dir=bids_dir, suffix=suffix, **kwargs
            ),
            name=node_name,
            run_without_submitting=True,
            mem_gb=MEM_GB["light"],
        )

    ds_preproc = sink(
        "ds_t1w_preproc",
        "T1w",
        entities={"desc": "preproc"},
        metadata={"SkullStripped": False, "Description": "bias-corrected T1w, RAS+ native grid"},
    )
    ds_mask = sink(
        "ds_brain_mask",
        "mask",
        entities={"desc": "brain"},
        metadata={"Type": "Brain", "Description": "brain mask"},
    )
    ds_probseg = sink(
        "ds_probseg",
        "probseg",
        labels=["GM", "WM", "CSF"],
        metadata={"Description": "tissue probability"},
    )
    ds_dseg = sink("ds_dseg", "dseg", metadata={"Description": "tissue labels, see dseg.tsv"})
    ds_std_t1w = sink(
        "ds_std_t1w",
        "T1w",
        entities={"space": TEMPLATE_NAME, "desc": "preproc"},
        metadata={"SkullStripped": False, "Description": "bias-corrected T1w in template space"},
    )
    ds_std_dseg = sink(
        "ds_std_dseg",
        "dseg",
        entities={"space": TEMPLATE_NAME},
        metadata={"Description": "tissue labels in template space, see dseg.tsv"},
    )
    xfm = {"mode": "image", "extension": ".h5", "sidecar": False}
    ds_forward = sink(
        "ds_forward_xfm",
        "xfm",
        entities={"from": "T1w", "to": TEMPLATE_NAME, "mode": xfm["mode"]},
        extension=xfm["extension"],
        sidecar=xfm["sidecar"],
    )
    ds_reverse = sink(
        "ds_reverse_xfm",
        "xfm",
        entities={"from": TEMPLATE_NAME, "to": "T1w", "mode": xfm["mode"]},
        extension=xfm["extension"],
        sidecar=xfm["sidecar"],
    )
    ds_measures = sink(
        "ds_measures", "measures", entities={"desc": "anat"}, extension=".tsv", sidecar=False
    )
    sinks = [ds_preproc, ds_mask, ds_probseg, ds_dseg, ds_std_t1w, ds_std_dseg, ds_forward,
             ds_reverse, ds_measures]  # fmt: skip
    if structures:
        ds_aseg = sink(
            "ds_aseg",
            "dseg",
            entities={"desc": "aseg"},
            metadata={
                "Description": "brain structures (FreeSurfer labels), see desc-aseg_dseg.tsv"
            },
        )
        sinks.append(ds_aseg)
        workflow.connect([
            (inputnode, ds_aseg, [("aseg", "in_file"), ("segmentation_model", "model")]),
        ])  # fmt: skip
    workflow.connect(
        [(inputnode, node, [("source_file", "source_file")]) for node in sinks]
        + [
            (inputnode, ds_preproc, [("t1w_preproc", "in_file")]),
            (inputnode, ds_mask, [("brain_mask", "in_file"), ("brain_mask_model", "model")]),
            (inputnode, ds_probseg, [("probseg", "in_file"), ("segmentation_model", "model")]),
            (inputnode, ds_dseg, [("dseg", "in_file"), ("segmentation_model", "model")]),
            (inputnode, ds_std_t1w, [("std_t1w", "in_file")]),
            (inputnode, ds_std_dseg, [("std_dseg", "in_file")]),
            (inputnode, ds_forward, [("forward_transform", "in_file")]),
            (inputnode, ds_reverse, [("reverse_transform", "in_file")]),
            (inputnode, ds_measures, [("measures", "in_file")]),
        ]
    )
    return workflow


def init_anat_reports_wf(
    *,
    output_dir: str,
    bids_dir: str,
    template_dir: str,
    structures: bool = False,
    name: str = "anat_reports_wf",
):
    """Draw the anatomical report figures into ``sub-X/figures/``.

    Inputs
    ------
    source_file, t1w_preproc, brain_mask, dseg, aseg, std_t1w
        as in :func:`init_anat_derivatives_wf` (``aseg`` drawn only with ``structures``)
    """
    workflow = pe.Workflow(name=name)
    fields = ["source_file", "t1w_preproc", "brain_mask", "dseg", "aseg", "std_t1w"]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    figure_args = {"mem_gb": MEM_GB["figure"]}
    mask_figure = pe.Node(BrainMaskFigure(), name="brain_mask_figure", **figure_args)
    registration_figure = pe.Node(
        RegistrationFigure(template_dir=template_dir), name="registration_figure", **figure_args
    )
    tissue_figure = pe.Node(LabelsFigure(kind="tissues"), name="tissue_figure", **figure_args)
    figures = [("mask", "brain"), ("registration", "registration"), ("tissue", "tissues")]
    if structures:
        figures.append(("structures", "structures"))
    sinks = {}
    for key, desc in figures:
        sinks[key] = pe.Node(
            DerivativesDataSink(
                base_directory=output_dir,
                bids_dir=bids_dir,
                suffix="T1w",
                datatype="figures",
                extension=".png",
                entities={"desc": desc},
                sidecar=False,
            ),
            name=f"ds_{key}_figure",
            run_without_submitting=True,
            mem_gb=MEM_GB["light"],
        )
    workflow.connect(
        [
            (inputnode, mask_figure, [("t1w_preproc", "anat"), ("brain_mask", "brain_mask")]),
            (inputnode, registration_figure, [("std_t1w", "std_anat")]),
            (
                inputnode,
                tissue_figure,
                [
                    ("t1w_preproc", "anat"),
                    ("dseg", "labels"),
                    ("brain_mask", "brain_mask"),
                ],
            ),
            (mask_figure, sinks["mask"], [("out_file", "in_file")]),
            (registration_figure, sinks["registration"], [("out_file", "in_file")]),
            (tissue_figure, sinks["tissue"], [("out_file", "in_file")]),
        ]
        + [  # fmt: skip
            (inputnode, node, [("source_file", "source_file")]) for node in sinks.values()
        ]
    )
    if structures:
        structures_figure = pe.Node(
            LabelsFigure(kind="structures"), name="structures_figure", **figure_args
        )
        workflow.connect([
            (inputnode, structures_figure, [
                ("t1w_preproc", "anat"), ("aseg", "labels"), ("brain_mask", "brain_mask"),
            ]),
            (structures_figure, sinks["structures"], [("out_file", "in_file")]),
        ])  # fmt: skip
    return workflow


def init_lesion_outputs_wf(
    *,
    output_dir: str,
    bids_dir: str,
    tasks: list[str],
    contrast_files: dict[str, str],
    name: str = "lesion_outputs_wf",
):
    """Save the lesion labels (``desc-tumor_dseg``, ``desc-wmh_mask``) and draw their figures
    (over the T1w, and over the FLAIR when there is one), and one coregistration figure per
    registered contrast (``sub-X_desc-coreg_FLAIR.png``, named after the contrast's raw file).
    ``contrast_files`` (``flair``/``t1ce``/``t2w`` -> the raw file registered to the T1w) join
    the T1w in the sidecars' ``Sources``.

    Inputs
    ------
    source_file
        the raw T1w (names derive from it)
    t1w_preproc, brain_mask, flair_t1w, t1ce_t1w, t2w_t1w
        the images the figures are drawn on (all on the labels' grid)
    tumor_dseg, tumor_model, wmh_mask, wmh_model
        outputs of :func:`~bids_dl.workflows.lesion.init_lesion_wf` for ``tasks``
    """
    workflow = pe.Workflow(name=name)
    fields = ["source_file", "t1w_preproc", "brain_mask", *(f"{c}_t1w" for c in LESION_CONTRASTS),
              "tumor_dseg", "tumor_model", "wmh_mask", "wmh_model"]  # fmt: skip
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    for contrast, raw_file in contrast_files.items():
        figure = pe.Node(
            CoregistrationFigure(), name=f"coreg_{contrast}_figure", mem_gb=MEM_GB["figure"]
        )
        figure_sink = pe.Node(
            DerivativesDataSink(
                base_directory=output_dir,
                bids_dir=bids_dir,
                source_file=raw_file,
                suffix=DEFAULT_QUERIES[contrast]["suffix"],
                datatype="figures",
                extension=".png",
                entities={"desc": "coreg"},
                sidecar=False,
            ),
            name=f"ds_coreg_{contrast}_figure",
            run_without_submitting=True,
            mem_gb=MEM_GB["light"],
        )
        workflow.connect([
            (inputnode, figure, [(f"{contrast}_t1w", "moving"), ("t1w_preproc", "reference"),
                                 ("brain_mask", "brain_mask")]),
            (figure, figure_sink, [("out_file", "in_file")]),
        ])  # fmt: skip
    outputs = {
        "tumor": ("tumor_dseg", "dseg", {"Description": "glioma sub-regions (BraTS labels), "
                                         "see desc-tumor_dseg.tsv"}),
        "wmh": ("wmh_mask", "mask", {"Type": "Lesion",
                                     "Description": "white-matter hyperintensities"}),
    }  # fmt: skip
    for task in tasks:
        field, suffix, metadata = outputs[task]
        sink = pe.Node(
            DerivativesDataSink(
                base_directory=output_dir,
                bids_dir=bids_dir,
                suffix=suffix,
                entities={"desc": task},
                metadata=metadata,
                extra_sources=list(contrast_files.values()),
            ),
            name=f"ds_{task}",
            run_without_submitting=True,
            mem_gb=MEM_GB["light"],
        )
        workflow.connect([
            (inputnode, sink, [("source_file", "source_file"), (field, "in_file"),
                               (f"{task}_model", "model")]),
        ])  # fmt: skip
        backgrounds = [("T1w", "t1w_preproc")] if task == "tumor" else []
        if "flair" in contrast_files:
            backgrounds.append(("FLAIR", "flair_t1w"))
        for anat_suffix, anat_field in backgrounds:
            figure = pe.Node(
                LesionsFigure(task=task),
                name=f"{task}_{anat_suffix.lower()}_figure",
                mem_gb=MEM_GB["figure"],
            )
            figure_sink = pe.Node(
                DerivativesDataSink(
                    base_directory=output_dir,
                    bids_dir=bids_dir,
                    suffix=anat_suffix,
                    datatype="figures",
                    extension=".png",
                    entities={"desc": task},
                    sidecar=False,
                ),
                name=f"ds_{task}_{anat_suffix.lower()}_figure",
                run_without_submitting=True,
                mem_gb=MEM_GB["light"],
            )
            workflow.connect([
                (inputnode, figure, [(anat_field, "anat"), (field, "labels")]),
                (inputnode, figure_sink, [("source_file", "source_file")]),
                (figure, figure_sink, [("out_file", "in_file")]),
            ])  # fmt: skip
    return workflow
