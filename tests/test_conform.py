"""Conforming: RAS+ on the native grid for any orientation, voxel size and bad values; telling
already skull-stripped (and z-scored) images from heads, and showing them."""

from __future__ import annotations

import logging

import nibabel as nb
import numpy as np
import pytest

from bids_dl.images import ImageError, finite_copy, is_skull_stripped, load_3d_image
from bids_dl.workflows.interfaces.conform import conform_image
from bids_dl.workflows.interfaces.images import brain_mask_from_background


def _oblique_affine(zooms=(1.0, 1.2, 3.0)) -> np.ndarray:
    angle = np.deg2rad(20)
    rotation = np.array(
        [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
    )
    flip = np.diag([-1, 1, -1])  # an L?I-like voxel order
    affine = np.eye(4)
    affine[:3, :3] = rotation @ flip @ np.diag(zooms)
    affine[:3, 3] = [40, -20, 30]
    return affine


def test_oblique_anisotropic_image_keeps_every_voxel_in_place(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.random((9, 11, 7)).astype(np.float32)
    source = nb.Nifti1Image(data, _oblique_affine())
    nb.save(source, tmp_path / "in.nii.gz")
    summary = conform_image(tmp_path / "in.nii.gz", tmp_path / "out.nii.gz")
    out = nb.load(tmp_path / "out.nii.gz")
    assert nb.aff2axcodes(out.affine) == ("R", "A", "S")
    assert summary["original_orientation"] == "".join(nb.aff2axcodes(source.affine))
    assert sorted(out.header.get_zooms()) == pytest.approx(sorted([1.0, 1.2, 3.0]), abs=1e-5)
    # the same world point holds the same value before and after (no resampling)
    index = np.array([2, 7, 5])
    world = nb.affines.apply_affine(source.affine, index)
    out_index = np.round(nb.affines.apply_affine(np.linalg.inv(out.affine), world)).astype(int)
    assert out.get_fdata()[tuple(out_index)] == pytest.approx(data[tuple(index)])


def test_non_finite_values_become_zero(tmp_path):
    data = np.ones((5, 5, 5), np.float32)
    data[1, 2, 3] = np.nan
    data[0, 0, 0] = np.inf
    nb.save(nb.Nifti1Image(data, np.eye(4)), tmp_path / "in.nii.gz")
    summary = conform_image(tmp_path / "in.nii.gz", tmp_path / "out.nii.gz")
    out = nb.load(tmp_path / "out.nii.gz").get_fdata()
    assert summary["non_finite_voxels"] == 2
    assert np.isfinite(out).all() and out[1, 2, 3] == 0


def test_single_volume_4d_is_accepted(tmp_path):
    nb.save(nb.Nifti1Image(np.ones((4, 5, 6, 1), np.float32), np.eye(4)), tmp_path / "a.nii.gz")
    assert load_3d_image(tmp_path / "a.nii.gz").shape == (4, 5, 6)


def test_singular_orientation_is_refused(tmp_path):
    header = nb.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)).header
    header["srow_z"] = [0, 0, 0, 0]  # a broken sform, as some converters write
    header["sform_code"] = 1
    nb.Nifti1Image(np.ones((4, 4, 4), np.float32), None, header).to_filename(tmp_path / "a.nii.gz")
    with pytest.raises(ImageError, match="singular"):
        load_3d_image(tmp_path / "a.nii.gz")


def _brain_in_background(background: float, radius_mm: float, shift_mm: float = 0.0):
    """A ball of noisy tissue (2 mm voxels, ``shift_mm`` off centre along x) in one constant
    background value."""
    grid = np.indices((100, 100, 100)) - 49.5
    grid[0] -= shift_mm / 2
    inside = np.sqrt((grid**2).sum(axis=0)) * 2.0 < radius_mm
    data = np.full(inside.shape, background, np.float32)
    data[inside] = np.random.default_rng(0).normal(1.0, 0.3, inside.sum())
    return nb.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))


