"""PET preprocessing and quantification: the frames of a static image, frame motion
correction, time-activity curves, SUVR, SUV and the regional measures, against hand
computations on small synthetic volumes."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from scipy import ndimage

from bids_dl.pet_inputs import window_weights
from bids_dl.workflows.interfaces.pet_preproc import (
    CorrectFrameMotion,
    TimeActivityCurves,
    correct_frame_motion,
    time_activity_curves,
)
from bids_dl.workflows.interfaces.pet_quant import (
    PetMeasures,
    StandardizedUptake,
    UptakeRatio,
    pet_measures,
    standardized_uptake,
    uptake_ratio,
)

ZOOMS = (2.0, 2.0, 2.0)
AFFINE = np.diag([*ZOOMS, 1.0])
#: a dynamic scan started 30 s before injection (TimeZero = scan start): frames of 1, 1, 3,
#: 5 and 4 x 10 minutes, 60 min after injection at its end
STARTS = [0, 60, 120, 300, 600, 1230, 1830, 2430, 3030]
DURATIONS = [60, 60, 180, 300, 630, 600, 600, 600, 600]
INJECTION = 30


def _save(data: np.ndarray, path: Path, affine=AFFINE) -> str:
    nb.save(nb.Nifti1Image(np.asarray(data, np.float32), affine), path)
    return str(path)


def test_window_weights_are_each_frames_share_of_the_window():
    # 30-45 min after injection is 1830-2730 s on the scan's clock: all 600 s of frame 6
    # (1830-2430) and 300 s of frame 7 (2430-3030)
    weights = window_weights(STARTS, DURATIONS, INJECTION, (30, 45))
    assert weights == pytest.approx([0, 0, 0, 0, 0, 0, 2 / 3, 1 / 3, 0])
    # the late frames: starting 40 min or later after injection (2/3 of 60 min)
    assert window_weights(STARTS, DURATIONS, INJECTION, None) == pytest.approx([0] * 7 + [0.5, 0.5])
    # a static 50-70 min acquisition: every frame is late
    static = window_weights([3000, 3600], [600, 600], 0, None)
    assert static == pytest.approx([0.5, 0.5])
    assert window_weights([3000], [1200], 0, None) == pytest.approx([1.0])
    with pytest.raises(ValueError, match="overlaps no frame"):
        window_weights(STARTS, DURATIONS, INJECTION, (70, 90))


def _head(shift_mm=(0.0, 0.0, 0.0), shape=(24, 26, 22)) -> np.ndarray:
    """Smooth PET-like uptake: an ellipsoidal head of smoothed random texture (a flat blob
    gives mutual information no optimum to find), moved by ``shift_mm``."""
    padded = [n + 8 for n in shape]
    texture = ndimage.gaussian_filter(np.random.default_rng(0).normal(0, 1, padded), 1.5)
    grid = np.stack(np.meshgrid(*[np.arange(n) * ZOOMS[0] for n in padded], indexing="ij"), -1)
    radii = np.asarray([16.0, 19.0, 14.0])
    head = np.exp(-(np.sum(((grid - grid.mean((0, 1, 2))) / radii) ** 2, -1) ** 4))
    uptake = ndimage.gaussian_filter(np.clip(head * (1 + 3 * texture / texture.std()), 0, None), 1)
    moved = ndimage.shift(uptake, np.asarray(shift_mm) / ZOOMS[0], order=3)
    return 1000 * moved[4:-4, 4:-4, 4:-4]


def test_frame_motion_correction_recovers_a_shift(tmp_path, monkeypatch):
    monkeypatch.setenv("ANTS_RANDOM_SEED", "42")  # ANTs jitters its metric samples otherwise
    scales = [1.0, 1.2, 1.1, 1.05]
    frames = [_head() * s for s in scales]
    frames[2] = _head(shift_mm=(3.0, 0, 0)) * scales[2]
    series = _save(np.stack(frames, -1), tmp_path / "pet.nii.gz")
    outputs = correct_frame_motion(series, [0.25] * 4, str(tmp_path))
    with open(outputs["motion_file"], encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert rows[0]["framewise_displacement"] == "n/a"
    moved = float(rows[2]["trans_x"]) - float(rows[1]["trans_x"])
    # other seeds read 2.6-3.1 mm: this small synthetic head constrains MI less than a brain
    assert abs(moved) == pytest.approx(3.0, abs=0.5)
    assert float(rows[2]["framewise_displacement"]) == pytest.approx(3.0, abs=1.0)
    corrected = nb.load(outputs["out_file"]).get_fdata()
    error_before = np.abs(frames[2] / scales[2] - frames[0]).mean()
    error_after = np.abs(corrected[..., 2] / scales[2] - corrected[..., 0]).mean()
    assert error_after < 0.2 * error_before
    static = nb.load(outputs["static"]).get_fdata()
    assert static.shape == frames[0].shape
    assert static == pytest.approx((corrected * 0.25).sum(-1), rel=1e-4, abs=1e-2)


def test_a_static_image_is_its_own_reference(tmp_path):
    image = _save(_head(), tmp_path / "static_pet.nii.gz")
    run = CorrectFrameMotion(in_file=image, weights=[1.0]).run(cwd=str(tmp_path))
    static = nb.load(run.outputs.static).get_fdata()
    assert static == pytest.approx(_head(), rel=1e-5)
    assert nb.load(run.outputs.out_file).shape == static.shape
    lines = Path(run.outputs.motion_file).read_text().splitlines()
    assert lines[1].split("\t") == ["0"] * 6 + ["n/a"]


def _labels(shape=(10, 10, 10)) -> np.ndarray:
    """Left hippocampus (17) in the lower half of x, right (53) in the upper, cerebellar
    cortex (8, 47) in two corners, background elsewhere."""
    labels = np.zeros(shape, np.int16)
    labels[:5, :5] = 17
    labels[5:, :5] = 53
    labels[:5, 5:, :3] = 8
    labels[5:, 5:, :3] = 47
    return labels


def test_time_activity_curves_average_each_structure_per_frame(tmp_path):
    labels = _labels()
    frames = np.zeros((*labels.shape, 3))
    for index, (left, right) in enumerate(((1.0, 2.0), (3.0, 5.0), (4.0, 8.0))):
        frames[labels == 17, index] = left
        frames[labels == 53, index] = right
    frames[labels == 17, 1] += np.linspace(-1, 1, (labels == 17).sum())  # mean unchanged
    pet = _save(frames, tmp_path / "pet.nii.gz")
    aseg = _save(labels, tmp_path / "aseg.nii.gz")
    out = time_activity_curves(pet, aseg, [0, 60, 120], [60, 60, 300], str(tmp_path / "t.tsv"))
    with open(out, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert list(rows[0]) == [
        "frame_start",
        "frame_duration",
        "Left-Cerebellum-Cortex",
        "Left-Hippocampus",
        "Right-Cerebellum-Cortex",
        "Right-Hippocampus",
    ]
    assert [float(r["frame_duration"]) for r in rows] == [60, 60, 300]
    assert [float(r["Left-Hippocampus"]) for r in rows] == pytest.approx([1, 3, 4])
    assert [float(r["Right-Hippocampus"]) for r in rows] == pytest.approx([2, 5, 8])
    run = TimeActivityCurves(
        in_file=pet, labels=aseg, frame_starts=[0, 60, 120], frame_durations=[60, 60, 300]
    ).run(cwd=str(tmp_path))
    assert Path(run.outputs.out_file).read_text() == Path(out).read_text()


def test_suvr_divides_by_the_reference_mean_and_suv_scales(tmp_path):
    labels = _labels()
    static = np.full(labels.shape, 3.0)
    static[np.isin(labels, (8, 47))] = 2.0
    static[labels == 47] += 0.5  # the two cerebellar hemispheres average 2.25
    pet = _save(static, tmp_path / "static.nii.gz")
    aseg = _save(labels, tmp_path / "aseg.nii.gz")
    mean = uptake_ratio(pet, aseg, "cerebellum-gm", str(tmp_path / "suvr.nii.gz"))
    assert mean == pytest.approx(2.25)
    suvr = nb.load(tmp_path / "suvr.nii.gz").get_fdata()
    assert suvr[labels == 17] == pytest.approx(3.0 / 2.25)
    assert suvr[labels == 8] == pytest.approx(2.0 / 2.25)
    suv = standardized_uptake(pet, 2.5e-4, str(tmp_path / "suv.nii.gz"))
    assert nb.load(suv).get_fdata() == pytest.approx(static * 2.5e-4)
    ratio = UptakeRatio(in_file=pet, aseg=aseg, reference="cerebellum-gm").run(cwd=str(tmp_path))
    assert ratio.outputs.reference_mean == pytest.approx(2.25)
    scaled = StandardizedUptake(in_file=pet, factor=2.0).run(cwd=str(tmp_path))
    assert nb.load(scaled.outputs.out_file).get_fdata() == pytest.approx(static * 2.0)


def test_suvr_refuses_another_grid_or_an_empty_reference(tmp_path):
    labels = _labels()
    pet = _save(np.ones(labels.shape), tmp_path / "static.nii.gz")
    moved = AFFINE.copy()
    moved[0, 3] = 1.0
    shifted = _save(labels, tmp_path / "moved.nii.gz", affine=moved)
    with pytest.raises(ValueError, match="not on the same grid"):
        uptake_ratio(pet, shifted, "cerebellum-gm", str(tmp_path / "suvr.nii.gz"))
    aseg = _save(labels, tmp_path / "aseg.nii.gz")
    with pytest.raises(ValueError, match="brainstem .*holds no voxel"):
        uptake_ratio(pet, aseg, "brainstem", str(tmp_path / "suvr.nii.gz"))


def test_pet_measures_are_regional_mean_suvr(tmp_path):
    labels = _labels()
    labels[:, :, 9] = 3  # left cortex: 100 voxels
    suvr = np.where(labels == 3, 1.8, 1.2)
    suvr[labels == 53] = 0.9
    measures = (
        PetMeasures(
            suvr=_save(suvr, tmp_path / "suvr.nii.gz"), aseg=_save(labels, tmp_path / "aseg.nii.gz")
        )
        .run(cwd=str(tmp_path))
        .outputs.measures
    )
    assert measures == pet_measures(str(tmp_path / "suvr.nii.gz"), str(tmp_path / "aseg.nii.gz"))
    assert measures["pet_suvr_mean_left_cerebral_cortex"] == pytest.approx(1.8)
    assert measures["pet_suvr_mean_cortex"] == pytest.approx(1.8)
    assert measures["pet_suvr_mean_left_hippocampus"] == pytest.approx(1.2)
    assert measures["pet_suvr_mean_right_hippocampus"] == pytest.approx(0.9)
    assert measures["pet_suvr_mean_left_thalamus"] == "n/a"
    assert measures["pet_suvr_mean_deep_gm"] == "n/a"
