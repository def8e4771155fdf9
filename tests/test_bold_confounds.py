"""fMRIPrep-style BOLD confounds: DVARS, FD, cosines, aCompCor, outliers and the table."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from bids_dl.workflows.interfaces import bold_confounds as bc

SHAPE, N_VOLUMES, TR = (10, 10, 8), 80, 3.0
#: the spike: trans_x jumps by 1 mm at this volume and stays
SPIKE = 40
#: fMRIPrep's un-numbered columns, in our order
FMRIPREP_COLUMNS = [
    f"{base}{suffix}"
    for base in ("global_signal", "csf", "white_matter", "trans_x", "trans_y", "trans_z",
                 "rot_x", "rot_y", "rot_z")
    for suffix in ("", "_derivative1", "_power2", "_derivative1_power2")
] + ["framewise_displacement", "dvars", "std_dvars"]  # fmt: skip
NUMBERED = re.compile(r"^(cosine|a_comp_cor_|motion_outlier|non_steady_state_outlier)\d\d$")


def _parameters(rng: np.random.Generator) -> np.ndarray:
    """Small jitter (FD ~0.1 mm) and a 1 mm step in trans_x at ``SPIKE``."""
    parameters = np.column_stack(
        [rng.normal(0, 0.02, (N_VOLUMES, 3)), rng.normal(0, 0.0003, (N_VOLUMES, 3))]
    )
    parameters[SPIKE:, 0] += 1.0
    return parameters


def _series(rng: np.random.Generator, bright: int = 0) -> dict[str, np.ndarray]:
    """A box brain of noise around 1000, its WM and CSF boxes, ``bright`` first volumes 30 %
    brighter (before T1 equilibrium)."""
    brain = np.zeros(SHAPE, bool)
    brain[1:9, 1:9, 1:7] = True
    wm = np.zeros(SHAPE)
    wm[2:8, 2:5, 2:6] = 1.0
    csf = np.zeros(SHAPE)
    csf[2:8, 6:8, 2:6] = 0.97
    bold = 1000 + rng.normal(0, 10, SHAPE + (N_VOLUMES,))
    bold[..., :bright] *= 1.3
    return {"bold": bold, "brain": brain, "wm": wm, "csf": csf}


@pytest.fixture
def toy(tmp_path):
    """The toy series, masks and motion table as files, with three bright first volumes."""
    rng = np.random.default_rng(1)
    images = _series(rng, bright=3)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    paths = {}
    for name, data in images.items():
        paths[name] = str(tmp_path / f"{name}.nii.gz")
        nb.save(nb.Nifti1Image(data.astype(np.float32), affine), paths[name])
    parameters = _parameters(rng)
    table = pd.DataFrame(parameters, columns=bc.PARAMETER_COLUMNS)
    table["framewise_displacement"] = np.nan  # rewritten from the parameters
    paths["motion"] = str(tmp_path / "motion.tsv")
    table.to_csv(paths["motion"], sep="\t", index=False, na_rep="n/a")
    return paths, parameters


def test_dvars_by_hand_on_three_voxels():
    data = np.array([[1, 3, 2, 5, 4, 6], [10, 12, 11, 9, 13, 12], [5, 5, 7, 6, 8, 7]], dtype=float)
    values, standardised = bc.dvars(data, median=0)
    rms = [math.sqrt(sum((row[t] - row[t - 1]) ** 2 for row in data) / 3) for t in range(1, 6)]
    expected = []
    for row in data:
        ordered = sorted(row)
        sigma = (ordered[3] - ordered[1]) / 1.349  # "lower" 75th and 25th of six values
        x = row - row.mean()
        rho = sum(x[t] * x[t + 1] for t in range(5)) / sum(x**2)
        expected.append(math.sqrt(2 * (1 - rho)) * sigma)
    assert np.isnan(values[0]) and np.isnan(standardised[0])
    np.testing.assert_allclose(values[1:], rms)
    np.testing.assert_allclose(standardised[1:], np.array(rms) / np.mean(expected))
    # scaled to a median of 1000: DVARS scales, std DVARS does not
    scaled, same = bc.dvars(data)
    np.testing.assert_allclose(scaled[1:], np.array(rms) * 1000 / np.median(data))
    np.testing.assert_allclose(same[1:], standardised[1:])


def test_framewise_displacement_is_powers(toy, tmp_path):
    paths, parameters = toy
    tsv, _ = bc.write_bold_confounds(
        paths["bold"], paths["brain"], paths["wm"], paths["csf"], paths["motion"],
        tmp_path / "desc-confounds_timeseries.tsv", bc.ConfoundSettings(TR, non_steady_state=3),
    )  # fmt: skip
    fd = pd.read_csv(tsv, sep="\t", na_values=["n/a"])["framewise_displacement"]
    for t in (1, SPIKE, N_VOLUMES - 1):
        change = np.abs(parameters[t] - parameters[t - 1])
        power = change[:3].sum() + 50 * change[3:].sum()  # radians on a 50 mm sphere
        assert fd[t] == pytest.approx(power, rel=1e-5)
    assert np.isnan(fd[0])


@pytest.mark.parametrize(
    ("n_volumes", "tr", "cutoff", "count"),
    [(200, 2.0, 128, 5), (100, 2.0, 128, 2), (300, 0.8, 128, 2), (20, 1.0, 128, 0)],
)
def test_cosine_basis_count_and_orthonormality(n_volumes, tr, cutoff, count):
    basis = bc.cosine_basis(n_volumes, tr, cutoff)
    # N = max(floor(2 T TR / cutoff), 1) - 1, the constant left out
    assert basis.shape == (n_volumes, count)
    np.testing.assert_allclose(basis.T @ basis, np.eye(count), atol=1e-10)
    np.testing.assert_allclose(basis.sum(axis=0), 0, atol=1e-10)


def test_acompcor_finds_a_wm_signal_first():
    rng = np.random.default_rng(2)
    n_wm, n_csf, n_volumes = 150, 60, 120
    planted = rng.normal(size=n_volumes)
    data = rng.normal(size=(n_wm + n_csf, n_volumes))
    data[:n_wm] += 3 * rng.uniform(0.5, 1.5, (n_wm, 1)) * planted
    wm = np.arange(n_wm + n_csf) < n_wm
    basis = bc.cosine_basis(n_volumes, 2.0)
    components, metadata = bc.acompcor(data, wm, ~wm, basis)
    assert components.shape == (n_volumes, len(metadata))
    names = list(metadata)
    assert names == [f"a_comp_cor_{i:02d}" for i in range(len(names))]
    masks = [metadata[name]["Mask"] for name in names]
    assert masks == sorted(masks, key=bc.COMPCOR_MASKS.index)  # combined, CSF, WM
    highpassed = planted - basis @ (basis.T @ planted) - planted.mean()
    for mask in ("combined", "WM"):
        first = names.index(next(n for n in names if metadata[n]["Mask"] == mask))
        assert abs(np.corrcoef(components[:, first], highpassed)[0, 1]) > 0.95
    for mask in bc.COMPCOR_MASKS:
        entries = [metadata[n] for n in names if metadata[n]["Mask"] == mask]
        shares = [e["VarianceExplained"] for e in entries]
        cumulative = [e["CumulativeVarianceExplained"] for e in entries]
        np.testing.assert_allclose(np.cumsum(shares), cumulative)
        assert cumulative[-1] >= 0.5 and (len(cumulative) == 1 or cumulative[-2] < 0.5)
        singular = np.array([e["SingularValue"] for e in entries])
        np.testing.assert_allclose(np.array(shares) / shares[0], singular**2 / singular[0] ** 2)
        assert all(e["Retained"] is True and e["Method"] == "aCompCor" for e in entries)


def test_confounds_table_columns_rows_and_outliers(toy, tmp_path):
    paths, _ = toy
    tsv, sidecar = bc.write_bold_confounds(
        paths["bold"], paths["brain"], paths["wm"], paths["csf"], paths["motion"],
        tmp_path / "desc-confounds_timeseries.tsv", bc.ConfoundSettings(TR, non_steady_state=3),
    )  # fmt: skip
    table = pd.read_csv(tsv, sep="\t", na_values=["n/a"])
    named = [c for c in table.columns if not NUMBERED.match(c)]
    assert named == FMRIPREP_COLUMNS
    numbered = [c for c in table.columns if NUMBERED.match(c)]
    assert "cosine01" in numbered and "a_comp_cor_00" in numbered
    assert [c for c in numbered if c.startswith("non_steady")] == [
        f"non_steady_state_outlier{i:02d}" for i in range(3)
    ]
    # n/a in the first row only, and there for the derivatives, FD and DVARS
    missing = table.isna()
    assert not missing.iloc[1:].any().any()
    assert set(table.columns[missing.iloc[0]]) == {
        c for c in table.columns if "derivative1" in c or c.endswith("dvars")
    } | {"framewise_displacement"}
    # the step in trans_x is the only motion outlier; the bright volumes are flagged apart
    outliers = [c for c in table.columns if c.startswith("motion_outlier")]
    assert [int(np.argmax(table[c])) for c in outliers] == [SPIKE]
    assert table.loc[:2, "cosine00"].eq(0).all() and table.loc[:2, "a_comp_cor_00"].eq(0).all()
    metadata = json.loads(sidecar.read_text())
    assert set(metadata) == set(table.columns)
    assert all("Description" in entry for entry in metadata.values())
    assert metadata["trans_x_power2"]["Units"] == "mm^2"
    assert metadata["framewise_displacement"]["OutlierThreshold"] == bc.FD_THRESHOLD_MM
    assert metadata["motion_outlier00"]["StdDVARSThreshold"] == bc.STD_DVARS_THRESHOLD
    assert metadata["a_comp_cor_00"]["Mask"] == "combined"


def test_non_steady_state_detection():
    rng = np.random.default_rng(3)
    assert bc.detect_non_steady_state(_series(rng, bright=3)["bold"]) == 3
    assert bc.detect_non_steady_state(_series(rng)["bold"]) == 0


def test_dummy_scans_override_the_detection(toy, tmp_path):
    paths, _ = toy
    detector = bc.NonSteadyStateDetector(in_file=paths["bold"])
    outputs = detector.run(cwd=str(tmp_path)).outputs
    assert (outputs.n_volumes, outputs.detected) == (3, 3)
    detector.inputs.dummy_scans = 1
    outputs = detector.run(cwd=str(tmp_path)).outputs
    assert (outputs.n_volumes, outputs.detected) == (1, 3)


def test_the_interface_writes_the_table(toy, tmp_path):
    paths, _ = toy
    result = bc.BoldConfounds(
        in_file=paths["bold"], brain_mask=paths["brain"], wm_mask=paths["wm"],
        csf_mask=paths["csf"], motion_file=paths["motion"], repetition_time=TR,
        non_steady_state=3,
    ).run(cwd=str(tmp_path))  # fmt: skip
    table = pd.read_csv(result.outputs.confounds_file, sep="\t", na_values=["n/a"])
    assert len(table) == N_VOLUMES
    assert json.loads(Path(result.outputs.metadata_file).read_text())["std_dvars"]


def test_a_3d_series_is_refused(toy, tmp_path):
    paths, _ = toy
    with pytest.raises(ValueError, match="4D"):
        bc.write_bold_confounds(
            paths["brain"], paths["brain"], paths["wm"], paths["csf"], paths["motion"],
            tmp_path / "c.tsv", bc.ConfoundSettings(TR),
        )  # fmt: skip
    with pytest.raises(ValueError, match="4D"):
        bc.non_steady_state_volumes(paths["brain"])
