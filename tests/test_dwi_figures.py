"""Diffusion report figures (FA, colour FA, head motion) and their place in the report."""

from __future__ import annotations

import nibabel as nb
import numpy as np
import pytest
from matplotlib import image as mpimg

from bids_dl.reports import figures

SHAPE = (20, 24, 20)


def _las_affine() -> np.ndarray:
    """2 mm voxels stored left to right reversed (LAS), so figures must reorient to RAS."""
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [19, -23, -19]
    return affine


def _save(data: np.ndarray, path) -> str:
    """Save RAS-ordered ``data`` on the LAS grid (first axis reversed)."""
    nb.save(nb.Nifti1Image(np.ascontiguousarray(data[::-1]), _las_affine()), str(path))
    return str(path)


@pytest.fixture
def dwi_maps(tmp_path):
    """An FA ball (0.8 in the subject's left half, 0.3 in the right), V1 along x (world
    left-right), the ball as brain mask, and a confounds TSV of 10 volumes."""
    i, j, k = np.indices(SHAPE)
    ball = (i - 9.5) ** 2 + (j - 11.5) ** 2 + (k - 9.5) ** 2 < 8**2
    fa = np.where(ball, np.where(i < 10, 0.8, 0.3), 0).astype(np.float32)
    v1 = np.zeros(SHAPE + (3,), np.float32)
    v1[..., 0] = 1
    rng = np.random.default_rng(0)
    lines = ["trans_x\ttrans_y\ttrans_z\trot_x\trot_y\trot_z\tframewise_displacement\tb_value"]
    for volume in range(10):
        motion = np.concatenate([rng.normal(0, 0.3, 3), rng.normal(0, 0.004, 3)])
        fd = "n/a" if volume == 0 else f"{0.1 * volume:.3f}"
        b_value = 0 if volume % 5 == 0 else 1000
        lines.append("\t".join(f"{value:.5f}" for value in motion) + f"\t{fd}\t{b_value}")
    confounds = tmp_path / "desc-confounds_timeseries.tsv"
    confounds.write_text("\n".join(lines) + "\n")
    return {
        "fa": _save(fa, tmp_path / "fa.nii.gz"),
        "v1": _save(v1, tmp_path / "v1.nii.gz"),
        "mask": _save(ball.astype(np.uint8), tmp_path / "mask.nii.gz"),
        "confounds": str(confounds),
    }


def _read_png(path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 0
    pixels = mpimg.imread(str(path))[..., :3]
    assert pixels.std() > 0.01, "the figure is uniform"
    return pixels


def test_fa_figure(dwi_maps, tmp_path):
    out = figures.plot_fa(dwi_maps["fa"], dwi_maps["mask"], tmp_path / "fa.png")
    _read_png(out)


def test_color_fa_array_follows_v1():
    fa = np.full((2, 2, 2), 0.5)
    v1 = np.zeros((2, 2, 2, 3))
    v1[..., 1] = -2.0  # sign and length do not matter
    v1[0, 0, 0] = [0, 0, 0]
    rgb = figures.color_fa(fa, v1, np.ones((2, 2, 2), bool))
    assert rgb.shape == (2, 2, 2, 3)
    np.testing.assert_allclose(rgb[1, 1, 1], [0, 0.5, 0])
    np.testing.assert_allclose(rgb[0, 0, 0], [0, 0, 0])


def test_color_fa_figure_is_red_for_left_right_fibres(dwi_maps, tmp_path):
    out = figures.plot_color_fa(
        dwi_maps["fa"], dwi_maps["v1"], dwi_maps["mask"], tmp_path / "colorfa.png"
    )
    pixels = _read_png(out)
    red, green, blue = (pixels[..., c].sum() for c in range(3))
    assert red > 5 * green and red > 5 * blue
    # the subject's left (higher FA) on the image's left in the axial row, as nilearn draws
    axial = pixels[2 * pixels.shape[0] // 3 :, :, 0]
    count = dict(figures.MOSAIC_ROWS)["z"]
    width = axial.shape[1] // count
    for panel in range(count):
        cells = axial[:, panel * width : (panel + 1) * width]
        assert cells[:, : width // 2].sum() > 1.5 * cells[:, width // 2 :].sum()


def test_motion_figure(dwi_maps, tmp_path):
    out = figures.plot_motion(dwi_maps["confounds"], tmp_path / "motion.png")
    _read_png(out)
    fd = np.array([np.nan] + [0.1 * v for v in range(1, 10)])
    assert figures._motion_title(fd) == "head motion: mean FD 0.50 mm, max FD 0.90 mm"


def test_figure_interfaces(dwi_maps, tmp_path, monkeypatch):
    from workflows.interfaces.reports import ColorFAFigure, FAFigure, MotionFigure

    monkeypatch.chdir(tmp_path)
    fa, v1, mask = dwi_maps["fa"], dwi_maps["v1"], dwi_maps["mask"]
    for interface, name in (
        (FAFigure(fa=fa, brain_mask=mask), "fa.png"),
        (ColorFAFigure(fa=fa, v1=v1, brain_mask=mask), "colorfa.png"),
        (MotionFigure(confounds=dwi_maps["confounds"]), "motion.png"),
    ):
        result = interface.run()
        assert result.outputs.out_file == str(tmp_path / name)
        _read_png(tmp_path / name)


DWI_FIGURES = [
    f"sub-01_{entities}desc-{desc}_dwi.png"
    for entities in ("", "run-1_", "ses-a_acq-x_")
    for desc in ("fa", "colorfa", "coreg", "motion")
]


def test_report_lists_the_diffusion_figures(tmp_path):
    from bids_dl.reports.participant import write_participant_report

    figures_dir = tmp_path / "sub-01" / "figures"
    figures_dir.mkdir(parents=True)
    names = ["sub-01_desc-brain_T1w.png", "sub-01_desc-coreg_FLAIR.png", *DWI_FIGURES]
    for name in reversed(names):
        (figures_dir / name).write_bytes(b"png")
    html = write_participant_report(tmp_path, "01", "sub-01/anat/sub-01_T1w.nii.gz", [], [])
    text = html.read_text()
    anatomical, diffusion = text.split('<h2 id="diffusion">Diffusion</h2>')
    assert "sub-01_desc-brain_T1w.png" in anatomical and "sub-01_desc-coreg_FLAIR.png" in anatomical
    # every series' figures together, each in the order fa, colour FA, coregistration, motion
    positions = [diffusion.index(f'src="sub-01/figures/{name}"') for name in DWI_FIGURES]
    assert positions == sorted(positions)
    assert not any(name in anatomical for name in DWI_FIGURES)
    for title in ("Fractional anisotropy", "Colour FA", "Head motion", "Coregistration"):
        assert f"<strong>{title}.</strong>" in diffusion
    assert "Power et al. 2012" in diffusion and "50 mm sphere" in diffusion
    assert f'data-images-total="{len(names)}"' in text


def test_report_without_diffusion_has_no_diffusion_section(tmp_path):
    from bids_dl.reports.participant import write_participant_report

    figures_dir = tmp_path / "sub-01" / "figures"
    figures_dir.mkdir(parents=True)
    (figures_dir / "sub-01_desc-brain_T1w.png").write_bytes(b"png")
    html = write_participant_report(tmp_path, "01", "sub-01/anat/sub-01_T1w.nii.gz", [], [])
    text = html.read_text()
    assert 'id="diffusion"' not in text and "sub-01_desc-brain_T1w.png" in text
