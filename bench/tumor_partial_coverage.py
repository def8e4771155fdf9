"""A FLAIR that covers only part of the brain: fed as zeros there, or with its coverage known.

Clinical FLAIRs are often thick-slab axial series that stop short of the vertex or the
posterior fossa. After registration to the T1w, the brain outside the FLAIR's field of view
holds zeros. The BraTS FLAIRs are z-scored in the brain, where a zero is the mean and does
little harm, so each is first put on a raw scanner-like scale (positive in the brain, 0
outside: ``100 * (z - min + 1)``; the z-scoring inside the brain mask undoes it). Each real
BraTS case (segmented by the leave-one-out fold that never saw it) is then segmented three
ways:

- ``full``: the whole FLAIR;
- ``zero_filled``: the FLAIR's axial slices over ``--cut`` of the brain's extent, at the end
  away from the tumour, set to 0 (what the registration leaves), normalised as if acquired;
- ``coverage``: the same, with the coverage given to ``segment`` (the pipeline's way since the
  fourteenth session): normalised inside the covered brain, zeros outside it as a missing
  contrast.

    python bench/tumor_partial_coverage.py runs/tumor_loo_region_loss --brats bench/brats_bids \
        --results bench/results/tumor_partial_coverage
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import torch

from bids_dl.models.bundle import load_bundle
from bids_dl.models.inference import postprocess, segment
from bids_dl.models.labels import TUMOR_REGIONS
from bids_dl.models.metrics import dice, voxel_volume_mm3

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_lesions import brats_cases  # noqa: E402
from tumor_loo import held_out_cases, parse_run_arguments  # noqa: E402

CUT = 0.3  # share of the brain's axial extent outside the FLAIR


def cut_away_from_tumour(flair: np.ndarray, brain: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The slices (last axis) the FLAIR keeps: all but ``CUT`` of the brain's extent, removed
    at the end farther from the tumour's centre."""
    slices = np.nonzero(brain.any(axis=(0, 1)))[0]
    low, high = slices.min(), slices.max() + 1
    removed = int(round(CUT * (high - low)))
    centre = np.nonzero(truth > 0)[2].mean()
    covered = np.ones(flair.shape, dtype=bool)
    if centre - low > high - centre:
        covered[:, :, low : low + removed] = False
    else:
        covered[:, :, high - removed : high] = False
    return covered


def scores(labels: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Whole tumour, core and enhancing Dice."""
    return {
        region: round(dice(np.isin(labels, values), np.isin(truth, values)), 4)
        for region, values in TUMOR_REGIONS.items()
    }


def main() -> None:
    args = parse_run_arguments(__doc__.splitlines()[0])
    torch.set_num_threads(1)
    results = {"cut": CUT, "run": str(args.run), "cases": {}}
    for case in brats_cases(args.brats, held_out_cases(args.run)):
        card, network = load_bundle(args.run / case["name"] / "bundle")
        flair, t1ce = nb.load(str(case["FLAIR"])), nb.load(str(case["T1ce"]))
        brain = np.asarray(nb.load(str(case["mask"])).dataobj) > 0
        truth = np.rint(np.asarray(nb.load(str(case["truth"])).dataobj)).astype(np.uint8)
        truth[truth == 3] = 1
        zscored = flair.get_fdata()
        raw = np.where(brain, 100 * (zscored - zscored[brain].min() + 1), 0).astype(np.float32)
        flair = nb.Nifti1Image(raw, flair.affine)
        covered = cut_away_from_tumour(raw, brain, truth)
        cut = nb.Nifti1Image(np.where(covered, raw, 0).astype(np.float32), flair.affine)
        row = {"brain_covered": round(float(covered[brain].mean()), 3)}
        for name, image, coverage in (
            ("full", flair, None),
            ("zero_filled", cut, None),
            ("coverage", cut, [covered, None, None, None]),
        ):
            images = [image if c == "FLAIR" else t1ce if c == "T1ce" else None
                      for c in card.inputs["contrasts"]]  # fmt: skip
            labels, probabilities = segment(images, card, network, mask=brain, coverage=coverage)
            labels[~brain] = 0
            labels = postprocess(labels, card, voxel_volume_mm3(flair), probabilities)
            row[name] = scores(labels, truth)
            print(case["name"], name, row[name], flush=True)
        results["cases"][case["name"]] = row
    results["mean"] = {
        name: {
            region: round(float(np.mean([r[name][region] for r in results["cases"].values()])), 4)
            for region in TUMOR_REGIONS
        }
        for name in ("full", "zero_filled", "coverage")
    }
    print(json.dumps(results["mean"], indent=2))
    if args.results:
        args.results.mkdir(parents=True, exist_ok=True)
        (args.results / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
