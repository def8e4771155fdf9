"""Leave-one-out test of fine-tuning the tumour model on the real BraTS cases.

For each case of the config's ``train_subjects``, fine-tune with the config's recipe on the
other cases and test on the held-out one; beside it, on the same case, the model the
fine-tuning starts from (``init_from``) and the crude threshold baseline. The mean over the
folds estimates what fine-tuning on all the cases (the config itself) does on unseen cases.

    python bench/brats_to_bids.py ../shared/data/brats2013_dev bench/brats_bids
    python bench/tumor_loo.py models/configs/tumor_6_real_finetune_seed31.json \
        runs/tumor_loo_seed31     (likewise seed41 and seed51; folds seeded 31-34, 41-44, 51-54)

With ``--ensemble-of RUN ...`` (finished runs of the same recipe, other seeds) nothing is
trained: each fold's bundle is the ensemble of those runs' bundles of the fold. The shipped
tumour model's leave-one-out figures (``bench/results/tumor_leave_one_out``):

    python bench/tumor_loo.py models/configs/tumor_6_real_finetune_seed31.json \
        runs/tumor_loo_ensemble --override '{"version": "0.5.0"}' \
        --ensemble-of runs/tumor_loo_seed31 runs/tumor_loo_seed41 runs/tumor_loo_seed51 \
        --results bench/results/tumor_leave_one_out --card models/zoo/tumor

Each fold trains the config's ``iterations`` (400 steps; 1.1-4 s a step on a 2-core CPU,
two folds at a time).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bids_dl.models.bundle import ensemble_bundles
from bids_dl.models.labels import TUMOR_REGIONS

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from eval_lesions import (  # noqa: E402
    brats_cases,
    record_test_results,
    score_baseline,
    score_bundle,
)

CONTRASTS = ["FLAIR", "T1ce"]


def fold_configs(config: dict, out: Path) -> dict[str, Path]:
    """One config per held-out case (trained on the others, its own seed) in ``out/<case>``."""
    cases = config["train_subjects"]
    folds = {}
    for index, case in enumerate(cases):
        others = [c for c in cases if c != case]
        fold = config | {
            "train_subjects": others,
            "validation_subjects": others,
            "test_subjects": [case],
            "seed": config["seed"] + index,
        }
        (out / case).mkdir(parents=True, exist_ok=True)
        path = out / case / "config.json"
        path.write_text(json.dumps(fold, indent=2) + "\n")
        folds[case] = path
    return folds


def train_folds(folds: dict[str, Path], jobs: int) -> None:
    """``bids_dl-train`` on every fold, ``jobs`` at a time (each resumes from its checkpoint)."""
    trainer = str(Path(sys.executable).parent / "bids_dl-train")
    waiting = list(folds.items())
    running: list[tuple[str, subprocess.Popen]] = []
    while waiting or running:
        while waiting and len(running) < jobs:
            case, config = waiting.pop(0)
            log = (config.parent / "train.log").open("a")
            command = [trainer, str(config), str(config.parent)]
            running.append((case, subprocess.Popen(command, stdout=log, stderr=log)))
        time.sleep(5)
        for case, process in list(running):
            if process.poll() is not None:
                running.remove((case, process))
                if process.returncode:
                    raise RuntimeError(f"fold {case} failed; see {folds[case].parent}/train.log")


def ensemble_folds(folds: dict[str, Path], runs: list[Path], version: str) -> None:
    """Each fold's bundle averages the same fold's bundles of finished leave-one-out ``runs``
    (other seeds of a recipe): the leave-one-out estimate of an ensemble of them."""
    for case, config in folds.items():
        members = [run / case / "bundle" for run in runs]
        ensemble_bundles(members, config.parent / "bundle", version)


def parse_run_arguments(
    description: str, card: bool = False, thresholds: tuple[float, ...] = ()
) -> argparse.Namespace:
    """Arguments of the scripts that read a finished leave-one-out run: the run folder, the
    BraTS cases (``brats_to_bids.py``), where results go, (``card``) a bundle to update and
    (``thresholds``, the default grid) the probability thresholds to try."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("run", type=Path, help="a tumor_loo.py output (one bundle per case)")
    parser.add_argument("--brats", type=Path, default=Path("bench/brats_bids"))
    parser.add_argument("--results", type=Path, help="folder for the results")
    if card:
        parser.add_argument(
            "--card", type=Path, help="bundle trained on all the cases whose card gets the rule"
        )
    if thresholds:
        parser.add_argument(
            "--thresholds", type=float, nargs="+", default=list(thresholds),
            help="the grid of region thresholds, the default decoding first",
        )  # fmt: skip
    return parser.parse_args()


