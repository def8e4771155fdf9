"""Report figures: mosaics of an anatomical image with contours or label overlays (nilearn),
and the diffusion figures (FA, colour FA, head motion)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nb  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from nilearn import plotting  # noqa: E402
from scipy import ndimage  # noqa: E402

from bids_dl.derivatives import TISSUE_LOOKUP  # noqa: E402

#: Rows of a mosaic: display mode and number of cuts.
MOSAIC_ROWS = (("x", 6), ("y", 6), ("z", 6))


def _mask_slices(mask: np.ndarray, axis: int) -> np.ndarray:
    """Indices of the slices along ``axis`` that hold part of the mask."""
    return np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))[0]


def _cut_coords(image: nb.Nifti1Image, mask: np.ndarray, axis: int, count: int) -> list[float]:
    """World coordinates of ``count`` evenly spaced cuts through the mask along ``axis``."""
    indices = _mask_slices(mask, axis)
    if indices.size == 0:
        indices = np.arange(image.shape[axis])
    positions = np.linspace(indices.min(), indices.max(), count + 2)[1:-1]
    voxel = np.zeros((count, 3))
    voxel[:, axis] = positions
    return list(nb.affines.apply_affine(image.affine, voxel)[:, axis])


def display_range(data: np.ndarray, extent: np.ndarray) -> tuple[float, float | None]:
    """Grey-level window: from the darkest 1% of the image (the background: 0 in a raw head, a
    negative constant in a z-scored BraTS image, where a window from 0 showed the brain black)
    to the 99.5th percentile inside ``extent`` (the part the figure is about)."""
    vmax = float(np.percentile(data[extent], 99.5)) if extent.any() else None
    return float(np.percentile(data, 1)), vmax


def _save(figure, out_file: str | Path) -> Path:
    """Write ``figure`` as a PNG on black and close it."""
    out_file = Path(out_file)
    figure.savefig(out_file, dpi=80, facecolor="black")
    plt.close(figure)
    return out_file


def _mosaic(
    anat_file: str | Path,
    out_file: str | Path,
    extent_mask: np.ndarray | None,
    decorate,
    title: str,
    window: tuple[float, float] | None = None,
) -> Path:
    """Rows of cuts (``MOSAIC_ROWS``) through ``extent_mask``; ``window`` fixes the grey levels
    (otherwise ``display_range``)."""
    anat = nb.as_closest_canonical(nb.load(str(anat_file)))
    data = anat.get_fdata(dtype=np.float32)
    mask = extent_mask if extent_mask is not None else data > np.percentile(data, 60)
    figure = plt.figure(figsize=(12, 2.2 * len(MOSAIC_ROWS)), facecolor="black")
    vmin, vmax = window if window is not None else display_range(data, mask)
    for row, (mode, count) in enumerate(MOSAIC_ROWS):
        axes = figure.add_axes((0, 1 - (row + 1) / len(MOSAIC_ROWS), 1, 1 / len(MOSAIC_ROWS)))
        display = plotting.plot_anat(
            anat,
            display_mode=mode,
            cut_coords=_cut_coords(anat, mask, "xyz".index(mode), count),
            axes=axes,
            figure=figure,
            vmin=vmin,
            vmax=vmax,
            annotate=row == 0,
            draw_cross=False,
            black_bg=True,
            dim=0,
            colorbar=False,
            title=title if row == 0 else None,
        )
        decorate(display)
    return _save(figure, out_file)


def _canonical_mask(path: str | Path) -> tuple[nb.Nifti1Image, np.ndarray]:
    image = nb.as_closest_canonical(nb.load(str(path)))
    return image, image.get_fdata() > 0.5


def plot_brain_mask(anat_file: str, mask_file: str, out_file: str) -> Path:
    """The brain-mask contour (red) on the T1w: checks brain extraction."""
    mask_image, mask = _canonical_mask(mask_file)

    def decorate(display):
        display.add_contours(mask_image, levels=[0.5], colors=["#ff3030"], linewidths=1.2)

    return _mosaic(anat_file, out_file, mask, decorate, "brain mask")


def plot_registration(
    std_file: str, template_mask_file: str, template_tissue_files: Sequence[str], out_file: str
) -> Path:
    """The T1w in template space with the template's brain and GM/WM contours on top."""
    mask_image, mask = _canonical_mask(template_mask_file)

    def decorate(display):
        display.add_contours(mask_image, levels=[0.5], colors=["#ff3030"], linewidths=1.0)
        for path, color in zip(template_tissue_files, ("#ffd700", "#00e0ff"), strict=False):
            display.add_contours(str(path), levels=[0.5], colors=[color], linewidths=0.7)

    return _mosaic(std_file, out_file, mask, decorate, "T1w in template space, template contours")


