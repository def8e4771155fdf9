"""Test the anatomical model bundles, time them against deepbet, and write the numbers into the
cards.

Test sets (each named in the card with what it is):
- synthetic: the held-out real label maps (19, 20 of ../shared/data/synthseg_label_maps) turned
  into fixed T1w-, T2w- and FLAIR-like images at 1 mm over their whole 256 mm field of view
  (``synthesise_test_image``): SIMULATED images of real anatomy;
- sample (brain mask only): the bids_dl sample dataset's 1 mm T1w and T2w (simulated heads around
  the MNI152 brain) against their true masks;
- real BraTS (brain mask only, optional): four real skull-stripped glioma cases (FLAIR,
  contrast T1) against their brain masks;
- real heads (brain mask only, optional): real T1w head scans with no reference, compared with
  deepbet's masks (e.g. Colin27 from Debian's mricron-data: ``apt-get download mricron-data``,
  then ``dpkg-deb -x`` and take ``usr/share/mricron/templates/ch2.nii.gz``).

deepbet runs from its own venv (bench/requirements-deepbet.txt) on the same volumes in the same
run, so both timings see the same machine load.

    python bench/eval_models.py brain_mask models/zoo/brain_mask --sample SAMPLE \
        --deepbet-python bench/.venv-deepbet/bin/python --real-heads ch2.nii.gz --update-card
    python bench/eval_models.py structures models/zoo/structures \
        --mask-bundle models/zoo/brain_mask --update-card
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import torch

from bids_dl.models.bundle import load_bundle
from bids_dl.models.card import CARD
from bids_dl.models.evaluate import Case, evaluate
from bids_dl.models.inference import segment
from bids_dl.models.labels import BRAIN_LABEL_RANGE, STRUCTURES, tissue_groups, tissue_lookup
from bids_dl.models.metrics import dice
from bids_dl.models.synthesis import CONTRASTS, synthesise_test_image
from bids_dl.workflows.interfaces.images import largest_component_filled

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peak_memory import run_measured  # noqa: E402

ROOT = Path(__file__).resolve().parent


def synthetic_cases(
    label_maps: Path, subjects: list[str], folder: Path, reference: str = "brain"
) -> list[Case]:
    """Fixed-contrast 1 mm images of the held-out label maps, with their ``reference`` truth
    ("brain" or "structures"); the true brain mask rides along as each case's mask."""
    folder.mkdir(parents=True, exist_ok=True)
    structure_lut = np.zeros(1024, dtype=np.uint8)
    structure_lut[list(STRUCTURES)] = list(STRUCTURES)
    cases = []
    for subject in subjects:
        label_image = nb.load(str(label_maps / f"training_seg_{subject}.nii.gz"))
        labels = np.asarray(label_image.dataobj).astype(np.int64)
        low, high = BRAIN_LABEL_RANGE
        truth = {
            "brain": ((labels >= low) & (labels <= high)).astype(np.uint8),
            "structures": structure_lut[labels],
        }
        for name, data in truth.items():
            nb.save(
                nb.Nifti1Image(data, label_image.affine), folder / f"seg{subject}_{name}.nii.gz"
            )
        for number, contrast in enumerate(CONTRASTS):
            image = synthesise_test_image(
                torch.from_numpy(labels), contrast, int(subject) * 10 + number
            )
            path = folder / f"seg{subject}_{contrast}.nii.gz"
            nb.save(nb.Nifti1Image(image.numpy(), label_image.affine), path)
            truth_file = folder / f"seg{subject}_{reference}.nii.gz"
            brain_file = folder / f"seg{subject}_brain.nii.gz"
            cases.append(Case(f"seg{subject}_{contrast}", path, truth_file, brain_file))
    return cases


def sample_cases(sample: Path) -> list[Case]:
    """The sample dataset's T1w and T2w with the brain masks the simulation carried."""
    truth = sample / "derivatives" / "sample-truth"
    return [
        Case(
            f"{subject}_{suffix}",
            sample / subject / "anat" / f"{subject}_{suffix}.nii.gz",
            truth / subject / "anat" / f"{subject}_desc-brain_mask.nii.gz",
        )
        for subject in sorted(p.name for p in sample.glob("sub-*"))
        for suffix in ("T1w", "T2w")
    ]


