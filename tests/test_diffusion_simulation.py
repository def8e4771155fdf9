"""The diffusion simulator against hand-computed tensors, dipy's fit and noise statistics."""

from __future__ import annotations

import numpy as np
import pytest
from dipy.core.gradients import gradient_table
from dipy.core.sphere import HemiSphere, disperse_charges
from dipy.reconst.dti import TensorModel

from bids_dl.models import diffusion_simulation as ds

#: eigenvalues (1.7, 0.3, 0.3)e-3: FA = sqrt(1/2) sqrt(1.4^2 + 0 + 1.4^2) / sqrt(1.7^2 + 2 0.3^2)
#: = 1.4 / sqrt(3.07); MD = 2.3e-3 / 3
ZEPPELIN_FA = 1.4 / np.sqrt(3.07)
ZEPPELIN_MD = 2.3e-3 / 3


def _dipy_fit(signal: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray):
    return TensorModel(gradient_table(bvals, bvecs=bvecs), fit_method="WLS").fit(signal)


def _voxels(directions: list, fractions: list, intra: float, iso: float) -> ds.VoxelParameters:
    """One voxel of given populations, d_par 1.7e-3, d_perp 0.3e-3, d_iso 3e-3."""
    one = np.ones(1)
    return ds.VoxelParameters(
        directions=np.array([directions], float),
        fibre_fractions=np.array([fractions], float),
        intra_fraction=intra * one,
        d_par=1.7e-3 * one,
        d_perp=0.3e-3 * one,
        iso_fraction=iso * one,
        d_iso=3.0e-3 * one,
    )


@pytest.fixture(scope="module")
def scheme() -> ds.Scheme:
    return ds.well_spread_scheme(30, 1000.0, 1, np.random.default_rng(0))


def _energy(directions: np.ndarray) -> float:
    """Electrostatic energy of the directions and their antipodes."""
    total = 0.0
    for sign in (1.0, -1.0):
        distance = np.linalg.norm(directions[:, None] - sign * directions[None], axis=-1)
        np.fill_diagonal(distance, np.inf)
        total += (1 / distance).sum() / 2
    return total


def _design_condition(directions: np.ndarray) -> float:
    x, y, z = directions.T
    return np.linalg.cond(np.stack([x * x, y * y, z * z, 2 * x * y, 2 * x * z, 2 * y * z], 1))


def test_tensor_metrics_match_hand_computed_values():
    metrics = ds.tensor_metrics(np.array([[0.3e-3, 1.7e-3, 0.3e-3], [1, 1, 1], [0, 0, 0]]))
    assert metrics.fa[0] == pytest.approx(0.7990222, abs=1e-7)
    assert metrics.fa[0] == pytest.approx(ZEPPELIN_FA, rel=1e-12)
    assert metrics.md[0] == pytest.approx(ZEPPELIN_MD, rel=1e-12)
    assert (metrics.ad[0], metrics.rd[0]) == pytest.approx((1.7e-3, 0.3e-3), rel=1e-12)
    assert metrics.fa[1:].tolist() == [0.0, 0.0]
    assert ds.tensor_metrics(np.array([2e-3, 0, 0])).fa == pytest.approx(1.0)


def test_dipy_fits_a_simulated_zeppelin_with_its_analytic_fa_and_md(scheme):
    bvals, bvecs = scheme
    axis = ds.random_directions(1, np.random.default_rng(3))
    signal = ds.zeppelin(bvals, bvecs, axis, np.array([1.7e-3]), np.array([0.3e-3]))
    fit = _dipy_fit(signal, bvals, bvecs)
    assert abs(fit.fa[0] - ZEPPELIN_FA) < 1e-6
    assert abs(fit.md[0] - ZEPPELIN_MD) < 1e-6 * ZEPPELIN_MD
    assert abs(fit.evecs[0, :, 0] @ axis[0]) == pytest.approx(1.0, abs=1e-9)


def test_the_voxel_signal_combines_its_compartments(scheme):
    bvals, bvecs = scheme
    axis = [0.0, 0.6, 0.8]
    zeppelin = ds.zeppelin(bvals, bvecs, np.array([axis]), 1.7e-3, 0.3e-3)
    stick = ds.stick(bvals, bvecs, np.array([axis]), 1.7e-3)
    ball = ds.ball(bvals, 3.0e-3)
    voxel = ds.voxel_signal(_voxels([axis], [1.0], 0.4, 0.2), bvals, bvecs)
    np.testing.assert_allclose(voxel, 0.2 * ball + 0.8 * (0.4 * stick + 0.6 * zeppelin))
    assert voxel[0, 0] == 1.0
    np.testing.assert_allclose(voxel, ds.voxel_signal(_voxels([axis], [1.0], 0.4, 0.2), bvals,
                                                      -bvecs))  # fmt: skip


