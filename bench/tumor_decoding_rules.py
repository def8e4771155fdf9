"""Decoding rules for the tumour model's probabilities, chosen by nested leave-one-out.

The tumour card decodes whole tumour, core and enhancing tumour where each region's summed
probability exceeds 0.5. Two families of rules that BraTS entries tune on validation cases:

- ``region_thresholds``: another threshold per region (whole tumour, core, enhancing);
- ``core_near_enhancing``: predicted core farther than a distance from the predicted enhancing
  tumour becomes edema (in the real cases here, edema taken for core lay ~15 mm from the
  enhancing tumour, missed non-enhancing core ~7.5 mm).

For each family, each real case's setting is chosen on the other cases' out-of-fold
predictions of a ``bench/tumor_loo.py`` run (the mean of the three region Dice), then applied
to the case: an honest estimate of what the tuned rule gives on an unseen case. The setting
that is best on all four cases (the held-out one included: optimistic) is reported beside it.

    python bench/tumor_decoding_rules.py runs/tumor_loo_ensemble \
        --results bench/results/tumor_region_thresholds --card models/zoo/tumor

``--thresholds`` sets the grid of each region's threshold (default 0.5, 0.3, 0.4, 0.6, 0.7;
the first is the default decoding). ``--card BUNDLE`` writes the
region thresholds best on all the cases into the card of the bundle trained on all of them
(``inputs.nested_region_thresholds``), with the nested estimate.

Each fold's probabilities on its held-out case are kept in ``FOLD/probabilities.npz`` (float16,
brain bounding box), so a second call only decodes.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import torch
from scipy import ndimage

from bids_dl.models.bundle import load_bundle
from bids_dl.models.card import CARD
from bids_dl.models.inference import segment
from bids_dl.models.labels import TUMOR_REGIONS
from bids_dl.models.metrics import dice
from bids_dl.models.postprocessing import decode_nested_regions, keep_most_confident_component

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_lesions import brats_cases  # noqa: E402
from tumor_loo import held_out_cases, parse_run_arguments  # noqa: E402

CONTRASTS = ["FLAIR", "T1ce"]
CORE, EDEMA, ENHANCING = 1, 2, 4  # BraTS label values
THRESHOLDS = (0.5, 0.3, 0.4, 0.6, 0.7)  # the card's first


def rules(thresholds: list[float]) -> dict[str, list[dict]]:
    """Settings of each family of rules, the card's decoding first; ``thresholds`` is the grid
    each region's threshold is drawn from."""
    return {
        "region_thresholds": [
            {"thresholds": t} for t in itertools.product(thresholds, repeat=len(TUMOR_REGIONS))
        ],
        "core_near_enhancing": [
            {"core_within_mm": d} for d in (None, 5.0, 7.5, 10.0, 12.5, 15.0, 20.0)
        ],
    }


def held_out_probabilities(fold: Path, case: dict) -> dict[str, np.ndarray]:
    """The fold model's probabilities on its held-out case, cropped to the brain, with the
    truth (BraTS 2013 label 3 counted as 1) and mask on the same crop; cached in the fold."""
    cache = fold / "probabilities.npz"
    if not cache.exists():
        card, network = load_bundle(fold / "bundle")
        images = [
            nb.load(str(case[c])) if c in CONTRASTS else None for c in card.inputs["contrasts"]
        ]
        mask = np.asarray(nb.load(str(case["mask"])).dataobj) > 0
        _, probabilities = segment(images, card, network, mask=mask)
        truth = np.rint(np.asarray(nb.load(str(case["truth"])).dataobj)).astype(np.uint8)
        truth[truth == 3] = 1
        box = tuple(slice(i.min(), i.max() + 1) for i in np.nonzero(mask))
        np.savez_compressed(
            cache, probabilities=probabilities[(slice(None), *box)].astype(np.float16),
            truth=truth[box], mask=mask[box], labels=np.asarray(sorted(card.labels)),
        )  # fmt: skip
    stored = dict(np.load(cache))
    stored["probabilities"] = stored["probabilities"].astype(np.float32)
    stored["zooms"] = nb.load(str(case["truth"])).header.get_zooms()[:3]
    return stored


