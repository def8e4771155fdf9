"""BOLD preprocessing steps on small synthetic runs: slice timing, a known head rotation
undone by motion correction, and the composed (one-shot) resampling."""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
from scipy import ndimage

from bids_dl.images import save_image
from bids_dl.models.geometry import rotation_matrix
from bids_dl.workflows.interfaces.bold_preproc import (
    bold_reference,
    estimate_bold_motion,
    grid_at_resolution,
    resample_bold_series,
    slice_times_aligned,
)

VOXEL_MM = 3.0
SHAPE = (28, 28, 22)
#: the world origin at the grid's centre, as in scanner images: ANTs rotates about the origin
AFFINE = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
AFFINE[:3, 3] = -(np.asarray(SHAPE) - 1) / 2 * VOXEL_MM
TR = 2.0


def _head(shape=SHAPE) -> np.ndarray:
    """An ellipsoid with smooth inner structure: something registration can lock on to."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    inside = (grid[0] / 0.8) ** 2 + (grid[1] / 0.7) ** 2 + (grid[2] / 0.75) ** 2 < 1
    texture = ndimage.gaussian_filter(np.random.default_rng(1).normal(size=shape), 2.0)
    return (inside * (800 + 2000 * texture + 150 * grid[0])).astype(np.float32)


def _moved(volume: np.ndarray, degrees: float, shift_mm: float) -> np.ndarray:
    """``volume`` rotated about z through its centre and shifted along x (world mm)."""
    rotation = rotation_matrix((0.0, 0.0, degrees))
    centre = (np.asarray(volume.shape) - 1) / 2
    offset = centre - rotation @ centre - np.array([shift_mm / VOXEL_MM, 0, 0])
    return ndimage.affine_transform(volume, rotation, offset=offset, order=3)


def test_slice_timing_aligns_every_slice_to_the_middle_time():
    times = np.array([0.0, 1.0, 0.5, 1.5])  # interleaved, four slices
    volumes = np.arange(40) * TR
    frequency = 0.05  # Hz: a slow signal the spline follows
    data = np.zeros((2, 2, 4, 40), dtype=np.float32)
    for index, time in enumerate(times):
        data[:, :, index] = np.sin(2 * np.pi * frequency * (volumes + time))
    aligned = slice_times_aligned(data, list(times), TR, slice_axis=2)
    expected = np.sin(2 * np.pi * frequency * (volumes + 0.75))
    inner = slice(1, -1)  # the first and last volumes hold the nearest sample
    for index in range(4):
        np.testing.assert_allclose(aligned[0, 0, index, inner], expected[inner], atol=0.01)
    assert np.abs(data[0, 0, 0, inner] - expected[inner]).max() > 0.2  # there was a shift


def test_a_known_rotation_is_measured_and_undone(tmp_path: Path):
    head = _head()
    volumes = [head, head, _moved(head, 3.0, 2.0), head]
    run = save_image(np.stack(volumes, -1), AFFINE, tmp_path / "bold.nii.gz", TR)
    reference = bold_reference(str(run), 0, str(tmp_path / "boldref.nii.gz"))
    result = estimate_bold_motion(str(run), reference, TR, str(tmp_path))
    motion = pd.read_csv(result["motion_file"], sep="\t")
    moved = motion.iloc[2]
    # ANTs (50, 25, 10 iterations) lands within ~0.6 degrees of a 3 degree rotation
    assert abs(abs(moved["rot_z"]) - np.radians(3.0)) < np.radians(0.75), moved
    assert abs(abs(moved["trans_x"]) - 2.0) < 0.3, moved
    assert motion.loc[[0, 1, 3], ["rot_z", "trans_x"]].abs().max().max() < 0.1
    corrected = nb.load(result["out_file"]).get_fdata()[..., 2]
    inside = ndimage.binary_erosion(head > 0, iterations=2)  # away from the interpolated edge
    before = np.abs(volumes[2] - head)[inside].mean()
    after = np.abs(corrected - head)[inside].mean()
    assert after < 0.25 * before, (before, after)
    assert nb.load(result["out_file"]).header.get_zooms()[3] == TR
    assert len(result["transforms"]) == 4


def test_one_shot_resampling_composes_motion_with_a_further_transform(tmp_path: Path):
    """Through its motion transform alone, the run lands on the reference as motion
    correction put it; composed with a translation, the same image lands shifted."""
    import ants

    head = _head()
    volumes = [head, _moved(head, 3.0, 2.0)]
    run = save_image(np.stack(volumes, -1), AFFINE, tmp_path / "bold.nii.gz", TR)
    reference = bold_reference(str(run), 0, str(tmp_path / "boldref.nii.gz"))
    motion = estimate_bold_motion(str(run), reference, TR, str(tmp_path / "motion"))
    native = resample_bold_series(str(run), TR, reference, motion["transforms"], [],
                                  str(tmp_path / "native.nii.gz"))  # fmt: skip
    np.testing.assert_allclose(
        nb.load(native).get_fdata(), nb.load(motion["out_file"]).get_fdata(), atol=1.0
    )
    shift = ants.create_ants_transform(transform_type="AffineTransform", dimension=3,
                                       translation=(2 * VOXEL_MM, 0.0, 0.0))  # fmt: skip
    ants.write_transform(shift, str(tmp_path / "shift.mat"))
    shifted = resample_bold_series(str(run), TR, reference, motion["transforms"],
                                   [str(tmp_path / "shift.mat")],
                                   str(tmp_path / "shifted.nii.gz"))  # fmt: skip
    # ITK points are LPS: +x there is -x in RAS, so the output at voxel i reads voxel i - 2
    moved = nb.load(shifted).get_fdata()[..., 1]
    expected = nb.load(native).get_fdata()[..., 1]
    inside = ndimage.binary_erosion(head > 0, iterations=3)[2:-2]
    np.testing.assert_allclose(moved[2:-2][inside], expected[:-4][inside], rtol=0.02, atol=20)


def test_the_t1w_grid_at_the_bold_resolution_covers_the_t1w(tmp_path: Path):
    t1w = save_image(np.zeros((90, 100, 80), np.float32), np.diag([1.0, 1.0, 1.2, 1]),
                     tmp_path / "t1w.nii.gz")  # fmt: skip
    grid = nb.load(grid_at_resolution(str(t1w), (3.0, 3.0, 4.0), str(tmp_path / "grid.nii.gz")))
    assert grid.shape == (30, 34, 24)
    assert np.allclose(grid.header.get_zooms()[:3], (3.0, 3.0, 4.0))
    assert np.allclose(grid.affine[:3, 3], 0)