@pytest.mark.parametrize(
    "background, radius_mm, shift_mm, noise, stripped",
    [
        (0.0, 70, 0.0, 0.0, True),  # a 1.4 L brain on zeros
        (-2.5, 70, 0.0, 0.0, True),  # z-scored after stripping, as the BraTS cases
        (np.nan, 70, 0.0, 0.0, True),  # NaN around the brain
        (0.0, 70, 40.0, 0.0, True),  # a brain cut by the field of view (it touches one face)
        (0.0, 90, 0.0, 0.0, False),  # 3 L: a whole head on zeros
        (0.0, 70, 0.0, 0.01, False),  # noise in the background: a raw image
    ],
)
def test_skull_stripped_images_are_told_from_heads(
    tmp_path, background, radius_mm, shift_mm, noise, stripped
):
    image = _brain_in_background(background, radius_mm, shift_mm)
    data = image.get_fdata(dtype=np.float32)
    data += np.abs(np.random.default_rng(1).normal(0, noise, data.shape)).astype(np.float32)
    nb.save(nb.Nifti1Image(data, image.affine), tmp_path / "t1w.nii.gz")
    assert is_skull_stripped(tmp_path / "t1w.nii.gz") is stripped


def test_the_mask_of_a_stripped_image_is_its_non_background_voxels(tmp_path):
    image = _brain_in_background(-2.5, 70)
    data = image.get_fdata(dtype=np.float32)
    brain = data != -2.5
    data[50, 50, 50] = -2.5  # a voxel inside the brain that happens to equal the background
    data[3, 3, 3] = 1.0  # a speck outside it
    nb.save(nb.Nifti1Image(data, image.affine), tmp_path / "t1w.nii.gz")
    mask = brain_mask_from_background(str(tmp_path / "t1w.nii.gz"), str(tmp_path / "mask.nii.gz"))
    assert np.array_equal(nb.load(mask).get_fdata() > 0, brain)


def test_figures_window_a_z_scored_image_from_its_background():
    from bids_dl.reports.figures import display_range

    image = _brain_in_background(-2.5, 70)
    data = image.get_fdata(dtype=np.float32)
    vmin, vmax = display_range(data, data != -2.5)
    assert vmin == -2.5  # the brain (around 1.0, some of it negative) is not cut off at 0
    assert 1.5 < vmax < 2.2  # the 99.5th percentile of N(1, 0.3)


def test_coregistration_figure_draws_the_t1w_outline_and_its_intensity_edge(tmp_path):
    """Red brain outline and the cyan edge between the T1w's two intensity classes (here the
    inner ball and its shell), both from the T1w, over the contrast."""
    import matplotlib.image

    from bids_dl.reports.figures import plot_coregistration

    radius = np.sqrt(((np.indices((48, 48, 48)) - 23.5) ** 2).sum(axis=0))  # 2 mm voxels
    t1w = np.where(radius < 8, 1.0, np.where(radius < 16, 0.6, 0.0)).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    flair = np.where(radius < 16, 1.2 - t1w, 0.0)
    for name, data in (("t1w", t1w), ("flair", flair), ("mask", (radius < 16) * 1.0)):
        nb.save(nb.Nifti1Image(data.astype(np.float32), affine), tmp_path / f"{name}.nii.gz")
    out = plot_coregistration(
        *(str(tmp_path / f"{n}.nii.gz") for n in ("flair", "t1w", "mask")),
        str(tmp_path / "coreg.png"),
    )
    pixels = matplotlib.image.imread(out)[..., :3]

    def count(colour: str) -> int:
        rgb = np.array([int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
        return int((np.abs(pixels - rgb).max(axis=-1) < 0.2).sum())

    assert count("#ff3030") > 200 and count("#00e0ff") > 200


def test_a_contrast_with_nan_voxels_is_registered_from_a_finite_copy(tmp_path, caplog, monkeypatch):
    data = np.random.default_rng(0).random((6, 7, 5)).astype(np.float32)
    nb.save(nb.Nifti1Image(data, np.eye(4)), tmp_path / "clean.nii.gz")
    assert finite_copy(tmp_path / "clean.nii.gz", tmp_path / "copy.nii.gz") == str(
        tmp_path / "clean.nii.gz"
    )
    data[1, 2, 3], data[4, 5, 0] = np.nan, -np.inf
    nb.save(nb.Nifti1Image(data, np.eye(4)), tmp_path / "flair.nii.gz")
    # a CLI run earlier in the test run stops bids_dl's records at its own handler
    monkeypatch.setattr(logging.getLogger("bids_dl"), "propagate", True)
    with caplog.at_level("WARNING", logger="bids_dl.images"):
        copy = finite_copy(tmp_path / "flair.nii.gz", tmp_path / "copy.nii.gz")
    cleaned = nb.load(copy).get_fdata()
    assert copy == str(tmp_path / "copy.nii.gz") and np.isfinite(cleaned).all()
    assert cleaned[1, 2, 3] == cleaned[4, 5, 0] == 0
    assert np.array_equal(cleaned[np.isfinite(data)], data[np.isfinite(data)])
    assert "2 non-finite voxels set to 0" in caplog.text