def two_class_level(values: np.ndarray, iterations: int = 100) -> float:
    """Intensity that splits ``values`` in two classes (Ridler and Calvard's isodata: midway
    between the means below and above it); inside a T1w brain it parts CSF from tissue."""
    level = float(values.mean())
    for _ in range(iterations):
        below, above = values[values <= level], values[values > level]
        if below.size == 0 or above.size == 0:
            break
        updated = float(below.mean() + above.mean()) / 2
        if np.isclose(updated, level):
            break
        level = updated
    return level


def plot_coregistration(
    moving_file: str, reference_file: str, mask_file: str, out_file: str
) -> Path:
    """Another contrast resampled onto the T1w, with the T1w's brain outline (red) and its
    main intensity edge inside the brain (cyan: the lightly smoothed T1w at a two-class level,
    which traces ventricles and sulci) on top: where the registration is off, the contrast's
    anatomy slides out of the lines."""
    mask_image, mask = _canonical_mask(mask_file)
    reference = nb.as_closest_canonical(nb.load(str(reference_file)))
    zooms = reference.header.get_zooms()[:3]
    smoothed = ndimage.gaussian_filter(
        reference.get_fdata(dtype=np.float32), sigma=[1.0 / z for z in zooms]
    )
    level = two_class_level(smoothed[mask] if mask.any() else smoothed.ravel())
    boundary = nb.Nifti1Image(np.where(mask, smoothed, smoothed.min()), reference.affine)

    def decorate(display):
        display.add_contours(mask_image, levels=[0.5], colors=["#ff3030"], linewidths=1.0)
        display.add_contours(boundary, levels=[level], colors=["#00e0ff"], linewidths=0.8)

    return _mosaic(moving_file, out_file, mask, decorate, "registered to the T1w: T1w contours")


def plot_tissues(anat_file: str, dseg_file: str, mask_file: str, out_file: str) -> Path:
    """GM (blue), WM (green) and CSF (red) labels over the T1w."""
    dseg = nb.as_closest_canonical(nb.load(str(dseg_file)))
    _, mask = _canonical_mask(mask_file)
    colormap = ListedColormap([color for *_, color in TISSUE_LOOKUP])

    def decorate(display):
        # threshold=0.5 leaves the background (label 0) transparent
        display.add_overlay(dseg, cmap=colormap, vmin=1, vmax=3, threshold=0.5, transparency=0.45)

    return _mosaic(anat_file, out_file, mask, decorate, "tissues: GM, WM, CSF")


def _indexed_overlay(labels_file: str, colours: dict[int, str]):
    """A decorator of ``_mosaic`` drawing labels in the given colours (others transparent)."""
    labels = nb.as_closest_canonical(nb.load(str(labels_file)))
    values = sorted(colours)
    # consecutive indices so that one listed colour maps to each label value
    remap = np.zeros(max(values) + 1, dtype=np.int16)
    remap[values] = np.arange(1, len(values) + 1)
    data = np.asarray(labels.dataobj).astype(int)
    indexed = nb.Nifti1Image(remap[np.where(data <= max(values), data, 0)], labels.affine)
    colormap = ListedColormap([colours[v] for v in values])

    def decorate(display):
        display.add_overlay(
            indexed, cmap=colormap, vmin=1, vmax=len(values), threshold=0.5, transparency=0.5
        )

    return decorate


def plot_structures(anat_file: str, aseg_file: str, mask_file: str, out_file: str) -> Path:
    """Brain structures in FreeSurfer colours over the T1w."""
    from bids_dl.models.labels import STRUCTURES

    _, mask = _canonical_mask(mask_file)
    decorate = _indexed_overlay(aseg_file, {v: row[3] for v, row in STRUCTURES.items()})
    return _mosaic(anat_file, out_file, mask, decorate, f"{len(STRUCTURES)} brain structures")


