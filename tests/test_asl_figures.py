"""Perfusion report figures (CBF, head motion of a short ASL series) and the report's Perfusion
section with each series' quality row."""

from __future__ import annotations

import warnings

import nibabel as nb
import numpy as np
import pytest
from matplotlib import image as mpimg

from bids_dl.reports import figures

#: A thick-slice ASL grid: 4 x 4 x 7.5 mm voxels
SHAPE, ZOOMS = (16, 16, 6), (4.0, 4.0, 7.5)


def _save(data: np.ndarray, path) -> str:
    """Save RAS-ordered ``data`` stored left-right reversed (LAS), as scanners often do."""
    affine = np.diag([-ZOOMS[0], ZOOMS[1], ZOOMS[2], 1.0])
    nb.save(nb.Nifti1Image(np.ascontiguousarray(data[::-1]), affine), str(path))
    return str(path)


@pytest.fixture
def cbf_maps(tmp_path):
    """An ellipsoid brain: a grey-matter-like rim at 60 mL/100 g/min around 25 inside, the
    subject's left half 1.5 times brighter (RAS: low x), a few negative voxels; the network's
    map a smoothed copy."""
    i, j, k = np.indices(SHAPE).astype(float)
    radius = np.sqrt(((i - 7.5) / 6.5) ** 2 + ((j - 7.5) / 7) ** 2 + ((k - 2.5) / 3.2) ** 2)
    brain = radius < 1
    cbf = np.where(radius < 0.6, 25.0, 60.0) * brain * np.where(i < 8, 1.5, 1.0)
    cbf[7, 7, 2] = cbf[8, 9, 3] = -10.0
    enhanced = np.clip(cbf, 0, None) * 0.95
    return {
        "cbf": _save(cbf.astype(np.float32), tmp_path / "cbf.nii.gz"),
        "mask": _save(brain.astype(np.uint8), tmp_path / "mask.nii.gz"),
        "enhanced": _save(enhanced.astype(np.float32), tmp_path / "enhanced.nii.gz"),
        "brain": brain,
        "values": cbf,
    }


