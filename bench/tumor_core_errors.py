"""Where a leave-one-out run's tumour-core errors lie on the real BraTS cases.

For each case, the fold model that did not train on it segments FLAIR + contrast T1 (as in
``tumor_loo.py``); the voxels it wrongly calls core (false positives) and the true core it
misses (false negatives) are described by their true and predicted labels, their mean
z-scores inside the brain on both contrasts, their median distance to the true enhancing
tumour, and the share of them inside the hole-filled true enhancing + necrosis region.

    python bench/tumor_core_errors.py runs/tumor_loo --results bench/results/tumor_loo
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
from scipy import ndimage

from bids_dl.models.bundle import load_bundle
from bids_dl.models.inference import postprocess, segment
from bids_dl.models.metrics import dice

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_lesions import brats_cases  # noqa: E402
from lesion_baseline import zscore_in_mask  # noqa: E402
from tumor_loo import held_out_cases, parse_run_arguments  # noqa: E402

CORE_LABELS = (1, 3, 4)
ENHANCING = 4


def describe(
    region: np.ndarray,
    truth: np.ndarray,
    predicted: np.ndarray,
    zscores: dict[str, np.ndarray],
    enhancing_distance: np.ndarray,
    enclosed: np.ndarray,
) -> dict:
    """Size, label make-up, intensities and position of one error region."""
    if not region.any():
        return {"voxels": 0}
    return {
        "voxels": int(region.sum()),
        "true_labels": {int(k): int(v) for k, v in enumerate(np.bincount(truth[region])) if v},
        "predicted_labels": {
            int(k): int(v) for k, v in enumerate(np.bincount(predicted[region])) if v
        },
        **{f"{name}_z_mean": round(float(z[region].mean()), 2) for name, z in zscores.items()},
        "median_mm_to_enhancing": round(float(np.median(enhancing_distance[region])), 1),
        "share_inside_enhancing_and_necrosis": round(float(enclosed[region].mean()), 2),
    }


def core_errors(bundle: Path, case: dict) -> dict:
    """False-positive and false-negative core of ``bundle`` on one BraTS case."""
    card, network = load_bundle(bundle)
    images = {name: nb.load(str(case[name])) for name in ("FLAIR", "T1ce")}
    inputs = [images.get(contrast) for contrast in card.inputs["contrasts"]]
    mask = np.asarray(nb.load(str(case["mask"])).dataobj) > 0
    truth = np.rint(nb.load(str(case["truth"])).get_fdata()).astype(np.int64)
    predicted, probabilities = segment(inputs, card, network, mask=mask)
    predicted = postprocess(predicted, card, probabilities=probabilities).astype(np.int64)
    zooms = images["FLAIR"].header.get_zooms()[:3]
    zscores = {
        name: zscore_in_mask(image.get_fdata(dtype=np.float32), mask)
        for name, image in images.items()
    }
    true_core, predicted_core = np.isin(truth, CORE_LABELS), np.isin(predicted, CORE_LABELS)
    enhancing_distance = ndimage.distance_transform_edt(truth != ENHANCING, sampling=zooms)
    enclosed = ndimage.binary_fill_holes(np.isin(truth, (1, ENHANCING)))
    context = (truth, predicted, zscores, enhancing_distance, enclosed)
    return {
        "tumor_core_dice": round(dice(predicted_core, true_core), 4),
        "false_positive_core": describe(predicted_core & ~true_core, *context),
        "false_negative_core": describe(true_core & ~predicted_core, *context),
    }


def main() -> None:
    args = parse_run_arguments(__doc__.splitlines()[0])
    folds = held_out_cases(args.run)
    report = {case["name"]: core_errors(args.run / case["name"] / "bundle", case)
              for case in brats_cases(args.brats, folds)}  # fmt: skip
    text = json.dumps({"run": str(args.run), "per_case": report}, indent=1) + "\n"
    if args.results:
        args.results.mkdir(parents=True, exist_ok=True)
        (args.results / "core_errors.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