def held_out_cases(run: Path) -> list[str]:
    """The cases of a leave-one-out run whose fold has a trained bundle (``run/<case>/bundle``)."""
    folds = sorted(p.parent.parent.name for p in run.glob("*/bundle/model.json"))
    if not folds:
        sys.exit(f"no fold bundles (<case>/bundle) under {run}")
    return folds


def region_scores(summary: dict) -> dict[str, float]:
    """Whole tumour, core and enhancing Dice and HD95 of a one-case ``evaluate`` summary."""
    scores = {}
    for region in TUMOR_REGIONS:
        row = summary["labels"][region]
        scores[region] = round(row["dice_mean"], 4)
        scores[f"{region}_hd95_mm"] = round(row["hd95_mm_mean"], 1)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("out", type=Path, help="folder of the fold runs")
    parser.add_argument("--results", type=Path, help="where results.json goes (default: out)")
    parser.add_argument("--jobs", type=int, default=2, help="folds trained at once")
    parser.add_argument(
        "--override", type=json.loads, default={}, help='config keys to change (JSON), for '
        'an ablation: \'{"synthetic_share": 0}\''
    )  # fmt: skip
    parser.add_argument(
        "--card", type=Path, help="bundle (trained on all the cases) whose card gets the results"
    )
    parser.add_argument(
        "--ensemble-of", type=Path, nargs="+", metavar="RUN", default=[],
        help="instead of training, each fold averages that fold's bundles of these finished "
        "runs of the config (other seeds)",
    )  # fmt: skip
    args = parser.parse_args()
    config = json.loads(args.config.read_text()) | args.override
    folds = fold_configs(config, args.out)
    if args.ensemble_of:
        ensemble_folds(folds, args.ensemble_of, config["version"])
    else:
        train_folds(folds, args.jobs)
    torch.set_num_threads(2)
    brats = Path(config["bids_dir"])
    rows = {}
    for case, fold_config in folds.items():
        real = brats_cases(brats, [case])
        folder = fold_config.parent
        rows[case] = {
            "fine_tuned": region_scores(
                score_bundle(folder / "bundle", real, CONTRASTS, folder / "eval")
            ),
            "start": region_scores(
                score_bundle(Path(config["init_from"]), real, CONTRASTS, folder / "eval_start")
            ),
            "baseline": {r: v["dice"][0] for r, v in score_baseline(real, zscored=True).items()},
        }
    means = {
        model: {
            key: round(float(np.mean([row[model][key] for row in rows.values()])), 4)
            for key in rows[next(iter(rows))][model]
        }
        for model in ("fine_tuned", "start", "baseline")
    }
    results = {
        "config": str(args.config),
        "override": args.override,
        "ensemble_of": [str(run) for run in args.ensemble_of],
        "contrasts": CONTRASTS,
        "note": "each case scored by the fold that did not train on it (leave-one-out)",
        "per_case": rows,
        "mean": means,
    }
    target = args.results or args.out
    target.mkdir(parents=True, exist_ok=True)
    (target / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(means, indent=2))
    if args.card:
        record_test_results(args.card, {"real_brats_leave_one_out": results})


if __name__ == "__main__":
    main()
