"""Diffusion: input checks (exit 2, one line), motion correction with b-vector rotation,
tensor maps against hand-computed values, the DTI network's bundle, and its training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from bids_dl.models.diffusion_simulation import well_spread_scheme
from bids_dl.models.gradients import bvecs_to_voxel
from tests.conftest import run_cli, write_tiny_bids

#: a LAS affine, as dcm2niix writes (FSL's b-vector x axis then matches the voxel axis)
LAS = np.diag([-2.0, 2.0, 2.0, 1.0])


def _write_table(path: Path, rows: list[list[float]]) -> None:
    path.write_text("\n".join(" ".join(f"{v:g}" for v in row) for row in rows) + "\n")


def write_dwi(
    folder: Path,
    stem: str,
    bvals: np.ndarray,
    bvecs: np.ndarray,
    data: np.ndarray | None = None,
    affine: np.ndarray = LAS,
) -> Path:
    """A DWI series with FSL gradient files (``bvecs`` already in the file's convention)."""
    folder.mkdir(parents=True, exist_ok=True)
    if data is None:
        data = np.random.default_rng(0).uniform(100, 200, (8, 8, 6, len(bvals)))
    nb.save(nb.Nifti1Image(data.astype(np.float32), affine), folder / f"{stem}_dwi.nii.gz")
    _write_table(folder / f"{stem}_dwi.bval", [list(bvals)])
    _write_table(folder / f"{stem}_dwi.bvec", np.asarray(bvecs).T.tolist())
    (folder / f"{stem}_dwi.json").write_text(json.dumps({"PhaseEncodingDirection": "j-"}))
    return folder / f"{stem}_dwi.nii.gz"


def _good_scheme() -> tuple[np.ndarray, np.ndarray]:
    return well_spread_scheme(7, 1000.0, 1, np.random.default_rng(1))


def _corrupt(case: str, dwi: Path) -> None:
    """Break one thing of a good series (``case`` names it)."""
    bval, bvec = dwi.with_name("sub-01_dwi.bval"), dwi.with_name("sub-01_dwi.bvec")
    bvals, bvecs = _good_scheme()
    if case == "no bval":
        bval.unlink()
    elif case == "unreadable bvec":
        bvec.write_text("0 1 x\n")
    elif case == "count mismatch":
        _write_table(bval, [list(bvals[:-1])])
    elif case == "3D image":
        nb.save(nb.Nifti1Image(np.ones((8, 8, 6), np.float32), LAS), dwi)
    elif case == "no b0":
        _write_table(bval, [[1000.0] * len(bvals)])
    elif case == "coplanar":
        angles = np.linspace(0, np.pi, 7, endpoint=False)
        ring = np.column_stack([np.cos(angles), np.sin(angles), np.zeros(7)])
        _write_table(bvec, np.vstack([[0, 0, 0], ring]).T.tolist())
    elif case == "not unit":
        _write_table(bvec, (bvecs * np.r_[1, 1, 1, 2, 1, 1, 1, 1][:, None]).T.tolist())
    elif case == "NaN":
        data = np.asarray(nb.load(dwi).dataobj, dtype=np.float32)
        data[2, 2, 2, 3] = np.nan
        nb.save(nb.Nifti1Image(data, LAS), dwi)


BAD_INPUTS = {
    "no bval": "no .bval file",
    "unreadable bvec": "not a table of numbers",
    "count mismatch": "7 b-values for an image of 8 volumes",
    "3D image": "is 3D",
    "no b0": "no b~0 volume",
    "coplanar": "cannot support a tensor",
    "not unit": "not unit length",
    "NaN": "NaN or infinite values in volume(s) 3",
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_a_bad_diffusion_series_stops_the_run_with_one_line(case, tmp_path):
    bids = write_tiny_bids(tmp_path / "bids")
    dwi = write_dwi(bids / "sub-01" / "dwi", "sub-01", *_good_scheme())
    _corrupt(case, dwi)
    result = run_cli(str(bids), str(tmp_path / "out"), "participant", "--skip-bids-validation",
                     "--dry-run", "-w", str(tmp_path / "work"))  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "sub-01" in lines[0] and BAD_INPUTS[case] in lines[0], lines


def test_a_good_series_is_planned_and_inherited_gradients_are_found(tmp_path):
    bids = write_tiny_bids(tmp_path / "bids")
    dwi = write_dwi(bids / "sub-01" / "dwi", "sub-01", *_good_scheme())
    for suffix in ("bval", "bvec"):  # inheritance: the top-level dwi.bval/.bvec apply
        shutil.move(dwi.with_name(f"sub-01_dwi.{suffix}"), bids / f"dwi.{suffix}")
    result = run_cli(str(bids), str(tmp_path / "out"), "participant", "--skip-bids-validation",
                     "--dry-run", "-w", str(tmp_path / "work"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "runs: anat, dwi" in result.stdout
    named = run_cli(str(bids), str(tmp_path / "out"), "participant", "--skip-bids-validation",
                    "--dry-run", "--analyses", "anat", "-w", str(tmp_path / "work"))  # fmt: skip
    assert "runs: anat\n" in named.stdout


def test_a_reverse_phase_encoded_fieldmap_is_named_as_unused(tmp_path):
    bids = write_tiny_bids(tmp_path / "bids")
    write_dwi(bids / "sub-01" / "dwi", "sub-01", *_good_scheme())
    fmap = bids / "sub-01" / "fmap"
    fmap.mkdir()
    nb.save(nb.Nifti1Image(np.ones((8, 8, 6), np.float32), LAS), fmap / "sub-01_dir-AP_epi.nii.gz")
    (fmap / "sub-01_dir-AP_epi.json").write_text(json.dumps({"PhaseEncodingDirection": "j"}))
    result = run_cli(str(bids), str(tmp_path / "out"), "participant", "--skip-bids-validation",
                     "--dry-run", "-w", str(tmp_path / "work"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "sub-01_dir-AP_epi.nii.gz (a phase-encoding fieldmap) is not used" in result.stderr


def test_analyses_dwi_without_a_series_is_an_error(tmp_path):
    bids = write_tiny_bids(tmp_path / "bids")
    result = run_cli(str(bids), str(tmp_path / "out"), "participant", "--skip-bids-validation",
                     "--dry-run", "--analyses", "dwi", "-w", str(tmp_path / "work"))  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == "bids_dl: error: sub-01: --analyses dwi needs a dwi image"


def _known_tensor() -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (mm^2/s) and a rotation whose first column is the principal direction."""
    rotation = Rotation.from_euler("xyz", [20, -35, 50], degrees=True).as_matrix()
    return np.array([1.7e-3, 0.4e-3, 0.2e-3]), rotation


def test_tensor_maps_match_hand_computed_values_for_a_known_tensor(tmp_path):
    from bids_dl.workflows.interfaces.dwi_tensor import fit_tensor

    evals, rotation = _known_tensor()
    tensor = rotation @ np.diag(evals) @ rotation.T
    bvals, world = well_spread_scheme(30, 1000.0, 2, np.random.default_rng(0))
    signal = 1000.0 * np.exp(-bvals * np.einsum("ni,ij,nj->n", world, tensor, world))
    series = np.broadcast_to(signal, (4, 4, 3, len(bvals)))
    nb.save(nb.Nifti1Image(series.astype(np.float32), LAS), tmp_path / "dwi.nii.gz")
    nb.save(nb.Nifti1Image(np.ones((4, 4, 3), np.uint8), LAS), tmp_path / "mask.nii.gz")
    np.savetxt(tmp_path / "dwi.bval", bvals[None])
    np.savetxt(tmp_path / "world.txt", world)
    files = [
        str(tmp_path / name) for name in ("dwi.nii.gz", "dwi.bval", "world.txt", "mask.nii.gz")
    ]
    maps = fit_tensor(*files, str(tmp_path))
    l1, l2, l3 = evals
    expected = {
        "fa": np.sqrt(0.5 * ((l1 - l2) ** 2 + (l2 - l3) ** 2 + (l3 - l1) ** 2) / (evals**2).sum()),
        "md": evals.mean(),
        "ad": l1,
        "rd": (l2 + l3) / 2,
    }
    for name, value in expected.items():
        measured = nb.load(maps[name]).get_fdata()
        assert np.allclose(measured, value, rtol=1e-4), (name, measured.mean(), value)
    v1 = nb.load(maps["v1"]).get_fdata()[1, 1, 1]
    assert abs(v1 @ rotation[:, 0]) > 0.9999  # in world axes, whatever the voxel order


def _phantom_series(tmp_path: Path, moved_volume: int, motion: np.ndarray):
    """A 3 mm phantom series (1 b=0, 6 directions), one volume moved by ``motion`` (4x4,
    world): its content is the head rotated, its b-vector the scanner's unchanged one."""
    from nilearn import datasets
    from scipy import ndimage

    from bids_dl.models.diffusion_phantom import acquire, draw_phantom
    from bids_dl.models.geometry import resample_voxels

    fractions = [datasets.load_mni152_gm_template(resolution=2),
                 datasets.load_mni152_wm_template(resolution=2)]  # fmt: skip
    gm, wm = (ndimage.zoom(f.get_fdata(), 2 / 3, order=1) for f in fractions)
    tissues = np.stack([np.zeros_like(gm), gm, wm])
    rng = np.random.default_rng(0)
    bvals, bvecs = well_spread_scheme(6, 1000.0, 1, rng)
    phantom = draw_phantom(tissues, 1000.0, rng, with_truth=False)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = -1.5 * np.array(gm.shape)
    head_bvecs = bvecs.copy()
    head_bvecs[moved_volume] = motion[:3, :3].T @ bvecs[moved_volume]
    series = acquire(phantom, (bvals, head_bvecs), 40.0, rng)
    to_source = np.linalg.inv(affine) @ np.linalg.inv(motion) @ affine
    series[..., moved_volume] = resample_voxels(series[..., moved_volume], to_source, gm.shape)
    nb.save(nb.Nifti1Image(series * 1000, affine), tmp_path / "dwi.nii.gz")
    np.savetxt(tmp_path / "dwi.bval", bvals[None], fmt="%g")
    np.savetxt(tmp_path / "dwi.bvec", bvecs_to_voxel(bvecs, affine).T, fmt="%.6f")
    return bvecs, head_bvecs


def test_motion_correction_undoes_a_known_rotation_and_rotates_its_bvec(tmp_path):
    from bids_dl.workflows.interfaces.dwi_preproc import correct_motion

    motion = np.eye(4)
    motion[:3, :3] = Rotation.from_euler("xyz", [4, -3, 5], degrees=True).as_matrix()
    motion[:3, 3] = [1.5, -1.0, 0.5]
    scanner, head = _phantom_series(tmp_path, 3, motion)
    out = correct_motion(str(tmp_path / "dwi.nii.gz"), str(tmp_path / "dwi.bval"),
                         str(tmp_path / "dwi.bvec"), str(tmp_path / "out"))  # fmt: skip
    world = np.loadtxt(out["world_bvecs"])
    angles = np.degrees(np.arccos(np.clip(np.abs((world[1:] * head[1:]).sum(1)), 0, 1)))
    assert angles.max() < 1.0, angles  # the moved volume's vector follows the head
    assert np.degrees(np.arccos(abs(scanner[3] @ head[3]))) > 3  # and it had to move
    confounds = np.genfromtxt(out["confounds"], delimiter="\t", names=True)
    moved = confounds[3]
    assert np.allclose([moved["trans_x"], moved["trans_y"], moved["trans_z"]],
                       [1.5, -1.0, 0.5], atol=0.3)  # fmt: skip
    assert np.allclose(np.degrees([moved["rot_x"], moved["rot_y"], moved["rot_z"]]),
                       [4, -3, 5], atol=0.5)  # fmt: skip
    assert moved["framewise_displacement"] > 5 and confounds[2]["framewise_displacement"] < 1
    written = np.loadtxt(out["bvec"]).T
    assert np.allclose(bvecs_to_voxel(world, nb.load(out["out_file"]).affine), written, atol=1e-5)


def test_the_shipped_dti_bundle_loads_and_says_its_data_is_simulated():
    from bids_dl.models.bundle import load_bundle
    from bids_dl.models.registry import shipped_bundles

    card, network = load_bundle(shipped_bundles()["dti"])
    assert card.task == "dti" and card.outputs["channels"] == ["xx", "yy", "zz", "xy", "xz", "yz"]
    assert "SIMULATED" in card.training["data"]
    assert "real" in card.metrics  # the real-data figures of bench/dwi_network.py


def test_the_network_predicts_a_finite_tensor_inside_the_mask_only():
    from bids_dl.models.bundle import load_bundle
    from bids_dl.models.registry import shipped_bundles
    from bids_dl.models.tensor_inference import predict_tensor

    _, network = load_bundle(shipped_bundles()["dti"])
    bvals, bvecs = well_spread_scheme(6, 1000.0, 1, np.random.default_rng(0))
    evals, rotation = _known_tensor()
    tensor = rotation @ np.diag(evals) @ rotation.T
    signal = np.exp(-bvals * np.einsum("ni,ij,nj->n", bvecs, tensor, bvecs))
    series = np.broadcast_to(signal, (9, 9, 9, len(bvals))).copy()
    mask = np.zeros((9, 9, 9), bool)
    mask[2:7, 2:7, 2:7] = True
    elements = predict_tensor(network, series, bvals, bvecs, mask)
    assert np.isfinite(elements).all() and not elements[~mask].any()
    assert np.abs(elements[mask]).max() > 0.1


def test_a_tiny_training_run_writes_a_bundle_that_loads(tmp_path):
    from bids_dl.models.bundle import load_bundle
    from bids_dl.models.tensor_training import TensorTrainingConfig, train_tensor_network

    config = TensorTrainingConfig(name="tiny-dti", steps=2, batch_size=1, crop=12, features=4,
                                  validation_every=2, validation_phantoms=1,
                                  voxel_sizes_mm=(4.0,))  # fmt: skip
    bundle = train_tensor_network(config, tmp_path / "run")
    card, _ = load_bundle(bundle)
    assert card.training["steps"] == 2 and "random" in card.metrics["simulated_validation_fa_rmse"]


@pytest.mark.parametrize(("mode", "applied"), [("auto", False), ("mppca", True), ("none", False)])
def test_mppca_runs_as_asked_and_lowers_the_noise(tmp_path, mode, applied):
    """A noisy series of 8 volumes: ``auto`` skips it (fewer than 12), ``mppca`` denoises it
    (the noise around the true signal drops), ``none`` passes it through."""

    from bids_dl.workflows.interfaces.dwi_preproc import DenoiseDWI

    rng = np.random.default_rng(0)
    x = np.linspace(0, 1, 16)
    clean = 100 + 50 * np.sin(6 * x)[:, None, None, None] * np.exp(-np.arange(8) / 4)
    clean = np.broadcast_to(clean, (16, 16, 16, 8)).astype(np.float32)
    noisy = clean + rng.normal(0, 5, clean.shape).astype(np.float32)
    nb.save(nb.Nifti1Image(noisy, LAS), tmp_path / "dwi.nii.gz")
    result = DenoiseDWI(in_file=str(tmp_path / "dwi.nii.gz"), mode=mode).run(cwd=str(tmp_path))
    assert result.outputs.denoised is applied
    out = nb.load(result.outputs.out_file).get_fdata()
    error, before = np.abs(out - clean).mean(), np.abs(noisy - clean).mean()
    assert (error < 0.7 * before) if applied else np.array_equal(out, noisy)
