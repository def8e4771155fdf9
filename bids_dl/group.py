"""The group level: gather every participant's measures into one table and one report, with
the functional networks and the classification (``--classify``) when asked for."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bids_dl import __version__
from bids_dl.derivatives import (
    MEASURES_DICTIONARY,
    write_file_atomic,
    write_json_atomic,
    write_text_atomic,
)
from bids_dl.inputs import InputError

if TYPE_CHECKING:
    from bids_dl.group_classify import GroupClassification
    from bids_dl.group_networks import NetworkOptions

#: BIDS puts participant-level measures in ``phenotype/``: the validator accepts it there.
GROUP_TABLE = Path("phenotype") / "anatomical.tsv"


def gather_measures(output_dir: Path, participant_labels: list[str] | None = None) -> pd.DataFrame:
    """Concatenate the per-subject ``*_desc-anat_measures.tsv`` files, one row per subject."""
    files = sorted(Path(output_dir).glob("sub-*/anat/sub-*_desc-anat_measures.tsv"))
    if participant_labels:
        files = [
            f for f in files if f.name.split("_")[0].removeprefix("sub-") in participant_labels
        ]
    if not files:
        raise InputError(f"no participant results in {output_dir}: run the participant level first")
    table = pd.concat([pd.read_csv(f, sep="\t") for f in files], ignore_index=True)
    return table.sort_values("participant_id").reset_index(drop=True)


def participant_dictionaries(output_dir: Path) -> dict:
    """The column entries of the participants' measures dictionaries (``--classifier`` writes
    its columns' there), for the columns bids_dl's own dictionary lacks."""
    entries: dict = {}
    for path in sorted(Path(output_dir).glob("sub-*/anat/sub-*_desc-anat_measures.json")):
        try:
            entries.update(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError):
            continue
    return entries


def outlier_flags(table: pd.DataFrame, threshold: float = 3.0) -> pd.DataFrame:
    """True where a value lies more than ``threshold`` MADs from its column's median."""
    numeric = table.select_dtypes("number")
    median = numeric.median()
    mad = (numeric - median).abs().median().replace(0, np.nan)
    flags = ((numeric - median).abs() / mad > threshold).fillna(False)
    return flags.reindex(columns=table.columns, fill_value=False)


def write_group_outputs(
    output_dir: Path,
    participant_labels: list[str] | None = None,
    networks: NetworkOptions | None = None,
    classification: GroupClassification | None = None,
) -> Path:
    """Write the group table (TSV + JSON data dictionary), the functional networks when
    ``networks`` is given and BOLD runs exist, the models of ``classification`` (checked by
    :func:`bids_dl.group_classify.check_group_classification`), and ``group.html``; return
    the TSV."""
    from bids_dl.reports.participant import template_environment

    output_dir = Path(output_dir)
    table = gather_measures(output_dir, participant_labels)
    buffer = io.StringIO()
    table.to_csv(buffer, sep="\t", index=False, na_rep="n/a", lineterminator="\n")
    table_path = write_text_atomic(buffer.getvalue(), output_dir / GROUP_TABLE)
    described = {**participant_dictionaries(output_dir), **MEASURES_DICTIONARY}
    dictionary = {c: described.get(c, {"Description": c}) for c in table.columns}
    write_json_atomic(dictionary, table_path.with_suffix(".json"))

    flags = outlier_flags(table)
    columns = [c for c in table.columns if c != "participant_id"]
    rows = [
        {
            "participant_id": row["participant_id"],
            "cells": {c: row[c] for c in columns},
            "flags": {c: bool(flags.loc[i, c]) for c in columns},
        }
        for i, row in table.iterrows()
    ]
    figures = []
    figure_path = _plot_measures(table, output_dir / "figures" / "group_measures.png")
    if figure_path:
        figures.append(
            {
                "path": figure_path.relative_to(output_dir).as_posix(),
                "title": "Measures across participants (one dot per participant)",
            }
        )
    network_sections = write_networks(output_dir, participant_labels, networks) if networks else []
    sections = []
    if classification is not None:
        from bids_dl.group_classify import run_group_classification

        sections.append(run_group_classification(classification))
    html = (
        template_environment()
        .get_template("group.html.j2")
        .render(
            version=__version__,
            date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            table=GROUP_TABLE.as_posix(),
            columns=columns,
            rows=rows,
            figures=figures,
            networks=network_sections,
            classifications=sections,
            images_total=len(figures)
            + sum(len(s["figures"]) for s in [*network_sections, *sections]),
        )
    )
    write_text_atomic(html, output_dir / "group.html")
    return table_path


