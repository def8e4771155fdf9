"""Who gets the PET analysis and an imputed PET (``plan_pet``), and the CLI's PET options."""

from __future__ import annotations

import pytest

from bids_dl.inputs import InputError, SubjectInputs, plan_pet


def _subjects(with_pet: tuple[str, ...], labels=("01", "02")) -> dict[str, SubjectInputs]:
    return {
        label: SubjectInputs(
            label, {"t1w": [f"sub-{label}_T1w.nii.gz"]}, pet=["pet"] if label in with_pet else []
        )
        for label in labels
    }


def _plan(subjects, requested=False, imputation=True, everywhere=False, structures=True):
    plan_pet(subjects, ["anat", "pet"], requested, imputation, everywhere, structures)
    return {label: ("pet" in s.analyses, s.impute_pet) for label, s in subjects.items()}


def test_a_study_with_some_pet_imputes_the_missing_ones():
    assert _plan(_subjects(("01",))) == {"01": (True, False), "02": (True, True)}


def test_a_t1w_only_dataset_gets_no_synthetic_pet_unasked():
    assert _plan(_subjects(())) == {"01": (False, False), "02": (False, False)}


def test_named_pet_imputes_for_everyone_without_one():
    assert _plan(_subjects(()), requested=True) == {"01": (True, True), "02": (True, True)}


def test_always_imputes_beside_the_measured_pet():
    assert _plan(_subjects(("01",)), everywhere=True) == {"01": (True, True), "02": (True, True)}


def test_no_pet_is_imputed_for_a_tumour_unless_always(caplog):
    subjects = _subjects(("01",))
    subjects["02"].analyses.append("tumor")
    assert _plan(subjects)["02"] == (False, False)
    assert "never saw a brain tumour" in caplog.text
    subjects = _subjects(("01",))
    subjects["02"].analyses.append("tumor")
    assert _plan(subjects, everywhere=True)["02"] == (True, True)


def test_without_a_model_only_the_measured_pet_runs():
    assert _plan(_subjects(("01",)), imputation=False) == {
        "01": (True, False),
        "02": (False, False),
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"requested": True, "imputation": False}, "sub-02: --analyses pet needs a PET image"),
        ({"requested": True, "structures": False}, "needs the structures model"),
        ({"everywhere": True, "imputation": False}, "no pet model is installed"),
    ],
    ids=["no-pet-no-model", "no-structures", "always-without-model"],
)
def test_impossible_pet_requests_are_one_line_errors(kwargs, message):
    with pytest.raises(InputError, match=message) as error:
        _plan(_subjects(("01",)), **kwargs)
    assert "\n" not in str(error.value)


def test_without_structures_pet_is_skipped_unless_named(caplog):
    assert _plan(_subjects(("01",)), structures=False) == {
        "01": (False, False),
        "02": (False, False),
    }
    assert "structures model" in caplog.text


def test_a_pet_window_must_end_after_it_starts(tmp_path):
    from click.testing import CliRunner

    from bids_dl.cli.run import main

    (tmp_path / "bids").mkdir()
    (tmp_path / "bids" / "dataset_description.json").write_text('{"Name": "x"}')
    result = CliRunner().invoke(
        main,
        [str(tmp_path / "bids"), str(tmp_path / "out"), "participant", "--pet-window", "40", "30"],
    )
    assert result.exit_code == 2
    assert "--pet-window 40 30: END must be after START" in result.output