def plot_lesions(anat_file: str, labels_file: str, task: str, out_file: str) -> Path:
    """Tumour labels (core red, edema green, enhancing yellow) or WMH (magenta) over an image,
    with cuts through the lesions and their volumes in the title."""
    from bids_dl.derivatives import TUMOR_STYLE
    from bids_dl.models.labels import TUMOR_REGIONS
    from bids_dl.models.metrics import voxel_volume_mm3

    image = nb.as_closest_canonical(nb.load(str(labels_file)))
    labels = np.asarray(image.dataobj).astype(int)
    millilitres = voxel_volume_mm3(image) / 1000
    if task == "tumor":
        colours = {value: colour for value, (_, colour) in TUMOR_STYLE.items()}
        title = "tumour: whole {:.1f} mL, core {:.1f} mL, enhancing {:.1f} mL".format(
            *(np.isin(labels, members).sum() * millilitres for members in TUMOR_REGIONS.values())
        )
    else:
        colours = {1: "#ff30ff"}
        title = f"white-matter hyperintensities: {(labels > 0).sum() * millilitres:.1f} mL"
    extent = labels > 0
    if not extent.any():
        extent = None
        title += " (none found)"
    return _mosaic(anat_file, out_file, extent, _indexed_overlay(labels_file, colours), title)


def plot_fa(fa_file: str, mask_file: str, out_file: str) -> Path:
    """Fractional anisotropy in grey (0 black, 1 white) with the brain-mask outline (red)."""
    mask_image, mask = _canonical_mask(mask_file)

    def decorate(display):
        display.add_contours(mask_image, levels=[0.5], colors=["#ff3030"], linewidths=1.0)

    return _mosaic(fa_file, out_file, mask, decorate, "FA", window=(0.0, 1.0))