#: strip plots per row of the group figure
MEASURES_PER_ROW = 8


def _plot_measures(table: pd.DataFrame, out_file: Path) -> Path | None:
    """A strip plot per measure, so an outlier stands out at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numeric = table.select_dtypes("number")
    if numeric.empty:
        return None
    # a grid, not one row: with the structures model there are ~40 measures
    columns = min(numeric.shape[1], MEASURES_PER_ROW)
    rows = -(-numeric.shape[1] // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 3 * rows), squeeze=False)
    for axis in axes.flat[numeric.shape[1] :]:
        axis.set_visible(False)
    for axis, column in zip(axes.flat, numeric.columns, strict=False):
        values = numeric[column].to_numpy()
        jitter = np.linspace(-0.1, 0.1, len(values)) if len(values) > 1 else np.zeros(1)
        axis.scatter(jitter, values, s=18)
        axis.set_xlim(-0.5, 0.5)
        axis.set_xticks([])
        axis.set_title(column, fontsize=8)
        axis.tick_params(labelsize=7)
    figure.tight_layout()
    write_file_atomic(out_file, lambda tmp: figure.savefig(tmp, dpi=90, format="png"))
    plt.close(figure)
    return out_file


def write_networks(
    output_dir: Path, participant_labels: list[str] | None, options: NetworkOptions
) -> list[dict]:
    """Decompose the BOLD runs into networks (``bids_dl.group_networks``) and draw, per task,
    each method's maps and one run's network connectome; no BOLD runs, no section."""
    from bids_dl.group_networks import find_runs, network_summary, write_network_outputs

    if not find_runs(output_dir, participant_labels):
        return []
    written = write_network_outputs(output_dir, participant_labels, options)
    sections = []
    for task, methods in network_summary(output_dir).items():
        fits = {m: fit for m, fit in methods.items() if fit["components"] in written}
        if fits:
            sections.append(_network_section(output_dir, task, fits, written))
    return sections


def _network_section(output_dir: Path, task: str, fits: dict, written: list[Path]) -> dict:
    """One task's table of fits (K, stability, seconds) and its figures."""
    from bids_dl.reports.bold_figures import plot_connectivity_matrix, plot_network_maps

    folder = output_dir / "figures"
    figures = [
        {
            "path": plot_network_maps(
                str(fit["components"]),
                str(folder / f"task-{task}_desc-{method}_components.png"),
                title=f"task {task}: {method} networks",
            ),
            "title": f"Group network maps of task {task} by {method} ({fit['n_components']})",
        }
        for method, fit in fits.items()
    ]
    relmats = [p for p in written if p.name.endswith("_relmat.tsv") and f"_task-{task}_" in p.name]
    if relmats:
        figures.append(
            {
                "path": plot_connectivity_matrix(
                    str(relmats[0]), str(folder / f"task-{task}_relmat.png"), title=relmats[0].name
                ),
                "title": f"Network connectome of one run ({relmats[0].name}): Ledoit-Wolf "
                "correlation of its dual-regression time courses",
            }
        )
    for figure in figures:
        figure["path"] = Path(figure["path"]).relative_to(output_dir).as_posix()
    methods = [{"method": method, **fit} for method, fit in fits.items()]
    return {"task": task, "methods": methods, "figures": figures}


def describe_table(table_path: Path) -> str:
    """One line for the console: where the table is and its size."""
    table = pd.read_csv(table_path, sep="\t")
    return f"{table_path} ({len(table)} participants, {table.shape[1] - 1} measures)"
