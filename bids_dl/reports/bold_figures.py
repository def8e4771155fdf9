"""fMRI report figures: the carpet plot with its motion traces, network maps and a connectivity
matrix (matplotlib, nilearn); PNG on black as the other report figures, written atomically."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nb  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from nilearn import plotting  # noqa: E402

from bids_dl.derivatives import TISSUE_LOOKUP, write_file_atomic  # noqa: E402
from bids_dl.reports.figures import _save  # noqa: E402

#: the motion-outlier thresholds of the confounds (fMRIPrep's defaults), drawn on the traces
FD_THRESHOLD_MM, STD_DVARS_THRESHOLD = 0.5, 1.5
#: the most voxel rows a carpet draws (every n-th voxel of each tissue): a page shows fewer
CARPET_MAX_ROWS = 6000
#: the carpet's grey scale spans z-scores -2 to 2
CARPET_LIMIT = 2.0
#: the columns of a confounds table that flag the initial non-steady-state volumes
NON_STEADY_STATE_PREFIX = "non_steady_state_outlier"
#: network-map grid: columns, and the share of a map's non-zero voxels left under threshold
NETWORK_COLUMNS, NETWORK_PERCENTILE = 4, 90
#: its heights (inches): the title line and a row of glass brains (three views in 3 inches)
NETWORK_TITLE_IN, NETWORK_ROW_IN = 0.4, 1.3
#: a connectivity matrix's labels are written up to this many regions
MATRIX_MAX_LABELS = 40


def _save_atomic(figure, out_file: str | Path) -> Path:
    """The report's PNG (``figures._save``), written under a temporary name then renamed."""
    return write_file_atomic(Path(out_file), lambda tmp: _save(figure, tmp))


def _read_grid_volume(path: str | Path, shape: tuple[int, ...]) -> np.ndarray:
    """A 3D image (mask, dseg) that must lie on the series' grid."""
    data = np.asarray(nb.load(str(path)).dataobj)
    if data.shape != shape:
        raise ValueError(f"{path}: shape {data.shape}, not the BOLD series' grid {shape}")
    return data


def carpet_rows(series: np.ndarray, skip: int = 0) -> np.ndarray:
    """Voxel series (V, T) less a straight line and scaled to unit sd, both fitted on the
    volumes after the ``skip`` non-steady-state ones (which would set the scale otherwise);
    a voxel constant there is 0."""
    design = np.column_stack([np.ones(series.shape[1]), np.arange(series.shape[1])])
    betas = np.linalg.lstsq(design[skip:], series[:, skip:].T, rcond=None)[0]
    residual = series - (design @ betas).T
    sd = residual[:, skip:].std(axis=1, keepdims=True)
    varies = np.ptp(series[:, skip:], axis=1, keepdims=True) > 0
    return np.where(varies, residual / np.where(varies, sd, 1), 0.0)


def _tissue_groups(mask: np.ndarray, dseg: np.ndarray | None) -> list[tuple[str, str, np.ndarray]]:
    """The carpet's row groups (name, colour, voxels): GM, WM, CSF and the rest of the mask
    when a dseg is given, else the whole mask."""
    if dseg is None:
        return [("brain", "white", mask)]
    groups = [
        (abbrev, colour, mask & (dseg == label)) for label, _, abbrev, colour in TISSUE_LOOKUP
    ]
    groups.append(("other", "#aaaaaa", mask & ~np.isin(dseg, [row[0] for row in TISSUE_LOOKUP])))
    return [group for group in groups if group[2].any()]


def _non_steady_state(confounds: pd.DataFrame) -> int:
    """How many initial volumes the confounds flag as non-steady-state."""
    flags = confounds.filter(regex=rf"^{NON_STEADY_STATE_PREFIX}\d+$").fillna(0).to_numpy()
    flagged = np.flatnonzero(flags.any(axis=1)) if flags.size else np.array([], int)
    return int(flagged.max()) + 1 if flagged.size else 0