def region_dice(
    case: dict[str, np.ndarray],
    thresholds: tuple[float, ...] = (0.5, 0.5, 0.5),
    core_within_mm: float | None = None,
) -> list[float]:
    """Whole tumour, core and enhancing Dice of the decoding with ``thresholds`` (and core
    only within ``core_within_mm`` of enhancing tumour, when there is any), after the card's
    brain masking and most-confident-component step (as ``evaluate``)."""
    probabilities = case["probabilities"]
    labels = list(case["labels"])
    regions = [[labels.index(v) for v in values] for values in TUMOR_REGIONS.values()]
    index = decode_nested_regions(probabilities, regions, thresholds)
    prediction = np.asarray(labels, dtype=np.uint8)[index]
    prediction[~case["mask"]] = 0
    prediction = keep_most_confident_component(
        prediction, foreground_probability=1 - probabilities[0]
    )
    enhancing = prediction == ENHANCING
    if core_within_mm is not None and enhancing.any():
        distance = ndimage.distance_transform_edt(~enhancing, sampling=case["zooms"])
        prediction[(prediction == CORE) & (distance > core_within_mm)] = EDEMA
    return [
        dice(np.isin(prediction, values), np.isin(case["truth"], values))
        for values in TUMOR_REGIONS.values()
    ]


def named(values) -> dict[str, float]:
    """Whole tumour, core and enhancing values by name, rounded."""
    return dict(zip(TUMOR_REGIONS, np.round(values, 4).tolist(), strict=True))


def nested_selection(table: dict[str, list[list[float]]], settings: list[dict]) -> dict:
    """Per case, the setting best on the other cases and its Dice there, beside the default
    (the first setting); means over cases; the setting best on every case."""

    def best(names):
        return int(np.argmax([np.mean([table[n][i] for n in names]) for i in range(len(settings))]))

    per_case = {}
    for name in table:
        chosen = best([o for o in table if o != name])
        per_case[name] = {
            "chosen": settings[chosen],
            "nested": named(table[name][chosen]),
            "default": named(table[name][0]),
        }
    everywhere = best(list(table))
    return {
        "per_case": per_case,
        "mean": {
            kind: named(np.mean([list(row[kind].values()) for row in per_case.values()], 0))
            for kind in ("nested", "default")
        },
        "best_on_all": {
            "setting": settings[everywhere],
            "mean": named(np.mean([table[n][everywhere] for n in table], 0)),
        },
    }


def record_thresholds(bundle: Path, selection: dict, run: Path) -> None:
    """Write the region thresholds best on all the cases into the card of ``bundle`` (the
    model trained on all of them, with the recipe of the run's folds: nnU-Net's way of fixing
    post-processing on cross-validation predictions), with the nested estimate of what they
    give on an unseen case."""
    thresholds = selection["best_on_all"]["setting"]["thresholds"]
    card_path = bundle / CARD
    card = json.loads(card_path.read_text())
    card["inputs"]["nested_region_thresholds"] = thresholds
    card["metrics"].setdefault("test", {})["region_thresholds_nested_leave_one_out"] = {
        "run": str(run),
        "thresholds": thresholds,
        "note": "thresholds chosen on the leave-one-out folds' out-of-fold predictions of all "
        "the cases; 'nested' chooses them per case on the other cases only (the estimate for "
        "an unseen case), 'default' is 0.5 for every region",
        "mean": selection["mean"],
        "per_case": selection["per_case"],
    }
    card_path.write_text(json.dumps(card, indent=2, sort_keys=True, default=str) + "\n")


def main() -> None:
    args = parse_run_arguments(__doc__.splitlines()[0], card=True, thresholds=THRESHOLDS)
    torch.set_num_threads(2)
    cases = {
        case["name"]: held_out_probabilities(args.run / case["name"], case)
        for case in brats_cases(args.brats, held_out_cases(args.run))
    }
    results = {
        "run": str(args.run),
        "thresholds": args.thresholds,
        "note": "per family, the setting is chosen per case on the other cases' out-of-fold "
        "predictions (mean of the three region Dice); 'best_on_all' is chosen on every case, "
        "the held-out one included (optimistic)",
    }
    for family, settings in rules(args.thresholds).items():
        table = {name: [region_dice(case, **s) for s in settings] for name, case in cases.items()}
        results[family] = nested_selection(table, settings)
    print(json.dumps(results, indent=2))
    if args.results:
        args.results.mkdir(parents=True, exist_ok=True)
        (args.results / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if args.card:
        record_thresholds(args.card, results["region_thresholds"], args.run)


if __name__ == "__main__":
    main()
