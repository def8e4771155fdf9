"""Conforming: RAS+ on the native grid for any orientation, voxel size and bad values."""

from __future__ import annotations

import nibabel as nb
import numpy as np
import pytest

from bids_dl.images import ImageError, load_3d_image
from bids_dl.workflows.interfaces.conform import conform_image


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
