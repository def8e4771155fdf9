"""Diffusion gradient tables: reading FSL ``.bval``/``.bvec`` files, checking that they can
support a tensor fit, and moving b-vectors between the image's voxel axes and world space.

FSL's convention (which BIDS adopts for ``.bvec``): a b-vector is given in the image's voxel
axes, in FSL's "radiological" voxel space. When the voxel-to-world affine has a positive
determinant (a "neurological" image, for instance RAS), FSL flips the first voxel axis, so the
x component of the b-vector is negated with respect to the stored voxel axes; when it is
negative (LAS, as dcm2niix writes), no flip. The same physical direction therefore has the same
``.bvec`` whether the image is stored LAS or RAS. See the MRtrix3 documentation, "Diffusion
gradient scheme handling" (FSL format), and the FSL FAQ on the radiological voxel convention.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.linalg import polar

#: b-values at or below this (s/mm^2) count as b~0: Philips writes its b~0 as 0.001-0.004.
B0_THRESHOLD = 50.0
#: Largest allowed departure of a diffusion-weighted b-vector's length from 1.
UNIT_TOLERANCE = 0.1
#: Largest condition number of the unit-vector tensor design matrix (6 columns, see
#: ``tensor_design_matrix``). Measured: Jones 6 2.0, icosahedron half 1.6, the real Philips
#: 12-direction and Siemens 20-direction scans 2.9 and 1.6, 12 random directions on the sphere
#: 3.7 (median; 11 at the 99th percentile), 6 random ones 22 (median); directions filling a
#: 10-degree cone 144 or more (30 directions) and 270 or more (6), a 20-degree cone 30-370;
#: coplanar directions and a single ring on a cone are singular. Above 100 a fit amplifies
#: noise a hundredfold along its worst combination of tensor elements.
MAX_CONDITION_NUMBER = 100.0
#: Two b-vectors closer than this angle (degrees, sign ignored) count as one direction.
SAME_DIRECTION_DEGREES = 1.0
#: Vectors shorter than this are b~0 rows with no direction.
ZERO_LENGTH = 1e-6


class GradientError(ValueError):
    """A gradient table that cannot be read or cannot support a tensor fit."""


@dataclass(frozen=True)
class Gradients:
    """A gradient table: one b-value (s/mm^2) and one b-vector (FSL voxel axes) per volume."""

    bvals: np.ndarray
    bvecs: np.ndarray
    source: str


def _read_rows(path: Path) -> list[list[float]]:
    """The non-empty lines of a text file as rows of floats; one-line errors naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise GradientError(f"{path.name}: cannot read the file ({reason})") from None
    try:
        rows = [[float(value) for value in line.split()] for line in text.splitlines()]
    except ValueError as error:
        raise GradientError(f"{path.name}: not a table of numbers ({error})") from None
    rows = [row for row in rows if row]
    if not rows:
        raise GradientError(f"{path.name}: the file is empty")
    if any(not np.all(np.isfinite(row)) for row in rows):
        raise GradientError(f"{path.name}: contains NaN or infinite values")
    return rows


def _read_bvals(path: Path, n_volumes: int) -> np.ndarray:
    rows = _read_rows(path)
    if len(rows) != 1:
        raise GradientError(f"{path.name}: expected one row of b-values, found {len(rows)} rows")
    bvals = np.asarray(rows[0], dtype=float)
    if bvals.size != n_volumes:
        raise GradientError(
            f"{path.name}: {bvals.size} b-values for an image of {n_volumes} volumes"
        )
    if np.any(bvals < 0):
        raise GradientError(f"{path.name}: negative b-values at volumes {_volumes(bvals < 0)}")
    return bvals


def _read_bvecs(path: Path, n_volumes: int) -> np.ndarray:
    rows = _read_rows(path)
    lengths = [len(row) for row in rows]
    if len(set(lengths)) > 1:
        counts = ", ".join(map(str, lengths))
        raise GradientError(f"{path.name}: rows of unequal length ({counts} values)")
    if len(rows) != 3:
        raise GradientError(
            f"{path.name}: expected 3 rows (x, y, z: the FSL layout), found {len(rows)} rows "
            f"of {lengths[0]} values"
        )
    bvecs = np.asarray(rows, dtype=float).T
    if len(bvecs) != n_volumes:
        raise GradientError(
            f"{path.name}: {len(bvecs)} b-vectors for an image of {n_volumes} volumes"
        )
    return bvecs


def read_gradients(bval_path: str | Path, bvec_path: str | Path, n_volumes: int) -> Gradients:
    """Read an FSL/BIDS ``.bval`` (one row) and ``.bvec`` (3 rows x volumes) pair.

    Only the FSL layout is accepted: a ``.bvec`` of one row per volume is refused rather than
    guessed, since a 3-volume table would be ambiguous.
    """
    bvals = _read_bvals(Path(bval_path), n_volumes)
    bvecs = _read_bvecs(Path(bvec_path), n_volumes)
    return Gradients(bvals=bvals, bvecs=bvecs, source=Path(bvec_path).name)


def _volumes(mask: np.ndarray) -> str:
    """Zero-based volume indices of a mask, for messages."""
    return ", ".join(str(index) for index in np.flatnonzero(mask))


def tensor_design_matrix(directions: np.ndarray) -> np.ndarray:
    """The 6-column tensor design (gx^2, gy^2, gz^2, 2gxgy, 2gxgz, 2gygz) of unit directions.

    b is left out so that the conditioning measures the directions alone, whatever the shell.
    """
    gx, gy, gz = np.asarray(directions, dtype=float).T
    return np.stack([gx * gx, gy * gy, gz * gz, 2 * gx * gy, 2 * gx * gz, 2 * gy * gz], axis=1)