def _read_png(path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 0
    pixels = mpimg.imread(str(path))[..., :3]
    assert pixels.std() > 0.01, "the figure is uniform"
    return pixels


def test_cbf_upper_bound_is_a_rounded_percentile():
    values = np.linspace(0, 100, 1001)
    everywhere = np.ones_like(values, dtype=bool)
    assert figures.cbf_upper_bound(values, everywhere) == 99.0
    assert figures.cbf_upper_bound(values * 0.8731, everywhere) == 87.0  # 86.44 up to 87
    assert figures.cbf_upper_bound(values / 1000, everywhere) == 0.099  # relative units
    # only the brain counts; an empty mask falls back to the whole image
    assert figures.cbf_upper_bound(values, values < 50) == 50.0
    assert figures.cbf_upper_bound(values, np.zeros_like(everywhere)) == 99.0
    assert figures.cbf_upper_bound(np.zeros(10), np.ones(10, bool)) == 1.0
    assert figures.cbf_upper_bound(np.full(3, np.nan), np.ones(3, bool)) == 1.0


def test_cbf_figure_thick_slices(cbf_maps, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        alone = figures.plot_cbf(cbf_maps["cbf"], cbf_maps["mask"], tmp_path / "cbf.png")
        both = figures.plot_cbf(
            cbf_maps["cbf"], cbf_maps["mask"], tmp_path / "both.png", cbf_maps["enhanced"]
        )
        relative = figures.plot_cbf(
            cbf_maps["cbf"], cbf_maps["mask"], tmp_path / "relative.png", relative=True
        )
    pixels = _read_png(alone)
    _read_png(relative)
    # the enhanced map adds a second block of the same cuts
    assert _read_png(both).shape[0] > 1.6 * pixels.shape[0]
    # the first axial cut (top left, below the title) shows the brighter left on the left
    top, size = int(0.35 * 80), pixels.shape[1] // figures.CBF_ROW
    cut = pixels[top : top + size, :size].sum(axis=-1)
    assert cut[:, : size // 2].sum() > 1.2 * cut[:, size // 2 :].sum()


def test_cbf_figure_few_slices(tmp_path):
    """One or two slices, no coronal or sagittal row: no crash."""
    for count in (1, 2):
        data = np.full((16, 16, count), 50.0, np.float32)
        data[:8] = 20
        mask = np.zeros(data.shape, np.uint8)
        mask[2:14, 2:14] = 1
        out = figures.plot_cbf(
            _save(data, tmp_path / "cbf.nii.gz"),
            _save(mask, tmp_path / "mask.nii.gz"),
            tmp_path / f"cbf{count}.png",
        )
        _read_png(out)


def test_cbf_figure_interface(cbf_maps, tmp_path, monkeypatch):
    from workflows.interfaces.reports import CBFFigure

    monkeypatch.chdir(tmp_path)
    result = CBFFigure(
        cbf=cbf_maps["cbf"], brain_mask=cbf_maps["mask"], enhanced=cbf_maps["enhanced"]
    ).run()
    assert result.outputs.out_file == str(tmp_path / "cbf.png")
    _read_png(tmp_path / "cbf.png")
    assert CBFFigure().inputs.relative is False


@pytest.mark.parametrize("volumes", [1, 3])
def test_motion_figure_of_a_short_asl_series(tmp_path, volumes):
    """An ASL confounds table: fMRIPrep's columns, no b_value, a few volumes."""
    lines = ["trans_x\ttrans_y\ttrans_z\trot_x\trot_y\trot_z\tframewise_displacement"]
    for volume in range(volumes):
        fd = "n/a" if volume == 0 else f"{0.2 * volume:.3f}"
        lines.append(f"{0.1 * volume}\t0.05\t0\t0.001\t0\t0\t{fd}")
    confounds = tmp_path / "desc-confounds_timeseries.tsv"
    confounds.write_text("\n".join(lines) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = figures.plot_motion(str(confounds), tmp_path / "motion.png")
    _read_png(out)


QUALITY_HEADER = (
    "mean_fd\tmax_fd\tqei_cbf\tmean_gm_cbf\tmean_wm_cbf\tratio_gm_wm_cbf\t"
    "percentage_negative_cbf\tpercentage_negative_cbf_brain\tpercentage_implausible_cbf_brain"
)


def _fake_outputs(tmp_path, series: list[str], quality: dict[str, str]) -> None:
    figures_dir = tmp_path / "sub-01" / "figures"
    figures_dir.mkdir(parents=True)
    (figures_dir / "sub-01_desc-brain_T1w.png").write_bytes(b"png")
    for name in series:
        for desc in reversed(("cbf", "coreg", "motion")):
            (figures_dir / f"{name}_desc-{desc}_asl.png").write_bytes(b"png")
    for name, row in quality.items():
        session = name.split("_")[1]
        perf = tmp_path / "sub-01" / session / "perf"
        perf.mkdir(parents=True, exist_ok=True)
        (perf / f"{name}_desc-qualitycontrol_cbf.tsv").write_text(f"{QUALITY_HEADER}\n{row}\n")


def test_report_perfusion_section(tmp_path):
    from bids_dl.reports.participant import write_participant_report

    series = ["sub-01_ses-1", "sub-01_ses-1_run-2"]
    row = "0.1234\t0.4\t0.8312\t61.234\t24.5\t2.4993\t1.25\t3.5\t0.4321"
    _fake_outputs(tmp_path, series, {"sub-01_ses-1": row})
    html = write_participant_report(tmp_path, "01", "sub-01/anat/sub-01_T1w.nii.gz", [], [])
    text = html.read_text()
    anatomical, perfusion = text.split('<h2 id="perfusion">Perfusion</h2>')
    assert 'id="diffusion"' not in text and "_asl.png" not in anatomical
    # each series under its heading, its figures in the order CBF, coregistration, motion
    first, second = perfusion.split('<h3 id="sub-01_ses-1_run-2_asl">')
    assert '<h3 id="sub-01_ses-1_asl">' in first
    for name, part in zip(series, (first, second), strict=True):
        positions = [
            part.index(f'src="sub-01/figures/{name}_desc-{desc}_asl.png"')
            for desc in ("cbf", "coreg", "motion")
        ]
        assert positions == sorted(positions)
    for title in ("Cerebral blood flow", "Coregistration", "Head motion"):
        assert f"<strong>{title}.</strong>" in first
    assert "40-80 mL/100 g/min" in perfusion and "not a measurement" in perfusion
    # the quality row at a glance, rounded; the series without a table still renders
    cells = ["0.83", "61.2", "24.5", "2.50", "1.2", "0.4", "0.12"]
    assert "".join(f"<td>{cell}</td>" for cell in cells) in first
    assert "<th>QEI</th>" in first and "Dolui et al. 2017" in perfusion
    assert "No quality table" in second and "No quality table" not in first
    assert 'data-images-total="7"' in text


def test_report_quality_keeps_na(tmp_path):
    from bids_dl.reports.participant import read_quality

    row = "n/a\tn/a\tn/a\tn/a\tn/a\tn/a\tn/a\t0.5\t0"
    _fake_outputs(tmp_path, ["sub-01_ses-1"], {"sub-01_ses-1": row})
    quality = read_quality(tmp_path, "01", "sub-01_ses-1")
    values = {cell["heading"]: cell["value"] for cell in quality}
    assert values["QEI"] == "n/a" and values["brain above 150 (%)"] == "0.0"
    assert read_quality(tmp_path, "01", "sub-01_ses-2") is None


def test_asl_references():
    from bids_dl.boilerplate import load_references

    references = load_references()
    assert "doi:10.1002/mrm.25197" in references["alsop2015"]
    assert "doi:10.1002/mrm.1910400308" in references["buxton1998"]
    assert "abstract 682" in references["dolui2017"]
    assert "doi:10.1038/s41592-022-01458-7" in references["aslprep"]
