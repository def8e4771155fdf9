"""The sample dataset: valid BIDS, deterministic, varied poses and voxel orders."""

from __future__ import annotations

import nibabel as nb
import numpy as np

from bids_dl.inputs import validate_dataset
from bids_dl.sample import write_sample_dataset


def test_sample_is_valid_bids(sample_small):
    assert validate_dataset(sample_small) is not None  # raises InputError on any error
    for label in ("01", "02"):
        for suffix in ("T1w", "T2w"):
            assert (
                sample_small / f"sub-{label}" / "anat" / f"sub-{label}_{suffix}.nii.gz"
            ).exists()
    assert (sample_small / "participants.tsv").read_text().count("sub-") == 3


def test_subjects_differ_in_pose_and_voxel_order(sample_small):
    images = [
        nb.load(sample_small / f"sub-{s}" / "anat" / f"sub-{s}_T1w.nii.gz") for s in ("01", "02")
    ]
    assert nb.aff2axcodes(images[0].affine) != nb.aff2axcodes(images[1].affine)
    assert images[0].shape != images[1].shape
    assert np.allclose(images[0].header.get_zooms(), 2.0)


def test_truth_matches_image(sample_small):
    t1w = nb.load(sample_small / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    truth = sample_small / "derivatives" / "sample-truth" / "sub-01" / "anat"
    mask = nb.load(truth / "sub-01_desc-brain_mask.nii.gz")
    assert mask.shape == t1w.shape and np.allclose(mask.affine, t1w.affine)
    data = t1w.get_fdata()
    inside = mask.get_fdata() > 0
    # the brain is brighter on average than the simulated skull ring right around it
    assert data[inside].mean() > 2 * data[~inside].mean()


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    paths = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        write_sample_dataset(tmp_path / name, n_subjects=1, voxel_mm=3.0, seed=seed)
        paths.append(tmp_path / name / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    a, b, c = (nb.load(p) for p in paths)
    assert np.array_equal(a.get_fdata(), b.get_fdata()) and np.allclose(a.affine, b.affine)
    assert a.shape != c.shape or not np.array_equal(a.get_fdata(), c.get_fdata())
