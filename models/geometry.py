"""Grid geometry and resampling: world-coordinate boxes, model grids, affine resampling.

Orientation and voxel size are carried by the affine at every step; nothing assumes RAS or
1 mm. Numpy and scipy only, so that the sample generator and the training data use it too.
"""

from __future__ import annotations

from collections.abc import Sequence

import nibabel as nb
import numpy as np
from scipy import ndimage


def world_bounds(affine: np.ndarray, ranges: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest world coordinates of the corners of a box of voxel ``ranges``."""
    corners = np.array(np.meshgrid(*ranges, indexing="ij")).reshape(3, -1).T
    world = nb.affines.apply_affine(affine, corners)
    return world.min(0), world.max(0)


def image_bounds(image: nb.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    """World bounds of the centres of an image's corner voxels."""
    return world_bounds(image.affine, [(0, n - 1) for n in image.shape[:3]])


def mask_bounds(
    mask: np.ndarray, affine: np.ndarray, margin_mm: float
) -> tuple[np.ndarray, np.ndarray] | None:
    """World bounds of a mask's bounding box plus ``margin_mm`` (None for an empty mask)."""
    voxels = np.argwhere(mask)
    if not len(voxels):
        return None
    low, high = world_bounds(affine, list(zip(voxels.min(0), voxels.max(0), strict=True)))
    return low - margin_mm, high + margin_mm


def model_grid(
    image: nb.Nifti1Image,
    voxel_mm: float,
    divisor: int,
    bounds: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[tuple[int, ...], np.ndarray]:
    """RAS grid at ``voxel_mm`` covering the image (or the world ``bounds`` low, high), each
    size a multiple of ``divisor``."""
    low, high = image_bounds(image) if bounds is None else bounds
    shape = np.ceil((high - low) / voxel_mm).astype(int) + 1
    shape = (np.ceil(shape / divisor) * divisor).astype(int)
    centre = (low + high) / 2
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = centre - (shape - 1) * voxel_mm / 2
    return tuple(int(s) for s in shape), affine


def resample_voxels(
    data: np.ndarray, voxel_map: np.ndarray, target_shape: Sequence[int], order: int = 1
) -> np.ndarray:
    """Resample ``data`` onto a grid whose voxel ``(i, j, k)`` lies at ``voxel_map @ (i, j,
    k, 1)`` in ``data``'s voxels; zeros outside."""
    return ndimage.affine_transform(
        data,
        voxel_map[:3, :3],
        voxel_map[:3, 3],
        output_shape=tuple(target_shape),
        order=order,
        cval=0.0,
    )


def resample(
    data: np.ndarray,
    source_affine: np.ndarray,
    target_shape: Sequence[int],
    target_affine: np.ndarray,
    order: int = 1,
) -> np.ndarray:
    """Resample ``data`` (on ``source_affine``) onto a target grid, zeros outside."""
    return resample_voxels(data, np.linalg.inv(source_affine) @ target_affine, target_shape, order)


def rotation_matrix(angles_deg: tuple[float, float, float]) -> np.ndarray:
    """Rz Ry Rx of angles (degrees) about the world x, y, z axes."""
    x, y, z = np.radians(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    return rz @ ry @ rx
