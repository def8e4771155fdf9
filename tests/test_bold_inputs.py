"""BOLD inputs (BIDS ``func/``): the timing the preprocessing needs, each bad input refused
with one line (exit 2) before any work, the header/sidecar repetition-time warning, and the
``func`` analysis in the plan."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from bids_dl.bold_inputs import MIN_BOLD_VOLUMES
from bids_dl.inputs import InputError, SeriesOptions, collect_inputs, plan_analyses
from tests.conftest import run_cli, write_tiny_bids

AFFINE = np.diag([3.0, 3.0, 4.0, 1.0])
SHAPE = (8, 8, 5)
SIDECAR = {"TaskName": "rest", "RepetitionTime": 2.0, "SliceTiming": [0.0, 1.0, 0.4, 1.4, 0.8]}


@pytest.fixture(autouse=True)
def _propagate(monkeypatch):
    """caplog reads the root logger: an in-process CLI run stops bids_dl's propagation."""
    monkeypatch.setattr(logging.getLogger("bids_dl"), "propagate", True)


def _save(data: np.ndarray, path: Path, zoom: float = 2.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nb.Nifti1Image(data.astype(np.float32), AFFINE)
    image.header.set_xyzt_units("mm", "sec")
    if data.ndim == 4:
        image.header.set_zooms((*image.header.get_zooms()[:3], zoom))
    nb.save(image, path)
    return path


def dataset(tmp_path: Path, volumes: int = 12, sidecar: dict | None = None) -> tuple[Path, Path]:
    """sub-01 with a T1w and a ``task-rest`` BOLD run."""
    bids = write_tiny_bids(tmp_path / "bids")
    data = np.random.default_rng(0).uniform(500, 600, (*SHAPE, volumes))
    bold = _save(data, bids / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz")
    bold.with_name("sub-01_task-rest_bold.json").write_text(json.dumps(sidecar or SIDECAR))
    return bids, bold


def test_a_valid_run_is_read_with_its_timing_and_plans_func(tmp_path):
    bids, bold = dataset(tmp_path)
    subjects = collect_inputs(bids, [], [], {})
    (run,) = subjects["01"].bold
    assert run.path == str(bold) and run.task == "rest" and run.repetition_time == 2.0
    assert run.n_volumes == 12
    assert run.slice_timing == (0.0, 1.0, 0.4, 1.4, 0.8) and run.slice_axis == 2
    plan_analyses(subjects, ["anat", "func"], False, {})
    assert subjects["01"].analyses == ["anat", "func"]


def _with_nan(bold: Path) -> None:
    data = np.asarray(nb.load(bold).dataobj, dtype=np.float32)
    data[1, 1, 1, 3] = np.nan
    _save(data, bold)


def _sidecar(bold: Path, **fields) -> None:
    sidecar = {k: v for k, v in {**SIDECAR, **fields}.items() if v is not None}
    bold.with_name("sub-01_task-rest_bold.json").write_text(json.dumps(sidecar))


#: case -> (how it breaks a good run, what the one-line message says)
BAD_RUNS = {
    "3D": (lambda b: _save(np.ones(SHAPE), b), "a BOLD run is 4D (one volume per repetition"),
    "too short": (
        lambda b: _save(np.ones((*SHAPE, MIN_BOLD_VOLUMES - 1)), b),
        f"{MIN_BOLD_VOLUMES - 1} volumes; the functional analysis needs at least "
        f"{MIN_BOLD_VOLUMES}",
    ),
    "NaN": (_with_nan, "NaN or infinite values in volume(s) 3"),
    "unreadable": (lambda b: b.write_bytes(b"not an image"), "not a readable NIfTI image"),
    "no TR": (lambda b: _sidecar(b, RepetitionTime=None), "RepetitionTime is missing"),
    "zero TR": (lambda b: _sidecar(b, RepetitionTime=0), "RepetitionTime is 0; BIDS requires"),
    "slice count": (
        lambda b: _sidecar(b, SliceTiming=[0.0, 0.5, 1.0]),
        "SliceTiming has 3 times for 5 slices",
    ),
    "slice beyond TR": (
        lambda b: _sidecar(b, SliceTiming=[0.0, 0.5, 1.0, 1.5, 2.5]),
        "SliceTiming runs from 0 to 2.5 s, outside one repetition time",
    ),
}


@pytest.mark.parametrize("case", list(BAD_RUNS))
def test_a_bad_run_is_refused_in_one_line(tmp_path, case):
    breaks, expected = BAD_RUNS[case]
    bids, bold = dataset(tmp_path)
    breaks(bold)
    with pytest.raises(InputError) as error:
        collect_inputs(bids, [], [], {})
    message = str(error.value)
    assert message.startswith("sub-01: sub-01_task-rest_bold.nii.gz: "), message
    assert expected in message and "\n" not in message, message


def test_dummy_scans_count_against_the_volumes_needed(tmp_path):
    bids, _ = dataset(tmp_path, volumes=MIN_BOLD_VOLUMES + 2)
    collect_inputs(bids, [], [], {}, options=SeriesOptions(dummy_scans=2))
    with pytest.raises(InputError, match=r"9 volumes after 3 dummy scans; .* at least 10"):
        collect_inputs(bids, [], [], {}, options=SeriesOptions(dummy_scans=3))


def test_a_header_tr_that_disagrees_warns_and_the_sidecar_wins(tmp_path, caplog):
    bids, bold = dataset(tmp_path)
    _save(np.asarray(nb.load(bold).dataobj), bold, zoom=2.5)
    (run,) = collect_inputs(bids, [], [], {})["01"].bold
    assert run.repetition_time == 2.0
    assert "header says a repetition time of 2.5 s, the sidecar 2 s; using the sidecar" in (
        caplog.text
    )


def test_analyses_func_without_bold_is_refused(tmp_path):
    bids = write_tiny_bids(tmp_path / "bids")
    subjects = collect_inputs(bids, [], [], {})
    with pytest.raises(InputError, match="sub-01: --analyses func needs a BOLD image"):
        plan_analyses(subjects, ["anat", "func"], True, {})


def test_a_bad_run_stops_the_cli_with_one_line_before_any_work(tmp_path):
    bids, bold = dataset(tmp_path)
    _sidecar(bold, RepetitionTime=-1)
    result = run_cli(str(bids), str(tmp_path / "out"), "participant", "--skip-bids-validation",
                     "-w", str(tmp_path / "work"))  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "bids_dl: error: sub-01: sub-01_task-rest_bold.nii.gz: RepetitionTime is -1; BIDS "
        "requires a positive one"
    ]
    assert not (tmp_path / "out").exists()
