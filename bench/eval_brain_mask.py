"""Evaluate a brain-mask bundle on held-out data, time it, and write the numbers into its card.

Two test sets, both named in the card with what they are:
- synthetic: images of random contrast synthesised (no deformation, 1 mm) from the held-out
  real label maps (19, 20 of ../shared/data/synthseg_label_maps), three seeds each;
- sample: the T1w and T2w of the bids_dl sample dataset at 1 mm (simulated heads around the
  MNI152 brain) against their true brain masks.

    python bench/eval_brain_mask.py BUNDLE --label-maps ../shared/data/synthseg_label_maps \
        --sample SAMPLE_DIR --out bench/results/brain_mask [--update-card]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import torch

from bids_dl.models.bundle import CARD, load_bundle
from bids_dl.models.evaluate import Case, evaluate
from bids_dl.models.inference import segment
from bids_dl.models.synthesis import LabelSynthesiser, SynthesisParameters
from bids_dl.models.train import BRAIN_LABEL_RANGE

STILL = SynthesisParameters(
    rotation_deg=0, scale=0, shear=0, translation_vox=0, nonlinear_std_vox=0
)


def synthetic_cases(label_maps: Path, subjects: list[str], seeds: int, folder: Path) -> list[Case]:
    """Random-contrast 1 mm images of the held-out label maps, with their brain masks."""
    priors = label_maps / "labels_classes_priors"
    values = np.load(priors / "generation_labels.npy")
    classes = np.load(priors / "generation_classes.npy")
    generation = torch.zeros(int(values.max()) + 1, dtype=torch.long)
    generation[torch.from_numpy(values.astype(np.int64))] = torch.from_numpy(
        classes.astype(np.int64)
    )
    target = torch.zeros_like(generation)
    low, high = BRAIN_LABEL_RANGE
    target[[int(v) for v in values if low <= v <= high]] = 1
    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for subject in subjects:
        image = nb.load(str(label_maps / f"training_seg_{subject}.nii.gz"))
        labels = torch.from_numpy(np.asarray(image.dataobj).astype(np.int64))
        for seed in range(seeds):
            synthesiser = LabelSynthesiser(
                [labels], generation, target, tuple(labels.shape), STILL, seed
            )
            synthetic, mask = synthesiser.sample()
            name = f"seg{subject}_seed{seed}"
            nb.save(nb.Nifti1Image(synthetic[0].numpy(), image.affine), folder / f"{name}.nii.gz")
            nb.save(
                nb.Nifti1Image(mask.numpy().astype(np.uint8), image.affine),
                folder / f"{name}_mask.nii.gz",
            )
            cases.append(Case(name, folder / f"{name}.nii.gz", folder / f"{name}_mask.nii.gz"))
    return cases


def sample_cases(sample: Path) -> list[Case]:
    cases = []
    truth = sample / "derivatives" / "sample-truth"
    for subject in sorted(p.name for p in sample.glob("sub-*")):
        for suffix in ("T1w", "T2w"):
            image = sample / subject / "anat" / f"{subject}_{suffix}.nii.gz"
            mask = truth / subject / "anat" / f"{subject}_desc-brain_mask.nii.gz"
            cases.append(Case(f"{subject}_{suffix}", image, mask))
    return cases


def time_inference(bundle: Path, image_path: Path, repeats: int = 2) -> dict:
    """Seconds and peak memory of one whole-head inference, including conform and resampling."""
    card, network = load_bundle(bundle)
    image = nb.load(str(image_path))
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        segment(image, card, network)
        timings.append(time.perf_counter() - start)
    return {
        "seconds_min": round(min(timings), 2),
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "volume_shape": list(image.shape),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument(
        "--label-maps", type=Path, default=Path("../shared/data/synthseg_label_maps")
    )
    parser.add_argument("--subjects", nargs="+", default=["19", "20"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--sample", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("bench/results/brain_mask"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--update-card", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    card, network = load_bundle(args.bundle)
    results = {}
    if args.label_maps.is_dir():
        cases = synthetic_cases(
            args.label_maps, args.subjects, args.seeds, args.out / "synthetic_cases"
        )
        results["synthetic_heldout_label_maps"] = evaluate(
            card, network, cases, args.out / "synthetic"
        )
    else:
        print(f"{args.label_maps} is absent: the synthetic test set is skipped")
    results["sample_dataset"] = evaluate(
        card, network, sample_cases(args.sample), args.out / "sample"
    )
    first = sample_cases(args.sample)[0].image
    results["speed_cpu_2_threads"] = time_inference(args.bundle, first)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    if args.update_card:
        card_path = args.bundle / CARD
        content = json.loads(card_path.read_text())
        content["metrics"]["test"] = {
            "synthetic_heldout_label_maps": {
                "data": f"real label maps {args.subjects} (held out), images synthesised with "
                f"random contrast at 1 mm, {args.seeds} seeds each: SIMULATED images",
                **results.get("synthetic_heldout_label_maps", {}),
            },
            "sample_dataset": {
                "data": "bids_dl sample dataset, 1 mm T1w and T2w: the MNI152 brain in simulated "
                "heads (SIMULATED); truth = the template brain mask carried by the simulation",
                **results["sample_dataset"],
            },
            "speed_cpu_2_threads": results["speed_cpu_2_threads"],
            "command": "python bench/eval_brain_mask.py BUNDLE --sample SAMPLE --update-card",
        }
        card_path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
