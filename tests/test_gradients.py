"""Gradient tables: reading FSL files, the tensor-design checks, and b-vector orientation."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_dl.models.gradients import (
    MAX_CONDITION_NUMBER,
    GradientError,
    bvecs_to_voxel,
    bvecs_to_world,
    check_tensor_design,
    design_condition_number,
    read_gradients,
    rotate_bvecs,
)

SHARED_DWI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dwi"
REAL_SCANS = {
    "philips_dti12": "philips_dti12/philips_dti12",
    "xa30_dir20": "xa30_dir20_b2500_PA/xa30_dwi_PA",
}

#: The classic 6-direction scheme of Jones et al. (MRM 1999).
JONES6 = np.array([[1, 0, 1], [-1, 0, 1], [0, 1, 1], [0, 1, -1], [1, 1, 0], [-1, 1, 0]])
JONES6 = JONES6 / np.sqrt(2)
PHI = (1 + np.sqrt(5)) / 2
ICOSAHEDRON_HALF = np.array(
    [[0, 1, PHI], [0, -1, PHI], [1, PHI, 0], [-1, PHI, 0], [PHI, 0, 1], [-PHI, 0, 1]]
) / np.sqrt(1 + PHI**2)


def _with_b0(directions: np.ndarray, b: float = 1000.0) -> tuple[np.ndarray, np.ndarray]:
    """One b=0 volume followed by the directions at ``b``."""
    bvals = np.r_[0.0, np.full(len(directions), b)]
    return bvals, np.vstack([np.zeros(3), directions])


def _cap(half_angle_degrees: float, count: int) -> np.ndarray:
    """Directions spread evenly (Fibonacci spiral) over a cap of the sphere around z."""
    index = np.arange(count) + 0.5
    z = 1 - (1 - np.cos(np.deg2rad(half_angle_degrees))) * index / count
    azimuth = np.pi * (3 - np.sqrt(5)) * index
    radius = np.sqrt(1 - z**2)
    return np.c_[radius * np.cos(azimuth), radius * np.sin(azimuth), z]


def _write(folder: Path, bvals: str, bvecs: str) -> tuple[Path, Path]:
    bval_path, bvec_path = folder / "sub-01_dwi.bval", folder / "sub-01_dwi.bvec"
    bval_path.write_text(bvals)
    bvec_path.write_text(bvecs)
    return bval_path, bvec_path


def _rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    """Rodrigues' rotation matrix."""
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = np.deg2rad(degrees)
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


# Reading


def test_reads_fsl_files_with_trailing_whitespace(tmp_path):
    bvals, bvecs = _write(tmp_path, "0 1000  1000 \n\n", "0 1 0  \n0 0 1\n0 0 0\n\n  \n")
    table = read_gradients(bvals, bvecs, 3)
    np.testing.assert_array_equal(table.bvals, [0, 1000, 1000])
    np.testing.assert_array_equal(table.bvecs, [[0, 0, 0], [1, 0, 0], [0, 1, 0]])
    assert table.source == "sub-01_dwi.bvec"


@pytest.mark.parametrize(
    ("bvals", "bvecs", "n_volumes", "message"),
    [
        ("0 1000 x", "0 1 0\n0 0 1\n0 0 0", 3, r"sub-01_dwi\.bval: not a table of numbers"),
        ("0 1000 1000", "0 1 0\n0 0 1\n0 0 a", 3, r"sub-01_dwi\.bvec: not a table of numbers"),
        ("0 1000", "0 1\n0 0\n0 0", 3, r"sub-01_dwi\.bval: 2 b-values for an image of 3 volumes"),
        ("0 1000 1000", "0 1\n0 0\n0 0", 3, r"bvec: 2 b-vectors for an image of 3 volumes"),
        ("0 -5 1000", "0 1 0\n0 0 1\n0 0 0", 3, r"bval: negative b-values at volumes 1"),
        ("0 nan 1000", "0 1 0\n0 0 1\n0 0 0", 3, r"bval: contains NaN"),
        ("0 1000 1000", "0 1 0\n0 NaN 1\n0 0 0", 3, r"bvec: contains NaN"),
        ("0 1000\n1000", "0 1 0\n0 0 1\n0 0 0", 3, r"bval: expected one row"),
        (
            "0 1000 1000 1000",
            "0 0 0\n1 0 0\n0 1 0\n0 0 1",
            4,
            r"bvec: expected 3 rows .*found 4 rows of 3 values",
        ),
        ("0 1000 1000", "0 1 0\n0 0\n0 0 0", 3, r"bvec: rows of unequal length \(3, 2, 3 values\)"),
        ("", "0 1 0\n0 0 1\n0 0 0", 3, r"bval: the file is empty"),
    ],
)
def test_bad_files_raise_one_line_naming_the_file(tmp_path, bvals, bvecs, n_volumes, message):
    with pytest.raises(GradientError, match=message) as raised:
        read_gradients(*_write(tmp_path, bvals, bvecs), n_volumes)
    assert "\n" not in str(raised.value)


