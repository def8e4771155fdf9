"""Choose the WMH model's smallest kept lesion on VALIDATION cases, never on the test cases.

WMH lesions are planted (fixed seeds) into label maps 17 and 18, the validation maps of the
training split, as ``eval_lesions.py`` does for the test maps 19 and 20; the model runs once per
case (FLAIR + T1w), then predicted lesions (26-connected components) smaller than each
candidate volume are removed and lesion F1 and Dice are computed. SIMULATED data.

    python bench/wmh_min_lesion_size.py models/zoo/wmh [--per-subject 4]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import torch

from bids_dl.models.bundle import load_bundle
from bids_dl.models.inference import segment
from bids_dl.models.metrics import dice, lesion_detection
from bids_dl.models.postprocessing import remove_small_components

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from eval_lesions import simulated_cases  # noqa: E402

CANDIDATES_MM3 = (0, 2, 4, 6, 8, 12, 16, 24, 32)


#: F1 differences this small are within the spread of 8 cases: the smaller size is kept
TIE_F1 = 0.01


def choose_min_size(summary: dict[str, dict[str, float]]) -> int:
    """The smallest candidate size whose mean lesion F1 is within ``TIE_F1`` of the best: drop
    no more small lesions than the validation cases show is worth it."""
    top = max(row["lesion_f1"] for row in summary.values())
    return min(int(size) for size, row in summary.items() if row["lesion_f1"] >= top - TIE_F1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--per-subject", type=int, default=4)
    parser.add_argument(
        "--label-maps", type=Path, default=Path("../shared/data/synthseg_label_maps")
    )
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "wmh_min_lesion_size")
    args = parser.parse_args()
    torch.set_num_threads(2)
    cases = simulated_cases(
        "wmh", args.label_maps, args.out / "cases", args.per_subject, subjects=("17", "18")
    )
    card, network = load_bundle(args.bundle)
    scores = {size: [] for size in CANDIDATES_MM3}
    for case in cases:
        images = [nb.load(str(case[c])) if c in case else None for c in card.inputs["contrasts"]]
        mask = case["brain"]
        labels, _ = segment(images, card, network, mask=mask)
        labels = (labels > 0) & mask
        truth = np.asarray(nb.load(str(case["truth"])).dataobj) > 0
        voxel_mm3 = float(np.prod(nb.load(str(case["truth"])).header.get_zooms()[:3]))
        for size in CANDIDATES_MM3:
            kept = remove_small_components(labels.astype(np.uint8), size / voxel_mm3) > 0
            scores[size].append({**lesion_detection(kept, truth), "dice": dice(kept, truth)})
        print(case["name"], {s: round(v[-1]["lesion_f1"], 3) for s, v in scores.items()})
    summary = {
        str(size): {
            key: round(float(np.mean([row[key] for row in rows])), 4)
            for key in ("lesion_f1", "lesion_recall", "lesion_precision", "dice")
        }
        for size, rows in scores.items()
    }
    best = choose_min_size(summary)
    result = {
        "data": f"SIMULATED: WMH planted into label maps 17-18, {len(cases)} cases",
        "bundle": str(args.bundle),
        "test_time_mirror_axes": card.inputs.get("test_time_mirror_axes", []),
        "mean_per_min_lesion_mm3": summary,
        "best_min_lesion_mm3": best,
        "rule": f"smallest size with a lesion F1 within {TIE_F1} of the best",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
