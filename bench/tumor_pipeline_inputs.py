"""Does the pipeline's preprocessing change the tumour model's accuracy on real cases?

``evaluate`` (and ``tumor_loo.py``) feed the BraTS images as given, with BraTS's brain mask.
The pipeline feeds the conformed (RAS+) images, the mask it takes from the skull-stripped
ce-T1w's background, and the ce-T1w after N4. Per case, this scores a bundle that never saw
the case (``CASE`` in the path is replaced by the case label: the leave-one-out folds) both
ways: ce-T1w as given, and after N4 (the FLAIR as given in both; its rigid coregistration
changed nothing on pat0003: 0.874 both ways).

    python bench/tumor_pipeline_inputs.py "runs/tumor_loo_region_loss/CASE/bundle" \
        --brats bench/brats_bids --out bench/results/tumor_pipeline_inputs
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nb
import numpy as np
import torch

from bids_dl.models.labels import TUMOR_REGIONS
from bids_dl.models.metrics import dice
from bids_dl.workflows.interfaces.ants import n4_bias_correct
from bids_dl.workflows.interfaces.conform import conform_image
from bids_dl.workflows.interfaces.images import brain_mask_from_background
from bids_dl.workflows.interfaces.models import model_lesions

CASES = ["pat0003", "pat0004", "pat0005", "pat0006"]


def prepare(brats: Path, case: str, folder: Path) -> None:
    """Conformed FLAIR and ce-T1w, the background mask, and the ce-T1w after N4."""
    anat = brats / f"sub-{case}" / "anat"
    folder.mkdir(parents=True, exist_ok=True)
    conform_image(anat / f"sub-{case}_ce-gadolinium_T1w.nii.gz", folder / "as_given.nii.gz")
    conform_image(anat / f"sub-{case}_FLAIR.nii.gz", folder / "flair.nii.gz")
    brain_mask_from_background(str(folder / "as_given.nii.gz"), str(folder / "mask.nii.gz"))
    n4_bias_correct(str(folder / "as_given.nii.gz"), str(folder / "n4.nii.gz"), 2)


def score(bundle: str, folder: Path, reference: str, truth: np.ndarray) -> dict[str, float]:
    """Region Dice of the pipeline's tumour step with ``reference`` as the ce-T1w."""
    out = folder / f"tumor_{reference}.nii.gz"
    model_lesions(
        "tumor", bundle, str(folder / f"{reference}.nii.gz"), str(folder / "mask.nii.gz"),
        str(out), {"FLAIR": str(folder / "flair.nii.gz")}, device="cpu", num_threads=2,
        reference_contrast="T1ce",
    )  # fmt: skip
    labels = np.asarray(nb.load(out).dataobj)
    return {
        region: round(dice(np.isin(labels, values), np.isin(truth, values)), 4)
        for region, values in TUMOR_REGIONS.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", help="bundle folder, CASE standing for the held-out case")
    parser.add_argument("--brats", type=Path, default=Path("bench/brats_bids"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/tumor_pipeline_inputs"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    work = args.out / "work"
    results: dict = {"bundle": args.bundle, "cases": {}}
    for case in CASES:
        truth_file = args.brats / "derivatives" / "labels" / f"sub-{case}" / "anat"
        truth = np.asarray(
            nb.as_closest_canonical(
                nb.load(truth_file / f"sub-{case}_desc-tumor_dseg.nii.gz")
            ).dataobj
        ).copy()
        truth[truth == 3] = 1  # BraTS 2013's non-enhancing tumour is core, as in evaluate
        prepare(args.brats, case, work / case)
        bundle = args.bundle.replace("CASE", case)
        results["cases"][case] = {
            kind: score(bundle, work / case, kind, truth) for kind in ("as_given", "n4")
        }
        print(case, results["cases"][case], flush=True)
    results["mean"] = {
        kind: {
            region: round(float(np.mean([r[kind][region] for r in results["cases"].values()])), 4)
            for region in TUMOR_REGIONS
        }
        for kind in ("as_given", "n4")
    }
    print(results["mean"])
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