def _trace(
    axes, confounds: pd.DataFrame, column: str, label: str, threshold: float, skip: int
) -> None:
    """One confound against volume, its outlier threshold dashed; the y range is set by the
    volumes after the first steady one (the step out of the non-steady state runs off it)."""
    values = confounds.get(column, pd.Series(np.nan, index=confounds.index)).to_numpy(float)
    axes.plot(values, color="#ffd700", linewidth=1)
    axes.axhline(threshold, color="#ff5050", linestyle="--", linewidth=0.8)
    steady = values[skip + 1 :][np.isfinite(values[skip + 1 :])]
    axes.set_ylim(0, 1.1 * max(steady.max() if steady.size else 0.0, 1.5 * threshold))
    axes.set_ylabel(label)


def _carpet(axes, series: np.ndarray, groups, skip: int) -> int:
    """Draw the carpet, groups one above the other and named on the left; returns the rows."""
    stride = max(int(np.ceil(sum(int(g[2].sum()) for g in groups) / CARPET_MAX_ROWS)), 1)
    blocks, ticks = [], []
    for name, colour, voxels in groups:
        block = carpet_rows(series[voxels][::stride].astype(np.float64), skip)
        ticks.append((sum(len(b) for b in blocks) + len(block) / 2, name, colour))
        blocks.append(block)
        axes.axhline(sum(len(b) for b in blocks), color="#ff8c00", linewidth=0.6)
    rows = np.vstack(blocks)
    axes.imshow(
        rows, aspect="auto", cmap="gray", vmin=-CARPET_LIMIT, vmax=CARPET_LIMIT,
        interpolation="nearest", extent=(-0.5, rows.shape[1] - 0.5, len(rows), 0),
    )  # fmt: skip
    axes.set_yticks([t[0] for t in ticks], [t[1] for t in ticks])
    for label, (*_, colour) in zip(axes.get_yticklabels(), ticks, strict=True):
        label.set_color(colour)
    axes.set_xlabel("volume")
    return len(rows)


def plot_carpet(
    bold_file: str,
    mask_file: str,
    confounds_file: str,
    out_file: str,
    dseg_file: str | None = None,
) -> Path:
    """The carpet plot (Power 2017): every brain voxel's series (every n-th beyond
    ``CARPET_MAX_ROWS``) detrended and z-scored, grouped by tissue when a dseg on the series'
    grid is given (1 GM, 2 WM, 3 CSF), under framewise displacement and std DVARS on the same
    volume axis with their outlier thresholds; non-steady-state volumes (the confounds'
    ``non_steady_state_outlierNN`` columns) shaded. Drawn with matplotlib: nilearn's
    ``plot_carpet`` lays out its own axes, so the traces could not share its time axis."""
    image = nb.load(str(bold_file))
    if len(image.shape) != 4 or image.shape[3] < 2:
        raise ValueError(f"{bold_file}: a carpet needs a 4D BOLD series, got shape {image.shape}")
    mask = _read_grid_volume(mask_file, image.shape[:3]) > 0.5
    dseg = None if dseg_file is None else _read_grid_volume(dseg_file, image.shape[:3])
    confounds = pd.read_csv(confounds_file, sep="\t", na_values=["n/a"])
    if len(confounds) != image.shape[3]:
        raise ValueError(f"{confounds_file}: {len(confounds)} rows for {image.shape[3]} volumes")
    skip = _non_steady_state(confounds)
    series = np.asarray(image.dataobj, dtype=np.float32)
    with plt.style.context("dark_background"):
        figure, axes = plt.subplots(
            3, 1, figsize=(12, 8), sharex=True, gridspec_kw={"height_ratios": (1, 1, 5)}
        )
        _trace(axes[0], confounds, "framewise_displacement", "FD (mm)", FD_THRESHOLD_MM, skip)
        _trace(axes[1], confounds, "std_dvars", "std DVARS", STD_DVARS_THRESHOLD, skip)
        rows = _carpet(axes[2], series, _tissue_groups(mask, dseg), skip)
        for panel in axes if skip else ():
            panel.axvspan(-0.5, skip - 0.5, color="#00bfff", alpha=0.25, linewidth=0)
        axes[0].set_title(
            f"carpet: {int(mask.sum())} brain voxels ({rows} drawn), detrended and z-scored"
            + (f"; {skip} non-steady-state volumes shaded" if skip else "")
        )
        figure.tight_layout()
        return _save_atomic(figure, out_file)