def test_missing_and_unreadable_files(tmp_path):
    bvals, bvecs = _write(tmp_path, "0 1000", "0 1\n0 0\n0 0")
    with pytest.raises(GradientError, match=r"^missing\.bvec: cannot read the file"):
        read_gradients(bvals, tmp_path / "missing.bvec", 2)
    bvals.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(GradientError, match=r"^sub-01_dwi\.bval: cannot read the file"):
        read_gradients(bvals, bvecs, 2)


# Tensor design


@pytest.mark.parametrize("directions", [JONES6, ICOSAHEDRON_HALF, _cap(90, 30)])
def test_well_spread_directions_pass(directions):
    assert design_condition_number(directions) < 3
    check_tensor_design(*_with_b0(directions))


def test_philips_style_b0_passes():
    bvals, bvecs = _with_b0(JONES6)
    bvals[0] = 0.004
    bvecs[0] = [0.614207, -0.586216, 0.528299]
    check_tensor_design(bvals, bvecs)


def test_no_b0_volume():
    with pytest.raises(GradientError, match=r"no b~0 volume \(b <= 50; smallest b is 1000\)"):
        check_tensor_design(np.full(6, 1000.0), JONES6)


def test_non_unit_bvecs_name_the_volumes():
    bvals, bvecs = _with_b0(JONES6)
    bvecs[2] *= 0.5
    bvecs[5] *= 1.2
    with pytest.raises(GradientError, match=r"volumes 2, 5 are not unit length"):
        check_tensor_design(bvals, bvecs, source="sub-01_dwi.bvec")
    check_tensor_design(bvals, bvecs, unit_tolerance=0.6)


def test_fewer_than_six_distinct_directions():
    repeated = np.vstack([JONES6[:5], -JONES6[0]])
    with pytest.raises(GradientError, match=r"5 distinct diffusion directions; a tensor needs"):
        check_tensor_design(*_with_b0(repeated))


@pytest.mark.parametrize("count", [6, 12, 30])
def test_coplanar_directions_are_distinct_yet_refused(count):
    angles = np.linspace(0, np.pi, count, endpoint=False)
    coplanar = np.c_[np.cos(angles), np.sin(angles), np.zeros(count)]
    assert design_condition_number(coplanar) == np.inf
    with pytest.raises(
        GradientError,
        match=rf"^sub-01_dwi\.bvec: the {count} diffusion directions cannot support a tensor "
        r"\(condition number inf; coplanar or too clustered\)$",
    ):
        check_tensor_design(*_with_b0(coplanar), source="sub-01_dwi.bvec")


@pytest.mark.parametrize("count", [6, 12, 30])
def test_directions_within_a_narrow_cone_are_refused(count):
    clustered = _cap(10, count)
    assert MAX_CONDITION_NUMBER < design_condition_number(clustered) < np.inf
    with pytest.raises(GradientError, match=r"condition number \d\.\de\+0[2-9]; coplanar or too"):
        check_tensor_design(*_with_b0(clustered))


# Orientation


LAS = np.diag([-2.0, 2.0, 2.0, 1.0])
RAS = np.diag([2.0, 2.0, 2.0, 1.0])


def _oblique() -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = _rotation([1, 2, 3], 25) @ np.diag([-1.8, 2.0, 2.5])
    affine[:3, 3] = [90, -100, -60]
    return affine


@pytest.mark.parametrize("affine", [LAS, RAS, _oblique()], ids=["LAS", "RAS", "oblique"])
def test_world_and_voxel_round_trip(affine):
    rng = np.random.default_rng(0)
    bvecs = rng.normal(size=(10, 3))
    bvecs /= np.linalg.norm(bvecs, axis=1, keepdims=True)
    bvecs[0] = 0
    world = bvecs_to_world(bvecs, affine)
    np.testing.assert_allclose(np.linalg.norm(world[1:], axis=1), 1)
    np.testing.assert_array_equal(world[0], 0)
    np.testing.assert_allclose(bvecs_to_voxel(world, affine), bvecs, atol=1e-12)


