"""PET workflows: preprocessing of one PET (frame motion, static image, registration to the
T1w, time-activity curves), its SUV and SUVR on the T1w and template grids, and the imputation
of an FDG-like SUVR image from the T1w for a participant without a PET."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_dl.pet_inputs import PetSeries, suv_factor, window_weights
from bids_dl.workflows.interfaces.ants import (
    ApplyTransformToTemplate,
    RegisterEpiToT1w,
    ResampleThroughTransform,
)
from bids_dl.workflows.interfaces.dwi_preproc import MedianOtsuBrainMask
from bids_dl.workflows.interfaces.pet_imputation import ImputePet
from bids_dl.workflows.interfaces.pet_preproc import CorrectFrameMotion, TimeActivityCurves
from bids_dl.workflows.interfaces.pet_quant import (
    REFERENCE_NAMES,
    PetMeasures,
    StandardizedUptake,
    UptakeRatio,
)
from bids_dl.workflows.resources import MEM_GB, pet_mem_gb

PET_PREPROC_OUTPUTS = ["pet_preproc", "static", "motion_file", "pet_to_t1w", "static_t1w"]
#: the measures-table prefix of the imputed PET's regional SUVR (apart from the measured one)
IMPUTED_PREFIX = "pet_imputed"


def frame_weights(series: PetSeries, window: tuple[float, float] | None) -> list[float]:
    """The weight of each frame in the static image (``--pet-window``, else the late frames)."""
    weights = window_weights(
        series.frame_starts, series.frame_durations, series.injection_start, window
    )
    return [float(w) for w in weights]


def init_pet_preproc_wf(
    *,
    series: PetSeries,
    window: tuple[float, float] | None,
    omp_nthreads: int,
    name: str = "pet_preproc_wf",
) -> pe.Workflow:
    """Correct frame-to-frame motion, sum the static image over the window, register it to
    the T1w and, for dynamic data, average each structure per frame.

    Inputs
    ------
    pet
        the raw PET (3D or 4D)
    t1w_preproc, t1w_mask, aseg
        the preprocessed T1w, its brain mask and the structures on its grid

    Outputs
    -------
    pet_preproc, static, motion_file
        the motion-corrected frames, their time-weighted mean over the window, and the
        motion parameters per frame (fMRIPrep's column names)
    pet_to_t1w, static_t1w
        the rigid transform onto the T1w (ANTs) and the static image resampled there
    tacs
        with dynamic data: the time-activity curve of each structure (TSV)
    """
    workflow = pe.Workflow(name=name)
    workflow.__desc__ = _preproc_description(series, window)
    fields = ["pet", "t1w_preproc", "t1w_mask", "aseg"]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    outputs = PET_PREPROC_OUTPUTS + (["tacs"] if series.is_dynamic else [])
    outputnode = pe.Node(niu.IdentityInterface(fields=outputs), name="outputnode")
    threads = {"n_procs": omp_nthreads}
    motion = pe.Node(
        CorrectFrameMotion(weights=frame_weights(series, window), num_threads=omp_nthreads),
        name="frame_motion",
        mem_gb=pet_mem_gb(series.shape),
        **threads,
    )
    static_mask = pe.Node(MedianOtsuBrainMask(), name="static_mask", mem_gb=MEM_GB["light"])
    registration = pe.Node(
        RegisterEpiToT1w(num_threads=omp_nthreads),
        name="static_to_t1w",
        mem_gb=MEM_GB["coregister"],
        **threads,
    )
    workflow.connect([
        (inputnode, motion, [("pet", "in_file")]),
        (motion, static_mask, [("static", "in_file")]),
        (motion, registration, [("static", "reference")]),
        (static_mask, registration, [("out_file", "reference_mask")]),
        (inputnode, registration, [("t1w_preproc", "t1w"), ("t1w_mask", "t1w_mask")]),
        (motion, outputnode, [("out_file", "pet_preproc"), ("static", "static"),
                              ("motion_file", "motion_file")]),
        (registration, outputnode, [("transform", "pet_to_t1w"),
                                    ("reference_t1w", "static_t1w")]),
    ])  # fmt: skip
    if series.is_dynamic:
        labels = pe.Node(
            ResampleThroughTransform(invert=True, labels=True),
            name="aseg_to_pet",
            mem_gb=MEM_GB["asl_resample"],
        )
        tacs = pe.Node(
            TimeActivityCurves(
                frame_starts=list(series.frame_starts),
                frame_durations=list(series.frame_durations),
            ),
            name="time_activity_curves",
            mem_gb=pet_mem_gb(series.shape),
        )
        workflow.connect([
            (inputnode, labels, [("aseg", "in_file")]),
            (motion, labels, [("static", "reference")]),
            (registration, labels, [("transform", "transform")]),
            (motion, tacs, [("out_file", "in_file")]),
            (labels, tacs, [("out_file", "labels")]),
            (tacs, outputnode, [("out_file", "tacs")]),
        ])  # fmt: skip
    return workflow


def _preproc_description(series: PetSeries, window: tuple[float, float] | None) -> str:
    frames = f"{series.n_frames} frames" if series.is_dynamic else "one frame"
    window_text = (
        f"{window[0]:g}-{window[1]:g} min after injection"
        if window
        else "the late frames (those starting in the last third of the acquisition)"
    )
    text = f"The PET ({series.tracer}, {frames}) "
    if series.is_dynamic:
        text += (
            "was corrected for head motion frame by frame: each frame was rigidly registered "
            "(ANTs [@ants], mutual information) to the time-weighted mean of the frames over "
            f"{window_text}, and that mean was recomputed from the corrected frames as the "
            "static image. "
        )
    else:
        text += "was taken as the static image. "
    text += (
        "The static image was rigidly registered to the T1w (mutual information, brain-masked "
        "by dipy's median Otsu on the PET side)."
    )
    if series.is_dynamic:
        text += (
            " The structures of the T1w were carried onto the PET grid (nearest neighbour) and "
            "their mean activity per frame written as time-activity curves."
        )
    return text


def init_pet_quant_wf(
    *,
    series: PetSeries,
    template_dir: str,
    reference: str,
    name: str = "pet_quant_wf",
) -> pe.Workflow:
    """SUVR (and SUV where the dose, decay correction and body weight are known) of the static
    image on the T1w grid, SUVR on the template grid and the mean SUVR per structure.

    Inputs
    ------
    static_t1w
        the static image on the T1w grid (:func:`init_pet_preproc_wf`)
    aseg, forward_transform
        the structures on the T1w grid and the T1w -> template transform

    Outputs
    -------
    suvr_t1w, suvr_std, reference_mean, measures
        SUVR on the T1w and template grids, the reference region's mean activity, and the
        regional SUVR (dict)
    suv_t1w
        SUV on the T1w grid (when :attr:`PetSeries.suv_ready`)
    """
    workflow = pe.Workflow(name=name)
    workflow.__desc__ = _quant_description(series, reference)
    fields = ["static_t1w", "aseg", "forward_transform"]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    outputs = ["suvr_t1w", "suvr_std", "reference_mean", "measures"]
    outputs += ["suv_t1w"] if series.suv_ready else []
    outputnode = pe.Node(niu.IdentityInterface(fields=outputs), name="outputnode")
    suvr = pe.Node(UptakeRatio(reference=reference), name="suvr", mem_gb=MEM_GB["measures"])
    measures = pe.Node(PetMeasures(prefix="pet"), name="pet_measures", mem_gb=MEM_GB["measures"])
    suvr_std = pe.Node(ApplyTransformToTemplate(template_dir=template_dir), name="suvr_to_std",
                       mem_gb=MEM_GB["resample"])  # fmt: skip
    workflow.connect([
        (inputnode, suvr, [("static_t1w", "in_file"), ("aseg", "aseg")]),
        (suvr, outputnode, [("out_file", "suvr_t1w"), ("reference_mean", "reference_mean")]),
        (suvr, measures, [("out_file", "suvr")]),
        (inputnode, measures, [("aseg", "aseg")]),
        (measures, outputnode, [("measures", "measures")]),
        (suvr, suvr_std, [("out_file", "in_file")]),
        (inputnode, suvr_std, [("forward_transform", "transform")]),
        (suvr_std, outputnode, [("out_file", "suvr_std")]),
    ])  # fmt: skip
    if series.suv_ready:
        suv = pe.Node(StandardizedUptake(factor=suv_factor(series)), name="suv",
                      mem_gb=MEM_GB["measures"])  # fmt: skip
        workflow.connect([
            (inputnode, suv, [("static_t1w", "in_file")]),
            (suv, outputnode, [("out_file", "suv_t1w")]),
        ])  # fmt: skip
    return workflow


def _quant_description(series: PetSeries, reference: str) -> str:
    text = (
        "SUVR was the static image on the T1w grid over its mean in the reference region, "
        f"{REFERENCE_NAMES[reference]} of the structure segmentation; the regional SUVR "
        "is its mean in each structure, and SUVR was also resampled onto the template."
    )
    if series.suv_ready:
        text += (
            " SUV was the activity concentration times body weight over the injected dose, "
            "the dose decayed to the time the image is decay-corrected to."
        )
    else:
        text += " SUV was not computed: the dose, decay correction or body weight is unknown."
    return text + " No partial-volume correction was applied."


def init_pet_imputation_wf(
    *,
    bundle: str,
    template_dir: str,
    omp_nthreads: int,
    device: str,
    name: str = "pet_imputation_wf",
) -> pe.Workflow:
    """An FDG-like SUVR image predicted from the T1w (synthetic), on the T1w and template
    grids, and its regional SUVR under its own prefix (never mixed with measured values).

    Inputs
    ------
    t1w_preproc, brain_mask, aseg, forward_transform
        from the anatomical workflow

    Outputs
    -------
    imputed_t1w, imputed_std, model, measures
    """
    workflow = pe.Workflow(name=name)
    workflow.__desc__ = (
        "A PET was imputed for this participant: a 3D U-Net trained by bids_dl predicted an "
        "FDG-like SUVR image from the T1w and its structures (a correction to the training "
        f"population's SUVR of each structure; bundle {Path(bundle).name}), after Li et al. "
        "[@li2014pet]. It is SYNTHETIC, not a measurement: the shipped model was trained on "
        "simulated T1w/FDG pairs, it can only reproduce the part of hypometabolism that the "
        "anatomy shows (atrophy), and its regional values are written apart "
        f"(``{IMPUTED_PREFIX}_*`` measures, ``desc-imputed_pet``)."
    )
    fields = ["t1w_preproc", "brain_mask", "aseg", "forward_transform"]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    outputs = ["imputed_t1w", "imputed_std", "model", "measures"]
    outputnode = pe.Node(niu.IdentityInterface(fields=outputs), name="outputnode")
    impute = pe.Node(
        ImputePet(bundle=bundle, device=device, num_threads=omp_nthreads),
        name="impute_pet",
        mem_gb=MEM_GB["model"],
        n_procs=omp_nthreads,
    )
    measures = pe.Node(PetMeasures(prefix=IMPUTED_PREFIX), name="imputed_measures",
                       mem_gb=MEM_GB["measures"])  # fmt: skip
    to_std = pe.Node(ApplyTransformToTemplate(template_dir=template_dir), name="imputed_to_std",
                     mem_gb=MEM_GB["resample"])  # fmt: skip
    workflow.connect([
        (inputnode, impute, [("t1w_preproc", "t1w"), ("brain_mask", "brain_mask"),
                             ("aseg", "aseg")]),
        (impute, outputnode, [("out_file", "imputed_t1w"), ("model", "model")]),
        (impute, measures, [("out_file", "suvr")]),
        (inputnode, measures, [("aseg", "aseg")]),
        (measures, outputnode, [("measures", "measures")]),
        (impute, to_std, [("out_file", "in_file")]),
        (inputnode, to_std, [("forward_transform", "transform")]),
        (to_std, outputnode, [("out_file", "imputed_std")]),
    ])  # fmt: skip
    return workflow