def brats_cases(brats: Path, folder: Path) -> list[Case]:
    """Real skull-stripped BraTS 2013 FLAIR and contrast T1 with their brain masks.

    The shared images are z-scored inside the brain; they are shifted to positive values inside
    the mask (air stays 0) because real scanner images are never negative.
    """
    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for case in sorted(brats.glob("brats_*")):
        mask_file = case / "brainmask.nii.gz"
        mask = nb.load(str(mask_file)).get_fdata() > 0
        for contrast in ("Flair", "T1c"):
            source = nb.load(str(case / f"{contrast}_subtrMeanDivStd.nii.gz"))
            data = source.get_fdata(dtype=np.float32)
            shifted = np.where(mask, data - data[mask].min() + 0.1, 0).astype(np.float32)
            path = folder / f"{case.name}_{contrast}.nii.gz"
            nb.save(nb.Nifti1Image(shifted, source.affine), path)
            cases.append(Case(f"{case.name}_{contrast}", path, mask_file))
    return cases


def our_masks(bundle: Path, images: list[Path], folder: Path) -> dict[str, dict]:
    """Our brain masks (as the pipeline makes them) and the seconds each took, image in memory."""
    card, network = load_bundle(bundle)
    folder.mkdir(parents=True, exist_ok=True)
    results = {}
    for path in images:
        source = nb.load(str(path))
        image = nb.Nifti1Image(np.asarray(source.dataobj, dtype=np.float32), source.affine)
        start = time.perf_counter()
        labels, _ = segment(image, card, network)
        mask = largest_component_filled(labels == 1)
        seconds = time.perf_counter() - start
        out = folder / f"{path.name.split('.')[0]}_mask.nii.gz"
        nb.save(nb.Nifti1Image(mask.astype(np.uint8), source.affine), out)
        results[str(path)] = {"mask": str(out), "seconds": round(seconds, 3)}
    return results


def deepbet_masks(python: Path, images: list[Path], folder: Path, threads: int) -> dict[str, dict]:
    """deepbet's masks and seconds per image (bench/run_deepbet.py in deepbet's own venv)."""
    command = [str(python), str(ROOT / "run_deepbet.py"), str(folder), *map(str, images)]
    lines = subprocess.run(
        [*command, "--threads", str(threads)], check=True, capture_output=True, text=True
    ).stdout.splitlines()
    results = {}
    for line in lines:
        entry = json.loads(line)
        if "image" in entry:
            results[entry["image"]] = {"mask": entry["mask"], "seconds": entry["seconds"]}
    return results


def fresh_process_run(bundle: Path, image: Path, mask_bundle: Path | None, threads: int) -> dict:
    """Seconds and peak resident memory of one inference in a fresh process (the ``_one``
    sub-command), loading and, for structures, the brain mask included."""
    command = [sys.executable, __file__, "_one", str(bundle), "--image", str(image)]
    command += ["--threads", str(threads)]
    command += ["--mask-bundle", str(mask_bundle)] if mask_bundle else []
    with tempfile.TemporaryFile("w+") as output:
        _, peak_gb = run_measured(command, stdout=output, stderr=subprocess.DEVNULL)
        output.seek(0)
        result = json.loads(output.read().splitlines()[-1])
    # the child's own ru_maxrss counts this process's memory copied at fork: use VmHWM
    return {"seconds": result["seconds"], "peak_memory_mb": round(peak_gb * 1024)}


def run_one(task: str, bundle: Path, image_path: Path, mask_bundle: Path | None) -> dict:
    """One inference as the pipeline runs it, from the file on disk."""
    start = time.perf_counter()
    image = nb.load(str(image_path))
    mask = None
    if mask_bundle is not None:
        mask_card, mask_network = load_bundle(mask_bundle)
        mask = largest_component_filled(segment(image, mask_card, mask_network)[0] == 1)
    card, network = load_bundle(bundle)
    groups = tissue_groups() if task == "structures" else None
    segment(image, card, network, mask=mask, groups=groups)
    return {"seconds": round(time.perf_counter() - start, 2)}


