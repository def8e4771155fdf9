"""Assemble the participant workflow: one sub-workflow per subject, every analysis in it."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_dl.config import Config
from bids_dl.inputs import SubjectInputs
from bids_dl.workflows.anat import init_anat_preproc_wf
from bids_dl.workflows.asl import (
    ASL_PREPROC_OUTPUTS,
    cbf_outputs,
    init_asl_cbf_wf,
    init_asl_preproc_wf,
)
from bids_dl.workflows.asl_outputs import init_asl_outputs_wf
from bids_dl.workflows.bold import BOLD_PREPROC_OUTPUTS, init_bold_preproc_wf
from bids_dl.workflows.bold_outputs import init_bold_outputs_wf
from bids_dl.workflows.dwi import DWI_PREPROC_OUTPUTS, init_dwi_preproc_wf, init_dwi_tensor_wf
from bids_dl.workflows.dwi_outputs import init_dwi_outputs_wf
from bids_dl.workflows.interfaces.morphometry import AnatomicalMeasures
from bids_dl.workflows.lesion import LESION_CONTRASTS, init_lesion_wf
from bids_dl.workflows.outputs import (
    init_anat_derivatives_wf,
    init_anat_reports_wf,
    init_lesion_outputs_wf,
)
from bids_dl.workflows.pet import (
    PET_PREPROC_OUTPUTS,
    init_pet_imputation_wf,
    init_pet_preproc_wf,
    init_pet_quant_wf,
)
from bids_dl.workflows.pet_outputs import init_imputed_pet_outputs_wf, init_pet_outputs_wf
from bids_dl.workflows.resources import MEM_GB


def subject_log_dir(output_dir: Path, subject: str, run_uuid: str) -> Path:
    """Where the crash files of one subject and one run go (as fMRIPrep: ``sub-X/log/<run>``)."""
    return Path(output_dir) / f"sub-{subject}" / "log" / run_uuid


def init_bids_dl_wf(config: Config, subjects: dict[str, SubjectInputs]) -> pe.Workflow:
    """The whole participant-level graph: one :func:`init_single_subject_wf` per subject."""
    workflow = pe.Workflow(name="bids_dl_wf", base_dir=str(config.execution.work_dir))
    for label, inputs in subjects.items():
        single_subject_wf = init_single_subject_wf(config, inputs)
        crash_dir = subject_log_dir(config.execution.output_dir, label, config.execution.run_uuid)
        single_subject_wf.config["execution"]["crashdump_dir"] = str(crash_dir)
        for node in single_subject_wf._get_all_nodes():
            node.config = {**(node.config or {}), "execution": {"crashdump_dir": str(crash_dir)}}
        workflow.add_nodes([single_subject_wf])
    return workflow


def init_single_subject_wf(config: Config, inputs: SubjectInputs) -> pe.Workflow:
    """Everything bids_dl does for one participant.

    Inputs
    ------
    t1w
        the participant's T1w (set from ``inputs``)
    """
    workflow = pe.Workflow(name=f"single_subject_{inputs.label}_wf")
    if not inputs.has_anatomy:
        workflow.__desc__ = (
            "Results included in this report were generated with bids_dl, a BIDS-App built on "
            "Nipype [@nipype]. The participant has no T1w image: only its ASL series were "
            "processed, each on its own grid."
        )
        _connect_asl(workflow, config, inputs, None, structures=False)
        return workflow
    reference = (
        "contrast-enhanced T1w image (the participant has no T1w without contrast)"
        if inputs.reference_is_contrast_enhanced
        else "T1w image"
    )
    workflow.__desc__ = (
        f"Results included in this report were generated with bids_dl, a BIDS-App built on "
        f"Nipype [@nipype]. The participant's {reference} ({Path(inputs.t1w).name}) was "
        "processed as follows."
    )
    output_dir = str(config.execution.output_dir)
    bids_dir = str(config.execution.bids_dir)
    template_dir = str(config.template_dir)
    omp_nthreads = config.nipype.omp_nthreads

    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w"]), name="inputnode")
    inputnode.inputs.t1w = inputs.t1w
    anat_preproc_wf = init_anat_preproc_wf(
        template_dir=template_dir,
        omp_nthreads=omp_nthreads,
        sloppy=config.workflow.sloppy,
        brain_extraction_bundle=config.workflow.brain_extraction_bundle,
        segmentation_bundle=config.workflow.segmentation_bundle,
        skull_stripped=inputs.skull_stripped,
        device=config.workflow.device,
    )
    structures = config.workflow.segmentation_bundle is not None
    measures = pe.Node(
        AnatomicalMeasures(
            subject_label=inputs.label,
            template_dir=template_dir,
            tissues_from_contrast_enhanced=inputs.reference_is_contrast_enhanced and not structures,
        ),
        name="anat_measures",
        mem_gb=MEM_GB["measures"],
    )
    anat_derivatives_wf = init_anat_derivatives_wf(
        output_dir=output_dir, bids_dir=bids_dir, structures=structures
    )
    anat_reports_wf = init_anat_reports_wf(
        output_dir=output_dir, bids_dir=bids_dir, template_dir=template_dir, structures=structures
    )
    workflow.connect([
        (inputnode, anat_preproc_wf, [("t1w", "inputnode.t1w")]),
        (anat_preproc_wf, measures, [
            ("outputnode.probseg", "probseg"),
            ("outputnode.brain_mask", "brain_mask"),
            ("outputnode.std_t1w", "std_t1w"),
            ("outputnode.std_dseg", "std_dseg"),
        ]),
        (inputnode, anat_derivatives_wf, [("t1w", "inputnode.source_file")]),
        (anat_preproc_wf, anat_derivatives_wf, [
            ("outputnode.t1w_preproc", "inputnode.t1w_preproc"),
            ("outputnode.brain_mask", "inputnode.brain_mask"),
            ("outputnode.brain_mask_model", "inputnode.brain_mask_model"),
            ("outputnode.probseg", "inputnode.probseg"),
            ("outputnode.dseg", "inputnode.dseg"),
            ("outputnode.segmentation_model", "inputnode.segmentation_model"),
            ("outputnode.std_t1w", "inputnode.std_t1w"),
            ("outputnode.std_dseg", "inputnode.std_dseg"),
            ("outputnode.forward_transform", "inputnode.forward_transform"),
            ("outputnode.reverse_transform", "inputnode.reverse_transform"),
        ]),
        (measures, anat_derivatives_wf, [("out_file", "inputnode.measures")]),
        (inputnode, anat_reports_wf, [("t1w", "inputnode.source_file")]),
        (anat_preproc_wf, anat_reports_wf, [
            ("outputnode.t1w_preproc", "inputnode.t1w_preproc"),
            ("outputnode.brain_mask", "inputnode.brain_mask"),
            ("outputnode.dseg", "inputnode.dseg"),
            ("outputnode.std_t1w", "inputnode.std_t1w"),
        ]),
    ])  # fmt: skip
    lesion_tasks = [a for a in inputs.analyses if a in ("tumor", "wmh")]
    if lesion_tasks:
        # a contrast-enhanced reference is already on the output grid: not registered again
        contrasts = [
            c for c in LESION_CONTRASTS
            if inputs.first(c) and not (c == "t1ce" and inputs.reference_is_contrast_enhanced)
        ]  # fmt: skip
        lesion_wf = init_lesion_wf(
            contrasts=contrasts,
            reference_contrast="T1ce" if inputs.reference_is_contrast_enhanced else "T1w",
            tumor_bundle=config.workflow.tumor_bundle if "tumor" in lesion_tasks else None,
            wmh_bundle=config.workflow.wmh_bundle if "wmh" in lesion_tasks else None,
            omp_nthreads=omp_nthreads,
            device=config.workflow.device,
        )
        for contrast in contrasts:
            setattr(lesion_wf.inputs.inputnode, contrast, inputs.first(contrast))
        lesion_outputs_wf = init_lesion_outputs_wf(
            output_dir=output_dir,
            bids_dir=bids_dir,
            tasks=lesion_tasks,
            contrast_files={c: inputs.first(c) for c in contrasts},
        )
        fields = [f"{c}_t1w" for c in contrasts]
        for task, outputs in (("tumor", ["tumor_dseg", "tumor_model"]),
                              ("wmh", ["wmh_mask", "wmh_model"])):  # fmt: skip
            fields += outputs if task in lesion_tasks else []
        workflow.connect([
            (anat_preproc_wf, lesion_wf, [
                ("outputnode.t1w_preproc", "inputnode.t1w_preproc"),
                ("outputnode.brain_mask", "inputnode.brain_mask"),
            ]),
            (inputnode, lesion_outputs_wf, [("t1w", "inputnode.source_file")]),
            (anat_preproc_wf, lesion_outputs_wf, [
                ("outputnode.t1w_preproc", "inputnode.t1w_preproc"),
                ("outputnode.brain_mask", "inputnode.brain_mask"),
            ]),
            (lesion_wf, lesion_outputs_wf, [
                (f"outputnode.{f}", f"inputnode.{f}") for f in fields
            ]),
        ])  # fmt: skip
    extra_measures = [(lesion_wf, "outputnode.measures")] if lesion_tasks else []
    if "dwi" in inputs.analyses:
        extra_measures += _connect_dwi(workflow, config, inputs, anat_preproc_wf, structures)
    if "asl" in inputs.analyses:
        extra_measures += _connect_asl(workflow, config, inputs, anat_preproc_wf, structures)
    if "func" in inputs.analyses:
        _connect_func(workflow, config, inputs, anat_preproc_wf)
    if "pet" in inputs.analyses:
        extra_measures += _connect_pet(workflow, config, inputs, anat_preproc_wf)
    _connect_extra_measures(workflow, extra_measures, measures)
    if structures:
        workflow.connect([
            (anat_preproc_wf, measures, [("outputnode.aseg", "aseg")]),
            (anat_preproc_wf, anat_derivatives_wf, [("outputnode.aseg", "inputnode.aseg")]),
            (anat_preproc_wf, anat_reports_wf, [("outputnode.aseg", "inputnode.aseg")]),
        ])  # fmt: skip
    return workflow


def _connect_extra_measures(
    workflow: pe.Workflow, sources: list[tuple[pe.Node, str]], measures: pe.Node
) -> None:
    """Feed the measures of other analyses (lesions, diffusion) into the measures table."""
    if len(sources) == 1:
        workflow.connect([(sources[0][0], measures, [(sources[0][1], "extra_measures")])])
    elif sources:
        merge = pe.Node(niu.Merge(len(sources), ravel_inputs=True), name="merge_measures",
                        run_without_submitting=True)  # fmt: skip
        for index, (node, field) in enumerate(sources, start=1):
            workflow.connect([(node, merge, [(field, f"in{index}")])])
        workflow.connect([(merge, measures, [("out", "extra_measures")])])


def _connect_dwi(
    workflow: pe.Workflow,
    config: Config,
    inputs: SubjectInputs,
    anat_preproc_wf: pe.Workflow,
    structures: bool,
) -> list[tuple[pe.Node, str]]:
    """One preprocessing, tensor and outputs workflow per diffusion series; the measures of
    the first series go to the measures table (returned as its source)."""
    settings = config.workflow
    tensor_wfs = []
    for index, series in enumerate(inputs.dwi):
        preproc_wf = init_dwi_preproc_wf(
            omp_nthreads=config.nipype.omp_nthreads, denoise=settings.dwi_denoise,
            brain_mask_bundle=settings.brain_extraction_bundle, device=settings.device,
            name=f"dwi_preproc_{index}_wf",
        )  # fmt: skip
        preproc_wf.inputs.inputnode.dwi = series.path
        preproc_wf.inputs.inputnode.bval = series.bval
        preproc_wf.inputs.inputnode.bvec = series.bvec
        tensor_wf = init_dwi_tensor_wf(
            template_dir=str(config.template_dir), dwi_bundle=settings.dwi_bundle,
            structures=structures, omp_nthreads=config.nipype.omp_nthreads,
            device=settings.device, name=f"dwi_tensor_{index}_wf",
        )  # fmt: skip
        outputs_wf = init_dwi_outputs_wf(
            output_dir=str(config.execution.output_dir), bids_dir=str(config.execution.bids_dir),
            dwi_file=series.path, bval_file=series.bval, bvec_file=series.bvec,
            network=settings.dwi_bundle is not None, name=f"dwi_outputs_{index}_wf",
        )  # fmt: skip
        _connect_dwi_series(workflow, anat_preproc_wf, preproc_wf, tensor_wf, outputs_wf,
                            structures)  # fmt: skip
        tensor_wfs.append(tensor_wf)
    return [(tensor_wfs[0], "outputnode.measures")]


def _connect_dwi_series(
    workflow: pe.Workflow,
    anat_preproc_wf: pe.Workflow,
    preproc_wf: pe.Workflow,
    tensor_wf: pe.Workflow,
    outputs_wf: pe.Workflow,
    structures: bool,
) -> None:
    anat = [("outputnode.t1w_preproc", "inputnode.t1w_preproc"),
            ("outputnode.brain_mask", "inputnode.t1w_mask")]  # fmt: skip
    tensor_outputs = [f for f in tensor_wf.get_node("outputnode").outputs.copyable_trait_names()
                      if f != "measures" and f != "t1w_mask"]  # fmt: skip
    workflow.connect([
        # separate lists: nipype edits a connection list while flattening the graph
        (anat_preproc_wf, preproc_wf, list(anat)),
        (anat_preproc_wf, outputs_wf, list(anat)),
        (anat_preproc_wf, tensor_wf, [
            ("outputnode.t1w_preproc", "inputnode.t1w_preproc"),
            ("outputnode.dseg", "inputnode.dseg"),
            ("outputnode.forward_transform", "inputnode.forward_transform"),
        ] + ([("outputnode.aseg", "inputnode.aseg")] if structures else [])),
        (preproc_wf, tensor_wf, [(f"outputnode.{f}", f"inputnode.{f}") for f in (
            "dwi_preproc", "bval", "world_bvecs", "brain_mask", "b0_to_t1w")]),
        (preproc_wf, outputs_wf, [(f"outputnode.{f}", f"inputnode.{f}")
                                  for f in DWI_PREPROC_OUTPUTS]),
        (tensor_wf, outputs_wf, [(f"outputnode.{f}", f"inputnode.{f}") for f in tensor_outputs]),
    ])  # fmt: skip


def _connect_asl(
    workflow: pe.Workflow,
    config: Config,
    inputs: SubjectInputs,
    anat_preproc_wf: pe.Workflow | None,
    structures: bool,
) -> list[tuple[pe.Node, str]]:
    """One preprocessing, CBF and outputs workflow per ASL series (without ``anat_preproc_wf``,
    a participant without T1w, on the ASL grid only); the measures of the first series go to
    the measures table (returned as its source)."""
    settings = config.workflow
    anatomy = anat_preproc_wf is not None
    cbf_wfs = []
    for index, series in enumerate(inputs.asl):
        # the network was trained on single-delay differences
        bundle = settings.asl_bundle if "att" not in cbf_outputs(series) else None
        preproc_wf = init_asl_preproc_wf(
            series=series, anatomy=anatomy, omp_nthreads=config.nipype.omp_nthreads,
            name=f"asl_preproc_{index}_wf",
        )  # fmt: skip
        preproc_wf.inputs.inputnode.asl = series.path
        if series.m0scan:
            preproc_wf.inputs.inputnode.m0scan = series.m0scan
        cbf_wf = init_asl_cbf_wf(
            series=series, template_dir=str(config.template_dir), anatomy=anatomy,
            asl_bundle=bundle, structures=structures, omp_nthreads=config.nipype.omp_nthreads,
            device=settings.device, name=f"asl_cbf_{index}_wf",
        )  # fmt: skip
        outputs_wf = init_asl_outputs_wf(
            output_dir=str(config.execution.output_dir), bids_dir=str(config.execution.bids_dir),
            series=series, anatomy=anatomy, asl_bundle=bundle, name=f"asl_outputs_{index}_wf",
        )  # fmt: skip
        _connect_asl_series(workflow, anat_preproc_wf, preproc_wf, cbf_wf, outputs_wf, structures)
        cbf_wfs.append(cbf_wf)
    return [(cbf_wfs[0], "outputnode.measures")] if anatomy else []


def _connect_asl_series(
    workflow: pe.Workflow,
    anat_preproc_wf: pe.Workflow | None,
    preproc_wf: pe.Workflow,
    cbf_wf: pe.Workflow,
    outputs_wf: pe.Workflow,
    structures: bool,
) -> None:
    cbf_fields = [f for f in cbf_wf.get_node("outputnode").outputs.copyable_trait_names()
                  if f != "measures"]  # fmt: skip
    preproc_fields = [f for f in ASL_PREPROC_OUTPUTS if anat_preproc_wf or "t1w" not in f]
    workflow.connect([
        (preproc_wf, cbf_wf, [(f"outputnode.{f}", f"inputnode.{f}") for f in (
            "asl_preproc", "m0", "brain_mask", "confounds", "aslref")]),
        (preproc_wf, outputs_wf, [(f"outputnode.{f}", f"inputnode.{f}") for f in preproc_fields]),
        (cbf_wf, outputs_wf, [(f"outputnode.{f}", f"inputnode.{f}") for f in cbf_fields]),
    ])  # fmt: skip
    if anat_preproc_wf is None:
        return
    anat = [("outputnode.t1w_preproc", "inputnode.t1w_preproc"),
            ("outputnode.brain_mask", "inputnode.t1w_mask")]  # fmt: skip
    workflow.connect([
        # separate lists: nipype edits a connection list while flattening the graph
        (anat_preproc_wf, preproc_wf, list(anat)),
        (anat_preproc_wf, outputs_wf, list(anat)),
        (preproc_wf, cbf_wf, [("outputnode.asl_to_t1w", "inputnode.asl_to_t1w")]),
        (anat_preproc_wf, cbf_wf, [
            ("outputnode.t1w_preproc", "inputnode.t1w_preproc"),
            ("outputnode.probseg", "inputnode.probseg"),
            ("outputnode.dseg", "inputnode.dseg"),
            ("outputnode.forward_transform", "inputnode.forward_transform"),
        ] + ([("outputnode.aseg", "inputnode.aseg")] if structures else [])),
    ])  # fmt: skip


def _connect_func(
    workflow: pe.Workflow, config: Config, inputs: SubjectInputs, anat_preproc_wf: pe.Workflow
) -> None:
    """One preprocessing and outputs workflow per BOLD run (networks come at the group
    level, from every participant's template-space runs)."""
    for index, series in enumerate(inputs.bold):
        preproc_wf = init_bold_preproc_wf(
            series=series, template_dir=str(config.template_dir),
            dummy_scans=config.workflow.dummy_scans, omp_nthreads=config.nipype.omp_nthreads,
            name=f"bold_preproc_{index}_wf",
        )  # fmt: skip
        preproc_wf.inputs.inputnode.bold = series.path
        outputs_wf = init_bold_outputs_wf(
            output_dir=str(config.execution.output_dir), bids_dir=str(config.execution.bids_dir),
            series=series, t1w_file=inputs.t1w, name=f"bold_outputs_{index}_wf",
        )  # fmt: skip
        anat = [("outputnode.t1w_preproc", "inputnode.t1w_preproc"),
                ("outputnode.brain_mask", "inputnode.t1w_mask")]  # fmt: skip
        workflow.connect([
            # separate lists: nipype edits a connection list while flattening the graph
            (anat_preproc_wf, preproc_wf, list(anat) + [
                ("outputnode.probseg", "inputnode.probseg"),
                ("outputnode.dseg", "inputnode.dseg"),
                ("outputnode.forward_transform", "inputnode.forward_transform"),
            ]),
            (anat_preproc_wf, outputs_wf, list(anat)),
            (preproc_wf, outputs_wf, [(f"outputnode.{f}", f"inputnode.{f}")
                                      for f in BOLD_PREPROC_OUTPUTS]),
        ])  # fmt: skip


def _connect_pet(
    workflow: pe.Workflow, config: Config, inputs: SubjectInputs, anat_preproc_wf: pe.Workflow
) -> list[tuple[pe.Node, str]]:
    """One preprocessing, quantification and outputs workflow per PET, and the imputed PET
    where :func:`~bids_dl.inputs.plan_pet` asked for it; the measures of the first PET and of
    the imputed one go to the measures table (returned as their sources)."""
    settings = config.workflow
    output_dir, bids_dir = str(config.execution.output_dir), str(config.execution.bids_dir)
    anat = [("outputnode.t1w_preproc", "inputnode.t1w_preproc"),
            ("outputnode.brain_mask", "inputnode.t1w_mask")]  # fmt: skip
    measures = []
    for index, series in enumerate(inputs.pet):
        preproc_wf = init_pet_preproc_wf(
            series=series, window=settings.pet_window, omp_nthreads=config.nipype.omp_nthreads,
            name=f"pet_preproc_{index}_wf",
        )  # fmt: skip
        preproc_wf.inputs.inputnode.pet = series.path
        quant_wf = init_pet_quant_wf(
            series=series, template_dir=str(config.template_dir),
            reference=settings.pet_reference, name=f"pet_quant_{index}_wf",
        )  # fmt: skip
        outputs_wf = init_pet_outputs_wf(
            output_dir=output_dir, bids_dir=bids_dir, series=series,
            reference=settings.pet_reference, window=settings.pet_window, t1w_file=inputs.t1w,
            name=f"pet_outputs_{index}_wf",
        )  # fmt: skip
        quant_outputs = ["suvr_t1w", "suvr_std"] + (["suv_t1w"] if series.suv_ready else [])
        preproc_outputs = PET_PREPROC_OUTPUTS + (["tacs"] if series.is_dynamic else [])
        workflow.connect([
            # separate lists: nipype edits a connection list while flattening the graph
            (anat_preproc_wf, preproc_wf, list(anat) + [("outputnode.aseg", "inputnode.aseg")]),
            (anat_preproc_wf, outputs_wf, list(anat)),
            (anat_preproc_wf, quant_wf, [("outputnode.aseg", "inputnode.aseg"),
                                         ("outputnode.forward_transform",
                                          "inputnode.forward_transform")]),
            (preproc_wf, quant_wf, [("outputnode.static_t1w", "inputnode.static_t1w")]),
            (preproc_wf, outputs_wf, [(f"outputnode.{f}", f"inputnode.{f}")
                                      for f in preproc_outputs]),
            (quant_wf, outputs_wf, [(f"outputnode.{f}", f"inputnode.{f}")
                                    for f in quant_outputs]),
        ])  # fmt: skip
        measures += [(quant_wf, "outputnode.measures")] if index == 0 else []
    if inputs.impute_pet:
        imputation_wf = init_pet_imputation_wf(
            bundle=settings.pet_imputation_bundle, template_dir=str(config.template_dir),
            omp_nthreads=config.nipype.omp_nthreads, device=settings.device,
        )  # fmt: skip
        imputed_outputs_wf = init_imputed_pet_outputs_wf(
            output_dir=output_dir, bids_dir=bids_dir, t1w_file=inputs.t1w
        )
        workflow.connect([
            (anat_preproc_wf, imputation_wf, [
                ("outputnode.t1w_preproc", "inputnode.t1w_preproc"),
                ("outputnode.brain_mask", "inputnode.brain_mask"),
                ("outputnode.aseg", "inputnode.aseg"),
                ("outputnode.forward_transform", "inputnode.forward_transform"),
            ]),
            (anat_preproc_wf, imputed_outputs_wf, list(anat)),
            (imputation_wf, imputed_outputs_wf, [
                (f"outputnode.{f}", f"inputnode.{f}")
                for f in ("imputed_t1w", "imputed_std", "model")
            ]),
        ])  # fmt: skip
        measures.append((imputation_wf, "outputnode.measures"))
    return measures
