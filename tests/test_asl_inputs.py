"""ASL perfusion inputs (BIDS ``perf/``): the sidecar fields quantification needs, each bad
input refused with one line (exit 2), ASL-only participants, ``--asl-model``, and the real
XA30 PCASL series as BIDS when ``../shared/data`` exists."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from click.testing import CliRunner

from bids_dl.asl_inputs import REQUIRED_FIELDS, AslInputError, check_asl_series, read_asl_series
from bids_dl.inputs import (
    InputError,
    collect_inputs,
    index_dataset,
    plan_analyses,
    plan_skull_stripping,
    validate_dataset,
    validator_command,
)
from tests.conftest import run_cli, write_tiny_bids

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
AFFINE = np.diag([3.0, 3.0, 5.0, 1.0])
SHAPE = (8, 8, 4)
CONTEXT = ("control", "label", "control", "label")
#: a valid 2D PCASL sidecar with a separate M0 scan
PCASL = {
    "ArterialSpinLabelingType": "PCASL",
    "PostLabelingDelay": 1.8,
    "LabelingDuration": 1.8,
    "BackgroundSuppression": True,
    "BackgroundSuppressionNumberPulses": 2,
    "M0Type": "Separate",
    "MagneticFieldStrength": 3,
    "RepetitionTimePreparation": 4.0,
    "RepetitionTime": 4.0,
    "MRAcquisitionType": "2D",
    "SliceTiming": [0.0, 0.05, 0.1, 0.15],
    "TotalAcquiredPairs": 2,
}


@pytest.fixture(autouse=True)
def _propagate(monkeypatch):
    """caplog reads the root logger: an in-process CLI run stops bids_dl's propagation."""
    monkeypatch.setattr(logging.getLogger("bids_dl"), "propagate", True)