def color_fa(fa: np.ndarray, v1: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Directionally encoded colour: RGB = |V1| * FA, V1's components along the world axes
    (red left-right, green anterior-posterior, blue inferior-superior); outside ``mask`` black.
    Returns the array of ``fa``'s shape plus a last axis of 3, in 0-1."""
    fa = np.asarray(fa)
    v1 = np.nan_to_num(np.asarray(v1, dtype=np.float32)).reshape(fa.shape + (3,))
    norm = np.linalg.norm(v1, axis=-1, keepdims=True)
    direction = np.abs(v1) / np.where(norm > 0, norm, 1)
    rgb = direction * np.clip(np.nan_to_num(fa), 0, 1)[..., None]
    if mask is not None:
        rgb[~mask] = 0
    return np.clip(rgb, 0, 1)


def _slice_indices(mask: np.ndarray, axis: int, count: int) -> list[int]:
    """``count`` evenly spaced voxel indices through the mask along ``axis``."""
    indices = _mask_slices(mask, axis)
    if indices.size == 0:
        indices = np.arange(mask.shape[axis])
    positions = np.linspace(indices.min(), indices.max(), count + 2)[1:-1]
    return sorted({int(round(p)) for p in positions})


#: Per cut axis of a RAS array: the letters at the image's left and right edges, as nilearn
#: draws them (neurological: the subject's left on the image's left; anterior to the right).
_EDGE_LETTERS = {0: ("P", "A"), 1: ("L", "R"), 2: ("L", "R")}


def _panel(axes, volume: np.ndarray, zooms, axis: int, index: int, letters: bool, **style) -> None:
    """One cut of a RAS volume (scalar, or RGB along a last axis): the first remaining axis
    across, the second upwards, each voxel drawn at its size in mm; ``style`` goes to
    ``imshow`` (colour map, range)."""
    plane = np.take(volume, index, axis=axis)  # (across, up[, 3])
    across, up = (zooms[a] for a in range(3) if a != axis)
    axes.imshow(
        np.swapaxes(plane, 0, 1), origin="lower", aspect=up / across, interpolation="none", **style
    )
    axes.set_axis_off()
    if letters:
        text = {"color": "white", "va": "center", "fontsize": 11, "transform": axes.transAxes}
        left, right = _EDGE_LETTERS[axis]
        axes.text(0.02, 0.5, left, ha="left", **text)
        axes.text(0.98, 0.5, right, ha="right", **text)


def plot_color_fa(fa_file: str, v1_file: str, mask_file: str, out_file: str) -> Path:
    """Colour FA (``color_fa``) in sagittal, coronal and axial cuts through the brain mask,
    on the RAS-reoriented grid, left-right as in the nilearn figures (neurological). Brightness
    is stretched so that the 99th percentile of FA in the brain is full colour."""
    fa_image = nb.as_closest_canonical(nb.load(str(fa_file)))
    v1_image = nb.as_closest_canonical(nb.load(str(v1_file)))  # components stay world axes
    _, mask = _canonical_mask(mask_file)
    rgb = color_fa(fa_image.get_fdata(dtype=np.float32), v1_image.get_fdata(), mask)
    brightest = np.percentile(rgb.max(axis=-1)[mask], 99) if mask.any() else 1.0
    rgb = np.clip(rgb / max(float(brightest), 1e-3), 0, 1)
    zooms = fa_image.header.get_zooms()[:3]
    figure = plt.figure(figsize=(12, 2.2 * len(MOSAIC_ROWS)), facecolor="black")
    for row, (mode, count) in enumerate(MOSAIC_ROWS):
        axis = "xyz".index(mode)
        indices = _slice_indices(mask, axis, count)
        for column, index in enumerate(indices):
            axes = figure.add_axes(
                (column / count, 1 - (row + 1) / len(MOSAIC_ROWS), 1 / count, 0.86 / 3)
            )
            axes.set_facecolor("black")
            _panel(axes, rgb, zooms, axis, index, letters=column == 0)
    figure.text(0.01, 0.985, "colour FA", color="white", fontsize=13, va="top")
    for x, (words, colour) in zip(
        (0.78, 0.85, 0.92),
        (("red L-R,", "#ff4040"), ("green A-P,", "#40ff40"), ("blue S-I", "#6080ff")),
        strict=True,
    ):
        figure.text(x, 0.985, words, color=colour, fontsize=10, va="top")
    return _save(figure, out_file)


#: The CBF figure: every slice through the brain up to ``CBF_AXIAL_CUTS`` axial cuts (else that
#: many evenly spaced), ``CBF_ROW`` to a row, then a row of ``CBF_ORTHO_CUTS`` coronal and as
#: many sagittal cuts where the brain spans at least ``CBF_ORTHO_MIN_SLICES`` axial slices.
CBF_AXIAL_CUTS, CBF_ROW, CBF_ORTHO_CUTS, CBF_ORTHO_MIN_SLICES = 12, 6, 3, 4
#: Perceptually uniform, black at 0 like the figure's background; negative CBF in the brain is
#: drawn in a colour the map lacks.
CBF_COLORMAP, CBF_NEGATIVE = "inferno", "#00bfff"


def cbf_upper_bound(cbf: np.ndarray, mask: np.ndarray) -> float:
    """Top of the CBF colour scale: the 99th percentile of the finite CBF in the brain mask
    (in the whole image where the mask is empty), rounded up to two significant digits; 1 where
    that is not positive."""
    values = cbf[mask] if mask.any() else cbf.ravel()
    values = values[np.isfinite(values)]
    top = float(np.percentile(values, 99)) if values.size else 0.0
    if top <= 0:
        return 1.0
    step = 10.0 ** (np.floor(np.log10(top)) - 1)
    return float(f"{np.ceil(round(top / step, 6)) * step:.6g}")


def _mean_volume(image: nb.Nifti1Image) -> nb.Nifti1Image:
    """A 3D image: a 4D one's mean over its last axis (a CBF time series)."""
    if len(image.shape) == 3:
        return image
    data = np.asarray(image.dataobj, dtype=np.float32).reshape(image.shape[:3] + (-1,))
    return nb.Nifti1Image(data.mean(axis=-1), image.affine)


def _on_grid(path: str | Path, reference: nb.Nifti1Image, order: int) -> np.ndarray:
    """The data of the image at ``path`` on ``reference``'s (RAS) grid: reoriented where only
    the orientation differs, else resampled (spline ``order``; 0 for masks)."""
    image = nb.as_closest_canonical(_mean_volume(nb.load(str(path))))
    same = image.shape == reference.shape[:3] and np.allclose(image.affine, reference.affine)
    if not same:
        from nibabel.processing import resample_from_to

        image = resample_from_to(image, (reference.shape[:3], reference.affine), order=order)
    return image.get_fdata(dtype=np.float32)


def _bounding_box(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    """The mask's bounding box plus ``margin`` voxels (the whole grid if the mask is empty)."""
    if not mask.any():
        return tuple(slice(None) for _ in range(3))
    return tuple(
        slice(max(int(indices[0]) - margin, 0), int(indices[-1]) + margin + 1)
        for indices in (_mask_slices(mask, axis) for axis in range(3))
    )


def _cbf_rows(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """The (axis, index) of each cut of the CBF figure, row by row (``CBF_AXIAL_CUTS``...)."""
    axial = [int(i) for i in _mask_slices(mask, 2)]
    if len(axial) > CBF_AXIAL_CUTS or not axial:
        axial = _slice_indices(mask, 2, CBF_AXIAL_CUTS)
    rows = [[(2, index) for index in axial[s : s + CBF_ROW]] for s in range(0, len(axial), CBF_ROW)]
    if len(_mask_slices(mask, 2)) >= CBF_ORTHO_MIN_SLICES:
        rows.append(
            [(1, i) for i in _slice_indices(mask, 1, CBF_ORTHO_CUTS)]
            + [(0, i) for i in _slice_indices(mask, 0, CBF_ORTHO_CUTS)]
        )
    return rows


def _row_height(row: list[tuple[int, int]], extent_mm: np.ndarray, width: float) -> float:
    """Height (inches) of a row of cuts ``width`` inches wide each: the tallest cut's at its
    true aspect, between a quarter and 1.25 of the width."""
    ratios = [extent_mm[2 if axis < 2 else 1] / extent_mm[1 if axis == 0 else 0] for axis, _ in row]
    return width * float(np.clip(max(ratios), 0.25, 1.25))


def cut_axes(figure, rows: list, heights: list[float], top: float, total: float):
    """The axes of a mosaic's cuts (rows of (axis, index) from ``_cbf_rows``), laid out from
    ``top`` down (inches of a figure ``total`` high), ``CBF_ROW`` to a row: yields (axes,
    axis, index, letters), letters True for the first cut of each orientation."""
    lettered = set()
    for row, height in zip(rows, heights, strict=True):
        top -= height
        for column, (axis, index) in enumerate(row):
            axes = figure.add_axes(
                (column / CBF_ROW, top / total, 0.97 / CBF_ROW, 0.97 * height / total)
            )
            axes.set_facecolor("black")
            yield axes, axis, index, axis not in lettered
            lettered.add(axis)


def _mask_outline(axes, mask: np.ndarray, axis: int, index: int) -> None:
    """The brain mask's outline (grey) on a cut drawn by ``_panel``."""
    plane = np.take(mask, index, axis=axis).T.astype(np.float32)
    if plane.min() == plane.max():
        return
    limits = axes.get_xlim(), axes.get_ylim()
    axes.contour(plane, levels=[0.5], colors=["#909090"], linewidths=0.6)
    axes.set_xlim(limits[0])
    axes.set_ylim(limits[1])


def _cbf_colorbar(figure, colormap, vmax: float, relative: bool, height: float) -> None:
    """A horizontal colour bar at the bottom of the figure (``height`` inches tall in all)."""
    from matplotlib import cm, colors

    bar = figure.add_axes((0.2, 0.45 / height, 0.36, 0.16 / height))
    mappable = cm.ScalarMappable(norm=colors.Normalize(0, vmax), cmap=colormap)
    colorbar = figure.colorbar(mappable, cax=bar, orientation="horizontal", extend="min")
    colorbar.set_label("relative CBF" if relative else "CBF (mL/100 g/min)", color="white")
    bar.tick_params(colors="white", labelsize=9)
    colorbar.outline.set_edgecolor("white")
    text = {"fontsize": 9, "va": "center", "transform": figure.transFigure}
    middle = 0.53 / height
    figure.text(0.19, middle, "negative", color=CBF_NEGATIVE, ha="right", **text)
    scale = f"0 to {vmax:g}: 99th percentile of the measured CBF in the brain"
    figure.text(0.58, middle, scale, color="#aaaaaa", ha="left", **text)


def plot_cbf(
    cbf_file: str,
    mask_file: str,
    out_file: str,
    enhanced_file: str | None = None,
    relative: bool = False,
) -> Path:
    """CBF in the brain mask: axial cuts through the whole brain (all of them on a thick-slice
    grid) and a row of coronal and sagittal cuts, on the CBF's RAS-reoriented grid, each voxel
    at its size in mm, the subject's left on the image's left; the brain outline in grey and
    negative CBF in blue. With ``enhanced_file`` (the network's CBF), a second block of the same
    cuts on the same colour scale: 0 to ``cbf_upper_bound`` of the measured CBF. ``relative``:
    the CBF is in relative units (no M0 scan). The mask and the enhanced map are resampled onto
    the CBF's grid where they lie on another."""
    reference = nb.as_closest_canonical(_mean_volume(nb.load(str(cbf_file))))
    cbf = reference.get_fdata(dtype=np.float32)
    mask = _on_grid(mask_file, reference, order=0) > 0.5
    vmax = cbf_upper_bound(cbf, mask)
    blocks = [("measured", cbf)]
    if enhanced_file is not None:
        blocks.append(("enhanced (network prediction)", _on_grid(enhanced_file, reference, 1)))
    box = _bounding_box(mask)
    mask = mask[box]
    zooms = reference.header.get_zooms()[:3]
    rows = _cbf_rows(mask)
    width = 12 / CBF_ROW
    heights = [_row_height(row, np.array(mask.shape) * zooms, width) for row in rows]
    title_height, bar_height = 0.35, 0.8
    total = len(blocks) * (title_height + sum(heights)) + bar_height
    colormap = matplotlib.colormaps[CBF_COLORMAP].with_extremes(under=CBF_NEGATIVE, bad="black")
    figure = plt.figure(figsize=(12, total), facecolor="black")
    top = total
    for title, data in blocks:
        shown = np.where(mask, data[box], np.nan)
        figure.text(0.01, (top - 0.08) / total, title, color="white", fontsize=13, va="top")
        top -= title_height
        for axes, axis, index, letters in cut_axes(figure, rows, heights, top, total):
            _panel(axes, shown, zooms, axis, index, letters, cmap=colormap, vmin=0, vmax=vmax)
            _mask_outline(axes, mask, axis, index)
        top -= sum(heights)
    _cbf_colorbar(figure, colormap, vmax, relative, total)
    return _save(figure, out_file)


#: Columns of a confounds table (fMRIPrep names): translations in mm, rotations in radians.
TRANSLATIONS = ("trans_x", "trans_y", "trans_z")
ROTATIONS = ("rot_x", "rot_y", "rot_z")


def _motion_title(fd: np.ndarray) -> str:
    finite = fd[np.isfinite(fd)]
    if finite.size == 0:
        return "head motion: FD n/a"
    return f"head motion: mean FD {finite.mean():.2f} mm, max FD {finite.max():.2f} mm"


def _mark_b0(axes, confounds) -> None:
    """Thin vertical lines at the b=0 volumes (``b_value`` below 50 s/mm²), where present."""
    if "b_value" not in confounds:
        return
    for volume in np.flatnonzero(confounds["b_value"].to_numpy(dtype=float) < 50):
        axes.axvline(volume, color="#666666", linewidth=0.6, zorder=0)


def plot_motion(confounds_file: str, out_file: str) -> Path:
    """Framewise displacement (mm) and the six rigid motion parameters (translations in mm,
    rotations in degrees) per volume; b=0 volumes marked by grey lines where the table has a
    ``b_value`` column. Short series (an ASL run of a few volumes) get a point per volume and
    whole-volume ticks."""
    import pandas as pd
    from matplotlib.ticker import MaxNLocator

    confounds = pd.read_csv(confounds_file, sep="\t", na_values=["n/a"])
    volumes = np.arange(len(confounds))
    fd = confounds.get("framewise_displacement", pd.Series(np.nan, index=volumes))
    fd = fd.to_numpy(dtype=float)
    marker = "." if len(volumes) <= 30 else None
    with plt.style.context("dark_background"):
        figure, (top, bottom) = plt.subplots(2, 1, figsize=(12, 4.4), sharex=True)
        figure.patch.set_facecolor("black")
        top.plot(volumes, fd, color="#ffd700", marker=".", linewidth=1)
        top.set_ylabel("FD (mm)")
        top.set_ylim(bottom=0)
        for names, scale, style in ((TRANSLATIONS, 1.0, "-"), (ROTATIONS, np.degrees(1), "--")):
            for name, colour in zip(names, ("#ff5050", "#50ff50", "#6080ff"), strict=True):
                if name in confounds:
                    values = confounds[name].to_numpy(dtype=float) * scale
                    bottom.plot(
                        volumes, values, style, color=colour, marker=marker, linewidth=1, label=name
                    )
        bottom.set_ylabel("mm / degrees")
        bottom.set_xlabel("volume")
        bottom.set_xlim(-0.5, max(len(volumes), 1) - 0.5)
        bottom.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        if bottom.get_legend_handles_labels()[0]:
            bottom.legend(ncol=6, fontsize=8, loc="upper left", frameon=False)
        for axes in (top, bottom):
            _mark_b0(axes, confounds)
        top.set_title(_motion_title(fd))
        figure.tight_layout()
        return _save(figure, out_file)