def template_baseline(cases: list[Case], folder: Path, threads: int) -> dict[str, float]:
    """Dice of the classical baseline (template brain registered onto the head) per case."""
    from bids_dl.templates import write_template_files
    from bids_dl.workflows.interfaces.ants import brain_mask_from_template

    folder.mkdir(parents=True, exist_ok=True)
    template = write_template_files(folder / "templates")
    scores = {}
    for case in cases:
        out = folder / f"{case.name}_template_mask.nii.gz"
        brain_mask_from_template(
            str(case.image), template, str(out), str(folder / case.name), threads
        )
        reference = nb.load(str(case.reference)).get_fdata() > 0
        scores[case.name] = round(dice(nb.load(str(out)).get_fdata() > 0, reference), 4)
    return scores


def tissue_scores(cases: list[Case], aseg_folder: Path, folder: Path, threads: int) -> dict:
    """GM/WM/CSF Dice of our structures' tissue classes, and of Atropos (T1w-like cases only,
    inside the true brain mask), against the label maps' tissue classes."""
    from bids_dl.workflows.interfaces.ants import segment_tissues

    folder.mkdir(parents=True, exist_ok=True)
    to_tissue = tissue_lookup()
    scores: dict[str, dict] = {"ours": {}, "atropos_t1w": {}}
    for case in cases:
        truth = to_tissue[np.asarray(nb.load(str(case.reference)).dataobj).astype(int)]
        ours = to_tissue[np.asarray(nb.load(str(aseg_folder / f"{case.name}.nii.gz")).dataobj)]
        scores["ours"][case.name] = {
            t: round(dice(ours == i, truth == i), 4) for i, t in enumerate(("GM", "WM", "CSF"), 1)
        }
        if case.name.endswith("_T1w"):
            brain = nb.load(str(case.mask)).get_fdata() > 0
            true_brain = folder / f"{case.name}_brain.nii.gz"
            nb.save(
                nb.Nifti1Image(brain.astype(np.uint8), nb.load(str(case.image)).affine), true_brain
            )
            atropos = segment_tissues(
                str(case.image), str(true_brain), str(folder / case.name), threads
            )
            labels = np.asarray(nb.load(atropos["dseg"]).dataobj)
            scores["atropos_t1w"][case.name] = {
                t: round(dice(labels == i, truth == i), 4)
                for i, t in enumerate(("GM", "WM", "CSF"), 1)
            }
    return scores


def evaluate_brain_mask(args) -> dict:
    card, network = load_bundle(args.bundle)
    results = {}
    cases = synthetic_cases(args.label_maps, args.subjects, args.out / "cases")
    results["synthetic_heldout_label_maps"] = evaluate(card, network, cases, args.out / "synthetic")
    if args.sample:
        results["sample_dataset"] = evaluate(
            card, network, sample_cases(args.sample), args.out / "sample"
        )
    if args.brats:
        results["real_brats_skull_stripped"] = evaluate(
            card, network, brats_cases(args.brats, args.out / "brats_cases"), args.out / "brats"
        )
    images = [c.image for c in cases] + list(args.real_heads)
    ours = our_masks(args.bundle, images, args.out / "ours")
    comparison = {"ours_seconds": {}, "deepbet_seconds": {}, "dice_ours_vs_deepbet": {}}
    if args.deepbet_python:
        theirs = deepbet_masks(args.deepbet_python, images, args.out / "deepbet", args.threads)
        truth = {str(c.image): c.reference for c in cases}
        comparison["dice_deepbet_vs_truth"] = {}
        for image in map(str, images):
            a = nb.load(ours[image]["mask"]).get_fdata() > 0
            b = nb.load(theirs[image]["mask"]).get_fdata() > 0
            name = Path(image).name.split(".")[0]
            comparison["ours_seconds"][name] = ours[image]["seconds"]
            comparison["deepbet_seconds"][name] = theirs[image]["seconds"]
            comparison["dice_ours_vs_deepbet"][name] = round(dice(a, b), 4)
            if image in truth:
                reference = nb.load(str(truth[image])).get_fdata() > 0
                comparison["dice_deepbet_vs_truth"][name] = round(dice(b, reference), 4)
        ratio = np.median(list(comparison["ours_seconds"].values())) / np.median(
            list(comparison["deepbet_seconds"].values())
        )
        comparison["median_time_ratio_ours_over_deepbet"] = round(float(ratio), 3)
    else:
        comparison["ours_seconds"] = {Path(k).name: v["seconds"] for k, v in ours.items()}
    results["template_baseline_dice_synthetic"] = template_baseline(
        cases, args.out / "template_baseline", args.threads
    )
    results["speed_and_agreement_2_threads"] = comparison
    results["fresh_process_2_threads"] = fresh_process_run(
        args.bundle, cases[0].image, None, args.threads
    )
    return results


