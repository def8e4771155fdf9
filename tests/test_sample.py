"""The sample dataset: valid BIDS, deterministic, varied poses and voxel orders, and the
diffusion series of its odd-numbered healthy subjects."""

from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pandas as pd

from bids_dl.inputs import validate_dataset
from bids_dl.models.geometry import resample, resample_voxels
from bids_dl.models.gradients import (
    bvecs_to_world,
    check_tensor_design,
    design_condition_number,
    read_gradients,
)
from bids_dl.sample import (
    DWI_MAX_ROTATION_DEG,
    DWI_MAX_TRANSLATION_MM,
    _pose,
    dwi_scheme,
    has_dwi,
    write_sample_dataset,
)

#: the seed of the ``sample_small`` fixture
SAMPLE_SMALL_SEED = 3


def test_sample_is_valid_bids(sample_small):
    assert validate_dataset(sample_small) is not None  # raises InputError on any error
    for label in ("01", "02"):
        for suffix in ("T1w", "T2w"):
            assert (
                sample_small / f"sub-{label}" / "anat" / f"sub-{label}_{suffix}.nii.gz"
            ).exists()
    participants = pd.read_csv(sample_small / "participants.tsv", sep="\t")
    assert list(participants["diagnosis"]) == ["control", "patient", "patient"]


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
        write_sample_dataset(
            tmp_path / name, n_subjects=1, voxel_mm=3.0, seed=seed, dwi=name != "c"
        )
        paths.append(tmp_path / name / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    a, b, c = (nb.load(p) for p in paths)
    assert np.array_equal(a.get_fdata(), b.get_fdata()) and np.allclose(a.affine, b.affine)
    assert a.shape != c.shape or not np.array_equal(a.get_fdata(), c.get_fdata())
    dwi_a, dwi_b = (
        nb.load(tmp_path / name / "sub-01" / "dwi" / "sub-01_dwi.nii.gz") for name in "ab"
    )
    assert np.array_equal(np.asanyarray(dwi_a.dataobj), np.asanyarray(dwi_b.dataobj))


def _dwi_files(root, label: str) -> dict:
    folder = root / f"sub-{label}" / "dwi"
    return {ext: folder / f"sub-{label}_dwi.{ext}" for ext in ("nii.gz", "bval", "bvec", "json")}


def _truth_fa_path(root, label: str):
    folder = root / "derivatives" / "sample-truth" / f"sub-{label}" / "dwi"
    return folder / f"sub-{label}_model-tensor_param-fa_dwimap.nii.gz"


def test_dwi_for_odd_numbered_healthy_subjects_only(sample_small):
    assert all(path.exists() for path in _dwi_files(sample_small, "01").values())
    assert _truth_fa_path(sample_small, "01").exists()
    # sub-02 (glioma) and sub-03 (WMH, odd-numbered) are lesion subjects
    for label in ("02", "03"):
        assert not (sample_small / f"sub-{label}" / "dwi").exists()
        assert not _truth_fa_path(sample_small, label).parent.exists()
    assert "sub-01 also has diffusion MRI" in (sample_small / "README").read_text()
    assert [has_dwi(index, None) for index in range(4)] == [True, False, True, False]
    assert not has_dwi(0, "tumor") and not has_dwi(2, "wmh")


def test_dwi_series_and_gradient_table(sample_small):
    files = _dwi_files(sample_small, "01")
    image = nb.load(files["nii.gz"])
    t1w = nb.load(sample_small / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    assert image.ndim == 4 and image.shape[3] == 14 and image.get_data_dtype() == np.int16
    assert nb.aff2axcodes(image.affine) == nb.aff2axcodes(t1w.affine) == ("L", "I", "A")
    assert np.allclose(image.header.get_zooms()[:3], 2.5)
    field_of_view = [np.array(i.shape[:3]) * i.header.get_zooms()[:3] for i in (image, t1w)]
    assert np.allclose(*field_of_view, atol=2.5)

    gradients = read_gradients(files["bval"], files["bvec"], image.shape[3])
    check_tensor_design(gradients.bvals, gradients.bvecs)
    assert gradients.bvals.tolist() == [0.0] * 2 + [1000.0] * 12
    bvals, scanner = dwi_scheme(SAMPLE_SMALL_SEED)
    world = bvecs_to_world(gradients.bvecs, image.affine)
    np.testing.assert_allclose(world, scanner, atol=1e-5)
    assert design_condition_number(world[2:]) < 2.0  # well spread
    # the file holds voxel axes (FSL convention), which differ from world axes for LIA
    assert not np.allclose(gradients.bvecs, scanner, atol=0.1)
    sidecar = json.loads(files["json"].read_text())
    assert sidecar["PhaseEncodingDirection"] == "j-" and sidecar["TotalReadoutTime"] == 0.05


def test_dwi_sits_on_the_anatomy_with_true_fa(sample_small):
    series = nb.load(_dwi_files(sample_small, "01")["nii.gz"])
    fa_image = nb.load(_truth_fa_path(sample_small, "01"))
    assert fa_image.get_data_dtype() == np.float32 and fa_image.shape == series.shape[:3]
    assert np.allclose(fa_image.affine, series.affine)
    truth_anat = sample_small / "derivatives" / "sample-truth" / "sub-01" / "anat"
    dseg = nb.load(truth_anat / "sub-01_dseg.nii.gz")
    labels = resample(dseg.get_fdata(), dseg.affine, fa_image.shape, fa_image.affine, order=0)
    fa = fa_image.get_fdata()
    assert 0.3 < np.median(fa[labels == 2]) < 0.8  # white matter
    assert np.median(fa[labels == 1]) < np.median(fa[labels == 2])  # grey matter
    b0 = np.asanyarray(series.dataobj)[..., 0].astype(float)
    assert 850 < np.median(b0[labels == 2]) < 1250
    assert np.median(b0[labels == 0]) < 100  # background


def test_dwi_motion_is_recorded_and_applied(sample_small):
    fa_path = _truth_fa_path(sample_small, "01")
    sidecar = fa_path.with_name(fa_path.name.replace(".nii.gz", ".json"))
    motion = json.loads(sidecar.read_text())["Motion"]
    assert len(motion) == 14
    assert motion[0] == {"RotationDeg": [0.0] * 3, "TranslationMm": [0.0] * 3}
    rotations = np.array([m["RotationDeg"] for m in motion[1:]])
    translations = np.array([m["TranslationMm"] for m in motion[1:]])
    assert 0 < np.abs(rotations).max() <= DWI_MAX_ROTATION_DEG
    assert 0 < np.abs(translations).max() <= DWI_MAX_TRANSLATION_MM
    # the second b=0 is the first moved by the second volume's recorded pose
    series = nb.load(_dwi_files(sample_small, "01")["nii.gz"])
    data = np.asanyarray(series.dataobj).astype(float)
    pose = _pose(motion[1]["RotationDeg"], motion[1]["TranslationMm"])
    voxel_map = np.linalg.inv(series.affine) @ np.linalg.inv(pose) @ series.affine
    moved = resample_voxels(data[..., 0], voxel_map, data.shape[:3])
    assert _correlation(data[..., 1], moved) > _correlation(data[..., 1], data[..., 0])


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_asl_series_reads_as_valid_bids_asl(sample_small):
    """sub-01's PCASL series: M0 then four pairs, a sidecar the ASL checks accept, and the
    true CBF on its grid; the lesion subjects have none."""
    from bids_dl.asl_inputs import check_asl_series, read_asl_series
    from bids_dl.inputs import index_dataset

    asl = sample_small / "sub-01" / "perf" / "sub-01_asl.nii.gz"
    series = read_asl_series(index_dataset(sample_small), str(asl))
    check_asl_series(series)
    assert series.context == ("m0scan",) + ("label", "control") * 4
    assert series.m0_type == "Included" and series.labeling_type == "PCASL"
    assert series.slice_timing is not None and len(series.slice_timing) == 16
    truth = sample_small / "derivatives/sample-truth/sub-01/perf/sub-01_cbf.nii.gz"
    image, cbf = nb.load(asl), nb.load(truth)
    assert cbf.shape == image.shape[:3] and np.allclose(cbf.affine, image.affine)
    assert 30 < np.median(cbf.get_fdata()[cbf.get_fdata() > 0]) < 90
    assert not (sample_small / "sub-02" / "perf").exists()
    assert "sub-01 also has a 2D PCASL series" in (sample_small / "README").read_text()