def test_a_90_degree_crossing_has_lower_fa_than_either_stick(scheme):
    bvals, bvecs = scheme
    x, y = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]
    signals = np.concatenate([
        ds.voxel_signal(_voxels([x, y], [1.0, 0.0], 1.0, 0.0), bvals, bvecs),
        ds.voxel_signal(_voxels([x, y], [0.0, 1.0], 1.0, 0.0), bvals, bvecs),
        ds.voxel_signal(_voxels([x, y], [0.5, 0.5], 1.0, 0.0), bvals, bvecs),
    ])  # fmt: skip
    fa = _dipy_fit(signals, bvals, bvecs).fa
    assert fa[0] == pytest.approx(1.0, abs=1e-6) and fa[1] == pytest.approx(1.0, abs=1e-6)
    assert fa[2] < 0.75


def test_rician_noise_lifts_low_signals_to_the_noise_floor():
    rng = np.random.default_rng(0)
    sigma = 1 / 20
    levels = np.array([0.0, 0.05, 1.0])
    noisy = ds.rician_noise(np.tile(levels, (200_000, 1)), 20.0, rng)
    mean = noisy.mean(0)
    assert mean[0] == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.01)
    assert mean[1] > 0.05 + 0.3 * sigma
    assert mean[2] == pytest.approx(np.sqrt(1 + sigma**2), abs=1e-3)
    assert noisy[:, 2].std() == pytest.approx(sigma, rel=0.01)
    np.testing.assert_array_equal(ds.rician_noise(levels[None], np.inf, rng), levels[None])


def test_random_scheme_is_uniform_on_the_hemisphere_and_seeded():
    bvals, bvecs = ds.random_scheme(20_000, 1000.0, 2, np.random.default_rng(1))
    assert bvals.shape == (20_002,) and bvecs.shape == (20_002, 3)
    assert bvals[:2].tolist() == [0.0, 0.0] and not bvecs[:2].any()
    np.testing.assert_allclose(np.linalg.norm(bvecs[2:], axis=1), 1.0)
    assert (bvecs[2:, 2] >= 0).all()
    # uniform on the sphere: z uniform on [0, 1], x and y centred
    assert bvecs[2:, 2].mean() == pytest.approx(0.5, abs=0.01)
    assert np.abs(bvecs[2:, :2].mean(0)).max() < 0.02
    again = ds.random_scheme(20_000, 1000.0, 2, np.random.default_rng(1))
    np.testing.assert_array_equal(bvecs, again[1])


@pytest.mark.parametrize("n", [6, 30])
def test_well_spread_directions_match_dipys_electrostatic_repulsion(n):
    ours = ds.well_spread_directions(n, np.random.default_rng(2))
    start = ds.random_directions(n, np.random.default_rng(2))
    dipys, _ = disperse_charges(HemiSphere(xyz=start), 5000)
    assert _energy(ours) == pytest.approx(_energy(dipys.vertices), rel=1e-4)
    assert _energy(ours) < _energy(ds.random_directions(n, np.random.default_rng(5)))
    assert _design_condition(ours) < 1.65
    np.testing.assert_array_equal(ours, ds.well_spread_directions(n, np.random.default_rng(2)))


def test_the_truth_is_the_fit_on_a_dense_scheme_per_shell():
    bvals, bvecs = ds.reference_scheme(np.array([0.0, 995.0, 1005.0, 2000.0, 3.0]))
    assert bvals.shape == (129,) and bvecs.shape == (129, 3)
    assert bvals[0] == 0.0 and sorted(set(bvals[1:])) == [1000.0, 2000.0]


def test_simulated_voxels_follow_their_tissue(scheme):
    rng = np.random.default_rng(4)
    voxels = {tissue: ds.simulate_voxels(2000, tissue, scheme, (15.0, 40.0), rng)
              for tissue in ("wm", "gm", "csf")}  # fmt: skip
    fa = {tissue: np.median(v.metrics.fa) for tissue, v in voxels.items()}
    md = {tissue: np.median(v.metrics.md) for tissue, v in voxels.items()}
    assert fa["wm"] > 0.5 > fa["gm"] > 0.15 > fa["csf"]
    assert 0.6e-3 < md["wm"] < 1.1e-3 and 0.7e-3 < md["gm"] < 1.2e-3
    assert 2.6e-3 < md["csf"] < 3.1e-3
    wm = voxels["wm"]
    assert wm.signal.shape == (2000, 31) and wm.principal_direction.shape == (2000, 3)
    np.testing.assert_allclose(wm.parameters.fibre_fractions.sum(1), 1.0)
    assert (wm.parameters.d_par >= 1.7e-3).all() and (wm.parameters.d_par <= 2.2e-3).all()


def test_simulation_is_reproducible_from_the_seed(scheme):
    first, second, other = (
        ds.simulate_voxels(50, "wm", scheme, 20.0, np.random.default_rng(seed))
        for seed in (7, 7, 8)
    )
    np.testing.assert_array_equal(first.signal, second.signal)
    np.testing.assert_array_equal(first.metrics.fa, second.metrics.fa)
    assert not np.array_equal(first.signal, other.signal)


def test_a_malformed_scheme_is_refused():
    params = ds.sample_voxel_parameters(3, "wm", np.random.default_rng(0))
    with pytest.raises(ValueError, match="bvals"):
        ds.voxel_signal(params, np.zeros(4), np.zeros((3, 3)))
