"""The simulated resting-state BOLD: template networks, subject variation, determinism, noise."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bids_dl.models.bold_simulation import (
    BRAIN_BASELINE,
    OVERLAP_LEVEL,
    OVERLAPPING,
    BoldSimulation,
    network_maps,
    simulate_group,
    simulate_run,
    subject_network_maps,
)

#: voxel size (mm) of the tiny test grid, and the brain's semi-axes and centre (MNI mm)
TINY_VOXEL_MM = 8.0
TINY_SEMI_AXES_MM = np.array([72.0, 100.0, 72.0])
TINY_CENTRE_MM = np.array([0.0, -18.0, 12.0])
#: nothing but the voxel noise: no drift, motion, physiology
NOISE_ONLY = BoldSimulation(
    drift_percent=0.0, motion_mm=0.0, spike_rate=0.0, cardiac_percent=0.0, respiratory_percent=0.0
)


def tiny_brain() -> tuple[np.ndarray, np.ndarray]:
    """An ellipsoid brain on an 8 mm grid that covers every network node: (mask, affine)."""
    shape = np.ceil(2 * TINY_SEMI_AXES_MM / TINY_VOXEL_MM).astype(int) + 1
    affine = np.diag([TINY_VOXEL_MM] * 3 + [1.0])
    affine[:3, 3] = TINY_CENTRE_MM - TINY_SEMI_AXES_MM
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    coordinates = grid * TINY_VOXEL_MM + affine[:3, 3]
    inside = np.sum(((coordinates - TINY_CENTRE_MM) / TINY_SEMI_AXES_MM) ** 2, axis=-1) <= 1.0
    return inside, affine


def _lag_one(series: np.ndarray) -> float:
    """Mean lag-1 autocorrelation of the columns of a (T, V) array."""
    centred = series - series.mean(axis=0)
    return float(np.mean(np.sum(centred[1:] * centred[:-1], 0) / np.sum(centred**2, 0)))


def test_template_maps_overlap_where_documented():
    nilearn_datasets = pytest.importorskip("nilearn.datasets")
    image = nilearn_datasets.load_mni152_brain_mask(resolution=4)
    mask = np.asarray(image.dataobj) > 0
    maps = network_maps(mask, image.affine)
    peaks = maps.max(axis=(1, 2, 3))
    assert maps.dtype == np.float32 and np.all((peaks > 0.9) & (peaks <= 1.0))
    assert not maps[:, ~mask].any()
    strong = maps >= OVERLAP_LEVEL
    overlapping = {
        (i, j)
        for i, j in itertools.combinations(range(len(maps)), 2)
        if (strong[i] & strong[j]).any()
    }
    assert overlapping == set(OVERLAPPING)


def test_subjects_differ_in_shape_and_position():
    mask, affine = tiny_brain()
    settings = BoldSimulation()
    rng = np.random.default_rng(0)
    template = network_maps(mask, affine)[:, mask]
    first, second = (subject_network_maps(mask, affine, settings, rng)[:, mask] for _ in range(2))
    for subject in (first, second):
        correlation = [np.corrcoef(a, b)[0, 1] for a, b in zip(subject, template, strict=True)]
        assert 0.3 < np.mean(correlation) < 0.98
    assert not np.allclose(first, second)
    still = BoldSimulation(position_jitter_mm=0.0, shape_jitter=0.0)
    assert np.allclose(subject_network_maps(mask, affine, still, rng)[:, mask], template)


def test_group_is_deterministic_for_a_seed():
    mask, affine = tiny_brain()
    settings = BoldSimulation(n_volumes=30)
    first, again = (simulate_group(2, settings, mask, affine, seed=3) for _ in range(2))
    other = simulate_group(2, settings, mask, affine, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(first.runs, again.runs, strict=True))
    assert not np.allclose(first.runs[0], other.runs[0])
    assert first.runs[0].shape == (30, int(mask.sum())) and first.runs[0].dtype == np.float32
    assert first.group_maps.shape == (len(first.subject_maps[0]), int(mask.sum()))


def test_run_is_bold_like_with_its_time_courses():
    mask, affine = tiny_brain()
    maps = network_maps(mask, affine)
    run = simulate_run(maps, mask, BoldSimulation(), np.random.default_rng(1), affine)
    assert run.data.shape == (*mask.shape, 120)
    assert abs(np.median(run.data[mask]) / BRAIN_BASELINE - 1.0) < 0.1
    assert np.median(run.data[~mask]) < 0.2 * BRAIN_BASELINE
    assert run.time_courses.shape == (120, len(maps)) and run.motion.shape == (120, 6)
    assert np.allclose(run.time_courses.std(axis=0), 1.0, atol=1e-3)
    assert _lag_one(run.time_courses) > 0.5  # the haemodynamic response smooths the drive


@pytest.mark.parametrize("coefficient", [0.0, 0.4, 0.7])
def test_voxel_noise_has_the_requested_autocorrelation(coefficient):
    mask, affine = tiny_brain()
    empty = np.zeros((1, *mask.shape), dtype=np.float32)
    settings = BoldSimulation(**{**NOISE_ONLY.__dict__, "noise_ar": coefficient})
    run = simulate_run(empty, mask, settings, np.random.default_rng(2), affine)
    assert _lag_one(run.data[mask].T) == pytest.approx(coefficient, abs=0.06)
