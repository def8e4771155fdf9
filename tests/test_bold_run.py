"""The real Siemens XA30 BOLD run (64x64x33, 20 volumes, multiband 3 with slice timing)
through the CLI beside the same subject's T1w: its derivatives, sidecars and confounds."""

from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pandas as pd

from bids_dl.templates import write_template_grid

RUN = "sub-xa30_task-fa_run-1"
MOTION = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
#: columns every run's confounds have (fMRIPrep's names)
CONFOUNDS = (*MOTION, "framewise_displacement", "dvars", "std_dvars", "global_signal", "csf",
             "white_matter", "trans_x_derivative1", "rot_z_power2", "a_comp_cor_00")  # fmt: skip


def _func(xa30_run):
    assert xa30_run["result"].returncode == 0, xa30_run["result"].stderr[-3000:]
    return xa30_run["output"] / "sub-xa30" / "func"


def test_the_real_run_gives_sane_confounds(xa30_run):
    confounds = pd.read_csv(
        _func(xa30_run) / f"{RUN}_desc-confounds_timeseries.tsv", sep="\t", na_values="n/a"
    )
    assert len(confounds) == 20
    assert set(CONFOUNDS) <= set(confounds.columns), sorted(confounds.columns)
    assert not confounds.iloc[1:].isna().any().any()  # n/a only where a difference starts
    fd = confounds["framewise_displacement"].iloc[1:]
    # mm: a still volunteer on a 3 mm grid moves a few tenths of a millimetre per second
    assert 0 < fd.median() < 0.5 and fd.max() < 3.0, fd.describe()
    assert confounds[list(MOTION[:3])].abs().max().max() < 5.0  # mm
    assert confounds[list(MOTION[3:])].abs().max().max() < np.radians(5)
    metadata = json.loads(
        (_func(xa30_run) / f"{RUN}_desc-confounds_timeseries.json").read_text(encoding="utf-8")
    )
    assert metadata["framewise_displacement"]["Units"] == "mm"
    assert metadata["a_comp_cor_00"]["Method"] == "aCompCor"


def test_the_real_run_is_resampled_into_the_template_with_its_timing(xa30_run):
    func = _func(xa30_run)
    stem = f"{RUN}_space-MNI152NLin2009aSym_res-2"
    sidecar = json.loads((func / f"{stem}_desc-preproc_bold.json").read_text(encoding="utf-8"))
    assert sidecar["RepetitionTime"] == 1 and sidecar["SliceTimingCorrected"] is True
    assert abs(sidecar["StartTime"] - 0.44625) < 1e-6  # the middle of 0 .. 0.8925 s
    image = nb.load(func / f"{stem}_desc-preproc_bold.nii.gz")
    grid = write_template_grid(xa30_run["output"].parent / "templates")
    assert image.shape == (*nb.load(grid.t1w).shape, 20)
    assert np.isclose(image.header.get_zooms()[3], 1.0)
    mask = np.asarray(nb.load(func / f"{stem}_desc-brain_mask.nii.gz").dataobj) > 0
    template_brain = np.asarray(nb.load(grid.brain_mask).dataobj) > 0
    # the run's brain lands on the template's brain
    assert (mask & template_brain).sum() / mask.sum() > 0.9
    mean = np.asarray(image.dataobj).mean(axis=-1)
    assert mean[mask].mean() > 5 * mean[~template_brain].mean()
    # 20 volumes leave too few degrees of freedom after the denoising's 26 regressors
    assert not list(func.glob("*_relmat.tsv"))
