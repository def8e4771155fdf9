"""ASL preprocessing and CBF steps on files: motion per volume type, M0, quantification
(single and multiple delays, slice timing) and the quality row."""

import nibabel as nb
import numpy as np
import pytest
from scipy import ndimage

from bids_dl.models.asl_kinetics import LabelingScheme, difference_signal, label_control_pairs
from bids_dl.workflows.interfaces.asl_cbf import (
    cbf_quality,
    quality_evaluation_index,
    quantify_cbf,
)
from bids_dl.workflows.interfaces.asl_preproc import asl_m0, correct_asl_motion

ZOOMS = (3.0, 3.0, 5.0)
AFFINE = np.diag([*ZOOMS, 1.0])
PCASL = {"labeling_type": "PCASL", "bolus_duration": 1.8, "efficiency": 0.85, "t1_blood": 1.65}


def _save(data, path) -> str:
    nb.Nifti1Image(np.asarray(data, np.float32), AFFINE).to_filename(path)
    return str(path)


def _head(shape=(32, 32, 12)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An ellipsoid brain: grey-matter shell, white-matter core, and its M0."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"), -1)
    radius = np.sqrt(((grid / [0.8, 0.9, 0.8]) ** 2).sum(-1))
    brain = radius < 1
    gm = brain & (radius > 0.7)
    m0 = np.where(brain, 1000.0 + 200 * gm, 0) + 20
    return brain, gm, m0


def test_pairs_are_adjacent_label_control_in_either_order():
    context = ["m0scan", "label", "control", "control", "label", "deltam"]
    assert label_control_pairs(context) == [(1, 2), (4, 3), (5, 5)]


