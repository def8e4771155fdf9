"""Denoising, Ledoit-Wolf correlation and the BEP017 relationship matrices."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from bids_dl.connectivity import (
    MOTION_PARAMETERS,
    atlas_connectivity,
    clean_run,
    ledoit_wolf_correlation,
    write_relmat,
)

#: a crop of nilearn's 2 mm MNI152 grid around the posterior cingulate (a few Power spheres)
AFFINE = np.array([[2.0, 0, 0, -16], [0, 2.0, 0, -66], [0, 0, 2.0, 4], [0, 0, 0, 1]])
SHAPE = (12, 12, 10)
REPETITION_TIME = 2.0
#: volumes fMRIPrep would flag as non-steady-state
DUMMIES = 2
PREFIX = "space-MNI152NLin2009aSym_res-2"


def confounds_table(rng: np.random.Generator, n_volumes: int) -> pd.DataFrame:
    """fMRIPrep-like confounds: motion as random walks with their expansions, tissue signals,
    one cosine, two non-steady-state flags, and ``n/a`` in the first row of derivatives."""
    columns = {}
    for name in MOTION_PARAMETERS + ("csf", "white_matter", "global_signal"):
        signal = np.cumsum(rng.normal(size=n_volumes)) * 0.1
        derivative = np.r_[np.nan, np.diff(signal)]
        columns.update({name: signal, f"{name}_derivative1": derivative})
        columns.update({f"{name}_power2": signal**2, f"{name}_derivative1_power2": derivative**2})
    columns["framewise_displacement"] = np.r_[np.nan, rng.random(n_volumes - 1)]
    columns["cosine00"] = np.cos(np.pi * (np.arange(n_volumes) + 0.5) / n_volumes)
    for index in range(DUMMIES):
        columns[f"non_steady_state_outlier{index:02d}"] = np.eye(n_volumes)[index]
    return pd.DataFrame(columns)


def write_run(
    folder: Path, name: str, data: np.ndarray, mask: np.ndarray, confounds: pd.DataFrame
) -> tuple[Path, Path, Path]:
    """A preprocessed run as the participant level writes it: BOLD + sidecar, mask, confounds."""
    folder.mkdir(parents=True, exist_ok=True)
    bold = folder / f"{name}_{PREFIX}_desc-preproc_bold.nii.gz"
    nb.save(nb.Nifti1Image(data.astype(np.float32), AFFINE), bold)
    bold.with_name(bold.name.replace(".nii.gz", ".json")).write_text(
        json.dumps({"RepetitionTime": REPETITION_TIME})
    )
    mask_file = folder / f"{name}_{PREFIX}_desc-brain_mask.nii.gz"
    nb.save(nb.Nifti1Image(mask.astype(np.uint8), AFFINE), mask_file)
    confounds_file = folder / f"{name}_desc-confounds_timeseries.tsv"
    confounds.to_csv(confounds_file, sep="\t", index=False, na_rep="n/a")
    return bold, mask_file, confounds_file


def interior_mask(shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[1:-1, 1:-1, 1:-1] = True
    return mask


def test_clean_run_removes_motion_and_drops_non_steady_state_volumes(tmp_path):
    rng = np.random.default_rng(0)
    n_volumes = 60
    confounds = confounds_table(rng, n_volumes)
    neural = rng.normal(size=n_volumes)
    motion = confounds["trans_x"].to_numpy()
    data = 100 + rng.normal(size=(*SHAPE, n_volumes)) * 0.2 + neural + 5 * motion
    data[..., :DUMMIES] += 50  # the T1 saturation of the first volumes
    bold, mask, table = write_run(tmp_path, "sub-01_task-rest", data, interior_mask(), confounds)

    cleaned, kept = clean_run(bold, mask, table, REPETITION_TIME)

    assert cleaned.shape == (n_volumes - DUMMIES, interior_mask().sum())
    np.testing.assert_array_equal(kept, np.arange(DUMMIES, n_volumes))
    mean = cleaned.mean(axis=1)
    assert abs(np.corrcoef(mean, motion[kept])[0, 1]) < 0.05
    assert np.corrcoef(mean, neural[kept])[0, 1] > 0.5
    np.testing.assert_allclose(cleaned.std(axis=0, ddof=1), 1, atol=1e-3)


def test_clean_run_names_the_missing_confounds(tmp_path):
    rng = np.random.default_rng(1)
    confounds = confounds_table(rng, 30).drop(columns=["rot_z_power2", "csf"])
    data = rng.normal(size=(*SHAPE, 30))
    bold, mask, table = write_run(tmp_path, "sub-01_task-rest", data, interior_mask(), confounds)
    with pytest.raises(ValueError, match="rot_z_power2, csf"):
        clean_run(bold, mask, table, REPETITION_TIME)


def test_ledoit_wolf_correlation_recovers_a_planted_correlation():
    rng = np.random.default_rng(2)
    shared, own = rng.normal(size=(2000, 1)), rng.normal(size=(2000, 3))
    rho = 0.6
    correlated = np.sqrt(rho) * shared + np.sqrt(1 - rho) * own[:, 1:]
    signals = np.c_[own[:, 0], correlated, np.full(2000, np.nan)]  # last: outside the mask

    matrix = ledoit_wolf_correlation(signals)

    assert matrix[1, 2] == pytest.approx(rho, abs=0.05)
    assert abs(matrix[0, 1]) < 0.06
    np.testing.assert_allclose(matrix[:3, :3], matrix[:3, :3].T)
    np.testing.assert_allclose(np.diag(matrix)[:3], 1)
    assert np.isnan(matrix[3]).all() and np.isnan(matrix[:, 3]).all()


def test_write_relmat_writes_labels_values_and_the_proposal_keys(tmp_path):
    matrix = np.array([[1.0, 0.25, np.nan], [0.25, 1.0, np.nan], [np.nan, np.nan, np.nan]])
    out = tmp_path / "sub-01_task-rest_seg-Power2011_meas-PearsonCorrelation_relmat.tsv"

    write_relmat(matrix, ["roi001", "roi002", "roi003"], out, ["bids::sub-01/func/x.nii.gz"])

    lines = out.read_text().splitlines()
    assert lines[0] == "roi001\troi002\troi003"
    assert lines[1] == "1.000000\t0.250000\tn/a"
    table = pd.read_csv(out, sep="\t", na_values="n/a")
    np.testing.assert_allclose(table.to_numpy(), table.to_numpy().T)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["RelationshipMeasure"] == "PearsonCorrelation"
    assert (sidecar["Directed"], sidecar["Weighted"], sidecar["ValidDiagonal"]) == (
        False,
        True,
        False,
    )
    assert {"Software", "CovarianceEstimator", "Sources", "NodeLabels"} <= set(sidecar)


def test_atlas_connectivity_keeps_every_sphere_and_marks_those_outside(tmp_path):
    rng = np.random.default_rng(3)
    n_volumes = 50
    data = 100 + rng.normal(size=(*SHAPE, n_volumes))
    bold, mask, table = write_run(
        tmp_path, "sub-01_task-rest", data, interior_mask(), confounds_table(rng, n_volumes)
    )

    labels, timeseries, matrix = atlas_connectivity(bold, mask, table, REPETITION_TIME)

    assert len(labels) == 264 and labels[0] == "roi001"
    assert timeseries.shape == (n_volumes - DUMMIES, 264) and matrix.shape == (264, 264)
    inside = np.isfinite(timeseries).all(axis=0)
    assert 2 <= inside.sum() <= 10
    assert np.isfinite(matrix[np.ix_(inside, inside)]).all()
    assert np.isnan(matrix[~inside]).all()


def test_the_nipype_node_writes_the_relmat_and_the_timeseries(tmp_path):
    from bids_dl.workflows.interfaces.connectivity import AtlasConnectivity

    rng = np.random.default_rng(4)
    data = 100 + rng.normal(size=(*SHAPE, 40))
    bold, mask, table = write_run(
        tmp_path / "in", "sub-01_task-rest", data, interior_mask(), confounds_table(rng, 40)
    )
    node = AtlasConnectivity(
        bold_std=str(bold), brain_mask=str(mask), confounds_file=str(table), repetition_time=2.0
    )
    work = tmp_path / "work"
    work.mkdir()
    outputs = node.run(cwd=str(work)).outputs

    assert Path(outputs.relmat).name == "seg-Power2011_meas-PearsonCorrelation_relmat.tsv"
    assert Path(outputs.timeseries).name == "seg-Power2011_timeseries.tsv"
    assert len(pd.read_csv(outputs.timeseries, sep="\t")) == 40
    assert json.loads(Path(outputs.relmat_json).read_text())["Atlas"] == "Power2011"
    assert Path(outputs.timeseries_json).is_file()