def _save(data: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nb.save(nb.Nifti1Image(data.astype(np.float32), AFFINE), path)
    return path


def write_asl(
    root: Path,
    context=CONTEXT,
    sidecar: dict | None = None,
    m0: dict | None = None,
    shape: tuple[int, ...] = SHAPE,
) -> Path:
    """``sub-01/perf/sub-01_asl.nii.gz`` (one volume per context row), its aslcontext.tsv
    and sidecar, and an ``_m0scan`` with sidecar ``m0`` (None: no m0scan)."""
    perf = root / "sub-01" / "perf"
    data = np.random.default_rng(0).uniform(100, 200, (*shape, len(context)))
    asl = _save(data, perf / "sub-01_asl.nii.gz")
    (perf / "sub-01_aslcontext.tsv").write_text("\n".join(["volume_type", *context]) + "\n")
    (perf / "sub-01_asl.json").write_text(json.dumps(PCASL if sidecar is None else sidecar))
    if m0 is not None:
        _save(np.full(shape, 500.0), perf / "sub-01_m0scan.nii.gz")
        (perf / "sub-01_m0scan.json").write_text(json.dumps(m0))
    return asl


def separate_m0() -> dict:
    return {"IntendedFor": "bids::sub-01/perf/sub-01_asl.nii.gz", "RepetitionTimePreparation": 8}


def dataset(tmp_path: Path, anatomy: bool = True, **asl) -> tuple[Path, Path]:
    """A dataset with sub-01's T1w (``anatomy``) and its ASL series (``write_asl``)."""
    bids = write_tiny_bids(tmp_path / "bids", subjects=("01",) if anatomy else ())
    asl.setdefault("m0", separate_m0())
    return bids, write_asl(bids, **asl)


def read(bids: Path, asl: Path):
    return read_asl_series(index_dataset(bids), str(asl))


def test_a_valid_pcasl_series_is_read_with_its_quantification_fields(tmp_path):
    bids, asl = dataset(tmp_path)
    series = read(bids, asl)
    check_asl_series(series)
    assert series.context == CONTEXT and series.labeling_type == "PCASL"
    assert series.post_labeling_delays == (1.8,) * 4  # the scalar, broadcast
    assert series.labeling_duration == 1.8 and series.labeling_efficiency is None
    assert series.background_pulses == 2 and series.field_strength == 3.0
    assert series.slice_timing == (0.0, 0.05, 0.1, 0.15) and series.slice_axis == 2
    assert series.m0_type == "Separate" and series.m0scan == str(asl).replace("_asl", "_m0scan")
    assert series.m0_estimate is None and series.repetition_time_preparation == 4.0
    assert series.total_acquired_pairs == 2 and series.vascular_crushing is False


def test_inherited_sidecar_included_m0_and_per_volume_lists(tmp_path):
    """A top-level asl.json and aslcontext.tsv apply (BIDS inheritance); per-volume lists are
    read by row."""
    sidecar = {**PCASL, "M0Type": "Included", "PostLabelingDelay": [0, 1.5, 1.5, 2.0, 2.0],
               "RepetitionTimePreparation": [6.0, 4.0, 4.0, 4.0, 4.0],
               "LabelingDuration": [0, 1.8, 1.8, 1.8, 1.8], "LabelingEfficiency": 0.72,
               "VascularCrushing": True}  # fmt: skip
    bids, asl = dataset(tmp_path, context=("m0scan", *CONTEXT), sidecar=sidecar, m0=None)
    for name in ("asl.json", "aslcontext.tsv"):
        asl.with_name(f"sub-01_{name}").rename(bids / name)
    series = read(bids, asl)
    check_asl_series(series)
    assert series.post_labeling_delays == (0.0, 1.5, 1.5, 2.0, 2.0)
    assert series.repetition_time_preparation == 6.0  # the M0 volume's, for its calibration
    assert series.labeling_duration == 1.8 and series.labeling_efficiency == 0.72
    assert series.m0scan is None and series.vascular_crushing is True


def test_pasl_with_q2tips_a_single_3d_deltam_and_another_slice_axis(tmp_path):
    sidecar = {**PCASL, "ArterialSpinLabelingType": "PASL", "BolusCutOffFlag": True,
               "BolusCutOffTechnique": "Q2TIPS", "BolusCutOffDelayTime": [0.7, 1.6],
               "M0Type": "Estimate", "M0Estimate": 1200.0, "SliceEncodingDirection": "j-",
               "SliceTiming": [0.03 * i for i in range(8)]}  # fmt: skip
    del sidecar["LabelingDuration"]
    bids, asl = dataset(tmp_path, context=("deltam",), sidecar=sidecar, m0=None)
    _save(np.full(SHAPE, 5.0), asl)  # one 3D deltam volume is valid BIDS
    series = read(bids, asl)
    check_asl_series(series)
    assert series.labeling_duration == 0.7 and series.m0_estimate == 1200.0
    assert series.slice_axis == 1 and len(series.slice_timing) == 8


def test_an_m0scan_with_other_entities_is_found_by_its_intended_for(tmp_path):
    bids, asl = dataset(tmp_path, m0=None)
    perf = asl.parent
    _save(np.full(SHAPE, 500.0), perf / "sub-01_dir-PA_m0scan.nii.gz")
    (perf / "sub-01_dir-PA_m0scan.json").write_text(
        json.dumps({"IntendedFor": "perf/sub-01_asl.nii.gz"})  # the older, relative form
    )
    assert read(bids, asl).m0scan == str(perf / "sub-01_dir-PA_m0scan.nii.gz")


def test_background_suppression_without_a_pulse_count_assumes_one_as_aslprep(tmp_path, caplog):
    sidecar = {k: v for k, v in PCASL.items() if k != "BackgroundSuppressionNumberPulses"}
    bids, asl = dataset(tmp_path, sidecar=sidecar)
    assert read(bids, asl).background_pulses == 1
    assert "assuming 1 pulse, as ASLPrep does" in caplog.text
    asl.with_name("sub-01_asl.json").write_text(
        json.dumps({**sidecar, "BackgroundSuppressionPulseTime": [0.5, 1.2, 1.6]})
    )
    assert read(bids, asl).background_pulses == 3
    asl.with_name("sub-01_asl.json").write_text(
        json.dumps({**PCASL, "BackgroundSuppression": False})
    )
    assert read(bids, asl).background_pulses == 0


@pytest.mark.parametrize("preparation", [0, None])
def test_a_zero_or_missing_preparation_time_falls_back_to_the_tr(tmp_path, caplog, preparation):
    sidecar = {**PCASL, "RepetitionTime": [4.5, 4.5], "RepetitionTimePreparation": preparation}
    bids, asl = dataset(tmp_path, sidecar={k: v for k, v in sidecar.items() if v is not None})
    assert read(bids, asl).repetition_time_preparation == 4.5
    said = "0" if preparation == 0 else "missing"
    assert f"RepetitionTimePreparation is {said}; using RepetitionTime 4.5 s" in caplog.text
    assert "all-zero CBF" in caplog.text


def _without(*keys: str) -> dict:
    return {k: v for k, v in PCASL.items() if k not in keys}


#: case -> (arguments of ``dataset``, what the one-line message says)
BAD_SIDECARS = {
    **{
        f"no {key}": ({"sidecar": _without(key)}, f"lacks {key} (required for ASL by BIDS)")
        for key in REQUIRED_FIELDS
    },
    "no TR": (
        {"sidecar": _without("RepetitionTimePreparation", "RepetitionTime")},
        "neither RepetitionTimePreparation nor RepetitionTime",
    ),
    "PCASL without duration": ({"sidecar": _without("LabelingDuration")}, "lacks LabelingDuration"),
    "PASL without bolus cut-off": (
        {"sidecar": {**_without("LabelingDuration"), "ArterialSpinLabelingType": "PASL"}},
        "PASL without a bolus cut-off",
    ),
    "unknown labeling": (
        {"sidecar": {**PCASL, "ArterialSpinLabelingType": "VSASL"}},
        "ArterialSpinLabelingType 'VSASL' is none of PCASL, CASL, PASL",
    ),
    "delays count": (
        {"sidecar": {**PCASL, "PostLabelingDelay": [1.8, 1.8, 1.8]}},
        "PostLabelingDelay has 3 values for 4 volumes",
    ),
    "non-positive delay": (
        {"sidecar": {**PCASL, "PostLabelingDelay": [1.8, 0, 1.8, 1.8]}},
        "PostLabelingDelay is not positive at volume(s) 1",
    ),
    "unknown M0Type": ({"sidecar": {**PCASL, "M0Type": "Sometimes"}}, "M0Type 'Sometimes' is none"),
    "Separate without m0scan": ({"m0": None}, "M0Type is Separate but no _m0scan.nii[.gz]"),
    "Included without row": (
        {"sidecar": {**PCASL, "M0Type": "Included"}},
        "M0Type is Included but its aslcontext.tsv has no m0scan row",
    ),
    "Estimate without number": (
        {"sidecar": {**PCASL, "M0Type": "Estimate", "M0Estimate": "high"}},
        "M0Type is Estimate but M0Estimate is 'high', not a positive number",
    ),
    "m0scan for another series": (
        {"m0": {"IntendedFor": "bids::sub-01/perf/sub-01_run-2_asl.nii.gz"}},
        "sub-01_m0scan.nii.gz: its IntendedFor does not name sub-01_asl.nii.gz",
    ),
    "unpaired counts": (
        {"context": ("control", "label", "label")},
        "2 label and 1 control volume(s) in its aslcontext.tsv",
    ),
    "pairs not adjacent": (
        {"context": ("label", "label", "control", "control")},
        "volume 0 (label) has no adjacent control to pair with",
    ),
    "nothing to measure": (
        {"context": ("m0scan", "m0scan"), "sidecar": {**PCASL, "M0Type": "Included"}},
        "no label/control pair and no deltam or cbf volume",
    ),
}


@pytest.mark.parametrize("case", list(BAD_SIDECARS))
def test_an_inconsistent_sidecar_or_context_is_refused_in_one_line(tmp_path, case):
    arguments, expected = BAD_SIDECARS[case]
    bids, _ = dataset(tmp_path, **arguments)
    with pytest.raises(InputError) as error:
        collect_inputs(bids, [], [], {})
    message = str(error.value)
    assert message.startswith("sub-01: sub-01_") and expected in message, message
    assert "\n" not in message


def _with_nan(asl: Path) -> None:
    data = np.asarray(nb.load(asl).dataobj, dtype=np.float32)
    data[2, 2, 2, 1] = np.nan
    _save(data, asl)


def _context(asl: Path) -> Path:
    return asl.with_name("sub-01_aslcontext.tsv")


#: case -> how it breaks a good series' image, aslcontext.tsv or m0scan
BREAK = {
    "unreadable": lambda asl: asl.write_bytes(b"not a nifti image"),
    "3D with four rows": lambda asl: _save(np.ones(SHAPE), asl),
    "NaN": _with_nan,
    "flat axis": lambda asl: _save(np.ones((8, 8, 1, 4)), asl),
    "no aslcontext": lambda asl: _context(asl).unlink(),
    "bad header": lambda asl: _context(asl).write_text("type\ncontrol\nlabel\ncontrol\nlabel\n"),
    "unknown type": lambda asl: _context(asl).write_text(
        "volume_type\ncontrol\ntag\ncontrol\nlabel\n"
    ),
    "rows and volumes": lambda asl: _save(np.ones((*SHAPE, 6)), asl),
    "m0scan grid": lambda asl: _save(np.ones((8, 8, 5)), asl.with_name("sub-01_m0scan.nii.gz")),
    "slice timing": lambda asl: asl.with_name("sub-01_asl.json").write_text(
        json.dumps({**PCASL, "SliceTiming": [0.0, 0.05, 0.1]})
    ),
}


BAD_IMAGES = {
    "unreadable": "sub-01_asl.nii.gz: not a readable NIfTI image",
    "3D with four rows": "a 3D image, but its aslcontext.tsv lists 4 volumes",
    "NaN": "sub-01_asl.nii.gz: NaN or infinite values",
    "flat axis": "volumes of shape (8, 8, 1) are not 3D images",
    "no aslcontext": "sub-01_asl.nii.gz: no _aslcontext.tsv beside it",
    "bad header": "sub-01_aslcontext.tsv: its header is 'type', not 'volume_type'",
    "unknown type": "sub-01_aslcontext.tsv: unknown volume type(s) tag",
    "rows and volumes": "6 volumes, but its aslcontext.tsv has 4 rows",
    "m0scan grid": "sub-01_m0scan.nii.gz: its grid (8, 8, 5) differs from sub-01_asl.nii.gz's",
    "slice timing": "SliceTiming has 3 times for 4 slices",
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_a_bad_image_or_context_is_refused_in_one_line(tmp_path, case):
    bids, asl = dataset(tmp_path)
    BREAK[case](asl)
    with pytest.raises(InputError) as error:
        collect_inputs(bids, [], [], {})
    message = str(error.value)
    assert message.startswith("sub-01: ") and BAD_IMAGES[case] in message, message
    assert "\n" not in message


def test_the_reader_raises_its_own_error_type(tmp_path):
    bids, asl = dataset(tmp_path, m0=None)
    with pytest.raises(AslInputError, match="M0Type is Separate"):
        read(bids, asl)


def test_an_asl_only_participant_runs_asl_on_its_own_grid(tmp_path, caplog):
    bids, _ = dataset(tmp_path, anatomy=False)
    subjects = collect_inputs(bids, [], [], {})
    subject = subjects["01"]
    assert not subject.has_anatomy and len(subject.asl) == 1
    assert "sub-01 has no T1w: its ASL is processed on its own grid only" in caplog.text
    plan_analyses(subjects, ["anat", "tumor", "wmh", "dwi", "asl"], False, {})
    plan_skull_stripping(subjects, "auto")  # nothing to extract: no T1w is read
    assert subject.analyses == ["asl"] and not subject.skull_stripped
    with pytest.raises(InputError, match="sub-01 has no T1w image .*: only asl can run for it, "):
        plan_analyses(subjects, ["anat", "dwi"], True, {})
    plan_analyses(subjects, ["anat", "asl"], True, {})
    assert subject.analyses == ["asl"]


def test_asl_runs_by_default_beside_anat_and_a_participant_without_either_is_refused(tmp_path):
    bids, asl = dataset(tmp_path)
    subjects = collect_inputs(bids, [], [], {})
    plan_analyses(subjects, ["anat", "tumor", "wmh", "dwi", "asl"], False, {})
    assert subjects["01"].analyses == ["anat", "asl"]
    for path in asl.parent.iterdir():
        path.unlink()
    (bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz").unlink()
    with pytest.raises(InputError, match="sub-01 has no T1w image"):
        collect_inputs(bids, [], [], {})


def _dry_run(bids: Path, tmp_path: Path, *options: str):
    from bids_dl.cli.run import main

    arguments = [str(bids), str(tmp_path / "out"), "participant", "--skip-bids-validation",
                 "--dry-run", "-w", str(tmp_path / "w"), *options]  # fmt: skip
    return CliRunner().invoke(main, arguments, catch_exceptions=False)


def test_asl_model_none_and_auto_configure_and_the_plan_shows_an_asl_only_participant(tmp_path):
    from bids_dl.cli.configure import _model_bundle
    from bids_dl.models.registry import shipped_bundles

    shipped = shipped_bundles().get("asl")
    assert _model_bundle("auto", "--asl-model", task="asl", classical="none") == (
        str(shipped) if shipped else None
    )  # no bundle installed yet: auto quietly means the measured CBF only
    assert _model_bundle("none", "--asl-model", task="asl", classical="none") is None
    bids, _ = dataset(tmp_path, anatomy=False)
    for choice in ("none", "auto"):
        result = _dry_run(bids, tmp_path, "--asl-model", choice)
        assert result.exit_code == 0, result.output
        assert "sub-01: no T1w (ASL on its own grid only)" in result.output
        assert "runs: asl\n" in result.output
    refused = _dry_run(bids, tmp_path, "--asl-model", str(tmp_path / "missing"))
    assert refused.exit_code == 2 and "--asl-model" in refused.output.strip().splitlines()[-1]


def test_a_bad_asl_series_stops_the_cli_with_one_line_before_any_work(tmp_path):
    bids, asl = dataset(tmp_path)
    asl.with_name("sub-01_aslcontext.tsv").write_text("volume_type\ncontrol\nlabel\nlabel\n")
    result = run_cli(str(bids), str(tmp_path / "out"), "participant", "--skip-bids-validation",
                     "-w", str(tmp_path / "work"))  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "bids_dl: error: sub-01: sub-01_asl.nii.gz: 2 label and 1 control volume(s) in its "
        "aslcontext.tsv; they come in pairs"
    ], lines
    assert not (tmp_path / "out").exists()  # nothing written (the work dir holds the index)


def _xa30_writer():
    script = Path(__file__).parents[1] / "bench" / "xa30_asl_to_bids.py"
    spec = importlib.util.spec_from_file_location("xa30_asl_to_bids", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_xa30_asl_dataset


@pytest.mark.skipif(not (SHARED_DATA / "asl").is_dir(), reason="../shared/data is absent")
def test_the_real_xa30_pcasl_series_as_bids_is_read_and_valid(tmp_path, capsys):
    bids = _xa30_writer()(SHARED_DATA, tmp_path / "bids")
    assert "control / M0: 0.943" in capsys.readouterr().out  # no background suppression
    subjects = collect_inputs(bids, [], [], {})
    plan_analyses(subjects, ["anat", "tumor", "wmh", "dwi", "asl"], False, {})
    subject = subjects["xa30"]
    assert subject.analyses == ["anat", "asl"] and len(subject.asl) == 1
    series = subject.asl[0]
    assert series.context == ("m0scan", "label", "control", "label", "control", "label",
                               "control")  # fmt: skip
    assert series.m0_type == "Included" and series.labeling_type == "PCASL"
    assert series.post_labeling_delays == (1.8,) * 7 and series.labeling_duration == 1.8
    assert series.repetition_time_preparation == 4.8 and series.background_pulses == 0
    assert len(series.slice_timing) == 12 and series.slice_axis == 2
    assert series.field_strength == 3.0 and series.total_acquired_pairs == 3
    if validator_command() is not None:
        validate_dataset(bids)  # raises on any validator error


def test_asl_named_for_a_participant_without_asl_is_refused(tmp_path):
    bids = write_tiny_bids(tmp_path / "bids", subjects=("01",))
    subjects = collect_inputs(bids, [], [], {})
    with pytest.raises(InputError, match="^sub-01: --analyses asl needs an ASL image$"):
        plan_analyses(subjects, ["anat", "asl"], True, {})
