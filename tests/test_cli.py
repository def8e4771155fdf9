"""The command line: BIDS-Apps arguments, and a clear exit 2 for every bad input."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from click.testing import CliRunner

from bids_dl.cli.parser import expand_multi_value_options
from bids_dl.cli.run import main
from bids_dl.models.registry import shipped_bundles
from tests.conftest import write_tiny_bids


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def run_participant(bids, tmp_path, *options):
    """The participant level without the validator, outputs and work dir in ``tmp_path``."""
    return invoke(
        bids,
        tmp_path / "out",
        "participant",
        "--skip-bids-validation",
        "-w",
        tmp_path / "w",
        *options,
    )


def assert_input_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    message = result.output.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment in message, message


def test_space_separated_labels_are_expanded():
    args = ["bids", "out", "participant", "--participant-label", "01", "sub-02", "-w", "w"]
    assert expand_multi_value_options(args) == [
        "bids",
        "out",
        "participant",
        "--participant-label",
        "01",
        "--participant-label",
        "sub-02",
        "-w",
        "w",
    ]


def test_dry_run_lists_requested_participants(tiny_bids, tmp_path):
    result = run_participant(
        tiny_bids, tmp_path, "--participant-label", "01", "sub-02", "--dry-run"
    )
    assert result.exit_code == 0, result.output
    assert "sub-01: T1w sub-01/anat/sub-01_T1w.nii.gz" in result.output
    assert "sub-02: T1w sub-02/anat/sub-02_T1w.nii.gz" in result.output
    assert not (tmp_path / "out").exists()


def test_boilerplate_only_writes_methods_with_references(tiny_bids, tmp_path):
    result = run_participant(tiny_bids, tmp_path, "--boilerplate-only")
    assert result.exit_code == 0, result.output
    text = (tmp_path / "out" / "logs" / "CITATION.md").read_text()
    # tissues: the shipped structures model is the default, Atropos the fallback without one
    segmentation = "32 SynthSeg labels" if "structures" in shipped_bundles() else "Atropos"
    assert "N4" in text and segmentation in text and "MNI152NLin2009aSym" in text
    assert "[@" not in text
    assert "Tustison NJ" in text


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and "bids_dl" in result.output


def test_missing_folder(tmp_path):
    assert_input_error(invoke(tmp_path / "nope", tmp_path / "out", "participant"), "does not exist")


def test_folder_that_is_not_bids(tmp_path):
    (tmp_path / "data").mkdir()
    result = invoke(tmp_path / "data", tmp_path / "out", "participant")
    assert_input_error(result, "not a BIDS dataset", "dataset_description.json")


def test_unknown_participant(tiny_bids, tmp_path):
    result = run_participant(tiny_bids, tmp_path, "--participant-label", "07")
    assert_input_error(result, "07", "not found", "01, 02")


def test_subject_without_t1w(tiny_bids, tmp_path):
    shutil.rmtree(tiny_bids / "sub-02" / "anat")
    (tiny_bids / "sub-02" / "anat").mkdir()
    nb.save(
        nb.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)),
        tiny_bids / "sub-02" / "anat" / "sub-02_T2w.nii.gz",
    )
    assert_input_error(run_participant(tiny_bids, tmp_path), "sub-02 has no T1w")


def test_a_contrast_enhanced_t1w_stands_in_for_a_missing_t1w(tiny_bids, tmp_path, caplog):
    """BraTS-style sessions (FLAIR + ce-T1w, no plain T1w) are processed from the ce-T1w."""
    from bids_dl.inputs import collect_inputs

    anat = tiny_bids / "sub-02" / "anat"
    (anat / "sub-02_T1w.nii.gz").rename(anat / "sub-02_ce-gadolinium_T1w.nii.gz")
    (anat / "sub-02_T1w.json").unlink()
    subjects = collect_inputs(tiny_bids, ["02"], [], {}, tmp_path / "db")
    assert subjects["02"].t1w.endswith("sub-02_ce-gadolinium_T1w.nii.gz")
    assert subjects["02"].reference_is_contrast_enhanced
    assert "contrast-enhanced T1w" in caplog.text
    plain = collect_inputs(tiny_bids, ["01"], [], {}, tmp_path / "db")["01"]
    assert not plain.reference_is_contrast_enhanced and plain.t1w.endswith("sub-01_T1w.nii.gz")


def test_other_contrasts_come_from_the_t1w_session_when_it_has_them(tiny_bids, tmp_path, caplog):
    from bids_dl.inputs import collect_inputs

    subject = tiny_bids / "sub-01"
    loaded = nb.load(subject / "anat" / "sub-01_T1w.nii.gz")
    t1w = nb.Nifti1Image(loaded.get_fdata(dtype=np.float32), loaded.affine)
    for session in ("a", "b"):
        (subject / f"ses-{session}" / "anat").mkdir(parents=True)
    (subject / "anat" / "sub-01_T1w.nii.gz").rename(subject / "ses-b/anat/sub-01_ses-b_T1w.nii.gz")
    (subject / "anat" / "sub-01_T1w.json").rename(subject / "ses-b/anat/sub-01_ses-b_T1w.json")
    (subject / "anat").rmdir()
    for name in ("ses-a/anat/sub-01_ses-a_FLAIR", "ses-b/anat/sub-01_ses-b_FLAIR",
                 "ses-a/anat/sub-01_ses-a_T2w"):  # fmt: skip
        nb.save(t1w, subject / f"{name}.nii.gz")
    inputs = collect_inputs(tiny_bids, ["01"], [], {}, tmp_path / "db")["01"]
    assert inputs.first("flair").endswith("sub-01_ses-b_FLAIR.nii.gz")
    assert inputs.first("t2w").endswith("sub-01_ses-a_T2w.nii.gz")  # the only one
    assert "no T2w in the session of sub-01_ses-b_T1w.nii.gz" in caplog.text
    assert "no FLAIR" not in caplog.text


def test_skull_stripped_t1w_images_are_detected_and_skip_refuses_a_head(tiny_bids, tmp_path):
    """As fMRIPrep's --skull-strip-t1w: auto looks at each T1w, force and skip decide."""
    stripped = np.full((20, 20, 20), -1.5, np.float32)  # a z-scored brain's background
    stripped[5:15, 4:16, 6:14] = np.random.default_rng(0).normal(1.0, 0.2, (10, 12, 8))
    nb.save(nb.Nifti1Image(stripped, np.diag([2, 2, 2, 1])),
            tiny_bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz")  # fmt: skip
    auto = run_participant(tiny_bids, tmp_path, "--dry-run")
    assert auto.exit_code == 0, auto.output
    assert "sub-01_T1w.nii.gz (already skull-stripped)" in auto.output
    assert "sub-02_T1w.nii.gz (already" not in auto.output
    force = run_participant(tiny_bids, tmp_path, "--dry-run", "--skull-strip-t1w", "force")
    assert "already skull-stripped" not in force.output
    skip = run_participant(tiny_bids, tmp_path, "--dry-run", "--skull-strip-t1w", "skip")
    assert_input_error(skip, "--skull-strip-t1w skip", "sub-02_T1w.nii.gz is not skull-stripped")
    large = np.zeros((40, 40, 40), np.float32)  # 3 L on a zero background: auto takes it for
    large[2:38, 2:38, 2:38] = 1.0  # a head, skip for a (large) stripped brain, as told
    nb.save(nb.Nifti1Image(large, np.diag([4, 4, 4, 1])),
            tiny_bids / "sub-02" / "anat" / "sub-02_T1w.nii.gz")  # fmt: skip
    auto = run_participant(tiny_bids, tmp_path, "--dry-run")
    assert "sub-02_T1w.nii.gz (already" not in auto.output
    skip = run_participant(tiny_bids, tmp_path, "--dry-run", "--skull-strip-t1w", "skip")
    assert skip.exit_code == 0, skip.output
    assert "sub-02_T1w.nii.gz (already skull-stripped)" in skip.output


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


def _not_nifti(path: Path) -> None:
    with gzip.open(path, "wb") as handle:
        handle.write(b"this is a text file, not an image\n" * 20)


def _four_d(path: Path) -> None:
    nb.save(nb.Nifti1Image(np.ones((6, 6, 6, 3), np.float32), np.eye(4)), path)


def _two_d(path: Path) -> None:
    nb.save(nb.Nifti1Image(np.ones((6, 6), np.float32), np.eye(4)), path)


def _constant(path: Path) -> None:
    nb.save(nb.Nifti1Image(np.zeros((6, 6, 6), np.int16), np.eye(4)), path)


def _all_nan(path: Path) -> None:
    nb.save(nb.Nifti1Image(np.full((6, 6, 6), np.nan, np.float32), np.eye(4)), path)


@pytest.mark.parametrize(
    "corrupt, reason",
    [
        (_truncate, "sub-01"),
        (_not_nifti, "not a readable NIfTI"),
        (_four_d, "expected a 3D volume"),
        (_two_d, "expected a 3D volume"),
        (_constant, "holds the value 0 only"),
        (_all_nan, "holds no finite value"),
    ],
)
def test_unreadable_t1w(tiny_bids, tmp_path, corrupt, reason):
    corrupt(tiny_bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    result = run_participant(tiny_bids, tmp_path, "--participant-label", "01")
    assert_input_error(result, reason, "sub-01_T1w.nii.gz")


def test_a_lesion_contrast_without_signal_is_refused_before_any_node_runs(tiny_bids, tmp_path):
    _constant(tiny_bids / "sub-01" / "anat" / "sub-01_FLAIR.nii.gz")
    result = run_participant(tiny_bids, tmp_path, "--participant-label", "01")
    assert_input_error(result, "sub-01_FLAIR.nii.gz", "holds the value 0 only", "no contrast")


def test_output_inside_input(tiny_bids, tmp_path):
    result = invoke(
        tiny_bids, tiny_bids / "derivatives" / "bids_dl", "participant", "-w", tmp_path / "w"
    )
    assert_input_error(result, "inside the input dataset")
    assert not (tiny_bids / "derivatives").exists()


def test_work_dir_inside_input(tiny_bids, tmp_path):
    result = invoke(tiny_bids, tmp_path / "out", "participant", "-w", tiny_bids / "work")
    assert_input_error(result, "--work-dir", "inside the input dataset")


def test_unknown_analysis_level(tiny_bids, tmp_path):
    result = invoke(tiny_bids, tmp_path / "out", "session")
    assert result.exit_code == 2
    assert "'session' is not one of 'participant', 'group'" in result.output


def test_unknown_analysis(tiny_bids, tmp_path):
    result = run_participant(tiny_bids, tmp_path, "--analyses", "anat", "tumour")
    assert_input_error(result, "unknown analysis tumour")


def test_bad_filter_file(tiny_bids, tmp_path):
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"notakind": {}}))
    result = run_participant(tiny_bids, tmp_path, "--bids-filter-file", filters)
    assert_input_error(result, "--bids-filter-file")