def count_distinct_directions(directions: np.ndarray) -> int:
    """How many axes the unit directions span, antipodal vectors and near-repeats counted once."""
    threshold = np.cos(np.deg2rad(SAME_DIRECTION_DEGREES))
    kept: list[np.ndarray] = []
    for direction in np.asarray(directions, dtype=float):
        if all(abs(direction @ other) < threshold for other in kept):
            kept.append(direction)
    return len(kept)


def design_condition_number(directions: np.ndarray) -> float:
    """Condition number of the tensor design of unit directions (inf when rank < 6)."""
    singular = np.linalg.svd(tensor_design_matrix(directions), compute_uv=False)
    if singular.size < 6 or singular[-1] <= singular[0] * 1e-12:
        return float("inf")
    return float(singular[0] / singular[-1])


def _check_lengths(bvecs: np.ndarray, weighted: np.ndarray, tolerance: float, source: str) -> None:
    lengths = np.linalg.norm(bvecs, axis=1)
    bad = weighted & (np.abs(lengths - 1) > tolerance)
    if np.any(bad):
        raise GradientError(
            f"{source}: b-vectors of diffusion-weighted volumes {_volumes(bad)} are not unit "
            f"length (lengths {', '.join(f'{value:.3g}' for value in lengths[bad])})"
        )


def check_tensor_design(
    bvals: np.ndarray,
    bvecs: np.ndarray,
    b0_threshold: float = B0_THRESHOLD,
    unit_tolerance: float = UNIT_TOLERANCE,
    *,
    source: str = "gradient table",
) -> None:
    """Raise GradientError unless the table has a b~0 volume and can support a tensor fit.

    Checks, in order: a b~0 volume (b <= ``b0_threshold``), unit b-vectors for b > threshold,
    at least 6 distinct directions, and a tensor design of full rank whose condition number is
    at most ``MAX_CONDITION_NUMBER`` (coplanar directions are distinct yet singular).
    """
    bvals = np.asarray(bvals, dtype=float)
    bvecs = np.asarray(bvecs, dtype=float)
    weighted = bvals > b0_threshold
    if not np.any(~weighted):
        raise GradientError(
            f"{source}: no b~0 volume (b <= {b0_threshold:g}; smallest b is {bvals.min():g})"
        )
    _check_lengths(bvecs, weighted, unit_tolerance, source)
    directions = bvecs[weighted] / np.linalg.norm(bvecs[weighted], axis=1, keepdims=True)
    distinct = count_distinct_directions(directions)
    if distinct < 6:
        raise GradientError(
            f"{source}: {distinct} distinct diffusion directions; a tensor needs at least 6"
        )
    condition = design_condition_number(directions)
    if condition > MAX_CONDITION_NUMBER:
        raise GradientError(
            f"{source}: the {len(directions)} diffusion directions cannot support a tensor "
            f"(condition number {condition:.1e}; coplanar or too clustered)"
        )


def _voxel_to_world_rotation(affine: np.ndarray) -> np.ndarray:
    """The orthogonal part of the affine's 3x3 (polar decomposition: zooms and shears removed).

    It keeps the affine's handedness: a reflection for a negative determinant.
    """
    orthogonal, _ = polar(np.asarray(affine, dtype=float)[:3, :3])
    return orthogonal


def _fsl_flip(affine: np.ndarray) -> np.ndarray:
    """FSL's voxel-axis flip: x negated when the voxel-to-world determinant is positive."""
    flip = np.ones(3)
    if np.linalg.det(np.asarray(affine, dtype=float)[:3, :3]) > 0:
        flip[0] = -1.0
    return flip


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; zero rows (b~0 volumes) stay zero."""
    lengths = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.where(lengths > ZERO_LENGTH, vectors / np.maximum(lengths, ZERO_LENGTH), 0.0)


def bvecs_to_world(bvecs: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """FSL-convention b-vectors (N, 3) of an image to world (RAS+) unit vectors."""
    voxel = np.asarray(bvecs, dtype=float) * _fsl_flip(affine)
    return _unit_rows(voxel @ _voxel_to_world_rotation(affine).T)


def bvecs_to_voxel(world_bvecs: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World (RAS+) b-vectors (N, 3) to FSL-convention b-vectors of the image with ``affine``.

    The inverse of ``bvecs_to_world``: for writing the rotated ``.bvec`` of a resampled series.
    """
    voxel = np.asarray(world_bvecs, dtype=float) @ _voxel_to_world_rotation(affine)
    return _unit_rows(voxel * _fsl_flip(affine))


def rotate_bvecs(world_bvecs: np.ndarray, rotation_matrices: np.ndarray) -> np.ndarray:
    """Rotate each world b-vector by its volume's motion (one 3x3 or 4x4 matrix per volume).

    Each matrix maps the volume's world coordinates onto the reference's; only its rotation
    (polar decomposition) is applied, so scales and shears of an eddy-current affine do not
    bend the vector. Results are unit length; zero rows stay zero.
    """
    world_bvecs = np.asarray(world_bvecs, dtype=float)
    matrices = np.asarray(rotation_matrices, dtype=float)[:, :3, :3]
    if len(matrices) != len(world_bvecs):
        raise ValueError(f"{len(matrices)} matrices for {len(world_bvecs)} b-vectors")
    rotated = [
        polar(matrix)[0] @ vector for matrix, vector in zip(matrices, world_bvecs, strict=True)
    ]
    return _unit_rows(np.asarray(rotated).reshape(-1, 3))
