"""Diffusion end to end: the sample's DWI subject in the shared run, and a BIDS dataset built
from the real Siemens XA30 scans (T1w and 20-direction DWI) when ``../shared/data`` exists."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
from scipy.spatial.transform import Rotation

from bids_dl.models.registry import shipped_bundles

pytestmark = pytest.mark.slow
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MAPS = ("fa", "md", "ad", "rd", "v1")


def _dwi_folder(output: Path, subject: str) -> Path:
    return output / f"sub-{subject}" / "dwi"


def test_the_sample_dwi_subject_gets_every_diffusion_derivative(smoke_run):
    dwi = _dwi_folder(smoke_run["output"], "01")
    expected = [f"sub-01_desc-preproc_dwi.{e}" for e in ("nii.gz", "json", "bval", "bvec")]
    expected += ["sub-01_dwiref.nii.gz", "sub-01_desc-brain_mask.nii.gz"]
    expected += [f"sub-01_desc-confounds_timeseries.{e}" for e in ("tsv", "json")]
    for space in ("", "space-T1w_"):
        expected += [f"sub-01_{space}model-tensor_param-{m}_dwimap.nii.gz" for m in MAPS]
        expected += [
            f"sub-01_{space}model-tensor_desc-dtinet_param-{m}_dwimap.nii.gz" for m in MAPS
        ]
    expected += [f"sub-01_space-MNI152NLin2009aSym_model-tensor_param-{m}_dwimap.nii.gz"
                 for m in ("fa", "md")]  # fmt: skip
    missing = [name for name in expected if not (dwi / name).is_file()]
    assert not missing
    assert not _dwi_folder(smoke_run["output"], "02").exists()  # no DWI, no diffusion outputs
    figures = smoke_run["output"] / "sub-01" / "figures"
    for desc in ("fa", "colorfa", "coreg", "motion"):
        assert (figures / f"sub-01_desc-{desc}_dwi.png").is_file(), desc
    assert 'id="diffusion"' in (smoke_run["output"] / "sub-01.html").read_text()


def test_sidecars_tell_the_measured_fit_from_the_prediction(smoke_run):
    dwi = _dwi_folder(smoke_run["output"], "01")
    measured = json.loads((dwi / "sub-01_model-tensor_param-fa_dwimap.json").read_text())
    assert measured["Model"]["Parameters"] == {
        "FitMethod": "WLS", "BValues": [1000.0], "Directions": 12, "B0Volumes": 2,
    }  # fmt: skip
    assert "DeepLearningModel" not in measured and "SpatialReference" in measured
    predicted = json.loads(
        (dwi / "sub-01_model-tensor_desc-dtinet_param-fa_dwimap.json").read_text()
    )
    assert predicted["Model"]["Description"].startswith("PREDICTED, not measured")
    assert predicted["Model"]["Parameters"]["Directions"] == 12
    assert predicted["DeepLearningModel"]["Name"] == "bids_dl-dti"


def _measured_fa_and_truth(output: Path, bids: Path) -> tuple[np.ndarray, np.ndarray]:
    dwi = _dwi_folder(output, "01")
    fa = nb.load(dwi / "sub-01_model-tensor_param-fa_dwimap.nii.gz")
    truth_file = (
        bids / "derivatives/sample-truth/sub-01/dwi/sub-01_model-tensor_param-fa_dwimap.nii.gz"
    )
    truth = nb.load(truth_file)
    assert np.allclose(fa.affine, truth.affine) and fa.shape == truth.shape
    mask = np.asarray(nb.load(dwi / "sub-01_desc-brain_mask.nii.gz").dataobj) > 0
    inside = mask & (np.asarray(truth.dataobj) > 0)
    return np.asarray(fa.dataobj)[inside], np.asarray(truth.dataobj)[inside]


def test_measured_fa_follows_the_simulated_truth_after_motion_correction(smoke_run):
    fa, truth = _measured_fa_and_truth(smoke_run["output"], smoke_run["bids"])
    assert np.corrcoef(fa, truth)[0, 1] > 0.8
    assert abs(np.median(fa[truth > 0.4]) - np.median(truth[truth > 0.4])) < 0.1


def test_confounds_recover_the_simulated_head_motion(smoke_run):
    """The sample's truth records each volume's pose; the confounds must find the same
    rotations (the b-vectors are rotated by them)."""
    truth = smoke_run["bids"] / "derivatives/sample-truth/sub-01/dwi"
    motion = json.loads((truth / "sub-01_model-tensor_param-fa_dwimap.json").read_text())["Motion"]
    confounds = pd.read_csv(_dwi_folder(smoke_run["output"], "01")
                            / "sub-01_desc-confounds_timeseries.tsv", sep="\t")  # fmt: skip
    assert list(confounds.columns[:7]) == ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y",
                                           "rot_z", "framewise_displacement"]  # fmt: skip
    errors = []
    for index, pose in enumerate(motion):
        true = Rotation.from_euler("xyz", pose["RotationDeg"], degrees=True)
        found = Rotation.from_euler("xyz", confounds.loc[index, ["rot_x", "rot_y", "rot_z"]])
        errors.append(np.degrees((true * found.inv()).magnitude()))
    assert np.median(errors) < 0.5, errors


def test_diffusion_measures_reach_the_group_table(smoke_run):
    table = pd.read_csv(smoke_run["output"] / "phenotype" / "anatomical.tsv", sep="\t")
    row = table.set_index("participant_id").loc["sub-01"]
    assert 0.2 < row["dwi_fa_mean_wm"] < 0.8 and row["dwi_fa_mean_wm"] > row["dwi_fa_mean_gm"]
    assert 0.5 < row["dwi_md_mean_wm"] < 1.2  # 10^-3 mm^2/s
    dictionary = json.loads((smoke_run["output"] / "phenotype" / "anatomical.json").read_text())
    assert dictionary["dwi_md_mean_wm"]["Units"] == "10^-3 mm^2/s"


@pytest.mark.skipif("dti" not in shipped_bundles(), reason="no dti model in bids_dl/models/zoo")
def test_the_real_xa30_scans_run_through_the_cli(xa30_run):
    assert xa30_run["result"].returncode == 0, xa30_run["result"].stderr[-3000:]
    dwi = _dwi_folder(xa30_run["output"], "xa30")
    for desc in ("", "desc-dtinet_"):
        fa = nb.load(dwi / f"sub-xa30_dir-PA_model-tensor_{desc}param-fa_dwimap.nii.gz")
        mask = np.asarray(nb.load(dwi / "sub-xa30_dir-PA_desc-brain_mask.nii.gz").dataobj) > 0
        values = np.asarray(fa.dataobj)[mask]
        assert 0.1 < np.median(values) < 0.4 and values.max() <= 1.0, desc
    sidecar = json.loads((dwi / "sub-xa30_dir-PA_model-tensor_param-fa_dwimap.json").read_text())
    assert "kurtosis" in sidecar["Model"]["Notes"]  # b=2500: the tensor is biased, said so