def test_filter_file_selects_the_t1w(tmp_path):
    bids = write_tiny_bids(tmp_path / "bids")
    anat = bids / "sub-01" / "anat"
    shutil.copy(anat / "sub-01_T1w.nii.gz", anat / "sub-01_acq-fast_T1w.nii.gz")
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"t1w": {"acquisition": "fast"}}))
    result = run_participant(bids, tmp_path, "--bids-filter-file", filters, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "sub-01_acq-fast_T1w.nii.gz" in result.output


def test_validator_errors_stop_the_run(tiny_bids, tmp_path):
    bad = tiny_bids / "sub-01" / "anat" / "sub-01_notasuffix.nii.gz"
    shutil.copy(tiny_bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz", bad)
    result = invoke(tiny_bids, tmp_path / "out", "participant", "--dry-run", "-w", tmp_path / "w")
    assert_input_error(result, "BIDS validator found", "--skip-bids-validation")


def test_group_before_participant(tiny_bids, tmp_path):
    result = invoke(tiny_bids, tmp_path / "out", "group")
    assert_input_error(result, "run the participant level first")


def test_unusable_brain_extraction_model(tiny_bids, tmp_path):
    result = run_participant(tiny_bids, tmp_path, "--brain-extraction-model", tmp_path / "none")
    assert_input_error(result, "--brain-extraction-model", "no bundle")


def test_memory_limit_below_a_node_need(tiny_bids, tmp_path):
    result = run_participant(tiny_bids, tmp_path, "--mem-gb", "0.5")
    assert_input_error(result, "--mem-gb 0.5", "GB that node")


def test_more_threads_than_processes(tiny_bids, tmp_path):
    result = run_participant(tiny_bids, tmp_path, "--nprocs", "1", "--omp-nthreads", "2")
    assert_input_error(result, "--omp-nthreads 2", "--nprocs 1")


def test_help_groups_the_options_by_topic():
    from bids_dl.cli.parser import FILTERING, MODELS, OTHER, PERFORMANCE, SUBSET, WORKFLOW

    text = invoke("--help").output
    headings = (FILTERING, PERFORMANCE, WORKFLOW, MODELS, SUBSET, OTHER)
    starts = [text.index(f"\n{heading}:\n") for heading in headings]
    assert starts == sorted(starts)
    ends = [*starts[1:], len(text)]
    sections = {h: text[a:b] for h, a, b in zip(headings, starts, ends, strict=True)}
    assert "--participant-label" in sections[FILTERING] and "--nprocs" in sections[PERFORMANCE]
    assert "--sloppy" in sections[WORKFLOW] and "--segmentation-model" in sections[MODELS]
    assert "--reports-only" in sections[SUBSET]
    assert "--version" in sections[OTHER] and "--help" in sections[OTHER]


def test_output_dir_that_is_a_file(tiny_bids, tmp_path):
    (tmp_path / "out").write_text("not a folder")
    assert_input_error(run_participant(tiny_bids, tmp_path), "OUTPUT_DIR", "is not a folder")


def test_work_dir_that_is_a_file(tiny_bids, tmp_path):
    (tmp_path / "w").write_text("not a folder")
    assert_input_error(run_participant(tiny_bids, tmp_path), "--work-dir", "is not a folder")


def test_work_dir_under_a_file(tiny_bids, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    result = invoke(tiny_bids, tmp_path / "out", "participant", "-w", tmp_path / "file" / "w")
    assert_input_error(result, "--work-dir", f"{tmp_path / 'file'} is a file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in any folder whatever its mode")
def test_work_dir_that_cannot_be_written(tiny_bids, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = invoke(tiny_bids, tmp_path / "out", "participant", "-w", locked / "w")
    assert_input_error(result, "--work-dir", "cannot be written")


def test_quiet_and_verbose_contradict(tiny_bids, tmp_path):
    assert_input_error(run_participant(tiny_bids, tmp_path, "-q", "-v"), "--quiet and --verbose")
