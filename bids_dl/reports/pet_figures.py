"""PET report figures: the SUVR over the T1w (measured, or imputed by a network and marked so)
and the time-activity curves of a dynamic series; PNG on black as the other report figures,
written atomically."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nb  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import cm, colors  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from bids_dl.models.labels import STRUCTURES  # noqa: E402
from bids_dl.reports.bold_figures import _save_atomic  # noqa: E402
from bids_dl.reports.figures import (  # noqa: E402
    CBF_ROW,
    _bounding_box,
    _cbf_rows,
    _mask_outline,
    _on_grid,
    _panel,
    _row_height,
    cbf_upper_bound,
    cut_axes,
    display_range,
)

#: The SUVR's colour map (the usual PET one, black at 0) and the top of its scale: fixed, so
#: that participants compare at a glance, unless the brain's 99th percentile lies above it.
SUVR_COLORMAP, SUVR_VMAX = "hot", 2.0
#: Opacity of the SUVR over the T1w, and the T1w voxels kept around the brain's bounding box.
SUVR_ALPHA, SUVR_MARGIN = 0.8, 4
#: The imputed figure's banner, in red: a reader must not take it for a scan.
IMPUTED_BANNER = "IMPUTED \N{EM DASH} synthetic PET predicted from the T1w, not measured"
IMPUTED_RED = "#e00000"
#: Heights (inches) of the title line, the imputed banner and the colour bar's strip.
TITLE_IN, BANNER_IN, BAR_IN = 0.35, 0.55, 0.8

#: The frame timing columns of a TAC table (s); every other column is a structure's curve.
FRAME_COLUMNS = ("frame_start", "frame_duration")
#: The structures whose curves are drawn where the table has them (FreeSurfer label values of
#: the left and right ones): cortex, cerebellar cortex, white matter, putamen, thalamus and
#: brain stem (the usual reference regions and the high-uptake grey matter).
TAC_STRUCTURES = ((3, 42), (8, 47), (2, 41), (12, 51), (10, 49), (16,))
#: The most curves drawn where the table names none of ``TAC_STRUCTURES``.
TAC_FALLBACK = 8


def suvr_upper_bound(suvr: np.ndarray, mask: np.ndarray) -> float:
    """Top of the SUVR colour scale: ``SUVR_VMAX``, or the brain's 99th percentile rounded up
    (``cbf_upper_bound``) where that is higher (an amyloid scan, a cerebellar reference)."""
    return max(SUVR_VMAX, cbf_upper_bound(suvr, mask))


def read_reference_region(image_file: str | Path) -> str | None:
    """The ``ReferenceRegion`` of the JSON sidecar beside an image; None where there is no
    sidecar, it is not JSON or it lacks the key."""
    path = Path(image_file)
    sidecar = path.with_name(path.name.split(".")[0] + ".json")
    try:
        region = json.loads(sidecar.read_text(encoding="utf-8")).get("ReferenceRegion")
    except (OSError, ValueError, AttributeError):
        return None
    return str(region) if region else None


def _title_strip(figure, title: str, imputed: bool, total: float) -> float:
    """The title line, under a red banner and inside a red frame when ``imputed``; returns the
    strip's height in inches."""
    banner = BANNER_IN if imputed else 0.0
    if imputed:
        figure.add_artist(
            Rectangle(
                (0, 1 - banner / total), 1, banner / total, transform=figure.transFigure,
                color=IMPUTED_RED,
            )
        )  # fmt: skip
        figure.text(
            0.5, 1 - banner / 2 / total, IMPUTED_BANNER, color="white", fontsize=16,
            fontweight="bold", ha="center", va="center",
        )  # fmt: skip
        figure.add_artist(
            Rectangle(
                (0, 0), 1, 1, transform=figure.transFigure, fill=False, edgecolor=IMPUTED_RED,
                linewidth=8,
            )
        )  # fmt: skip
    figure.text(0.01, 1 - (banner + 0.08) / total, title, color="white", fontsize=13, va="top")
    return banner + TITLE_IN


def _suvr_colorbar(figure, colormap, vmax: float, total: float) -> None:
    """A horizontal colour bar labelled SUVR at the bottom of the figure, with its range."""
    bar = figure.add_axes((0.2, 0.45 / total, 0.36, 0.16 / total))
    mappable = cm.ScalarMappable(norm=colors.Normalize(0, vmax), cmap=colormap)
    colorbar = figure.colorbar(mappable, cax=bar, orientation="horizontal")
    colorbar.set_label("SUVR", color="white")
    bar.tick_params(colors="white", labelsize=9)
    colorbar.outline.set_edgecolor("white")
    scale = (
        f"0 to {vmax:g}: fixed scale"
        if vmax == SUVR_VMAX
        else f"0 to {vmax:g}: 99th percentile of the SUVR in the brain"
    )
    figure.text(0.58, 0.53 / total, scale, color="#aaaaaa", fontsize=9, va="center")


