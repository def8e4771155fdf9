"""Workflow graphs built on a tiny dataset, without running them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bids_dl.boilerplate import methods_text
from bids_dl.config import Config, ExecutionSettings
from bids_dl.inputs import SubjectInputs
from bids_dl.workflows.anat import (
    init_anat_preproc_wf,
    init_brain_extraction_wf,
    init_segmentation_wf,
)
from bids_dl.workflows.base import init_bids_dl_wf
from bids_dl.workflows.resources import MEM_GB


@pytest.fixture
def config(tiny_bids, tmp_path) -> Config:
    return Config(
        ExecutionSettings(bids_dir=tiny_bids, output_dir=tmp_path / "out", work_dir=tmp_path / "w")
    )


def _subjects(bids: Path) -> dict[str, SubjectInputs]:
    return {
        label: SubjectInputs(
            label, {"t1w": [str(bids / f"sub-{label}/anat/sub-{label}_T1w.nii.gz")]}
        )
        for label in ("01", "02")
    }


def test_participant_graph_has_every_step_per_subject(config, tiny_bids):
    workflow = init_bids_dl_wf(config, _subjects(tiny_bids))
    names = set(workflow.list_node_names())
    for label in ("01", "02"):
        for step in (
            "anat_preproc_wf.n4",
            "anat_preproc_wf.registration",
            "anat_preproc_wf.segmentation_wf.tissues",
            "anat_preproc_wf.brain_extraction_wf.template_mask",
            "anat_measures",
            "anat_derivatives_wf.ds_forward_xfm",
            "anat_reports_wf.tissue_figure",
        ):
            assert f"single_subject_{label}_wf.{step}" in names


def test_every_worker_node_declares_memory_and_threads(config, tiny_bids):
    config.nipype.omp_nthreads = 3
    workflow = init_bids_dl_wf(config, _subjects(tiny_bids))
    for node in workflow._get_all_nodes():
        if node.name in ("inputnode", "outputnode"):  # identity nodes never run as jobs
            continue
        # a node run as a Slurm job needs ~0.1 GB for Python and nipype alone
        assert node.mem_gb >= MEM_GB["light"], node.fullname
    n_procs = {n.name: n.n_procs for n in workflow._get_all_nodes()}
    assert n_procs["registration"] == 3 and n_procs["n4"] == 3


def test_crash_files_go_to_the_subject_log(config, tiny_bids):
    workflow = init_bids_dl_wf(config, _subjects(tiny_bids))
    node = workflow.get_node("single_subject_02_wf.anat_preproc_wf.n4")
    crash_dir = Path(node.config["execution"]["crashdump_dir"])
    assert crash_dir.parent == config.execution.output_dir / "sub-02" / "log"


@pytest.mark.parametrize("bundle", [None, "model"])
def test_brain_extraction_methods_share_one_interface(tmp_path, bundle):
    folder = None
    if bundle:
        folder = tmp_path / "bundle"
        folder.mkdir()
    workflow = init_brain_extraction_wf(
        template_dir="/tmp/t", omp_nthreads=1, bundle=str(folder) if folder else None
    )
    assert workflow.get_node("inputnode").inputs.copyable_trait_names() == ["in_file"]
    outputs = workflow.get_node("outputnode").inputs.copyable_trait_names()
    assert sorted(outputs) == ["brain_mask", "model"]
    expected_node = "model_mask" if bundle else "template_mask"
    assert expected_node in workflow.list_node_names()


def test_a_skull_stripped_t1w_gets_its_mask_from_its_background():
    """No extraction model or template runs; the mask comes from the image before N4."""
    workflow = init_anat_preproc_wf(
        template_dir="/tmp/t", omp_nthreads=1, brain_extraction_bundle="/models/brain_mask",
        skull_stripped=True,
    )  # fmt: skip
    extraction = workflow.get_node("brain_extraction_wf")
    assert extraction.list_node_names() == ["background_mask", "inputnode", "outputnode"]
    sources = {edge[0].name for edge in workflow._graph.in_edges(extraction)}
    assert sources == {"conform"}
    assert "already skull-stripped" in extraction.__desc__


def test_methods_follow_the_graph(config, tiny_bids):
    paragraphs, references = methods_text(init_anat_preproc_wf(template_dir="/t", omp_nthreads=1))
    text = " ".join(paragraphs)
    assert text.index("N4") < text.index("brain mask") < text.index("Atropos")
    assert len(references) == len(set(references)) >= 5


@pytest.mark.parametrize("bundle", [None, "model"])
def test_segmentation_methods_share_one_interface(tmp_path, bundle):
    folder = tmp_path / "bundle"
    folder.mkdir()
    workflow = init_segmentation_wf(omp_nthreads=1, bundle=str(folder) if bundle else None)
    inputs = workflow.get_node("inputnode").inputs.copyable_trait_names()
    assert sorted(inputs) == ["brain_mask", "in_file"]
    outputs = workflow.get_node("outputnode").inputs.copyable_trait_names()
    assert sorted(outputs) == ["aseg", "dseg", "model", "probseg"]
    expected_node = "model_segmentation" if bundle else "tissues"
    assert expected_node in workflow.list_node_names()


def test_model_bundles_reach_the_participant_graph(config, tiny_bids, tmp_path):
    """Both bundles are used, and the structure outputs, measures and figure are wired."""
    for name in ("mask_bundle", "seg_bundle"):
        (tmp_path / name).mkdir()
    config.workflow.brain_extraction_bundle = str(tmp_path / "mask_bundle")
    config.workflow.segmentation_bundle = str(tmp_path / "seg_bundle")
    workflow = init_bids_dl_wf(config, _subjects(tiny_bids))
    names = set(workflow.list_node_names())
    prefix = "single_subject_01_wf."
    for step in (
        "anat_preproc_wf.brain_extraction_wf.model_mask",
        "anat_preproc_wf.segmentation_wf.model_segmentation",
        "anat_derivatives_wf.ds_aseg",
        "anat_reports_wf.structures_figure",
    ):
        assert prefix + step in names
    assert prefix + "anat_preproc_wf.segmentation_wf.tissues" not in names


def test_a_contrast_enhanced_reference_is_not_registered_to_itself(config, tiny_bids, tmp_path):
    """Without a plain T1w, the ce-T1w is the reference: only the FLAIR is coregistered, the
    tumour model gets the reference as its T1ce channel, and the methods say so."""
    from tests.test_lesions import _lesion_bundle

    anat = tiny_bids / "sub-01" / "anat"
    config.workflow.tumor_bundle = str(
        _lesion_bundle(tmp_path / "tumor", "tumor", ["FLAIR", "T1ce", "T1w", "T2w"])
    )
    subject = SubjectInputs(
        "01",
        {"t1ce": [str(anat / "sub-01_T1w.nii.gz")], "flair": [str(anat / "sub-01_T1w.nii.gz")]},
        analyses=["anat", "tumor"],
    )
    workflow = init_bids_dl_wf(config, {"01": subject})
    names = set(workflow.list_node_names())
    prefix = "single_subject_01_wf.lesion_wf."
    assert prefix + "coregister_flair" in names and prefix + "coregister_t1ce" not in names
    figures = "single_subject_01_wf.lesion_outputs_wf.coreg_{}_figure"
    assert figures.format("flair") in names and figures.format("t1ce") not in names
    tumour = workflow.get_node(prefix + "tumor_model")
    assert tumour.inputs.reference_contrast == "T1ce"
    paragraphs, _ = methods_text(workflow.get_node("single_subject_01_wf"))
    assert "contrast-enhanced T1w image (the participant has no T1w without contrast)" in " ".join(
        paragraphs
    )
    alone = SubjectInputs(
        "01", {"t1ce": [str(anat / "sub-01_T1w.nii.gz")]}, analyses=["anat", "tumor"]
    )  # nothing left to coregister: the methods do not name an empty list of contrasts
    paragraphs, _ = methods_text(init_bids_dl_wf(config, {"01": alone}).get_node(
        "single_subject_01_wf"
    ))  # fmt: skip
    assert "other contrasts" not in " ".join(paragraphs)


@pytest.mark.parametrize("network", [False, True])
def test_each_diffusion_series_gets_its_own_workflows(config, tiny_bids, tmp_path, network):
    """Two DWI runs: preprocessing, tensor and outputs per run, the network's nodes only with a
    bundle, every mandatory input of every node connected or set, first run's measures used."""
    from bids_dl.dwi_inputs import DwiSeries
    from bids_dl.models.diffusion_simulation import well_spread_scheme
    from tests.test_dwi import write_dwi

    scheme = well_spread_scheme(6, 1000.0, 1, np.random.default_rng(0))
    series = []
    for run in ("1", "2"):
        path = write_dwi(tiny_bids / "sub-01" / "dwi", f"sub-01_run-{run}", *scheme)
        series.append(DwiSeries(str(path), str(path).replace(".nii.gz", ".bval"),
                                str(path).replace(".nii.gz", ".bvec")))  # fmt: skip
    subjects = _subjects(tiny_bids)
    subjects["01"].dwi, subjects["01"].analyses = series, ["anat", "dwi"]
    if network:
        (tmp_path / "dti").mkdir()
        config.workflow.dwi_bundle = str(tmp_path / "dti")
    workflow = init_bids_dl_wf(config, subjects)
    names = set(workflow.list_node_names())
    prefix = "single_subject_01_wf."
    for index in (0, 1):
        steps = ("dwi_preproc_{}_wf.motion_correct", "dwi_tensor_{}_wf.fit_tensor",
                 "dwi_outputs_{}_wf.ds_fit_t1w_fa",
                 "dwi_outputs_{}_wf.dwi_colorfa_figure")  # fmt: skip
        for step in steps:
            assert prefix + step.format(index) in names
        assert (prefix + f"dwi_tensor_{index}_wf.predict_tensor" in names) == network
    assert not any(name.startswith("single_subject_02_wf.dwi") for name in names)
    flat = workflow.get_node("single_subject_01_wf")._create_flat_graph()
    for node in flat.nodes():
        assert not _unset_inputs(flat, node), node.fullname


