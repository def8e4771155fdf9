"""The PET analysis end to end through the CLI on the sample's simulated dynamic FDG PET:
measured SUV and SUVR (the smoke run makes them) and, with ``--pet-imputation always``, the
imputed PET beside them."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from bids_dl.inputs import validator_command
from tests.conftest import SMOKE_OPTIONS, run_cli

SERIES = "sub-01_trc-FDG"


@pytest.fixture(scope="module")
def pet_run(smoke_run, tmp_path_factory) -> dict:
    """sub-01 through the CLI with SUV required and the shipped imputation model run beside
    its measured PET. It shares the smoke run's dataset (sub-01 has the sample's PET), work
    dir and options, so only the imputation and what follows it run again."""
    output = tmp_path_factory.mktemp("pet_run") / "out"
    result = run_cli(str(smoke_run["bids"]), str(output), "participant", "--participant-label",
                     "01", "--pet-imputation", "always", "--pet-suv", "-w",
                     str(smoke_run["work"]), *SMOKE_OPTIONS)  # fmt: skip
    return {"result": result, "output": output, "pet": output / "sub-01" / "pet"}


def test_the_run_succeeds(pet_run):
    assert pet_run["result"].returncode == 0, pet_run["result"].stderr[-3000:]


def test_measured_pet_derivatives_are_written(pet_run):
    pet = pet_run["pet"]
    for name in ("desc-preproc_pet.nii.gz", "desc-confounds_timeseries.tsv",
                 "desc-tacs_timeseries.tsv", "space-T1w_desc-suvr_pet.nii.gz",
                 "space-MNI152NLin2009aSym_desc-suvr_pet.nii.gz",
                 "space-T1w_desc-suv_pet.nii.gz"):  # fmt: skip
        assert (pet / f"{SERIES}_{name}").exists(), name
    sidecar = json.loads((pet / f"{SERIES}_space-T1w_desc-suvr_pet.json").read_text())
    assert sidecar["ReferenceRegion"].startswith("cerebellar grey matter")
    assert sidecar["Sources"] == [f"bids:raw:sub-01/pet/{SERIES}_pet.nii.gz"]
    with open(pet / f"{SERIES}_desc-tacs_timeseries.tsv") as table:
        rows = list(csv.DictReader(table, delimiter="\t"))
    assert len(rows) == 9 and "Left-Cerebellum-Cortex" in rows[0]


def _measures(output: Path) -> dict[str, str]:
    (path,) = output.glob("sub-01/**/sub-01*_measures.tsv")
    with open(path) as table:
        return next(csv.DictReader(table, delimiter="\t"))


def test_suvr_follows_the_simulated_uptake(pet_run):
    """The sample paints cerebral grey matter at 1.3 and white matter at 0.55 times the
    cerebellar cortex on the template's smooth tissue probabilities, then blurs by 7 mm
    (its true SUVR is ~1.1 in cortex, ~0.9 in white matter): the measured SUVR keeps that
    order and the cerebellar reference reads ~1."""
    measures = _measures(pet_run["output"])
    cortex = float(measures["pet_suvr_mean_cortex"])
    white = float(measures["pet_suvr_mean_cerebral_wm"])
    cerebellum = float(measures["pet_suvr_mean_left_cerebellum_cortex"])
    assert 0.85 < cerebellum < 1.15
    assert cortex > 1.03 and cortex / white > 1.1


def test_suv_is_suvr_times_the_reference_suv(pet_run):
    """SUV and SUVR come from the same static image: their ratio is one number, the
    reference region's SUV (the sample puts it near 6)."""
    pet = pet_run["pet"]
    suv = np.asarray(nb.load(pet / f"{SERIES}_space-T1w_desc-suv_pet.nii.gz").dataobj)
    suvr = np.asarray(nb.load(pet / f"{SERIES}_space-T1w_desc-suvr_pet.nii.gz").dataobj)
    inside = suvr > 0.5
    ratio = suv[inside] / suvr[inside]
    assert np.ptp(ratio) < 1e-3 * ratio.mean()
    assert 4.5 < ratio.mean() < 7.5


def test_the_imputed_pet_says_it_is_synthetic(pet_run):
    pet = pet_run["pet"]
    image = pet / "sub-01_space-T1w_desc-imputed_pet.nii.gz"
    assert (
        image.exists()
        and (pet / "sub-01_space-MNI152NLin2009aSym_desc-imputed_pet.nii.gz").exists()
    )
    sidecar = json.loads(image.with_name(image.name.replace(".nii.gz", ".json")).read_text())
    assert sidecar["Synthetic"] is True and sidecar["Description"].startswith("SYNTHETIC")
    assert sidecar["DeepLearningModel"]["TrainingData"] == "simulated"
    assert sidecar["Sources"] == ["bids:raw:sub-01/anat/sub-01_T1w.nii.gz"]
    measures = _measures(pet_run["output"])
    assert float(measures["pet_imputed_suvr_mean_cortex"]) > 0


def test_the_report_shows_measured_and_imputed_pet(pet_run):
    report = (pet_run["output"] / "sub-01.html").read_text()
    for figure in (f"{SERIES}_desc-suvr_pet.png", f"{SERIES}_desc-tacs_pet.png",
                   f"{SERIES}_desc-coreg_pet.png", "sub-01_desc-imputed_pet.png"):  # fmt: skip
        assert figure in report
    assert "SYNTHETIC" in report and "cerebellar grey matter" in report


@pytest.mark.skipif(validator_command() is None, reason="bids-validator-deno is not installed")
def test_pet_derivatives_pass_the_bids_validator(pet_run):
    from tests.test_smoke import _validator_errors

    assert _validator_errors(pet_run["output"]) == []


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"FrameDuration": [60] * 8}, "FrameDuration"),
        ({"InjectedRadioactivity": None}, "SUV needs"),
    ],
    ids=["frames-mismatch", "suv-without-dose"],
)
def test_bad_pet_sidecars_stop_before_work(sample_small, tmp_path, edit, message):
    bids = tmp_path / "bids"
    shutil.copytree(sample_small, bids, ignore=shutil.ignore_patterns("derivatives"))
    sidecar = bids / "sub-01" / "pet" / f"{SERIES}_pet.json"
    fields = {k: v for k, v in {**json.loads(sidecar.read_text()), **edit}.items() if v is not None}
    sidecar.write_text(json.dumps(fields))
    result = run_cli(str(bids), str(tmp_path / "out"), "participant", "--pet-suv",
                     "--skip-bids-validation", "-w", str(tmp_path / "work"))  # fmt: skip
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()
    assert len(error) == 1 and message in error[0] and f"{SERIES}_pet" in error[0]
    assert not (tmp_path / "work" / "bids_dl_wf").exists()