def plot_suvr(
    suvr_file: str,
    t1w_file: str,
    brain_mask_file: str,
    out_file: str,
    imputed: bool = False,
    reference_region: str | None = None,
) -> Path:
    """The SUVR in the brain mask in colour (``SUVR_COLORMAP``, 0 to ``suvr_upper_bound``)
    over the T1w in grey, on the T1w's RAS-reoriented grid, laid out as the CBF figure: axial
    cuts from the bottom of the brain up, then coronal and sagittal cuts, the subject's left on
    the image's left, the brain outline in grey. The title names the reference region
    (``reference_region``, else the sidecar's ``ReferenceRegion``); ``imputed``: a network's
    prediction from the T1w, under a red banner that says so and inside a red frame."""
    anat = nb.as_closest_canonical(nb.load(str(t1w_file)))
    t1w = anat.get_fdata(dtype=np.float32)
    suvr = _on_grid(suvr_file, anat, order=1)
    mask = _on_grid(brain_mask_file, anat, order=0) > 0.5
    vmax = suvr_upper_bound(suvr, mask)
    grey_min, grey_max = display_range(t1w, mask)
    box = _bounding_box(mask, margin=SUVR_MARGIN)
    t1w, suvr, mask = t1w[box], np.where(mask, suvr, np.nan)[box], mask[box]
    zooms = anat.header.get_zooms()[:3]
    rows = _cbf_rows(mask)
    heights = [_row_height(row, np.array(mask.shape) * zooms, 12 / CBF_ROW) for row in rows]
    total = TITLE_IN + (BANNER_IN if imputed else 0) + sum(heights) + BAR_IN
    region = reference_region or read_reference_region(suvr_file)
    colormap = matplotlib.colormaps[SUVR_COLORMAP].with_extremes(bad=(0, 0, 0, 0))
    figure = plt.figure(figsize=(12, total), facecolor="black")
    top = total - _title_strip(
        figure, f"SUVR, reference region: {region}" if region else "SUVR", imputed, total
    )
    for axes, axis, index, letters in cut_axes(figure, rows, heights, top, total):
        _panel(axes, t1w, zooms, axis, index, letters, cmap="gray", vmin=grey_min, vmax=grey_max)
        _panel(
            axes, suvr, zooms, axis, index, False, cmap=colormap, vmin=0, vmax=vmax,
            alpha=SUVR_ALPHA,
        )  # fmt: skip
        _mask_outline(axes, mask, axis, index)
    _suvr_colorbar(figure, colormap, vmax, total)
    return _save_atomic(figure, out_file)


def _column_key(name: str) -> str:
    """A structure name without case or punctuation (``Left-Putamen``, ``left_putamen``)."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def tac_curves(columns: list[str]) -> list[tuple[str, str | None, str]]:
    """The curves to draw of a TAC table's structure ``columns``: (column, colour, line style)
    of each of ``TAC_STRUCTURES`` present, by FreeSurfer name or abbreviation, in FreeSurfer's
    colours (left solid, right dashed); where none is, the first ``TAC_FALLBACK`` columns in
    matplotlib's colours."""
    by_key = {_column_key(column): column for column in columns}
    curves = []
    for values in TAC_STRUCTURES:
        for value, style in zip(values, ("-", "--"), strict=False):
            name, _, abbreviation, colour = STRUCTURES[value]
            found = by_key.get(_column_key(name)) or by_key.get(_column_key(abbreviation))
            if found:
                curves.append((found, colour, style))
    return curves or [(column, None, "-") for column in columns[:TAC_FALLBACK]]


def plot_time_activity(tacs_file: str, out_file: str) -> Path:
    """Time-activity curves (``tac_curves``): each structure's mean activity per frame against
    the frame's mid-time in minutes, with a legend."""
    tacs = pd.read_csv(tacs_file, sep="\t", na_values=["n/a"])
    missing = [column for column in FRAME_COLUMNS if column not in tacs]
    structures = [column for column in tacs.columns if column not in FRAME_COLUMNS]
    if missing or not structures or tacs.empty:
        raise ValueError(
            f"{tacs_file}: a TAC table has a row per frame, the columns {', '.join(FRAME_COLUMNS)}"
            " (s) and one column per structure"
        )
    minutes = (tacs["frame_start"] + tacs["frame_duration"] / 2).to_numpy(float) / 60
    with plt.style.context("dark_background"):
        figure, axes = plt.subplots(figsize=(12, 4.4))
        figure.patch.set_facecolor("black")
        for column, colour, style in tac_curves(structures):
            axes.plot(
                minutes, tacs[column].to_numpy(float), style, color=colour, marker=".",
                linewidth=1.2, label=column,
            )  # fmt: skip
        axes.set_xlabel("frame mid-time (min)")
        axes.set_ylabel("mean activity")
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
        end = float((tacs["frame_start"] + tacs["frame_duration"]).max()) / 60
        axes.set_title(f"time-activity curves: {len(tacs)} frames over {end:.0f} min")
        figure.tight_layout()
        return _save_atomic(figure, out_file)