def _map_threshold(volume: np.ndarray) -> float:
    """The ``NETWORK_PERCENTILE`` th percentile of a map's absolute non-zero values."""
    values = np.abs(volume[np.isfinite(volume) & (volume != 0)])
    return float(np.percentile(values, NETWORK_PERCENTILE)) if values.size else 0.0


def plot_network_maps(
    components_file: str, out_file: str, title: str | None = None, max_components: int = 20
) -> Path:
    """A grid of glass brains (sagittal, coronal, axial), one per component map of a 4D NIfTI
    in template space (a 3D image is one map), the first ``max_components``, each labelled by
    its index and thresholded at the ``NETWORK_PERCENTILE`` th percentile of its absolute
    non-zero values, positive red and negative blue."""
    image = nb.load(str(components_file))
    if len(image.shape) not in (3, 4):
        raise ValueError(f"{components_file}: component maps are 3D or 4D, got {image.shape}")
    maps = list(nb.four_to_three(image)) if len(image.shape) == 4 else [image]
    shown = maps[:max_components]
    rows = int(np.ceil(len(shown) / NETWORK_COLUMNS))
    total = NETWORK_TITLE_IN + NETWORK_ROW_IN * rows
    figure = plt.figure(figsize=(12, total), facecolor="black")
    for index, component in enumerate(shown):
        row, column = divmod(index, NETWORK_COLUMNS)
        bottom = 1 - (NETWORK_TITLE_IN + NETWORK_ROW_IN * (row + 1)) / total
        axes = figure.add_axes(
            (column / NETWORK_COLUMNS, bottom, 1 / NETWORK_COLUMNS, NETWORK_ROW_IN / total)
        )
        volume = component.get_fdata(dtype=np.float32)
        plotting.plot_glass_brain(
            component, axes=axes, figure=figure, threshold=_map_threshold(volume),
            plot_abs=False, cmap="cold_hot", colorbar=False, black_bg=True, annotate=False,
            title=f"{index:02d}",
        )  # fmt: skip
    heading = title or "network maps"
    if len(maps) > len(shown):
        heading += f" (the first {len(shown)} of {len(maps)})"
    figure.text(0.01, 0.99, heading, color="white", fontsize=13, va="top")
    return _save_atomic(figure, out_file)


def read_connectivity_matrix(relmat_file: str) -> tuple[np.ndarray, list[str]]:
    """A square connectivity matrix from a TSV: the first row holds the region labels, one
    per column, and there is no index column (row i is the region of column i)."""
    table = pd.read_csv(relmat_file, sep="\t", na_values=["n/a"])
    matrix = table.to_numpy(dtype=float)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.size == 0:
        raise ValueError(
            f"{relmat_file}: a connectivity matrix is square with a header of region labels, "
            f"got {matrix.shape[0]} rows under {matrix.shape[1]} labels"
        )
    return matrix, [str(label) for label in table.columns]


def plot_connectivity_matrix(relmat_file: str, out_file: str, title: str | None = None) -> Path:
    """The matrix (``read_connectivity_matrix``) in a diverging colour map centred at 0, its
    range the largest absolute value off the diagonal (a correlation's diagonal of 1 would
    wash out the rest); region labels written up to ``MATRIX_MAX_LABELS`` regions."""
    matrix, labels = read_connectivity_matrix(relmat_file)
    off_diagonal = np.abs(matrix[~np.eye(len(matrix), dtype=bool)])
    finite = off_diagonal[np.isfinite(off_diagonal)]
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    size = 10 if len(labels) <= MATRIX_MAX_LABELS else 8
    with plt.style.context("dark_background"):
        figure = plt.figure(figsize=(size, size * 0.85))
        plotting.plot_matrix(
            matrix, labels=labels if len(labels) <= MATRIX_MAX_LABELS else None,
            figure=figure, title=title or f"connectivity ({len(labels)} regions)",
            cmap="RdBu_r", vmin=-vmax, vmax=vmax, reorder=False,
        )  # fmt: skip
        return _save_atomic(figure, out_file)
