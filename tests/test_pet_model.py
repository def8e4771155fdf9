"""Missing-PET imputation: the simulated T1w + FDG pairs, inference, and training through
``bids_dl-train`` on simulated and on (tiny, built) real-pair BIDS data."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from bids_dl.models.bundle import load_bundle
from bids_dl.models.card import ModelCard
from bids_dl.models.networks import UNet3D
from bids_dl.models.pet_imputation import impute_suvr
from bids_dl.models.pet_prior import RegionalPrior, TrainingRegions
from bids_dl.models.pet_simulation import (
    CEREBELLAR_CORTEX,
    PetSimulation,
    simulate_case,
    simulate_frames,
)
from bids_dl.models.pet_training import PetTrainingConfig, pet_card
from bids_dl.models_cli import train_main

#: no heterogeneity and no hypometabolism unless a test asks for one
PLAIN = PetSimulation(heterogeneity=0.0, tied_probability=0.0, independent_probability=0.0)
TINY = {"features": [4, 8], "patch": [32, 32, 32], "batch_size": 1, "learning_rate": 0.001}


def synthetic_label_map(size: int = 72) -> tuple[np.ndarray, np.ndarray]:
    """A spherical 1 mm head of FreeSurfer labels (cortex around white matter, ventricles,
    deep grey nuclei, hippocampi, cerebellum, brain stem, extra-cerebral CSF, scalp), stored
    in LAS voxel order."""
    x, y, z = np.indices((size,) * 3) - (size - 1) / 2
    radius = np.sqrt(x**2 + y**2 + z**2)
    left = x < 0

    def sided(a: int, b: int) -> np.ndarray:
        return np.where(left, a, b)

    labels = np.zeros((size,) * 3, dtype=np.int16)
    labels[radius < 34] = 507
    labels[radius < 31] = 24
    brain = radius < 29
    labels[brain] = sided(3, 42)[brain]
    regions = [
        (radius < 23, sided(2, 41)),
        ((np.abs(x) - 7) ** 2 / 9 + y**2 / 144 + (z - 4) ** 2 / 25 < 1, sided(4, 43)),
        ((np.abs(x) - 14) ** 2 + y**2 + z**2 < 20, sided(12, 51)),
        ((np.abs(x) - 5) ** 2 + (y + 8) ** 2 + (z + 3) ** 2 < 12, sided(10, 49)),
        ((np.abs(x) - 19) ** 2 / 9 + y**2 / 100 + (z + 10) ** 2 / 9 < 1, sided(17, 53)),
        (brain & (z < -12) & (y < -4), sided(8, 47)),
        ((np.abs(x) - 7) ** 2 + (y + 16) ** 2 + (z + 19) ** 2 < 16, sided(7, 46)),
        (brain & (x**2 + (y + 2) ** 2 < 25) & (z < -8), np.full(labels.shape, 16)),
    ]
    for where, values in regions:
        labels[where] = values[where]
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [(size - 1) / 2, -(size - 1) / 2, -(size - 1) / 2]
    return labels[::-1].copy(), affine  # LAS: voxel x grows to the left


@pytest.fixture(scope="module")
def head() -> tuple[np.ndarray, np.ndarray]:
    return synthetic_label_map()


def _mean(volume: np.ndarray, labels: np.ndarray, values) -> float:
    return float(volume[np.isin(labels, values)].mean())


def test_a_case_is_ras_2mm_suvr_normalised_and_deterministic(head):
    case = simulate_case(*head, np.random.default_rng(1), PLAIN)
    assert nb.aff2axcodes(case.affine) == ("R", "A", "S")
    assert np.allclose(np.abs(np.diag(case.affine)[:3]), 2.0)
    for volume in (case.t1w, case.suvr, case.pet, case.normal_suvr, case.labels):
        assert volume.shape == case.brain_mask.shape and np.isfinite(volume).all()
    assert case.brain_mask.dtype == bool and case.brain_mask.sum() > 2000
    assert _mean(case.suvr, case.labels, CEREBELLAR_CORTEX) == pytest.approx(1.0, abs=1e-4)
    assert _mean(case.suvr, case.labels, (2, 41)) < _mean(case.suvr, case.labels, (3, 42))
    assert _mean(case.t1w, case.labels, (2, 41)) > _mean(case.t1w, case.labels, (3, 42))
    assert not case.tied_region.any() and not case.independent_region.any()
    assert np.allclose(case.suvr, case.normal_suvr, atol=1e-5)
    noise = case.pet - case.suvr
    assert 0.005 < noise[case.brain_mask].std() < 0.1  # a few % of the signal
    json.dumps(case.parameters)  # what was drawn goes into cards and logs
    again = simulate_case(*head, np.random.default_rng(1), PLAIN)
    assert np.array_equal(again.pet, case.pet) and np.array_equal(again.t1w, case.t1w)


def test_the_atrophy_tied_hypometabolism_lowers_uptake_and_shrinks_the_hippocampus(head):
    tied = replace(PLAIN, tied_probability=1.0, tied_severity_range=(1.0, 1.0))
    case = simulate_case(*head, np.random.default_rng(2), tied)
    healthy = simulate_case(*head, np.random.default_rng(2), PLAIN)
    assert case.parameters["tied_severity"] == 1.0 and case.tied_region.sum() > 20
    ratio = case.suvr[case.tied_region] / case.normal_suvr[case.tied_region]
    assert ratio.max() < 0.95 + 1e-5 and ratio.min() < 0.9
    assert np.isin(case.labels, (17, 53)).sum() < np.isin(healthy.labels, (17, 53)).sum()


def test_the_independent_hypometabolism_is_invisible_in_the_t1w(head):
    hidden = replace(PLAIN, independent_probability=1.0, independent_reduction_range=(0.3, 0.3))
    case = simulate_case(*head, np.random.default_rng(3), hidden)
    without = simulate_case(*head, np.random.default_rng(3), PLAIN)
    assert np.array_equal(case.t1w, without.t1w) and np.array_equal(case.labels, without.labels)
    assert case.independent_region.sum() > 5 and not without.independent_region.any()
    region = case.independent_region
    assert np.all(case.suvr[region] < 0.95 * case.normal_suvr[region])
    assert np.allclose(case.normal_suvr, without.suvr, atol=1e-5)


def test_late_frames_give_the_suvr_back(head):
    case = simulate_case(*head, np.random.default_rng(4), PLAIN)
    starts = np.array([0, 15, 30, 60, 120, 300, 600, 1200, 1800, 2400, 3000], float)
    durations = np.diff(np.r_[starts, 3600.0])
    frames = simulate_frames(case.suvr, starts, durations, np.random.default_rng(5), 8000.0)
    assert frames.shape == (*case.suvr.shape, len(starts)) and frames.dtype == np.float32
    late = starts >= 1800
    mean = (frames[..., late] * durations[late]).sum(-1) / durations[late].sum()
    reference = np.isin(case.labels, CEREBELLAR_CORTEX)
    recovered = mean / mean[reference].mean()
    brain = case.brain_mask
    assert np.median(np.abs(recovered - case.suvr)[brain]) < 0.03
    early = np.corrcoef(frames[..., 2][brain], case.suvr[brain])[0, 1]
    assert np.corrcoef(recovered[brain], case.suvr[brain])[0, 1] > 0.98 > early


def _t1w_like(labels: np.ndarray) -> np.ndarray:
    table = np.zeros(int(labels.max()) + 1, np.float32)
    table[[2, 41]], table[[3, 42, 8, 47]], table[507] = 0.85, 0.55, 0.7
    return table[labels]


PRIOR = RegionalPrior({2: 0.8, 41: 0.8, 3: 1.3, 42: 1.3, 8: 1.0, 47: 1.0}, 0.6, 7.0)


def test_the_regional_prior_fit_finds_the_values_it_was_painted_with(head):
    labels, affine = head
    mask = (labels > 0) & (labels < 100)
    values = {int(v): 0.5 + 0.01 * i for i, v in enumerate(np.unique(labels[mask]))}
    truth = RegionalPrior(values, 0.6, 7.0)
    suvr = truth.paint(labels, affine)
    fitted = RegionalPrior.fit([TrainingRegions(labels, suvr, mask, affine, 7.0)], 7.0)
    assert set(fitted.values) == set(values)
    assert max(abs(fitted.values[k] - v) for k, v in values.items()) < 0.02
    plain = {k: float(suvr[mask & (labels == k)].mean()) for k in values}
    assert max(abs(plain[k] - v) for k, v in values.items()) > 0.05  # partial volume is real
    assert RegionalPrior.from_dict(fitted.to_dict()).values.keys() == fitted.values.keys()


def test_impute_suvr_returns_the_input_grid_zero_outside_the_mask(head):
    labels, affine = head
    mask = (labels > 0) & (labels < 100)
    config = PetTrainingConfig(name="tiny", **{**TINY, "features": (4, 8)})
    network = UNet3D(3, 1, (4, 8))
    card = pet_card(config, PRIOR, {}, "", {})
    suvr = impute_suvr(_t1w_like(labels), mask, labels, affine, network, card)
    assert suvr.shape == labels.shape and suvr.dtype == np.float32
    assert np.isfinite(suvr).all() and suvr.min() >= 0
    assert not suvr[~mask].any() and suvr[mask].any()
    other = ModelCard("seg", "1", "structures", {}, {"voxel_size_mm": 1}, {"labels": {}})
    with pytest.raises(ValueError, match="PET imputation"):
        impute_suvr(_t1w_like(labels), mask, labels, affine, network, other)


def test_a_network_that_predicts_no_correction_returns_the_regional_prior(head):
    labels, affine = head
    mask = (labels > 0) & (labels < 100)
    network = UNet3D(3, 1, (4, 8))
    torch.nn.init.zeros_(network.head.weight)
    torch.nn.init.zeros_(network.head.bias)
    card = pet_card(PetTrainingConfig(name="tiny", **TINY), PRIOR, {}, "", {})
    suvr = impute_suvr(_t1w_like(labels), mask, labels, affine, network, card)
    cortex, reference = mask & np.isin(labels, (3, 42)), mask & np.isin(labels, (8, 47))
    painted = PRIOR.paint(labels, affine)
    painted /= painted[reference].mean()  # an SUVR's reference region reads 1
    assert abs(suvr[reference].mean() - 1) < 1e-4
    assert abs(np.median(suvr[cortex]) - np.median(painted[cortex])) < 0.05


def _train(tmp_path: Path, config: dict) -> tuple[object, Path]:
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    output = tmp_path / "run"
    result = CliRunner().invoke(train_main, [str(path), str(output)])
    return result, output


def test_training_on_simulated_cases_writes_a_simulated_card_and_resumes(tmp_path, head):
    labels, affine = head
    maps = tmp_path / "label_maps"
    maps.mkdir()
    for subject in ("01", "02"):
        nb.save(nb.Nifti1Image(labels, affine), maps / f"training_seg_{subject}.nii.gz")
    config = {
        "name": "pet-tiny", "task": "pet", "source": "simulated", "label_maps": str(maps),
        "train_subjects": ["01"], "validation_subjects": ["02"], "test_subjects": [],
        "steps": 3, "validation_every": 3, "cases_per_map": 1, "refresh_every": 2,
        "validation_cases": 1, **TINY,
    }  # fmt: skip
    result, output = _train(tmp_path, config)
    assert result.exit_code == 0, result.output
    assert "validation MAE" in result.output
    card, network = load_bundle(output / "bundle")
    assert card.task == "pet" and card.outputs["channels"] == ["SUVR"]
    assert card.inputs["contrasts"] == ["T1w"] and card.inputs["voxel_size_mm"] == 2.0
    assert "SIMULATED" in card.training["data"] and "simulated" in card.metrics["headline"]
    assert card.training["split"]["validation"] == ["02"] and "simulation" in card.training
    result, output = _train(tmp_path, {**config, "steps": 5})
    assert result.exit_code == 0, result.output
    steps = [json.loads(line)["steps"] for line in (output / "log.jsonl").read_text().splitlines()]
    assert steps == [3, 5]


def _write(image: np.ndarray, affine: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nb.save(nb.Nifti1Image(image.astype(np.float32), affine), path)


def test_training_on_real_pairs_reads_bids_and_its_derivatives(tmp_path, head):
    bids, derivatives = tmp_path / "bids", tmp_path / "derivatives"
    for seed, subject in enumerate(("sub-01", "sub-02")):
        case = simulate_case(*head, np.random.default_rng(seed), PLAIN)
        _write(case.t1w, case.affine, bids / subject / "anat" / f"{subject}_T1w.nii.gz")
        _write(case.pet, case.affine, bids / subject / "pet" / f"{subject}_trc-FDG_pet.nii.gz")
        mask = derivatives / subject / "anat" / f"{subject}_desc-brain_mask.nii.gz"
        _write(case.brain_mask, case.affine, mask)
        aseg = derivatives / subject / "anat" / f"{subject}_desc-aseg_dseg.nii.gz"
        _write(case.labels, case.affine, aseg)
        suvr = derivatives / subject / "pet" / f"{subject}_space-T1w_desc-suvr_pet.nii.gz"
        _write(case.pet, case.affine, suvr)
    config = {
        "name": "pet-real", "task": "pet", "source": "bids", "bids_dir": str(bids),
        "derivatives_dir": str(derivatives), "train_subjects": ["01"],
        "validation_subjects": ["sub-02"], "steps": 2, "validation_every": 2, **TINY,
    }  # fmt: skip
    result, output = _train(tmp_path, config)
    assert result.exit_code == 0, result.output
    card, _ = load_bundle(output / "bundle")
    assert "real" in card.training["data"] and "SIMULATED" not in card.training["data"]
    assert "real validation" in card.metrics["headline"]
    mask.unlink()
    result, _ = _train(tmp_path / "again", config)
    assert result.exit_code == 2 and "desc-brain_mask" in result.output