def _unset_inputs(graph, node) -> set[str]:
    """Inputs a node needs that are neither connected nor set: mandatory ones, and for an
    identity node (a workflow's inputnode) every field that it passes on."""
    connected = {field for _, _, data in graph.in_edges(node, data=True)
                 for _, field in data["connect"]}  # fmt: skip
    needed = {field for field in node.inputs.copyable_trait_names()
              if node.inputs.trait(field).mandatory}  # fmt: skip
    if node.name == "inputnode":
        needed |= {source for _, _, data in graph.out_edges(node, data=True)
                   for source, _ in data["connect"]}  # fmt: skip
    values = node.inputs.get()
    return {field for field in needed - connected if values.get(field) is None}


def _asl_series(path: Path, context: list[str], delays: list[float]):
    from bids_dl.asl_inputs import AslSeries

    return AslSeries(
        path=str(path), context=tuple(context), m0_type="Included", m0scan=None,
        m0_estimate=None, labeling_type="PCASL", post_labeling_delays=tuple(delays),
        labeling_duration=1.8, labeling_efficiency=None, background_pulses=0,
        field_strength=3.0, slice_timing=None, slice_axis=2, repetition_time_preparation=4.0,
        total_acquired_pairs=len(context) // 2, vascular_crushing=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("anatomy", "delays", "network"),
    [(True, [0, 1.8, 1.8, 1.8, 1.8], True), (True, [0, 1.0, 1.0, 2.0, 2.0], True),
     (False, [0, 1.8, 1.8, 1.8, 1.8], False)],
    ids=["single-delay", "multi-delay", "no-t1w"],
)  # fmt: skip
def test_each_asl_series_gets_its_own_workflows(config, tiny_bids, anatomy, delays, network):
    """Preprocessing, CBF and outputs per series; ATT only with several delays, the network
    only at one delay, T1w and template outputs only with a T1w; every mandatory input of
    every node connected or set."""
    context = ["m0scan", "label", "control", "label", "control"]
    series = _asl_series(tiny_bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz", context, delays)
    subject = SubjectInputs("01", {"t1w": [series.path]} if anatomy else {}, asl=[series],
                            analyses=["anat", "asl"] if anatomy else ["asl"])  # fmt: skip
    from bids_dl.models.registry import shipped_bundles

    config.workflow.asl_bundle = str(shipped_bundles()["asl"]) if network else None
    workflow = init_bids_dl_wf(config, {"01": subject})
    names = set(workflow.list_node_names())
    prefix = "single_subject_01_wf."
    multi_delay = len(set(delays[1:])) > 1
    assert prefix + "asl_preproc_0_wf.motion_correct" in names
    assert (prefix + "asl_outputs_0_wf.ds_att" in names) == multi_delay
    assert (prefix + "asl_outputs_0_wf.ds_cbf_timeseries" in names) == (not multi_delay)
    assert (prefix + "asl_cbf_0_wf.enhance_perfusion" in names) == (network and not multi_delay)
    assert (prefix + "asl_outputs_0_wf.ds_cbf_std" in names) == anatomy
    assert any(name.startswith(prefix + "anat_preproc_wf") for name in names) == anatomy
    flat = workflow.get_node("single_subject_01_wf")._create_flat_graph()
    for node in flat.nodes():
        assert not _unset_inputs(flat, node), node.fullname
    paragraphs, references = methods_text(workflow.get_node("single_subject_01_wf"))
    text = " ".join(paragraphs)
    assert "consensus single-compartment model" in text and "Alsop" in str(references)
    assert ("Buxton" in text) == multi_delay
    if network and not multi_delay:  # the network reads the first pairs it was trained on
        enhance = workflow.get_node(prefix + "asl_cbf_0_wf.enhance_perfusion")
        assert enhance.inputs.pairs == 2 and "first 2 pair(s)" in text


@pytest.mark.parametrize(
    ("slice_timing", "volumes"), [((0.0, 1.0, 0.5, 1.5), 120), (None, 20)], ids=["stc", "short"]
)
def test_each_bold_run_gets_its_own_workflows(config, tiny_bids, slice_timing, volumes):
    """Preprocessing and outputs per run; slice-timing correction only with SliceTiming, the
    atlas connectome only for runs long enough; one resampling per output space; every
    mandatory input of every node connected or set."""
    from bids_dl.bold_inputs import BoldSeries

    t1w = str(tiny_bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    runs = [BoldSeries(path=t1w, task="rest", repetition_time=2.0, slice_timing=slice_timing,
                       slice_axis=2, shape=(64, 64, 30, volumes)) for _ in range(2)]  # fmt: skip
    subject = SubjectInputs("01", {"t1w": [t1w]}, bold=runs, analyses=["anat", "func"])
    config.workflow.dummy_scans = 2
    workflow = init_bids_dl_wf(config, {"01": subject})
    names = set(workflow.list_node_names())
    prefix = "single_subject_01_wf."
    for index in (0, 1):
        for step in ("bold_preproc_{}_wf.motion_correct", "bold_preproc_{}_wf.bold_confounds",
                     "bold_preproc_{}_wf.bold_to_std", "bold_preproc_{}_wf.bold_to_t1w",
                     "bold_outputs_{}_wf.ds_bold_std",
                     "bold_outputs_{}_wf.bold_carpet_figure"):  # fmt: skip
            assert prefix + step.format(index) in names
        assert (prefix + f"bold_outputs_{index}_wf.ds_relmat" in names) == (volumes >= 40)
        stc = prefix + f"bold_preproc_{index}_wf.slice_timing"
        assert (stc in names) == (slice_timing is not None)
    nss = workflow.get_node(prefix + "bold_preproc_0_wf.non_steady_state")
    assert nss.inputs.dummy_scans == 2
    flat = workflow.get_node("single_subject_01_wf")._create_flat_graph()
    for node in flat.nodes():
        assert not _unset_inputs(flat, node), node.fullname
    paragraphs, references = methods_text(workflow.get_node("single_subject_01_wf"))
    text = " ".join(paragraphs)
    assert "first 2 volumes were flagged as non-steady-state" in text
    assert ("cubic spline to the middle of the slice times" in text) == bool(slice_timing)
    assert "Power" in str(references) and "CompCor" in str(references)


def _pet_series(path: str, frames: int, suv: bool):
    from bids_dl.pet_inputs import PetSeries

    return PetSeries(
        path=path, tracer="FDG", radionuclide="F18", units="Bq/mL",
        frame_starts=tuple(600.0 * k for k in range(frames)),
        frame_durations=(600.0,) * frames, injection_start=0.0, scan_start=0.0,
        injected_radioactivity_bq=185e6 if suv else None, injected_radioactivity_units="MBq",
        decay_corrected=True, decay_correction_time=0.0, body_weight_kg=70.0,
        shape=(40, 40, 30, frames) if frames > 1 else (40, 40, 30),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("frames", "suv", "impute"), [(6, True, True), (1, False, False)], ids=["dynamic", "static"]
)
def test_each_pet_gets_its_own_workflows(config, tiny_bids, tmp_path, frames, suv, impute):
    """Preprocessing, quantification and outputs per PET; curves and motion only for dynamic
    data, SUV only where it can be computed, the imputed PET only when planned; every
    mandatory input of every node connected or set."""
    t1w = str(tiny_bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    subject = SubjectInputs("01", {"t1w": [t1w]}, pet=[_pet_series(t1w, frames, suv)],
                            analyses=["anat", "pet"], impute_pet=impute)  # fmt: skip
    for task in ("structures", "pet"):
        (tmp_path / task).mkdir()
    config.workflow.segmentation_bundle = str(tmp_path / "structures")
    config.workflow.pet_imputation_bundle = str(tmp_path / "pet")
    workflow = init_bids_dl_wf(config, {"01": subject})
    names = set(workflow.list_node_names())
    prefix = "single_subject_01_wf."
    for step in ("pet_preproc_0_wf.frame_motion", "pet_preproc_0_wf.static_to_t1w",
                 "pet_quant_0_wf.suvr", "pet_outputs_0_wf.ds_suvr_std",
                 "pet_outputs_0_wf.pet_suvr_figure"):  # fmt: skip
        assert prefix + step in names
    dynamic = frames > 1
    assert (prefix + "pet_preproc_0_wf.time_activity_curves" in names) == dynamic
    assert (prefix + "pet_outputs_0_wf.pet_motion_figure" in names) == dynamic
    assert (prefix + "pet_outputs_0_wf.ds_suv_t1w" in names) == suv
    assert (prefix + "pet_imputation_wf.impute_pet" in names) == impute
    flat = workflow.get_node("single_subject_01_wf")._create_flat_graph()
    for node in flat.nodes():
        assert not _unset_inputs(flat, node), node.fullname
    paragraphs, references = methods_text(workflow.get_node("single_subject_01_wf"))
    text = " ".join(paragraphs)
    assert "cerebellar grey matter" in text
    assert ("SYNTHETIC" in text and "Li R" in str(references)) == impute