def _series(tmp_path, cbf, m0, context, delays, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    scheme = LabelingScheme("PCASL", 1.8, 0.85, 1.65)
    volumes = []
    for kind, delay in zip(context, delays, strict=True):
        signal = m0.copy()
        if kind == "label":
            signal = m0 - difference_signal(cbf, 0.5, delay, scheme, m0)
        volumes.append(signal + rng.normal(0, noise, m0.shape))
    return _save(np.stack(volumes, -1), tmp_path / "asl.nii.gz")


def test_single_delay_cbf_matches_the_truth_and_gives_a_series_per_pair(tmp_path):
    brain, gm, m0 = _head()
    cbf_true = np.where(gm, 60.0, 25.0) * brain
    context = ["m0scan"] + ["label", "control"] * 3
    series = _series(tmp_path, cbf_true, m0, context, [0.0] + [1.8] * 6)
    parameters = {**PCASL, "context": context, "delays": [0.0] + [1.8] * 6}
    mask = _save(brain, tmp_path / "mask.nii.gz")
    outputs = quantify_cbf(series, _save(m0, tmp_path / "m0.nii.gz"), mask, parameters, tmp_path)
    cbf = nb.load(outputs["cbf"]).get_fdata()
    np.testing.assert_allclose(cbf[brain], cbf_true[brain], rtol=1e-4)
    assert nb.load(outputs["cbf_timeseries"]).shape == (*brain.shape, 3)
    assert "att" not in outputs


def test_slice_timing_is_added_to_the_delay(tmp_path):
    brain, _, m0 = _head()
    context = ["label", "control"]
    timing = list(np.linspace(0, 0.55, brain.shape[2]))
    parameters = {**PCASL, "context": context, "delays": [1.8, 1.8], "slice_timing": timing}
    # the same difference everywhere: the CBF must rise with each slice's later readout
    dm = np.where(brain, 8.0, 0.0)
    series = _save(np.stack([m0 - dm, m0], -1), tmp_path / "asl.nii.gz")
    m0_file = _save(m0, tmp_path / "m0.nii.gz")
    mask = _save(brain, tmp_path / "mask.nii.gz")
    cbf = nb.load(quantify_cbf(series, m0_file, mask, parameters, tmp_path)["cbf"]).get_fdata()
    centre = cbf[16, 16]
    ratio = centre[-3] / centre[2]
    assert ratio == pytest.approx(np.exp((timing[-3] - timing[2]) / 1.65), rel=1e-3)


def test_several_delays_give_cbf_and_transit_time(tmp_path):
    brain, gm, m0 = _head((12, 12, 4))
    scheme = LabelingScheme("PCASL", 1.8, 0.85, 1.65)
    plds = [0.5, 1.0, 1.5, 2.0, 2.5]
    att_true = np.where(gm, 1.0, 1.5)
    volumes, context, delays = [], [], []
    for pld in plds:
        dm = difference_signal(60.0, att_true, pld, scheme, m0)
        volumes += [m0 - dm, m0]
        context += ["label", "control"]
        delays += [pld, pld]
    series = _save(np.stack(volumes, -1), tmp_path / "asl.nii.gz")
    parameters = {**PCASL, "context": context, "delays": delays}
    outputs = quantify_cbf(
        series, _save(m0, tmp_path / "m0.nii.gz"), _save(brain, tmp_path / "mask.nii.gz"),
        parameters, tmp_path,
    )  # fmt: skip
    cbf, att = (nb.load(outputs[k]).get_fdata() for k in ("cbf", "att"))
    np.testing.assert_allclose(cbf[brain], 60.0, rtol=1e-3)
    np.testing.assert_allclose(att[brain], att_true[brain], atol=0.011)


def test_motion_is_corrected_per_volume_type(tmp_path):
    brain, gm, m0 = _head()
    texture = ndimage.gaussian_filter(np.random.default_rng(1).normal(0, 1, brain.shape), 1.5)
    anatomy = ndimage.gaussian_filter(m0 * (1 + 0.3 * gm), 1) * (1 + 2 * texture * brain)
    context = ["m0scan", "label", "control", "label", "control"]
    shift_mm = np.array([0.0, 0.0, 0.0, 3.0, 3.0])  # the second pair moved 1 voxel along x
    volumes = []
    for kind, shift in zip(context, shift_mm, strict=True):
        volume = anatomy * (1.3 if kind == "m0scan" else 1.0) * (0.99 if kind == "label" else 1)
        volumes.append(ndimage.shift(volume, (shift / ZOOMS[0], 0, 0), order=1))
    series = _save(np.stack(volumes, -1), tmp_path / "asl.nii.gz")
    outputs = correct_asl_motion(series, context, str(tmp_path))
    confounds = np.genfromtxt(outputs["confounds"], names=True, delimiter="\t")
    moved = confounds["trans_x"][3:].mean() - confounds["trans_x"][1:3].mean()
    assert abs(moved) == pytest.approx(3.0, abs=0.4)
    assert np.abs(confounds["trans_x"][:3]).max() < 0.1
    corrected = nb.load(outputs["out_file"]).get_fdata()
    inside = ndimage.binary_erosion(brain, iterations=2)
    error_before = np.abs(volumes[4] - volumes[2])[inside].mean()
    error_after = np.abs(corrected[..., 4] - corrected[..., 2])[inside].mean()
    assert error_after < 0.3 * error_before


def test_included_m0_is_the_mean_m0_volume_smoothed_inside_the_mask(tmp_path):
    brain, _, m0 = _head()
    context = ["m0scan", "label", "control"]
    series = _save(np.stack([m0, m0 * 0.9, m0 * 0.91], -1), tmp_path / "asl.nii.gz")
    mask = _save(brain, tmp_path / "mask.nii.gz")
    out = asl_m0(series, context, "Included", series, mask, str(tmp_path / "m0.nii.gz"))
    smoothed = nb.load(out).get_fdata()
    assert smoothed[~brain].max() == 0
    # masked smoothing keeps the edge: no darkening by the background
    assert smoothed[brain].min() > 0.9 * m0[brain].min()
    estimate = asl_m0(series, context, "Estimate", series, mask, str(tmp_path / "e.nii.gz"),
                      m0_estimate=1234.0)  # fmt: skip
    assert np.unique(nb.load(estimate).get_fdata()[brain]) == pytest.approx([1234.0])


def test_quality_index_prefers_a_plausible_map():
    brain, gm, _ = _head()
    gm_p = gm.astype(float)
    wm_p = (brain & ~gm).astype(float)
    csf_p = np.zeros(brain.shape)
    good = np.where(gm, 60.0, 25.0) * brain
    rng = np.random.default_rng(0)
    noisy = good + rng.normal(0, 60, good.shape) * brain
    good_qei = quality_evaluation_index(good, gm_p, wm_p, csf_p, ZOOMS)
    noisy_qei = quality_evaluation_index(noisy, gm_p, wm_p, csf_p, ZOOMS)
    assert 0.7 < good_qei <= 1.0
    assert 0 <= noisy_qei < good_qei - 0.2


def test_quality_row_counts_negative_and_implausible_voxels(tmp_path):
    brain, gm, _ = _head()
    cbf = np.where(gm, 60.0, 25.0) * brain
    flat = np.flatnonzero(brain)
    cbf.flat[flat[:10]] = -5.0
    cbf.flat[flat[10:30]] = 200.0
    confounds = tmp_path / "confounds.tsv"
    confounds.write_text("framewise_displacement\nn/a\n0.2\n0.4\n")
    probseg = [_save(gm, tmp_path / "gm.nii.gz"), _save(brain & ~gm, tmp_path / "wm.nii.gz"),
               _save(np.zeros(brain.shape), tmp_path / "csf.nii.gz")]  # fmt: skip
    row = cbf_quality(
        _save(cbf, tmp_path / "cbf.nii.gz"), _save(brain, tmp_path / "m.nii.gz"),
        str(confounds), probseg,
    )  # fmt: skip
    assert row["percentage_negative_cbf_brain"] == pytest.approx(100 * 10 / brain.sum(), abs=1e-3)
    assert row["percentage_implausible_cbf_brain"] == pytest.approx(
        100 * 20 / brain.sum(), abs=1e-3
    )
    assert row["mean_fd"] == pytest.approx(0.3)
    assert row["ratio_gm_wm_cbf"] > 1.5
    without_tissues = cbf_quality(
        str(tmp_path / "cbf.nii.gz"), str(tmp_path / "m.nii.gz"), str(confounds), None
    )
    assert without_tissues["qei_cbf"] == "n/a"
