"""``bids_dl-classify train`` on the REAL stroke-outcome cohort: NIHSS and outcome from the
acute lesion maps, three tasks, against the issue's targets, with timings and a seed spread.

The cohort (``../shared/data/stroke_outcome``: 901 acute ischaemic stroke lesion maps on one
MNI-space grid, ``participants.tsv``) is laid out as derivatives by
``stroke_to_derivatives.convert`` (symbolic links; ``--derivatives``, default
``runs/classify_stroke/derivatives``). Every model is trained and scored by the command itself,
run as a user runs it (``bids_dl-classify train``, one process per run, ``--threads``,
default 1), and its ``metrics.json`` and ``cv_predictions.tsv`` are read back:

- tasks: (a) ``nihss`` as a regression; (b) ``nihss --threshold 5`` (class 1: NIHSS >= 5);
  (c) ``gs_rankin_6isdeath --threshold 3`` (poor outcome, modified Rankin 3-6 with 6 =
  death), participants with a known value only. Participants without the target or age are
  left out by the command and counted.
- features: ``--image-features desc-lesion_mask --atlas ArterialAtlas136 --covariates age``:
  the lesion load (lesioned fraction) of each of the 32 arterial territories, and age (``89+``
  read as 89, counted). The total lesion volume is not added: inside the atlas it is a linear
  combination of the loads (sum of load x territory voxels), which ``atlas_volume_check``
  measures against the source's ``artery.tsv`` ``lesion_volume``.
- models: linear (ridge / L2 logistic regression), svm (RBF SVR, regression only), mlp on
  the loads and age; cnn on the lesion map (block means at 6 mm) with the same tabular
  features joined before its head (what one run with ``--atlas`` gives it). All in ONE run
  per task, seed 0, nested 5 x 5 folds: every model sees the same outer folds.
- metrics: the command's, out-of-fold (participants the model never saw), 95 % percentile
  bootstrap intervals over participants (2000 resamples): r, MAE (and R^2) for (a); AUC,
  balanced accuracy, sensitivity, specificity at probability 0.5, Brier for (b) and (c); the
  paired-bootstrap difference of each model to linear.
- targets (the issue's): (a) r >= 0.62; (b) AUC >= 0.80; ``met`` compares the estimate,
  and the interval is given beside it. Nothing is tuned on these participants: the features,
  models and grids are the command's defaults, fixed before the run.
- timings (seconds, the command's ``metrics.json``): features read, nested CV per model
  (grid search and refit, no bootstrap, no permutation); the issue's target: tabular nested
  CV (linear + svm + mlp) under 120 s for 900 participants on 2 cores (measured here at the
  cohort's size and ``--threads``, on a shared machine: the load average is recorded). Then,
  apart: the bootstrap of all models of a run (``classifier_metrics.bootstrap_intervals`` and
  ``paired_difference`` on its ``cv_predictions.tsv``, as the command calls them; the values
  are checked equal to ``metrics.json``), and a permutation test of the linear model
  (``classifier_validation.permutation_p``, ``--permutations`` shuffles of the target, the
  same nested CV and seed; its cohort is built by ``classify_features.plan_training`` and
  ``load_cohort`` and checked to reproduce the command's linear predictions).
- spread: the linear (and, for (a), svm) model again with seeds 1 and 2 (other outer and
  inner folds), so that the seed-0 figures are read with their fold-to-fold spread.
- variants (reported whatever they give, not chosen on it; both a user reproduces with the
  command by passing the atlas the script writes into ``tpl-SOOP/``): ``volume``: one region,
  every labelled voxel of the atlas (its load is the lesion volume inside the atlas over the
  atlas' volume, untransformed) + age; ``level2``: the atlas' own coarser grouping (the 4th
  column of ``ArterialAtlas136.txt``: ACA, MCA, PCA, vertebro-basilar, ventricle, each side:
  10 regions) + age. Linear, svm (regression) and mlp, seed 0.

Results: ``bench/results/classify_stroke/summary.json`` (counts, commands, every model's
metrics, targets, timings, spread, variants) and ``results.md`` (the tables); the runs
themselves (bundles, predictions) stay in ``--runs`` (default ``runs/classify_stroke``).

    python bench/classify_stroke.py [--source ../shared/data/stroke_outcome]
        [--permutations 100] [--threads 1] [--parts main seeds variants] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from stroke_to_derivatives import ATLAS, ATLAS_TABLE, convert  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TASKS = {
    "nihss": {"target": "nihss", "threshold": None, "goal": ("r", 0.62)},
    "nihss_ge5": {"target": "nihss", "threshold": 5, "goal": ("auc", 0.80)},
    "poor_outcome": {"target": "gs_rankin_6isdeath", "threshold": 3, "goal": None},
}
METRICS = {
    "regression": ("r", "mae", "r2"),
    "classification": ("auc", "balanced_accuracy", "sensitivity", "specificity", "brier"),
}
MODELS = ("linear", "svm", "mlp", "cnn")
TABULAR = MODELS[:3]
#: the arterial atlas' 4th column (its coarser level) -> a region name
LEVEL2 = {
    1: "ACA_left",
    2: "ACA_right",
    3: "MCA_left",
    4: "MCA_right",
    5: "PCA_left",
    6: "PCA_right",
    7: "VB_left",
    8: "VB_right",
    9: "LV_left",
    10: "LV_right",
}


def write_variant_atlases(source: Path, derivatives: Path) -> dict[str, tuple[Path, Path]]:
    """The arterial atlas and its two variants in ``tpl-SOOP/``: name -> (labels, names)."""
    image = nb.load(source / "ArterialAtlas136.nii.gz")
    labels = np.asarray(image.dataobj).astype(np.int16)
    rows = [
        line.split("|")
        for line in (source / "ArterialAtlas136.txt").read_text().splitlines()
        if line.strip()
    ]
    level = np.zeros(labels.max() + 1, np.int16)
    for row in rows:
        level[int(row[0])] = int(row[3])
    atlases = {"arterial": (derivatives / ATLAS, derivatives / ATLAS_TABLE)}
    for name, data, regions in (
        ("volume", (labels > 0).astype(np.int16), {1: "atlas"}),
        ("level2", level[labels], LEVEL2),
    ):
        stem = derivatives / ATLAS.parent / f"tpl-SOOP_res-1_atlas-Arterial{name.title()}_dseg"
        nb.Nifti1Image(data, image.affine).to_filename(f"{stem}.nii.gz")
        table = pd.DataFrame({"index": list(regions), "name": list(regions.values())})
        table.to_csv(f"{stem}.tsv", sep="\t", index=False)
        atlases[name] = (Path(f"{stem}.nii.gz"), Path(f"{stem}.tsv"))
    return atlases


def command_line(
    derivatives: Path,
    output: Path,
    task: dict,
    atlas: tuple[Path, Path],
    models: tuple[str, ...],
    seed: int,
    threads: int,
) -> list[str]:
    """The ``bids_dl-classify train`` command of one run (paths relative to the repository)."""
    threshold = "" if task["threshold"] is None else f"--threshold {task['threshold']}"
    return shlex.split(
        f"bids_dl-classify train {rel(derivatives)} {rel(output)} --target {task['target']} "
        f"{threshold} --image-features desc-lesion_mask --atlas {rel(atlas[0])} "
        f"--atlas-names {rel(atlas[1])} --covariates age --models {' '.join(models)} "
        f"--folds 5 --inner-folds 5 --seed {seed} --threads {threads}"
    )


def rel(path: Path) -> str:
    path = Path(path).absolute()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def train(command: list[str], output: Path, reuse: bool) -> dict:
    """Run the command (unless ``reuse`` and it finished before); its metrics.json, wall time."""
    done = output / "metrics.json"
    if not (reuse and done.exists()):
        done.unlink(missing_ok=True)
        print("$", shlex.join(command), flush=True)
        start = time.perf_counter()
        executable = str(Path(sys.executable).parent / command[0])
        subprocess.run([executable, *command[1:]], check=True, cwd=ROOT)
        (output / "wall_s.txt").write_text(f"{time.perf_counter() - start:.2f}\n")
    metrics = json.loads(done.read_text())
    metrics["wall_s"] = float((output / "wall_s.txt").read_text())
    return metrics


def time_bootstrap(output: Path, metrics: dict) -> dict:
    """The command's bootstrap (every model's intervals, each one's difference to linear) on
    its cv_predictions.tsv, timed; the largest deviation from its metrics.json (0 expected)."""
    from bids_dl.models.classifier_metrics import bootstrap_intervals, paired_difference

    table = pd.read_csv(output / "cv_predictions.tsv", sep="\t")
    task, samples = metrics["task"], metrics["cross_validation"]["bootstrap_samples"]
    seed, target = metrics["cross_validation"]["seed"], table["target"].to_numpy()
    deviation, start = 0.0, time.perf_counter()
    for name, entry in metrics["models"].items():
        found = {
            "metrics": bootstrap_intervals(target, table[name].to_numpy(), task, samples, seed)
        }
        if name != "linear" and "linear" in table:
            found["difference_to_linear"] = paired_difference(
                target, table[name].to_numpy(), table["linear"].to_numpy(), task, samples, seed
            )
        for part, values in found.items():
            for metric, interval in values.items():
                for key, value in interval.items():
                    saved = entry[part][metric][key]  # JSON writes a NaN as null
                    saved = np.nan if saved is None else saved
                    if np.isfinite(value) != np.isfinite(saved):
                        deviation = np.inf
                    elif np.isfinite(value):
                        deviation = max(deviation, abs(value - saved))
    return {
        "seconds": round(time.perf_counter() - start, 2),
        "samples": samples,
        "models": len(metrics["models"]),
        "largest_deviation": deviation,
    }


def permutation(derivatives: Path, task: dict, output: Path, n: int, threads: int) -> dict:
    """The linear model's permutation test on the command's cohort (checked to give the
    command's linear predictions), timed."""
    from bids_dl.classify_features import FeatureOptions, load_cohort, plan_training
    from bids_dl.models.classifier_validation import nested_cv, permutation_p

    options = FeatureOptions(
        target=task["target"],
        threshold=task["threshold"],
        covariates=("age",),
        images=("desc-lesion_mask",),
        atlas=derivatives / ATLAS,
        atlas_names=derivatives / ATLAS_TABLE,
    )
    cohort = load_cohort(plan_training(derivatives, derivatives / "participants.tsv", options))
    start = time.perf_counter()
    observed = nested_cv(cohort, "linear", seed=0, threads=threads)
    nested_s = time.perf_counter() - start
    command = pd.read_csv(output / "cv_predictions.tsv", sep="\t")
    if list(command["participant_id"]) != list(cohort.participant_ids):
        raise SystemExit("the permutation test's cohort is not the command's")
    deviation = float(np.abs(observed.prediction - command["linear"].to_numpy()).max())
    start = time.perf_counter()
    test = permutation_p(cohort, "linear", n, seed=0, threads=threads, observed=observed)
    return {
        "model": "linear",
        "permutations": n,
        "metric": test.metric,
        "score": test.score,
        "p": test.p,
        "null_mean": float(np.nanmean(test.null)),
        "null_max": float(np.nanmax(test.null)),
        "seconds": round(time.perf_counter() - start, 2),
        "one_nested_cv_s": round(nested_s, 2),
        "prediction_deviation_from_command": deviation,
    }


def atlas_volume_check(source: Path, output: Path) -> dict:
    """How far the arterial loads encode the total lesion volume, for the participants of a
    run: the source's ``lesion_volume`` against the volume inside the atlas, sum of load x
    territory voxels (loads from ``artery.tsv``, which ``stroke_to_derivatives.py`` checks
    equal to the command's; it lists 31 territories, not LVR)."""
    labels = np.asarray(nb.load(source / "ArterialAtlas136.nii.gz").dataobj).astype(int)
    _, voxels = np.unique(labels[labels > 0], return_counts=True)
    ids = pd.read_csv(output / "cv_predictions.tsv", sep="\t")["participant_id"]
    table = pd.read_csv(source / "artery.tsv", sep="\t").set_index("participant_id").loc[ids]
    volume = table.pop("lesion_volume").to_numpy(float)
    inside = table.to_numpy(float) @ voxels[: table.shape[1]]
    return {
        "participants": len(ids),
        "atlas_voxels": int(voxels.sum()),
        "r_volume_vs_sum_of_loads": float(np.corrcoef(volume, inside)[0, 1]),
        "fraction_inside_atlas_median": float(np.median(inside / volume)),
        "fraction_inside_atlas_5th_percentile": float(np.percentile(inside / volume, 5)),
        "lesion_volume_ml_median_q1_q3": [
            float(v) / 1000 for v in np.percentile(volume, [50, 25, 75])
        ],
        "note": "inside the atlas the lesion volume is sum(load x voxels): a linear model has "
        "it already (untransformed)",
    }


def dataset_counts(source: Path) -> dict:
    table = pd.read_csv(source / "participants.tsv", sep="\t", dtype=str, keep_default_na=False)
    nihss = pd.to_numeric(table["nihss"], errors="coerce")
    rankin = pd.to_numeric(table["gs_rankin_6isdeath"], errors="coerce")
    age = table["age"]
    return {
        "participants": len(table),
        "lesion_maps": len(list((source / "lesions").glob("*.nii.gz"))),
        "nihss_known": int(nihss.notna().sum()),
        "nihss_ge5": int((nihss >= 5).sum()),
        "nihss_lt5": int((nihss < 5).sum()),
        "rankin_known": int(rankin.notna().sum()),
        "rankin_ge3": int((rankin >= 3).sum()),
        "rankin_lt3": int((rankin < 3).sum()),
        "rankin_6_death": int((rankin == 6).sum()),
        "age_missing": int((age == "n/a").sum()),
        "age_89plus": int((age == "89+").sum()),
        "age_missing_with_nihss": int(((age == "n/a") & nihss.notna()).sum()),
        "no_clinical_data": int((table.drop(columns="participant_id") == "n/a").all(axis=1).sum()),
    }


def run_summary(metrics: dict) -> dict:
    """What summary.json keeps of a run's metrics.json."""
    models = {}
    for name in sorted(metrics["models"], key=MODELS.index):
        entry = metrics["models"][name]
        models[name] = {
            "metrics": entry["metrics"],
            "difference_to_linear": entry.get("difference_to_linear"),
            "hyperparameters": entry["hyperparameters"],
        }
    tabular = [metrics["timings"][f"{m}_cv_s"] for m in TABULAR if m in metrics["models"]]
    return {
        "command": metrics["command"],
        "task": metrics["task"],
        "counts": metrics["counts"],
        "left_out": metrics["left_out"],
        "age_89plus_read_as_89": metrics["top_coded_values_read_as_numbers"].get("age", 0),
        "models": models,
        "final_model": metrics["final"],
        "timings": {
            **metrics["timings"],
            "tabular_cv_s": round(sum(tabular), 2),
            "command_wall_s": metrics["wall_s"],
        },
    }


def interval(entry: dict, digits: int = 3) -> str:
    return f"{entry['estimate']:.{digits}f} [{entry['low']:.{digits}f}, {entry['high']:.{digits}f}]"


def listed(counts: dict) -> str:
    return ", ".join(f"{name} {count}" for name, count in counts.items()) or "none"


def cohort_lines(summary: dict) -> list[str]:
    """The counts and the volume check, for results.md."""
    d, v = summary["dataset"], summary.get("atlas_volume_check")
    lines = [
        f"Cohort: {d['participants']} participants, {d['lesion_maps']} lesion maps; NIHSS "
        f"known for {d['nihss_known']} ({d['nihss_ge5']} >= 5, {d['nihss_lt5']} < 5); modified "
        f"Rankin known for {d['rankin_known']} ({d['rankin_ge3']} >= 3, of whom "
        f"{d['rankin_6_death']} died; {d['rankin_lt3']} < 3); age n/a for {d['age_missing']} "
        f"({d['age_missing_with_nihss']} of them with a NIHSS; {d['no_clinical_data']} rows "
        f"are n/a in every column), 89+ for {d['age_89plus']} (read as 89).",
        "",
    ]
    if v:
        lines += [
            f"Lesion volume and the arterial loads: r = {v['r_volume_vs_sum_of_loads']:.4f} "
            "between the source's lesion_volume and sum(load x territory voxels); median "
            f"{v['fraction_inside_atlas_median']:.3f} of a lesion lies inside the atlas (5th "
            f"percentile {v['fraction_inside_atlas_5th_percentile']:.3f}).",
            "",
        ]
    return lines


def results_table(summary: dict) -> str:
    """results.md: per task the models' metrics, the targets, the timings, spread, variants."""
    lines = [
        "# bids_dl-classify on the stroke-outcome cohort (REAL, nested 5x5 CV)",
        "",
        "Estimates with 95 % bootstrap intervals, out-of-fold; difference to linear paired "
        "(same resamples). Produced by `bench/classify_stroke.py`; details in "
        "`summary.json`.",
        "",
        *cohort_lines(summary),
    ]
    for key, task in summary["tasks"].items():
        metrics = METRICS[task["task"]]
        lines += [
            f"## {key}: {listed(task['counts'])} (left out: {listed(task['left_out'])}; ages "
            f"89+ read as 89: {task['age_89plus_read_as_89']})",
            "",
            f"`{task['command']}`",
            "",
            "| model | " + " | ".join(metrics) + " | primary - linear | CV s |",
            "|---" * (len(metrics) + 3) + "|",
        ]
        primary = "r" if task["task"] == "regression" else "auc"
        for name in sorted(task["models"], key=MODELS.index):
            model, difference = task["models"][name], task["models"][name]["difference_to_linear"]
            lines.append(
                f"| {name} | "
                + " | ".join(interval(model["metrics"][m]) for m in metrics)
                + f" | {interval(difference[primary]) if difference else '-'} | "
                f"{task['timings'][f'{name}_cv_s']} |"
            )
        goal = task.get("goal")
        lines.append("")
        if goal:
            lines.append(
                f"Target {goal['metric']} >= {goal['value']}: best model "
                f"{goal['best_model']} {goal['best_estimate']:.3f}, linear "
                f"{goal['linear_estimate']:.3f}: **{'met' if goal['met'] else 'missed'}**"
                f" (the target inside the best's interval: "
                f"{goal['target_inside_interval']})."
            )
        perm, boot, t = task["permutation"], task["bootstrap"], task["timings"]
        lines += [
            f"Timings: features {t['features_s']} s; tabular nested CV {t['tabular_cv_s']} s; "
            f"cnn {t.get('cnn_cv_s', '-')} s; bootstrap ({boot['samples']} resamples, "
            f"{boot['models']} models) {boot['seconds']} s; permutation test of linear "
            f"({perm['permutations']}): p = {perm['p']:.3f} (null mean {perm['null_mean']:.3f}, "
            f"max {perm['null_max']:.3f}) in {perm['seconds']} s; command wall "
            f"{t['command_wall_s']} s.",
            "",
        ]
    nihss = summary["tasks"]["nihss"]
    lines += [
        f"Timing target (tabular nested CV, 900 participants, 2 cores, < 120 s): linear + svm + "
        f"mlp {nihss['timings']['tabular_cv_s']} s for {nihss['counts']['participants']} "
        f"participants with --threads {summary['settings']['threads']} (measured at the "
        "cohort's size, not at 900).",
        "",
    ]
    lines += [
        "## Seed spread (outer and inner folds change)",
        "",
        "| task | model | seed 0 | seed 1 | seed 2 | range |",
        "|---|---|---|---|---|---|",
    ]
    for key, models in summary["seeds"].items():
        for name, seeds in models.items():
            estimates = [s["estimate"] for s in seeds.values()]
            lines.append(
                f"| {key} | {name} | "
                + " | ".join(interval(s) for s in seeds.values())
                + f" | {max(estimates) - min(estimates):.3f} |"
            )
    lines += [
        "",
        "## Feature variants (seed 0; all tried are listed)",
        "",
        "| variant | task | model | primary | minus arterial (paired) | MAE / balanced accuracy "
        "| tabular CV s |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, tasks in summary["variants"].items():
        for key, task in tasks.items():
            primary, second = (
                ("r", "mae") if task["task"] == "regression" else ("auc", "balanced_accuracy")
            )
            for name, model in task["models"].items():
                lines.append(
                    f"| {variant} | {key} | {name} | {interval(model['metrics'][primary])}"
                    f" | {interval(task['difference_to_arterial'][name])}"
                    f" | {interval(model['metrics'][second])} | "
                    f"{task['timings']['tabular_cv_s']} |"
                )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared/data/stroke_outcome")
    parser.add_argument(
        "--derivatives", type=Path, default=ROOT / "runs/classify_stroke/derivatives"
    )
    parser.add_argument("--runs", type=Path, default=ROOT / "runs/classify_stroke")
    parser.add_argument("--results", type=Path, default=ROOT / "bench/results/classify_stroke")
    parser.add_argument("--permutations", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["main", "seeds", "variants"],
        choices=["main", "seeds", "variants"],
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="read back the runs that finished before instead of rerunning them",
    )
    arguments = parser.parse_args()
    source, derivatives, runs = arguments.source, arguments.derivatives, arguments.runs
    if not (source / "lesions").is_dir():
        raise SystemExit(f"{source} has no lesions/ folder: see ../shared/data/README.md")
    convert(source, derivatives)
    atlases = write_variant_atlases(source, derivatives)
    threads = arguments.threads
    summary_path = arguments.results / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary["settings"] = {
        **summary.get("settings", {}),
        "source": rel(source),
        "derivatives": rel(derivatives),
        "runs": rel(runs),
        "threads": threads,
        "folds": "5 outer x 5 inner",
        "bootstrap": 2000,
        "permutations": arguments.permutations,
    }
    summary["dataset"] = dataset_counts(source)
    summary["settings"]["machine"] = {"parts": arguments.parts, "start": machine()}
    arguments.results.mkdir(parents=True, exist_ok=True)

    runner = Runner(derivatives, runs, atlases, threads, arguments.reuse)
    if "main" in arguments.parts:
        summary["tasks"] = {}
        for key, task in TASKS.items():
            summary["tasks"][key] = main_task(runner, key, task, arguments.permutations)
            if key == "nihss":
                output = runner.output(key, "arterial", 0)
                summary["atlas_volume_check"] = atlas_volume_check(source, output)
            save(summary, arguments.results)
    if "seeds" in arguments.parts:
        summary["seeds"] = {}
        for key in TASKS:
            summary["seeds"][key] = seed_spread(runner, key, summary["tasks"][key])
            save(summary, arguments.results)
    if "variants" in arguments.parts:
        summary["variants"] = {}
        for variant in ("volume", "level2"):
            summary["variants"][variant] = {}
            for key in TASKS:
                models = TABULAR if key == "nihss" else ("linear", "mlp")
                entry = run_summary(runner(key, variant, models, 0))
                entry["difference_to_arterial"] = paired_to_base(runner, key, variant, models)
                summary["variants"][variant][key] = entry
                save(summary, arguments.results)
    summary["settings"]["machine"]["end"] = machine()
    save(summary, arguments.results)
    print(results_table(summary))


class Runner:
    """Runs ``bids_dl-classify train`` for a task, atlas, models and seed into its folder."""

    def __init__(self, derivatives, runs, atlases, threads, reuse) -> None:
        self.derivatives, self.runs, self.atlases = derivatives, runs, atlases
        self.threads, self.reuse = threads, reuse

    def output(self, key: str, atlas: str, seed: int) -> Path:
        return self.runs / f"{key}_{atlas}_seed{seed}"

    def __call__(self, key: str, atlas: str, models: tuple[str, ...], seed: int) -> dict:
        output = self.output(key, atlas, seed)
        command = command_line(
            self.derivatives, output, TASKS[key], self.atlases[atlas], models, seed, self.threads
        )
        return train(command, output, self.reuse)


def main_task(runner: Runner, key: str, task: dict, permutations: int) -> dict:
    """One task's run with every model (seed 0), its bootstrap timed, its permutation test."""
    models = ("linear", "svm", "mlp", "cnn") if key == "nihss" else ("linear", "mlp", "cnn")
    metrics = runner(key, "arterial", models, 0)
    output = runner.output(key, "arterial", 0)
    entry = run_summary(metrics)
    entry["bootstrap"] = time_bootstrap(output, metrics)
    entry["permutation"] = permutation(
        runner.derivatives, task, output, permutations, runner.threads
    )
    if task["goal"]:
        entry["goal"] = goal(entry, *task["goal"])
    return entry


def paired_to_base(runner: Runner, key: str, variant: str, models: tuple[str, ...]) -> dict:
    """Each model of a variant against the same model with the arterial loads (seed 0: the
    same participants and outer folds), the paired bootstrap of the primary metric."""
    from bids_dl.models.classifier_metrics import PRIMARY_METRIC, paired_difference

    base = pd.read_csv(runner.output(key, "arterial", 0) / "cv_predictions.tsv", sep="\t")
    other = pd.read_csv(runner.output(key, variant, 0) / "cv_predictions.tsv", sep="\t")
    if not (
        base["participant_id"].equals(other["participant_id"])
        and base["fold"].equals(other["fold"])
    ):
        raise SystemExit(f"{key}: the {variant} run has other participants or folds")
    task = "regression" if TASKS[key]["threshold"] is None else "classification"
    target, metric = base["target"].to_numpy(), PRIMARY_METRIC[task]
    return {
        name: paired_difference(target, other[name].to_numpy(), base[name].to_numpy(), task)[metric]
        for name in models
    }


def seed_spread(runner: Runner, key: str, seed0: dict) -> dict:
    """The primary metric of linear (and svm for the regression) with seeds 0, 1, 2."""
    models = ("linear", "svm") if key == "nihss" else ("linear",)
    primary = "r" if key == "nihss" else "auc"
    spread: dict[str, dict] = {m: {} for m in models}
    for seed in (0, 1, 2):
        metrics = seed0 if seed == 0 else run_summary(runner(key, "arterial", models, seed))
        for name in models:
            spread[name][f"seed{seed}"] = metrics["models"][name]["metrics"][primary]
    return spread


def goal(entry: dict, metric: str, value: float) -> dict:
    """Whether the issue's target is met: the best model's estimate, and the linear one's."""
    models = entry["models"]
    best = max(models, key=lambda m: models[m]["metrics"][metric]["estimate"])
    found = models[best]["metrics"][metric]
    return {
        "metric": metric,
        "value": value,
        "best_model": best,
        "best_estimate": found["estimate"],
        "best_interval": [found["low"], found["high"]],
        "linear_estimate": models["linear"]["metrics"][metric]["estimate"],
        "met": found["estimate"] >= value,
        "target_inside_interval": found["low"] <= value <= found["high"],
        "linear_met": models["linear"]["metrics"][metric]["estimate"] >= value,
    }


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_1_5_15": list(os.getloadavg()),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def save(summary: dict, results: Path) -> None:
    (results / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if {"tasks", "seeds", "variants"} <= set(summary):
        (results / "results.md").write_text(results_table(summary))


if __name__ == "__main__":
    main()
