"""ASL end to end: the sample's ASL subject in the shared run, and the real Siemens XA30
PCASL series (M0 then three label/control pairs) when ``../shared/data`` exists."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from tests.conftest import SHARED_DATA, SMOKE_OPTIONS, run_cli

pytestmark = pytest.mark.slow


def _perf(output: Path, subject: str) -> Path:
    return output / f"sub-{subject}" / "perf"


#: what every ASL series gives on its own grid
ASL_GRID_OUTPUTS = (
    "cbf.nii.gz",
    "desc-timeseries_cbf.nii.gz",
    "desc-qualitycontrol_cbf.tsv",
    "desc-confounds_timeseries.tsv",
    "desc-brain_mask.nii.gz",
    "aslref.nii.gz",
)
#: and with a T1w
T1W_OUTPUTS = ("space-T1w_cbf.nii.gz", "space-MNI152NLin2009aSym_cbf.nii.gz")


def test_the_sample_asl_subject_gets_every_perfusion_derivative(smoke_run):
    perf = _perf(smoke_run["output"], "01")
    for name in ASL_GRID_OUTPUTS + T1W_OUTPUTS:
        assert (perf / f"sub-01_{name}").is_file(), name
    for space in ("", "space-T1w_"):
        assert (perf / f"sub-01_{space}desc-enhanced_cbf.nii.gz").is_file()
    assert not (perf / "sub-01_att.nii.gz").exists()  # one delay: no transit time
    assert not _perf(smoke_run["output"], "02").exists()  # no ASL, no perfusion outputs
    figures = smoke_run["output"] / "sub-01" / "figures"
    assert {p.name for p in figures.glob("*_asl.png")} == {
        f"sub-01_desc-{d}_asl.png" for d in ("cbf", "coreg", "motion")
    }
    assert 'id="perfusion"' in (smoke_run["output"] / "sub-01.html").read_text()


def test_cbf_sidecar_gives_units_and_every_constant(smoke_run):
    sidecar = json.loads((_perf(smoke_run["output"], "01") / "sub-01_cbf.json").read_text())
    assert sidecar["Units"] == "mL/100 g/min"
    parameters = sidecar["Model"]["Parameters"]
    assert parameters["LabelingEfficiency"] == 0.85 and parameters["BloodT1"] == 1.65
    assert parameters["PostLabelingDelay"] == [1.8] and parameters["SliceTimingCorrected"]
    assert parameters["M0Type"] == "Included" and parameters["Differences"] == 4
    enhanced = json.loads(
        (_perf(smoke_run["output"], "01") / "sub-01_desc-enhanced_cbf.json").read_text()
    )
    assert enhanced["Description"].startswith("PREDICTED, not measured")
    assert enhanced["PairsUsed"] == [[1, 2], [3, 4], [5, 6], [7, 8]]
    assert enhanced["DeepLearningModel"]["Name"] == "bids_dl-asl"


def test_measured_cbf_follows_the_simulated_truth(smoke_run):
    """Four pairs at an SNR of 4 each in GM, with vessels, transit delays and physiological
    noise: voxel-wise agreement is loose (correlation 0.15 measured), the level is not."""
    perf = _perf(smoke_run["output"], "01")
    truth_file = smoke_run["bids"] / "derivatives/sample-truth/sub-01/perf/sub-01_cbf.nii.gz"
    truth = np.asarray(nb.load(truth_file).dataobj)
    cbf = np.asarray(nb.load(perf / "sub-01_cbf.nii.gz").dataobj)
    mask = (np.asarray(nb.load(perf / "sub-01_desc-brain_mask.nii.gz").dataobj) > 0) & (truth > 0)
    assert np.corrcoef(cbf[mask], truth[mask])[0, 1] > 0.08
    assert np.median(cbf[mask]) == pytest.approx(np.median(truth[mask]), rel=0.25)
    # the network's map from the same four pairs is closer to the truth (RMSE 18 vs 26.5)
    enhanced = np.asarray(nb.load(perf / "sub-01_desc-enhanced_cbf.nii.gz").dataobj)
    error = {name: np.sqrt(np.mean((m[mask] - truth[mask]) ** 2))
             for name, m in (("measured", cbf), ("enhanced", enhanced))}  # fmt: skip
    assert error["enhanced"] < 0.85 * error["measured"], error


def test_perfusion_quality_and_measures_reach_the_tables(smoke_run):
    perf = _perf(smoke_run["output"], "01")
    quality = pd.read_csv(perf / "sub-01_desc-qualitycontrol_cbf.tsv", sep="\t").iloc[0]
    assert 0 <= quality["qei_cbf"] <= 1 and quality["ratio_gm_wm_cbf"] > 1
    table = pd.read_csv(smoke_run["output"] / "phenotype" / "anatomical.tsv", sep="\t")
    row = table.set_index("participant_id").loc["sub-01"]
    assert row["asl_cbf_mean_gm"] > row["asl_cbf_mean_wm"] > 0
    dictionary = json.loads((smoke_run["output"] / "phenotype" / "anatomical.json").read_text())
    assert dictionary["asl_cbf_mean_gm"]["Units"] == "mL/100 g/min"


def test_a_participant_without_t1w_gets_its_cbf_on_the_asl_grid(sample_small, tmp_path):
    """Perfusion-only sessions exist: the ASL runs alone, on its own grid, with a warning. The
    sample's series is cut to its M0 and first pair to keep the run short."""
    bids = tmp_path / "bids"
    shutil.copytree(sample_small / "sub-01" / "perf", bids / "sub-01" / "perf")
    shutil.copy(sample_small / "dataset_description.json", bids)
    asl = bids / "sub-01" / "perf" / "sub-01_asl.nii.gz"
    nb.load(asl).slicer[..., :3].to_filename(asl)
    (asl.parent / "sub-01_aslcontext.tsv").write_text("volume_type\nm0scan\nlabel\ncontrol\n")
    sidecar = asl.parent / "sub-01_asl.json"
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "TotalAcquiredPairs": 1}))
    output = tmp_path / "out"
    result = run_cli(str(bids), str(output), "participant", "-w", str(tmp_path / "work"),
                     *SMOKE_OPTIONS)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no T1w" in result.stderr
    perf = _perf(output, "01")
    for name in ("cbf.nii.gz", "desc-qualitycontrol_cbf.tsv", "aslref.nii.gz"):
        assert (perf / f"sub-01_{name}").is_file(), name
    assert not list(perf.glob("*space-*")) and not (output / "sub-01" / "anat").exists()
    quality = pd.read_csv(perf / "sub-01_desc-qualitycontrol_cbf.tsv", sep="\t").iloc[0]
    assert pd.isna(quality["qei_cbf"])  # no tissue maps without a T1w: n/a
    assert 'id="perfusion"' in (output / "sub-01.html").read_text()


def test_the_real_xa30_pcasl_series_runs_through_the_cli(xa30_run):
    """Its CBF follows the scanner's own relative CBF map (same grid) in the brain."""
    assert xa30_run["result"].returncode == 0, xa30_run["result"].stderr[-3000:]
    perf = _perf(xa30_run["output"], "xa30")
    cbf = np.asarray(nb.load(perf / "sub-xa30_cbf.nii.gz").dataobj)
    mask = np.asarray(nb.load(perf / "sub-xa30_desc-brain_mask.nii.gz").dataobj) > 0
    scanner = nb.load(SHARED_DATA / "asl/xa30_pcasl/xa30_scanner_relCBF.nii.gz")
    assert scanner.shape == cbf.shape
    assert np.corrcoef(cbf[mask], np.asarray(scanner.dataobj)[mask])[0, 1] > 0.45
    quality = pd.read_csv(perf / "sub-xa30_desc-qualitycontrol_cbf.tsv", sep="\t").iloc[0]
    assert 1.5 < quality["ratio_gm_wm_cbf"] < 4
