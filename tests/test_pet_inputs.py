"""PET inputs (BIDS ``pet/``): each bad series refused with one line naming its file, the
body weight from sessions.tsv or participants.tsv, activity units, and the SUV factor against
a hand computation."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from bids_dl.pet_inputs import (
    PetInputError,
    body_weight,
    check_pet_series,
    read_pet_series,
    suv_factor,
)

NAME = "sub-01_ses-1_trc-18FFDG_pet.nii.gz"
#: a valid dynamic FDG sidecar: four frames, decay-corrected to injection
SIDECAR = {
    "TracerName": "FDG",
    "TracerRadionuclide": "F18",
    "Units": "Bq/mL",
    "InjectedRadioactivity": 370,
    "InjectedRadioactivityUnits": "MBq",
    "TimeZero": "10:00:00",
    "ScanStart": 0,
    "InjectionStart": 0,
    "FrameTimesStart": [0, 600, 1200, 1800],
    "FrameDuration": [600, 600, 600, 600],
    "ImageDecayCorrected": True,
    "ImageDecayCorrectionTime": 0,
}


def write_pet(root: Path, shape=(6, 6, 4, 4), nan: int = 0) -> str:
    data = np.random.default_rng(0).uniform(1000, 2000, shape).astype(np.float32)
    data.reshape(-1)[:nan] = np.nan
    path = root / NAME
    nb.save(nb.Nifti1Image(data, np.eye(4)), path)
    return str(path)


def series(tmp_path, changes=None, weight=70.0, **image):
    metadata = {**SIDECAR, **(changes or {})}
    metadata = {k: v for k, v in metadata.items() if v is not None}
    return read_pet_series(write_pet(tmp_path, **image), metadata, weight)


BAD = {
    "frames vs timing": ({"FrameTimesStart": [0, 600, 1200]}, {}, False, "3 FrameTimesStart"),
    "3D with two frames": ({}, {"shape": (6, 6, 4)}, False, "1 frame(s) in the image"),
    "missing duration": ({"FrameDuration": None}, {}, False, "lacks FrameDuration"),
    "missing injection": ({"InjectionStart": None}, {}, False, "lacks InjectionStart"),
    "starts go back": ({"FrameTimesStart": [0, 600, 500, 1800]}, {}, False, "does not increase"),
    "negative duration": ({"FrameDuration": [600, -600, 600, 600]}, {}, False, "not positive"),
    "malformed duration": ({"FrameDuration": "600"}, {}, False, "not a number"),
    "non-finite voxels": ({}, {"nan": 7}, False, "7 NaN or infinite"),
    "2D image": ({}, {"shape": (6, 6)}, False, "2D image"),
    "5D image": ({}, {"shape": (6, 6, 4, 4, 2)}, False, "5D image"),
    "no dose": ({"InjectedRadioactivity": None}, {}, True, "InjectedRadioactivity"),
    "dose units": ({"InjectedRadioactivityUnits": "mg"}, {}, True, "not 'mg'"),
    "no decay time": ({"ImageDecayCorrectionTime": None}, {}, True, "ImageDecayCorrectionTime"),
    "not decay-corrected": ({"ImageDecayCorrected": False}, {}, True, "is false"),
    "unknown units": ({"Units": "counts"}, {}, True, "not 'counts'"),
    "unknown nuclide": ({"TracerRadionuclide": "Xx99", "ImageDecayCorrectionTime": 60}, {}, True,
                        "known half-life"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_a_bad_series_is_refused_with_one_line_naming_it(tmp_path, case):
    changes, image, suv, expected = BAD[case]
    with pytest.raises(PetInputError) as error:
        check_pet_series(series(tmp_path, changes, **image), suv=suv)
    message = str(error.value)
    assert message.startswith(NAME) and "\n" not in message
    assert expected in message
    if suv:
        assert "SUV needs" in message and message.endswith("; SUVR does not")


@pytest.mark.parametrize(
    ("changes", "weight", "expected"),
    [({}, None, "a body_weight in participants.tsv"),
     ({"InjectedRadioactivity": "n/a"}, 70.0, "InjectedRadioactivity"),
     ({"ImageDecayCorrected": "yes"}, 70.0, "ImageDecayCorrected")],
)  # fmt: skip
def test_what_only_suv_needs_does_not_stop_suvr(tmp_path, changes, weight, expected):
    found = series(tmp_path, changes, weight=weight)
    check_pet_series(found, suv=False)
    assert not found.suv_ready
    with pytest.raises(PetInputError, match=f"SUV needs {expected}"):
        check_pet_series(found, suv=True)


def test_a_valid_series_passes(tmp_path):
    dynamic = series(tmp_path)
    check_pet_series(dynamic, suv=True)
    assert dynamic.suv_ready and dynamic.is_dynamic and dynamic.n_frames == 4
    # a static image: scalars for its one frame, as dcm2niix writes them
    static = series(tmp_path, {"FrameTimesStart": 3000, "FrameDuration": 1200}, shape=(6, 6, 4))
    check_pet_series(static, suv=True)
    assert not static.is_dynamic and static.frame_starts == (3000.0,)


@pytest.mark.parametrize(
    ("units", "bq"),
    [("MBq", 370e6), ("mCi", 370 * 3.7e7), ("kBq", 370e3), ("GBq", 370e9), ("Bq", 370.0)],
)
def test_the_dose_is_converted_to_becquerel(tmp_path, units, bq):
    dose = series(tmp_path, {"InjectedRadioactivityUnits": units}).injected_radioactivity_bq
    assert dose == pytest.approx(bq)


@pytest.mark.parametrize(
    ("units", "scale"),
    [("Bq/mL", 1.0), ("kBq/mL", 1e3), ("MBq/mL", 1e6), ("nCi/mL", 37.0), ("BQML", 1.0),
     ("Bq/cc", 1.0), ("SUV", None), ("g/mL", None)],
)  # fmt: skip
def test_image_units_are_scaled_to_bq_per_ml(tmp_path, units, scale):
    found = series(tmp_path, {"Units": units}).activity_scale_to_bq_ml
    assert found == (None if scale is None else pytest.approx(scale))


@pytest.mark.parametrize("written", ["F18", "18F", "[18F]", "F-18"])
def test_the_radionuclide_is_read_in_either_order(tmp_path, written):
    found = series(tmp_path, {"TracerRadionuclide": written})
    assert found.radionuclide == "F18" and found.half_life == pytest.approx(109.77 * 60)


def test_suv_factor_decays_the_dose_to_the_decay_correction_time(tmp_path):
    # 370 MBq of F18, 70 kg, the image decay-corrected to the scan start 60 min after injection
    changes = {"ScanStart": 3600, "FrameTimesStart": [3600, 4200, 4800, 5400],
               "ImageDecayCorrectionTime": 3600}  # fmt: skip
    decayed_bq = 370e6 * np.exp(-np.log(2) * 60 / 109.77)  # 253.3 MBq left after an hour
    assert suv_factor(series(tmp_path, changes)) == pytest.approx(70_000 / decayed_bq)
    kilo = series(tmp_path, {**changes, "Units": "kBq/mL"})
    assert suv_factor(kilo) == pytest.approx(1000 * 70_000 / decayed_bq)
    # corrected to injection: no decay of the dose
    assert suv_factor(series(tmp_path)) == pytest.approx(70_000 / 370e6)
    with pytest.raises(PetInputError, match="SUV needs"):
        suv_factor(series(tmp_path, {"ImageDecayCorrected": False}))


def _write_tables(root: Path, participants: str, sessions: str | None = None) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "participants.tsv").write_text(participants)
    if sessions is not None:
        (root / "sub-01").mkdir(exist_ok=True)
        (root / "sub-01" / "sub-01_sessions.tsv").write_text(sessions)


def test_body_weight_of_the_session_overrides_the_participant(tmp_path):
    _write_tables(
        tmp_path,
        "participant_id\tage\tbody_weight\nsub-01\t60\t80\nsub-02\t61\tn/a\n",
        "session_id\tbody_weight\nses-1\t72.5\nses-2\tn/a\n",
    )
    assert body_weight(tmp_path, "01", "1") == 72.5
    assert body_weight(tmp_path, "sub-01", "ses-1") == 72.5
    assert body_weight(tmp_path, "01", "2") == 80.0  # n/a in the session: the participant's
    assert body_weight(tmp_path, "01", None) == 80.0
    assert body_weight(tmp_path, "02", None) is None
    assert body_weight(tmp_path, "03", None) is None


def test_body_weight_is_read_in_the_units_of_its_json(tmp_path):
    _write_tables(tmp_path, "participant_id\tbody_weight\nsub-01\t154\n")
    (tmp_path / "participants.json").write_text(json.dumps({"body_weight": {"Units": "lb"}}))
    assert body_weight(tmp_path, "01", None) == pytest.approx(69.85, abs=0.01)


def test_a_non_numeric_body_weight_is_none_with_a_warning(tmp_path, caplog):
    _write_tables(tmp_path, "participant_id\tbody_weight\nsub-01\t70kg\n")
    with caplog.at_level(logging.WARNING, logger="bids_dl.inputs"):
        assert body_weight(tmp_path, "01", None) is None
    assert "participants.tsv" in caplog.text and "'70kg'" in caplog.text
