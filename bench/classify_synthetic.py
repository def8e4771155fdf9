"""The whole participant -> group classification path on a SYNTHETIC cohort of known effect.

A simulated cohort whose disease effect is known is run through the BIDS-App as a user runs
it: ``bids_dl BIDS OUT participant --analyses anat`` on T1w images, then ``bids_dl BIDS OUT
group --classify COLUMN --features left_ right_ --covariates age --classify-groups label_map``.
The group level reads only what the participant level wrote (the structure volumes of the
``desc-anat_measures.tsv`` files), so the check covers segmentation, measures, feature reading,
grouped nested cross-validation, metrics and the report.

- **images**: the PET simulation's T1w (:func:`bids_dl.models.pet_simulation.simulate_case`,
  2 mm) of label maps 17-20, which the structure model never trained on. Every participant has
  a random age-like atrophy level a (cortex thinned, ventricles dilated); age is
  ``50 + 30 a`` (an honest covariate that explains part of the anatomy, not the diagnosis).
- **effect**: a control has no disease-like atrophy; a patient has severity s: hippocampus and
  amygdala lose ``1.5 s`` voxel layers (1 mm) into the temporal horn and temporal cortex thins
  by ``1.2 s`` layers. Two effect sizes, each its own classification: ``mild`` (s = 0.4) and
  ``strong`` (s = 1.0), against the same controls (a participant of the other effect has no
  label in that column and is left out and counted). A ``null`` column labels the controls at
  random, half per map: its AUC should hold 0.5 inside its interval.
- **folds**: the synthetic participants of one label map share its anatomy, so the folds keep
  each map whole (``--classify-groups label_map``): 4 maps, hence at most 4 outer folds, and
  the inner folds shrink as the command documents.
- **truth beside the measure**: the hippocampus + amygdala volume of the simulated label map
  (its 2 mm samples x 8 mm^3) and the pipeline's measured one; their correlation and each
  effect's standardised difference (Cohen's d, patients - controls), truth and measured.

Results: ``bench/results/classify_synthetic/summary.json`` (cohort, commands, timings, each
column's metrics per model, effect sizes) and ``results.md``; the BIDS dataset, outputs and
work folder stay in ``--runs`` (default ``runs/classify_synthetic``).

    python bench/classify_synthetic.py [--per-map 3] [--nprocs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd

from bids_dl.derivatives import volume_column
from bids_dl.group_classify import classify_folder
from bids_dl.models.pet_simulation import HIPPOCAMPUS_AMYGDALA, PetSimulation, simulate_case

sys.path.insert(0, str(Path(__file__).parent))
from peak_memory import run_logged  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
MAPS = ("17", "18", "19", "20")
#: disease-like severity of each patient group (``PetSimulation.tied_severity_range``)
EFFECTS = {"mild": 0.4, "strong": 1.0}
GROUP_CODES = {"control": "c", "mild": "m", "strong": "s"}
COLUMNS = ("diagnosis_mild", "diagnosis_strong", "diagnosis_null")
SEED = 0
TRUTH, MEASURED = "true_hippocampus_amygdala_mm3", "measured_mm3"
VOXEL_MM3 = 8.0


def simulated_participants(data: Path, per_map: int) -> list[dict]:
    """``per_map`` controls and ``per_map`` patients of each effect per label map, each with
    its T1w, affine and what was drawn; seeds ``[SEED, map, group, draw]``."""
    participants = []
    for number in MAPS:
        image = nb.load(data / "synthseg_label_maps" / f"training_seg_{number}.nii.gz")
        labels = np.asarray(image.dataobj)
        for index, (group, code) in enumerate(GROUP_CODES.items()):
            severity = EFFECTS.get(group, 0.0)
            settings = replace(
                PetSimulation(),
                tied_probability=1.0 if severity else 0.0,
                tied_severity_range=(severity, severity) if severity else (0.2, 1.0),
            )
            for draw in range(per_map):
                rng = np.random.default_rng([SEED, int(number), index, draw])
                case = simulate_case(labels, image.affine, rng, settings)
                truth = np.isin(case.labels, HIPPOCAMPUS_AMYGDALA).sum() * VOXEL_MM3
                participants.append({
                    "participant_id": f"sub-m{number}{code}{draw}",
                    "label_map": f"map{number}",
                    "group": group,
                    "severity": severity,
                    "atrophy": case.parameters["atrophy"],
                    "age": round(50 + 30 * case.parameters["atrophy"], 1),
                    TRUTH: float(truth),
                    "t1w": case.t1w,
                    "affine": case.affine,
                })  # fmt: skip
                print(f"  simulated {participants[-1]['participant_id']}", flush=True)
    return participants


def label_columns(table: pd.DataFrame) -> pd.DataFrame:
    """The three target columns: each effect against the controls, and a random split of the
    controls (half of each map's, by a seeded shuffle)."""
    table = table.copy()
    for effect in EFFECTS:
        chosen = table["group"].isin(("control", effect))
        table[f"diagnosis_{effect}"] = np.where(
            chosen, np.where(table["group"] == effect, "patient", "control"), "n/a"
        )
    rng = np.random.default_rng(SEED)
    table["diagnosis_null"] = "n/a"
    for _, rows in table[table["group"] == "control"].groupby("label_map"):
        order = rng.permutation(rows.index.to_numpy())
        half = len(order) // 2
        table.loc[order[:half], "diagnosis_null"] = "a"
        table.loc[order[half:], "diagnosis_null"] = "b"
    return table


def write_dataset(participants: list[dict], folder: Path) -> pd.DataFrame:
    """The cohort as a BIDS dataset: T1w images, ``participants.tsv`` (+ JSON)."""
    folder.mkdir(parents=True)
    for entry in participants:
        anat = folder / entry["participant_id"] / "anat"
        anat.mkdir(parents=True)
        image = nb.Nifti1Image((entry["t1w"] * 1000).astype(np.float32), entry["affine"])
        image.header.set_xyzt_units("mm", "sec")
        image.to_filename(anat / f"{entry['participant_id']}_T1w.nii.gz")
    description = {"Name": "bids_dl synthetic classification cohort (SIMULATED T1w)",
                   "BIDSVersion": "1.10.0", "DatasetType": "raw"}  # fmt: skip
    (folder / "dataset_description.json").write_text(json.dumps(description, indent=1))
    kept = ("participant_id", "label_map", "group", "severity", "age", TRUTH)
    table = label_columns(pd.DataFrame([{k: e[k] for k in kept} for e in participants]))
    table.drop(columns=["group", "severity", TRUTH]).to_csv(
        folder / "participants.tsv", sep="\t", index=False
    )
    dictionary = {
        "label_map": {"Description": "the real label map the participant was simulated from"},
        "age": {"Description": "50 + 30 x the simulated age-like atrophy level", "Units": "year"},
        **{c: {"Description": f"simulated label ({c.split('_')[1]})"} for c in COLUMNS},
    }
    (folder / "participants.json").write_text(json.dumps(dictionary, indent=1))
    return table


def measured_volumes(output: Path, ids: pd.Series) -> pd.Series:
    """Hippocampus + amygdala volume (mm^3) of each participant's measures table."""
    columns = [volume_column(v) for v in HIPPOCAMPUS_AMYGDALA]
    volumes = {}
    for participant in ids:
        found = sorted((output / participant).glob("anat/*desc-anat_measures.tsv"))
        if not found:
            raise RuntimeError(f"{participant}: no desc-anat_measures.tsv in {output}")
        volumes[participant] = float(pd.read_csv(found[0], sep="\t")[columns].sum(axis=1).iloc[0])
    return pd.Series(volumes)


def cohens_d(patients: np.ndarray, controls: np.ndarray) -> float:
    """Standardised mean difference with the pooled standard deviation."""
    pooled = np.sqrt(
        ((len(patients) - 1) * patients.var(ddof=1) + (len(controls) - 1) * controls.var(ddof=1))
        / (len(patients) + len(controls) - 2)
    )
    return float((patients.mean() - controls.mean()) / pooled)


def effect_sizes(table: pd.DataFrame) -> dict:
    """Truth against measure: their correlation, and Cohen's d of each effect."""
    truth, measured = table[TRUTH], table[MEASURED]
    within = table[[TRUTH, MEASURED]] - table.groupby("label_map")[[TRUTH, MEASURED]].transform(
        "mean"
    )
    slope = np.polyfit(within[TRUTH], within[MEASURED], 1)[0]
    means = table.groupby(["label_map", "group"])[[TRUTH, MEASURED]].mean().round(0)
    result = {
        "truth_measured_r": round(float(np.corrcoef(truth, measured)[0, 1]), 3),
        "within_map_r": round(float(np.corrcoef(within[TRUTH], within[MEASURED])[0, 1]), 3),
        "within_map_slope": round(float(slope), 3),
        "means_mm3": {f"{m} {g}": row.to_dict() for (m, g), row in means.iterrows()},
    }
    controls = table[table["group"] == "control"]
    for effect in EFFECTS:
        patients = table[table["group"] == effect]
        result[effect] = {
            kind: round(cohens_d(patients[column].to_numpy(), controls[column].to_numpy()), 2)
            for kind, column in (("truth_d", TRUTH), ("measured_d", MEASURED))
        }  # fmt: skip
    return result


def group_run(bids: Path, output: Path, work: Path, column: str, logs: Path) -> dict:
    """One ``group --classify`` run; its metrics.json, trimmed."""
    command = [str(Path(sys.executable).parent / "bids_dl"), str(bids), str(output), "group",
               "--skip-bids-validation", "-w", str(work), "--classify", column,
               "--features", "left_", "right_", "--covariates", "age",
               "--classify-groups", "label_map"]  # fmt: skip
    seconds, peak = run_logged(command, logs / f"group_{column}.log")
    metrics = json.loads((output / classify_folder(column) / "metrics.json").read_text())
    return {
        "command": "bids_dl " + " ".join(command[1:]).replace(str(ROOT) + "/", ""),
        "wall_s": round(seconds, 1),
        "peak_gb": round(peak, 2),
        "counts": metrics["counts"],
        "left_out": metrics["left_out"],
        "cross_validation": metrics["cross_validation"],
        "features": len(metrics["features"]["tabular"]),
        "final_model": metrics["final"],
        "models": {
            name: {
                "metrics": entry["metrics"],
                "difference_to_linear": entry.get("difference_to_linear"),
            }
            for name, entry in metrics["models"].items()
        },
    }


def interval(entry: dict) -> str:
    return f"{entry['estimate']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"


def results_markdown(summary: dict) -> str:
    cohort, effects = summary["cohort"], summary["effect_sizes"]
    lines = [
        "# Synthetic cohort: participant -> group classification (SIMULATED T1w)", "",
        f"{cohort['participants']} participants from label maps {', '.join(MAPS)} "
        f"({cohort['per_map']} controls, {cohort['per_map']} mild and {cohort['per_map']} strong "
        "per map); folds keep each map whole.", "",
        f"Participant level (`--analyses anat`, {summary['participant']['nprocs']} processes): "
        f"{summary['participant']['wall_s']:.0f} s, "
        f"{summary['participant']['wall_s'] / cohort['participants']:.0f} s a participant.", "",
        "Hippocampus + amygdala, simulated truth against the pipeline's measure: r = "
        f"{effects['truth_measured_r']:.3f} across participants, "
        f"{effects['within_map_r']:.3f} within a map, where the measure moves by "
        f"{effects['within_map_slope']:.2f} mm^3 per true mm^3; Cohen's d (patients - controls) "
        "truth / measured: "
        + "; ".join(f"{e} {effects[e]['truth_d']:.2f} / {effects[e]['measured_d']:.2f}"
                    for e in EFFECTS) + ".", "",
        "| map, group | true (mm^3) | measured (mm^3) |", "|---|---|---|",
        *(f"| {key} | {row[TRUTH]:.0f} | {row[MEASURED]:.0f} |"
          for key, row in effects["means_mm3"].items()), "",
        "| column | model | n | AUC [95 %] | balanced accuracy [95 %] | Brier | group run (s) |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for column, run in summary["group"].items():
        for name, entry in run["models"].items():
            m = entry["metrics"]
            lines.append(
                f"| {column} | {name} | {run['counts'].get('participants', '')} | "
                f"{interval(m['auc'])} | {interval(m['balanced_accuracy'])} | "
                f"{m['brier']['estimate']:.3f} | {run['wall_s']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def simulate_cohort(data: Path, per_map: int, bids: Path) -> tuple[pd.DataFrame, float]:
    """Simulate the cohort, write it as BIDS; its table (with the truth) and the seconds."""
    start = time.perf_counter()
    participants = simulated_participants(data, per_map)
    seconds = round(time.perf_counter() - start, 1)
    table = write_dataset(participants, bids)
    return table, seconds


def participant_run(bids: Path, output: Path, work: Path, nprocs: int, logs: Path) -> dict:
    """The participant level on every participant (anatomy only), timed."""
    command = [str(Path(sys.executable).parent / "bids_dl"), str(bids), str(output),
               "participant", "--analyses", "anat", "--skip-bids-validation", "-w", str(work),
               "--nprocs", str(nprocs), "--omp-nthreads", "1"]  # fmt: skip
    seconds, peak = run_logged(command, logs / "participant.log")
    return {"command": "bids_dl " + " ".join(command[1:]).replace(str(ROOT) + "/", ""),
            "wall_s": round(seconds, 1), "peak_gb": round(peak, 2), "nprocs": nprocs}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="../shared/data")
    parser.add_argument("--per-map", type=int, default=3, help="participants per group and map")
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "classify_synthetic")
    parser.add_argument("--reuse", action="store_true", help="keep a finished participant level")
    parser.add_argument("--results", type=Path, default=ROOT / "bench/results/classify_synthetic")
    args = parser.parse_args()
    if not (args.data / "synthseg_label_maps").is_dir():
        sys.exit(f"{args.data}/synthseg_label_maps not found: this benchmark needs ../shared/data")
    bids, output, work = (args.runs / name for name in ("bids", "output", "work"))
    cohort_file, participant_file = args.runs / "cohort.tsv", args.runs / "participant.json"
    if not (args.reuse and participant_file.exists()):
        table, simulation_s = simulate_cohort(args.data, args.per_map, bids)
        table.to_csv(cohort_file, sep="\t", index=False)
        participant = participant_run(bids, output, work, args.nprocs, args.runs)
        participant["simulation_s"] = simulation_s
        participant_file.write_text(json.dumps(participant, indent=1))
    table = pd.read_csv(cohort_file, sep="\t")
    participant = json.loads(participant_file.read_text())
    table[MEASURED] = measured_volumes(output, table["participant_id"]).to_numpy()
    group = {column: group_run(bids, output, work, column, args.runs) for column in COLUMNS}
    args.results.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.results / "participants.tsv", sep="\t", index=False)
    summary = {
        "data": "SIMULATED T1w (bids_dl.models.pet_simulation) of REAL label maps 17-20",
        "cohort": {
            "participants": len(table),
            "per_map": int((table["group"] == "control").sum()) // len(MAPS),
            "maps": list(MAPS),
            "effects": EFFECTS,
            "seed": SEED,
        },
        "participant": participant,
        "effect_sizes": effect_sizes(table),
        "group": group,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
    }
    (args.results / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (args.results / "results.md").write_text(results_markdown(summary))
    print(results_markdown(summary))


if __name__ == "__main__":
    main()
