"""The ASL enhancement network: phantom, features, inference, training and the shipped bundle."""

from __future__ import annotations

import json
from dataclasses import replace

import nibabel as nb
import numpy as np
import pytest
import torch

from bids_dl.models.asl_enhancement import (
    INPUT_CHANNELS,
    RESIDUAL_CHANNEL,
    SMOOTHING_SIGMAS,
    enhance_difference,
    enhancement_inputs,
    label_control_pairs,
    normalised_differences,
    smooth_in_mask,
)
from bids_dl.models.asl_kinetics import difference_signal
from bids_dl.models.asl_phantom import TISSUES, AslSimulation, simulate_asl_case
from bids_dl.models.bundle import load_bundle
from bids_dl.models.card import load_card
from bids_dl.models.networks import PerfusionNet
from bids_dl.models.registry import ZOO

#: no heterogeneity, patches, vessels or physiology: the kinetics alone
PLAIN = AslSimulation(
    heterogeneity=0.0,
    patch_probability=0.0,
    max_vessels=0,
    att_smooth=0.0,
    global_fluctuation=0.0,
    smooth_fluctuation=0.0,
    csf_pulsation=0.0,
    efficiency_fluctuation=0.0,
    motion_mm=0.0,
    motion_deg=0.0,
)


def head_labels(size: int = 80, voxel_mm: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """A spherical head of FreeSurfer labels (WM 2 inside cortex 3, CSF 24, scalp 507) on a
    ``voxel_mm`` RAS grid centred at the origin."""
    centre = (size - 1) / 2
    radius = np.linalg.norm(np.indices((size,) * 3) - centre, axis=0) * voxel_mm
    labels = np.zeros((size,) * 3, dtype=np.int32)
    labels[radius < 76] = 507
    labels[radius < 68] = 24
    labels[radius < 64] = 3
    labels[radius < 50] = 2
    labels[radius < 8] = 4
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = -centre * voxel_mm
    return labels, affine


@pytest.fixture(scope="module")
def head():
    return head_labels()


def test_a_case_has_the_acquisition_shape_and_is_deterministic(head):
    labels, affine = head
    case = simulate_asl_case(labels, np.random.default_rng(3), affine, pairs=3)
    x, y, z = case.m0.shape
    assert (x, y) == (64, 64) and 12 <= z <= 24
    assert case.series.shape == (x, y, z, 6) and case.context == ["label", "control"] * 3
    assert case.tissues.shape == (len(TISSUES), x, y, z) and case.plds.shape == (z,)
    assert np.all(np.diff(case.plds) > 0)  # 2D readout: later slices, longer delays
    assert case.mask.dtype == bool and case.mask.sum() > 1000
    for volume in (case.series, case.m0, case.clean_dm, case.cbf, case.att):
        assert np.isfinite(volume).all()
    grey = case.tissues[0] > 0.5
    assert 10 < case.cbf[grey].mean() < 120 and case.att[grey].min() >= 0.5
    assert case.clean_dm[grey].mean() > 0
    again = simulate_asl_case(labels, np.random.default_rng(3), affine, pairs=3)
    np.testing.assert_array_equal(case.series, again.series)


def test_clean_dm_follows_the_kinetic_model_in_pure_grey_matter(head):
    labels, affine = head
    case = simulate_asl_case(labels, np.random.default_rng(5), affine, pairs=2, settings=PLAIN)
    pure = (case.tissues[0] > 0.99) & case.mask
    assert pure.sum() > 20
    delays = np.broadcast_to(case.plds, case.m0.shape)
    expected = difference_signal(case.cbf[pure], case.att[pure], delays[pure], case.scheme)
    relative = np.abs(case.clean_dm[pure] - expected) / expected.mean()
    # exact but where the transit time varies across a voxel around the delay (non-linear)
    assert np.median(relative) < 0.005 and np.mean(relative < 0.03) > 0.98


def test_the_noise_of_a_pair_has_the_set_snr_in_grey_matter(head):
    labels, affine = head
    ratios = {}
    for snr in (1.0, 4.0):
        settings = replace(PLAIN, snr_range=(snr, snr), pairs=6)
        case = simulate_asl_case(labels, np.random.default_rng(7), affine, 6, settings)
        grey = (case.tissues[0] > 0.9) & case.mask
        pairs = [(2 * i, 2 * i + 1) for i in range(6)]
        noise = normalised_differences(case.series, pairs, case.m0, case.mask)[grey]
        noise -= case.clean_dm[grey][:, None]
        ratios[snr] = float(noise.std() / case.clean_dm[grey].mean())
    assert ratios[1.0] == pytest.approx(1.0, rel=0.25)
    assert ratios[1.0] / ratios[4.0] == pytest.approx(4.0, rel=0.1)


def test_pairs_are_read_from_the_context():
    assert label_control_pairs(["m0scan", "label", "control", "label", "control"]) == [
        (1, 2),
        (3, 4),
    ]
    assert label_control_pairs(["control", "label", "control", "label"]) == [(1, 0), (3, 2)]
    assert label_control_pairs(["m0scan", "deltam", "deltam"]) == [(1, 1), (2, 2)]


def test_the_network_adds_a_correction_to_the_input_and_keeps_any_size():
    network = PerfusionNet(INPUT_CHANNELS, 1, (4, 8, 8), RESIDUAL_CHANNEL)
    x = torch.randn(3, INPUT_CHANNELS, 50, 62)
    x[:, -1] = 1.0
    output = network(x)  # the head starts at zero: the output is the residual channel
    assert output.shape == (3, 1, 50, 62)
    torch.testing.assert_close(output, x[:, RESIDUAL_CHANNEL : RESIDUAL_CHANNEL + 1])


def test_enhance_difference_returns_a_finite_map_of_the_first_pairs(head):
    labels, affine = head
    case = simulate_asl_case(labels, np.random.default_rng(11), affine, pairs=3)
    network = PerfusionNet(INPUT_CHANNELS, 1, (4, 8), RESIDUAL_CHANNEL)
    context = ["m0scan", *case.context]
    series = np.concatenate([case.m0[..., None], case.series], -1)
    dm, used = enhance_difference(network, series, context, case.m0, case.mask, pairs=2)
    assert used == [(1, 2), (3, 4)]
    assert dm.shape == case.m0.shape and np.isfinite(dm).all()
    assert not dm[~case.mask].any()
    pairs_dm = normalised_differences(series, used, case.m0, case.mask).mean(-1)
    smoothed = smooth_in_mask(pairs_dm, case.mask, SMOOTHING_SIGMAS[0])
    np.testing.assert_allclose(dm, smoothed, rtol=1e-3, atol=1e-6)  # untrained: smoothed input
    inputs, scale = enhancement_inputs(pairs_dm, case.m0, case.mask, 2)
    assert inputs.shape == (case.m0.shape[2], INPUT_CHANNELS, 64, 64) and scale > 0
    np.testing.assert_allclose(np.moveaxis(inputs[:, 1], 0, -1) * scale, pairs_dm, atol=1e-7)
    assert inputs[:, 7].max() == pytest.approx(1 / np.sqrt(2))


def test_a_tiny_training_run_writes_a_loadable_bundle(tmp_path):
    from bids_dl.models.asl_training import AslTrainingConfig, train_asl_network

    labels, affine = head_labels(size=144, voxel_mm=1.0)
    for subject in ("01", "17"):
        nb.save(nb.Nifti1Image(labels, affine), tmp_path / f"training_seg_{subject}.nii.gz")
    config = AslTrainingConfig(
        name="tiny-asl", steps=3, batch_size=4, features=(4, 8), label_maps=str(tmp_path),
        train_subjects=("01",), validation_subjects=("17",), pairs=2, max_input_pairs=2,
        draws_per_case=1, shuffle_cases=1, validation_cases=1, validation_every=3, workers=0,
    )  # fmt: skip
    bundle = train_asl_network(config, tmp_path / "run", command="test")
    card, network = load_bundle(bundle)
    assert card.task == "asl" and card.outputs["channels"] == ["dm"]
    assert card.training["seed"] == 1 and "SIMULATED" in card.training["data"]
    assert set(card.metrics["simulated_validation_rmse_percent_gm"]) == {"k=1", "k=2"}
    log = [json.loads(line) for line in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    assert log[-1]["steps"] == 3
    assert isinstance(network, PerfusionNet)


def test_the_shipped_card_says_what_it_was_trained_and_measured_on():
    folder = ZOO / "asl"
    card = load_card(folder)
    assert card.task == "asl" and card.inputs["modality"] == "asl"
    assert card.outputs["channels"] == ["dm"] and "T1w" in card.inputs["structural"]
    assert card.training["data"].startswith("SIMULATED") and card.training["seed"] is not None
    assert card.training["split"]["test"] == ["19", "20"]
    assert card.metrics["real"]["data"].startswith("REAL")
    assert "REAL" in card.metrics["headline"] and "SIMULATED" in card.metrics["headline"]
    assert (folder / "weights.safetensors").stat().st_size < 5 * 2**20
    _, network = load_bundle(folder)
    assert isinstance(network, PerfusionNet)
