"""fMRI report figures: the carpet plot, network maps and a connectivity matrix."""

from __future__ import annotations

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
from matplotlib import image as mpimg

from bids_dl.reports import bold_figures

SHAPE, N_VOLUMES = (12, 12, 8), 40
#: volumes flagged as non-steady-state by the toy confounds
SKIP = 2


def _read_png(path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 0
    pixels = mpimg.imread(str(path))[..., :3]
    assert pixels.std() > 0.01, "the figure is uniform"
    return pixels


@pytest.fixture
def bold(tmp_path):
    """A noisy 4D series with a box brain, a dseg of three tissue slabs and its confounds."""
    rng = np.random.default_rng(0)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    series = 1000 + rng.normal(0, 10, SHAPE + (N_VOLUMES,))
    series[..., :SKIP] *= 1.3
    mask = np.zeros(SHAPE, np.uint8)
    mask[2:10, 2:10, 1:7] = 1
    dseg = np.zeros(SHAPE, np.uint8)
    dseg[2:10, 2:10, 1:3], dseg[2:10, 2:10, 3:5], dseg[2:10, 2:10, 5:7] = 1, 2, 3
    paths = {}
    for name, data in (("bold", series.astype(np.float32)), ("mask", mask), ("dseg", dseg)):
        paths[name] = str(tmp_path / f"{name}.nii.gz")
        nb.save(nb.Nifti1Image(data, affine), paths[name])
    confounds = pd.DataFrame(
        {
            "framewise_displacement": [np.nan, *rng.uniform(0, 0.3, N_VOLUMES - 1)],
            "std_dvars": [np.nan, *rng.uniform(0.8, 1.2, N_VOLUMES - 1)],
        }
    )
    for volume in range(SKIP):
        confounds[f"non_steady_state_outlier{volume:02d}"] = np.eye(N_VOLUMES)[volume]
    paths["confounds"] = str(tmp_path / "confounds.tsv")
    confounds.to_csv(paths["confounds"], sep="\t", index=False, na_rep="n/a")
    return paths


def test_carpet_rows_are_detrended_and_scaled_on_steady_volumes():
    rng = np.random.default_rng(1)
    series = 5 + 0.3 * np.arange(30) + rng.normal(0, 2, (4, 30))
    series[:, :3] += 100
    rows = bold_figures.carpet_rows(series, skip=3)
    np.testing.assert_allclose(rows[:, 3:].mean(axis=1), 0, atol=1e-9)
    np.testing.assert_allclose(rows[:, 3:].std(axis=1), 1)
    assert (rows[:, :3] > 10).all()
    assert not bold_figures.carpet_rows(np.ones((2, 10))).any()


def test_carpet_figure(bold, tmp_path):
    plain = bold_figures.plot_carpet(
        bold["bold"], bold["mask"], bold["confounds"], tmp_path / "plain.png"
    )
    tissues = bold_figures.plot_carpet(
        bold["bold"], bold["mask"], bold["confounds"], tmp_path / "tissues.png", bold["dseg"]
    )
    assert _read_png(plain).shape == _read_png(tissues).shape
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["plain.png", "tissues.png"]
    confounds = pd.read_csv(bold["confounds"], sep="\t", na_values=["n/a"])
    assert bold_figures._non_steady_state(confounds) == SKIP
    assert bold_figures._non_steady_state(confounds.iloc[:, :2]) == 0


def test_carpet_refuses_bad_input(bold, tmp_path):
    with pytest.raises(ValueError, match="4D BOLD series"):
        bold_figures.plot_carpet(bold["mask"], bold["mask"], bold["confounds"], tmp_path / "a.png")
    short = tmp_path / "short.tsv"
    pd.read_csv(bold["confounds"], sep="\t").iloc[:-1].to_csv(short, sep="\t", index=False)
    with pytest.raises(ValueError, match="rows for 40 volumes"):
        bold_figures.plot_carpet(bold["bold"], bold["mask"], str(short), tmp_path / "b.png")
    other = tmp_path / "other_mask.nii.gz"
    nb.save(nb.Nifti1Image(np.ones((5, 5, 5), np.uint8), np.eye(4)), str(other))
    with pytest.raises(ValueError, match="grid"):
        bold_figures.plot_carpet(bold["bold"], str(other), bold["confounds"], tmp_path / "c.png")
    assert not list(tmp_path.glob("*.png"))


def test_network_maps(tmp_path):
    """Three blobs in MNI space (2 mm), one map each, the last negative."""
    affine = np.array([[2, 0, 0, -90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1.0]])
    i, j, k = np.indices((91, 109, 91))
    maps = np.zeros((91, 109, 91, 3), np.float32)
    for index, (centre, sign) in enumerate(
        (((30, 60, 50), 1), ((60, 60, 50), 1), ((45, 30, 40), -1))
    ):
        distance = (i - centre[0]) ** 2 + (j - centre[1]) ** 2 + (k - centre[2]) ** 2
        maps[..., index] = sign * np.exp(-distance / 50.0)
    path = tmp_path / "components.nii.gz"
    nb.save(nb.Nifti1Image(maps, affine), str(path))
    out = bold_figures.plot_network_maps(str(path), tmp_path / "networks.png", max_components=2)
    _read_png(out)
    with pytest.raises(ValueError, match="3D or 4D"):
        nb.save(nb.Nifti1Image(maps[..., None], affine), str(tmp_path / "five.nii.gz"))
        bold_figures.plot_network_maps(str(tmp_path / "five.nii.gz"), tmp_path / "x.png")


def test_connectivity_matrix(tmp_path):
    labels = [f"region{i}" for i in range(6)]
    rng = np.random.default_rng(2)
    values = np.corrcoef(rng.normal(size=(6, 50)))
    path = tmp_path / "relmat.tsv"
    pd.DataFrame(values, columns=labels).to_csv(path, sep="\t", index=False)
    matrix, read_labels = bold_figures.read_connectivity_matrix(str(path))
    assert read_labels == labels and np.allclose(matrix, values, atol=1e-6)
    _read_png(bold_figures.plot_connectivity_matrix(str(path), tmp_path / "matrix.png"))
    pd.DataFrame(values[:4], columns=labels).to_csv(path, sep="\t", index=False)
    with pytest.raises(ValueError, match="square"):
        bold_figures.plot_connectivity_matrix(str(path), tmp_path / "bad.png")


def test_carpet_interface(bold, tmp_path, monkeypatch):
    from bids_dl.workflows.interfaces.bold_reports import CarpetFigure

    monkeypatch.chdir(tmp_path)
    result = CarpetFigure(
        in_file=bold["bold"], brain_mask=bold["mask"], confounds_file=bold["confounds"],
        dseg=bold["dseg"],
    ).run()  # fmt: skip
    assert result.outputs.out_file == str(tmp_path / "carpet.png")
    _read_png(tmp_path / "carpet.png")


def test_connectivity_interface(tmp_path, monkeypatch):
    from bids_dl.workflows.interfaces.bold_reports import ConnectivityFigure

    monkeypatch.chdir(tmp_path)
    labels = ["a", "b", "c"]
    path = tmp_path / "relmat.tsv"
    pd.DataFrame([[1, 0.5, -0.2], [0.5, 1, 0.1], [-0.2, 0.1, 1]], columns=labels).to_csv(
        path, sep="\t", index=False
    )
    result = ConnectivityFigure(in_file=str(path), kind="matrix", title="three").run()
    assert result.outputs.out_file == str(tmp_path / "matrix.png")
    _read_png(tmp_path / "matrix.png")