def test_the_same_direction_in_las_and_ras_files_of_one_head():
    """FSL flips x for a positive determinant, so both files hold the same .bvec (-1, 0, 0)
    for a gradient along world +x (towards the subject's right)."""
    towards_right = np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 1]])
    las_file = bvecs_to_voxel(towards_right, LAS)
    ras_file = bvecs_to_voxel(towards_right, RAS)
    np.testing.assert_allclose(las_file[0], [-1, 0, 0])
    np.testing.assert_allclose(ras_file, las_file)
    np.testing.assert_allclose(bvecs_to_world(las_file, LAS), towards_right)
    np.testing.assert_allclose(bvecs_to_world(ras_file, RAS), towards_right)


def test_oblique_affine_uses_its_rotation_without_zooms():
    affine = np.eye(4)
    affine[:3, :3] = _rotation([0, 0, 1], 30) @ np.diag([-2.0, 2.0, 3.0])
    world = bvecs_to_world(np.array([[1.0, 0, 0]]), affine)
    np.testing.assert_allclose(world[0], [-np.cos(np.pi / 6), -np.sin(np.pi / 6), 0], atol=1e-12)


# Rotation


def test_a_known_rotation_applied_then_undone():
    rng = np.random.default_rng(1)
    world = rng.normal(size=(8, 3))
    world /= np.linalg.norm(world, axis=1, keepdims=True)
    world[0] = 0
    rotations = np.stack([_rotation(rng.normal(size=3), degrees) for degrees in range(0, 40, 5)])
    rotated = rotate_bvecs(world, rotations)
    np.testing.assert_allclose(rotated[3], rotations[3] @ world[3])
    np.testing.assert_array_equal(rotated[0], 0)
    np.testing.assert_allclose(rotate_bvecs(rotated, rotations.transpose(0, 2, 1)), world)


def test_scale_and_shear_do_not_bend_the_vector():
    rotation = _rotation([0, 1, 1], 12)
    stretch = np.array([[1.05, 0.03, 0.0], [0.03, 0.97, 0.02], [0.0, 0.02, 1.01]])
    motion = np.eye(4)
    motion[:3, :3] = rotation @ stretch
    motion[:3, 3] = [1.5, -2, 0.3]
    vector = np.array([[0.0, 0.6, 0.8]])
    np.testing.assert_allclose(rotate_bvecs(vector, motion[None]), vector @ rotation.T)


def test_rotation_needs_one_matrix_per_volume():
    with pytest.raises(ValueError, match="2 matrices for 3 b-vectors"):
        rotate_bvecs(np.zeros((3, 3)), np.stack([np.eye(3)] * 2))


# Real scans


@pytest.mark.skipif(not SHARED_DWI.is_dir(), reason=f"real DWI data absent ({SHARED_DWI})")
@pytest.mark.parametrize("name", sorted(REAL_SCANS))
def test_real_scans_pass(name):
    stem = SHARED_DWI / REAL_SCANS[name]
    image = nib.load(f"{stem}.nii.gz")
    table = read_gradients(f"{stem}.bval", f"{stem}.bvec", image.shape[3])
    check_tensor_design(table.bvals, table.bvecs, source=table.source)
    world = bvecs_to_world(table.bvecs, image.affine)
    np.testing.assert_allclose(bvecs_to_voxel(world, image.affine), table.bvecs, atol=1e-5)


@pytest.mark.skipif(not SHARED_DWI.is_dir(), reason=f"real DWI data absent ({SHARED_DWI})")
def test_real_scan_header_facts():
    philips = SHARED_DWI / REAL_SCANS["philips_dti12"]
    image = nib.load(f"{philips}.nii.gz")
    table = read_gradients(f"{philips}.bval", f"{philips}.bvec", image.shape[3])
    assert image.shape == (112, 112, 32, 17)
    b0 = table.bvals <= 50
    assert b0.sum() == 5 and np.all(table.bvals[b0] <= 0.004)
    assert np.all(table.bvals[~b0] == 1000) and (~b0).sum() == 12

    xa30 = SHARED_DWI / REAL_SCANS["xa30_dir20"]
    image = nib.load(f"{xa30}.nii.gz")
    table = read_gradients(f"{xa30}.bval", f"{xa30}.bvec", image.shape[3])
    assert image.shape == (72, 72, 39, 21)
    np.testing.assert_array_equal(table.bvals, [0] + [2500] * 20)