def evaluate_structures(args) -> dict:
    card, network = load_bundle(args.bundle)
    cases = synthetic_cases(args.label_maps, args.subjects, args.out / "cases", "structures")
    if args.mask_bundle:  # place the window with our own brain masks, as the pipeline does
        masks = our_masks(args.mask_bundle, [c.image for c in cases], args.out / "masks")
        cases = [
            Case(c.name, c.image, c.reference, Path(masks[str(c.image)]["mask"])) for c in cases
        ]
    results = {
        "synthetic_heldout_label_maps": evaluate(
            card, network, cases, args.out / "synthetic", save_labels=args.out / "labels"
        ),
        "tissue_dice_synthetic": tissue_scores(
            cases, args.out / "labels", args.out / "atropos", args.threads
        ),
        "fresh_process_2_threads": fresh_process_run(
            args.bundle, cases[0].image, args.mask_bundle, args.threads
        ),
    }
    return results


def update_card(bundle: Path, results: dict, args) -> None:
    card_path = bundle / CARD
    content = json.loads(card_path.read_text())
    described = {
        "synthetic_heldout_label_maps": f"real label maps {args.subjects} (held out from training "
        "and validation), fixed T1w-, T2w- and FLAIR-like images synthesised at 1 mm over the "
        "whole 256 mm field of view: SIMULATED images of real anatomy",
        "sample_dataset": "bids_dl sample dataset, 1 mm T1w and T2w: the MNI152 brain in "
        "simulated heads (SIMULATED); truth = the template brain mask carried by the simulation",
        "real_brats_skull_stripped": "REAL: 4 BraTS 2013 glioma cases (FLAIR and contrast T1, "
        "already skull-stripped, shifted to positive values), truth = their brain masks",
    }
    test = {}
    for key, value in results.items():
        test[key] = {"data": described[key], **value} if key in described else value
    test["machine"] = "2-core x86_64 CPU, torch threads 2, other jobs may have been running"
    content["metrics"]["test"] = test
    card_path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("task", choices=["brain_mask", "structures", "_one"])
    parser.add_argument("bundle", type=Path)
    parser.add_argument(
        "--label-maps", type=Path, default=Path("../shared/data/synthseg_label_maps")
    )
    parser.add_argument("--subjects", nargs="+", default=["19", "20"])
    parser.add_argument("--sample", type=Path, help="bids_dl-sample dataset at 1 mm")
    parser.add_argument("--real-heads", type=Path, nargs="*", default=[])
    parser.add_argument("--brats", type=Path, help="e.g. ../shared/data/brats2013_dev")
    parser.add_argument("--deepbet-python", type=Path, help="python of the deepbet venv")
    parser.add_argument("--mask-bundle", type=Path, help="brain-mask bundle for structures")
    parser.add_argument("--image", type=Path, help="for _one: the image")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--update-card", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.task == "_one":
        card_task = json.loads((args.bundle / CARD).read_text())["task"]
        print(json.dumps(run_one(card_task, args.bundle, args.image, args.mask_bundle)))
        return
    if not args.label_maps.is_dir():
        sys.exit(f"{args.label_maps} is absent: the synthetic test set needs the shared label maps")
    args.out = args.out or ROOT / "results" / args.task
    evaluate_task = evaluate_brain_mask if args.task == "brain_mask" else evaluate_structures
    results = evaluate_task(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    if args.update_card:
        update_card(args.bundle, results, args)


if __name__ == "__main__":
    main()
