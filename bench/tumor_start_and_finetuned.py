"""Do the fine-tuned tumour model and the simulated-only model it started from combine well?

Every leave-one-out so far found fine-tuning on the real cases raising whole-tumour Dice and
leaving tumour core where the simulated-only start had it, or lower (``bench/results/
tumor_loo*/``). On each real case, this scores the fold model that did not see it, the start
model (which saw no real case; also decoded by the BraTS nested regions, which simulated-only
cards do not use), their averaged probabilities, and the fold model's whole tumour with the
start model's core and enhancing labels inside it. Two simulated-only bundles can be given
(no CASE in the first) to score their ensemble.

    python bench/tumor_start_and_finetuned.py "runs/tumor_loo_region_loss/CASE/bundle" \
        runs/tumor_stage5/bundle --out bench/results/tumor_start_and_finetuned
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nb
import numpy as np
import torch

from bids_dl.models.bundle import load_bundle
from bids_dl.models.inference import decode_nested_regions, postprocess, segment
from bids_dl.models.labels import TUMOR_REGIONS
from bids_dl.models.metrics import dice

CASES = ["pat0003", "pat0004", "pat0005", "pat0006"]


def predict(bundle: str, images: list[nb.Nifti1Image], mask: np.ndarray):
    """Labels before post-processing, probabilities and the card of one bundle."""
    card, network = load_bundle(bundle)
    by_contrast = dict(zip(["FLAIR", "T1ce"], images, strict=True))
    channels = [by_contrast.get(c) for c in card.inputs["contrasts"]]
    labels, probabilities = segment(channels, card, network, mask=mask)
    labels[~mask] = 0
    return labels, probabilities, card


def nested_labels(
    probabilities: np.ndarray, values: list[int], regions: list[list[int]], mask: np.ndarray
) -> np.ndarray:
    """Label values decoded from class probabilities by nested ``regions``, zero outside
    ``mask``."""
    labels = np.asarray(values, np.uint8)[decode_nested_regions(probabilities, regions)]
    labels[~mask] = 0
    return labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fine_tuned", help="fold bundles, CASE standing for the held-out case")
    parser.add_argument("start", help="the simulated-only bundle the folds started from")
    parser.add_argument("--brats", type=Path, default=Path("bench/brats_bids"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/tumor_start_and_finetuned"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    scores: dict = {}
    for case in CASES:
        anat = args.brats / f"sub-{case}" / "anat"
        labels_dir = args.brats / "derivatives" / "labels" / f"sub-{case}" / "anat"
        images = [nb.load(anat / f"sub-{case}_{n}.nii.gz") for n in ("FLAIR", "ce-gadolinium_T1w")]
        mask = np.asarray(nb.load(labels_dir / f"sub-{case}_desc-brain_mask.nii.gz").dataobj) > 0
        truth = np.asarray(nb.load(labels_dir / f"sub-{case}_desc-tumor_dseg.nii.gz").dataobj)
        truth = np.where(truth == 3, 1, truth)  # BraTS 2013 non-enhancing tumour is core
        tuned, tuned_p, card = predict(args.fine_tuned.replace("CASE", case), images, mask)
        start, start_p, start_card = predict(args.start, images, mask)
        assert sorted(card.labels) == sorted(start_card.labels)
        values = sorted(card.labels)
        # the averaged and re-decoded probabilities take the BraTS nested regions, as the
        # shipped card does (simulated-only cards decode by the argmax)
        nested = card.inputs.get("nested_regions", list(TUMOR_REGIONS.values()))
        regions = [[values.index(v) for v in region] for region in nested]
        average_p = (tuned_p + start_p) / 2
        composed = np.where(tuned > 0, np.where(np.isin(start, (1, 4)), start, 2), 0)
        variants = {
            "fine_tuned": (tuned, tuned_p),
            "start": (start, start_p),
            "start_nested_regions": (nested_labels(start_p, values, regions, mask), start_p),
            "averaged": (nested_labels(average_p, values, regions, mask), average_p),
            "fine_tuned_whole_start_core": (composed.astype(np.uint8), tuned_p),
        }
        scores[case] = {}
        for name, (labels, probabilities) in variants.items():
            kept = postprocess(labels, card, 1.0, probabilities)
            scores[case][name] = {
                region: round(dice(np.isin(kept, v), np.isin(truth, v)), 4)
                for region, v in TUMOR_REGIONS.items()
            }
        print(case, scores[case], flush=True)
    mean = {
        name: {
            region: round(float(np.mean([scores[c][name][region] for c in CASES])), 4)
            for region in TUMOR_REGIONS
        }
        for name in scores[CASES[0]]
    }
    print(json.dumps(mean, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps(
            {"fine_tuned": args.fine_tuned, "start": args.start, "cases": scores, "mean": mean},
            indent=2,
        )
        + "\n"  # fmt: skip
    )


if __name__ == "__main__":
    main()
