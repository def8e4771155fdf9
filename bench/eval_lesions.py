"""Test the lesion bundles (tumour, WMH) beside the crude threshold baseline, time them, and
write the numbers into their cards.

Test sets (each named in the card with what it is):
- real BraTS (tumour): the shared BraTS 2013 cases not used to fine-tune the bundle (FLAIR and
  contrast T1, expert labels), laid out by ``bench/brats_to_bids.py``; the model gets only the
  two contrasts the cases have (T1w and T2w channels empty);
- simulated (both): tumours or white-matter hyperintensities planted by the lesion simulator
  (fixed seeds) into the held-out label maps 19 and 20 at 1 mm, images from the fixed
  contrast tables with mild artefacts, skull-stripped with the true brain: SIMULATED data;
- brain extraction on brains with a tumour (``--brain-bundle``): whole-head T1w- and FLAIR-like
  images of the same simulated tumours; Dice of the brain mask with and without the tumour;
  with ``--structures-bundle`` also the mean Dice of the 32 structures outside the tumour
  (``--anatomy-only``: this check alone, no lesion model scored).

    python bench/brats_to_bids.py ../shared/data/brats2013_dev bench/brats_bids
    python bench/eval_lesions.py tumor models/zoo/tumor --brats bench/brats_bids \
        --speed-case pat0003 --brain-bundle models/zoo/brain_mask --update-card
    python bench/eval_lesions.py tumor models/zoo/tumor --brain-bundle models/zoo/brain_mask \
        --structures-bundle models/zoo/structures --anatomy-only \
        --out bench/results/anatomy_on_tumours
    python bench/tumor_loo.py models/configs/tumor_6_real_finetune_seed31.json \
        runs/tumor_loo_seed31
    python bench/eval_lesions.py wmh models/zoo/wmh --per-subject 4 --update-card

The shipped tumour model is fine-tuned on all four real cases, so its real-case numbers come
from ``tumor_loo.py`` (leave-one-out); ``--cases`` tests a bundle that never saw those cases.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import torch

from bids_dl.models.bundle import load_bundle
from bids_dl.models.card import CARD
from bids_dl.models.evaluate import Case, evaluate
from bids_dl.models.inference import segment
from bids_dl.models.labels import (
    BRAIN_LABEL_RANGE,
    LESION_VALUES,
    STRUCTURES,
    TUMOR_LABELS,
    TUMOR_REGIONS,
)
from bids_dl.models.lesion_simulation import LesionParameters, lesion_image, plant_tumor, plant_wmh
from bids_dl.models.metrics import dice, region_metrics
from bids_dl.models.synthesis import TEST_PARAMETERS
from bids_dl.workflows.interfaces.images import largest_component_filled

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from lesion_baseline import threshold_baseline, zscore_in_mask  # noqa: E402
from peak_memory import run_measured  # noqa: E402

#: The simulated test lesions: milder than training (no dropout), fixed per seed.
TEST_LESIONS = LesionParameters(tumor_probability=1.0, wmh_probability=1.0)
CHANNEL_FILES = {"FLAIR": "FLAIR", "T1ce": "ce-gadolinium_T1w", "T1w": "T1w", "T2w": "T2w"}


def _save(data: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    nb.save(nb.Nifti1Image(data, affine), path)
    return path


def simulated_cases(
    task: str, label_maps: Path, folder: Path, per_subject: int = 2, subjects=("19", "20")
) -> list[dict]:
    """Lesions planted into label maps 19 and 20 at 1 mm; every contrast saved skull-stripped,
    the truth in output values (BraTS labels or 0/1), the true brain as the mask; the whole-head
    T1w/FLAIR kept for the brain-extraction check."""
    folder.mkdir(parents=True, exist_ok=True)
    output_value = {value: index for index, (_, members) in TUMOR_LABELS.items()
                    for value in (LESION_VALUES[m] for m in members)}  # fmt: skip
    output_value[LESION_VALUES["wmh"]] = 1
    cases = []
    for subject in subjects:
        source = nb.load(str(label_maps / f"training_seg_{subject}.nii.gz"))
        labels = torch.from_numpy(np.asarray(source.dataobj).astype(np.int64))
        low, high = BRAIN_LABEL_RANGE
        brain = ((labels >= low) & (labels <= high)).numpy()
        for index in range(per_subject):
            seed = int(subject) * 100 + index
            generator = torch.Generator().manual_seed(seed)
            plant = plant_tumor if task == "tumor" else plant_wmh
            planted = plant(labels, 1.0, TEST_LESIONS, generator)
            truth = np.zeros(brain.shape, np.uint8)
            for value, out in output_value.items():
                truth[(planted == value).numpy()] = out
            name = f"seg{subject}_{task}{index}"
            case = {
                "name": name,
                "truth": _save(truth, source.affine, folder / f"{name}_truth.nii.gz"),
                "mask": _save(
                    brain.astype(np.uint8), source.affine, folder / f"{name}_brain.nii.gz"
                ),
                "brain": brain,
                "structures": np.where(np.isin(labels, list(STRUCTURES)), labels, 0),
                "affine": source.affine,
            }
            for contrast in ("T1w", "FLAIR"):  # the same head without the lesion
                image = lesion_image(labels, contrast, TEST_LESIONS, TEST_PARAMETERS, generator)
                case[f"head_clean_{contrast}"] = image.numpy().astype(np.float32)
            for contrast in CHANNEL_FILES:
                image = lesion_image(planted, contrast, TEST_LESIONS, TEST_PARAMETERS, generator)
                image = image.numpy().astype(np.float32)
                case[f"head_{contrast}"] = image
                case[contrast] = _save(np.where(brain, image, 0), source.affine,
                                       folder / f"{name}_{contrast}.nii.gz")  # fmt: skip
            cases.append(case)
    return cases


def brats_cases(brats: Path, labels: list[str]) -> list[dict]:
    """The BraTS cases laid out by ``brats_to_bids.py``: FLAIR, contrast T1, truth, mask."""
    cases = []
    for label in labels:
        anat = brats / f"sub-{label}" / "anat"
        derived = brats / "derivatives" / "labels" / f"sub-{label}" / "anat"
        cases.append({
            "name": label,
            "FLAIR": anat / f"sub-{label}_FLAIR.nii.gz",
            "T1ce": anat / f"sub-{label}_ce-gadolinium_T1w.nii.gz",
            "truth": derived / f"sub-{label}_desc-tumor_dseg.nii.gz",
            "mask": derived / f"sub-{label}_desc-brain_mask.nii.gz",
        })  # fmt: skip
    return cases


def score_bundle(bundle: Path, cases: list[dict], contrasts: list[str], out: Path) -> dict:
    """``evaluate`` on the cases with only ``contrasts`` given (others empty), plus the seconds
    of each inference (conform, predict, map back; image in memory)."""
    card, network = load_bundle(bundle)
    wanted = card.inputs["contrasts"]
    built = [
        Case(c["name"], tuple(Path(c[k]) if k in contrasts else None for k in wanted),
             Path(c["truth"]), Path(c["mask"]))
        for c in cases
    ]  # fmt: skip
    summary = evaluate(card, network, built, out)
    seconds = []
    for case in built:
        images = [nb.load(str(p)) if p else None for p in case.images]
        mask = np.asarray(nb.load(str(case.mask)).dataobj) > 0
        start = time.perf_counter()
        segment(images, card, network, mask=mask)
        seconds.append(round(time.perf_counter() - start, 2))
    summary["seconds"] = seconds
    return summary


def score_baseline(cases: list[dict], zscored: bool) -> dict:
    """The threshold baseline's Dice per region and case (``zscored``: inputs already are)."""
    per_region: dict[str, list[float]] = {r: [] for r in TUMOR_REGIONS}
    for case in cases:
        mask = np.asarray(nb.load(str(case["mask"])).dataobj) > 0
        flair = nb.load(str(case["FLAIR"])).get_fdata(dtype=np.float32)
        t1ce = nb.load(str(case["T1ce"])).get_fdata(dtype=np.float32)
        if not zscored:
            flair, t1ce = zscore_in_mask(flair, mask), zscore_in_mask(t1ce, mask)
        truth = np.rint(nb.load(str(case["truth"])).get_fdata()).astype(np.int32)
        truth[truth == 3] = 1
        for row in region_metrics(threshold_baseline(flair, t1ce, mask), truth, TUMOR_REGIONS,
                                  (1, 1, 1)):  # fmt: skip
            per_region[row["name"]].append(round(row["dice"], 4))
    return {region: {"dice": values, "dice_mean": round(float(np.mean(values)), 4)}
            for region, values in per_region.items()}  # fmt: skip


def peak_memory(bundle: Path, case: dict, contrasts: list[str], out: Path) -> dict:
    """Wall time and peak memory of one case through ``bids_dl-models evaluate`` in a fresh
    process (loading, inference and scoring)."""
    card = json.loads((bundle / CARD).read_text())
    images = ",".join(str(case[k]) if k in contrasts else "none"
                      for k in card["inputs"]["contrasts"])  # fmt: skip
    command = [str(Path(sys.executable).parent / "bids_dl-models"), "evaluate", str(bundle),
               "--image", images, "--reference", str(case["truth"]), "--mask", str(case["mask"]),
               "--out", str(out)]  # fmt: skip
    seconds, peak_gb = run_measured(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )  # not ru_maxrss, which counts this large process's memory copied at fork
    return {"seconds": round(seconds, 1), "peak_memory_gb": round(peak_gb, 2)}


def mean_structure_dice(labels: np.ndarray, truth: np.ndarray, region: np.ndarray) -> float:
    """Mean Dice over the structures of ``truth``, both label maps restricted to ``region``."""
    values = [v for v in STRUCTURES if (truth[region] == v).any()]
    return float(np.mean([dice((labels == v) & region, (truth == v) & region) for v in values]))


def brain_extraction_check(
    brain_bundle: Path, cases: list[dict], structures_bundle: Path | None = None
) -> dict:
    """Brain-mask Dice against the true brain on whole-head images of the same heads with and
    without the tumour; with a structures bundle also the mean structure Dice outside the
    tumour (the structures inside the brain mask the model found, as in the pipeline)."""
    card, network = load_bundle(brain_bundle)
    structures = load_bundle(structures_bundle) if structures_bundle else None
    results = {}
    for case in cases:
        outside = np.asarray(nb.load(str(case["truth"])).dataobj) == 0
        for contrast in ("T1w", "FLAIR"):
            scores = {}
            for kind, key in (("with_tumour", "head_"), ("without", "head_clean_")):
                image = nb.Nifti1Image(case[f"{key}{contrast}"], case["affine"])
                mask = largest_component_filled(segment(image, card, network)[0] == 1)
                scores[kind] = round(dice(mask, case["brain"]), 4)
                if structures:
                    labels, _ = segment(image, *structures, mask=mask)
                    structure_dice = mean_structure_dice(labels, case["structures"], outside)
                    scores[f"structures_{kind}"] = round(structure_dice, 4)
            results[f"{case['name']}_{contrast}"] = scores
    return results


def record_test_results(bundle: Path, results: dict) -> None:
    """Merge ``results`` into the card's ``metrics.test``, keeping what other benchmarks
    recorded there (``tumor_loo.py`` adds the leave-one-out real-case numbers)."""
    card_path = bundle / CARD
    card = json.loads(card_path.read_text())
    card["metrics"].setdefault("test", {}).update(results)
    card_path.write_text(json.dumps(card, indent=2, sort_keys=True, default=str) + "\n")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=["tumor", "wmh"])
    parser.add_argument("bundle", type=Path)
    parser.add_argument(
        "--label-maps", type=Path, default=Path("../shared/data/synthseg_label_maps")
    )
    parser.add_argument("--brats", type=Path, help="BraTS cases as laid out by brats_to_bids.py")
    parser.add_argument("--cases", nargs="*", default=[], help="BraTS participants to test on")
    parser.add_argument(
        "--speed-case",
        help="BraTS participant a fresh process is timed on (default: the first of --cases); "
        "a case the bundle trained on will do, as only time and memory are kept",
    )
    parser.add_argument("--brain-bundle", type=Path, help="also check brain extraction on tumours")
    parser.add_argument(
        "--structures-bundle", type=Path, help="with --brain-bundle: structures on tumours too"
    )
    parser.add_argument(
        "--anatomy-only", action="store_true", help="only the brain/structures check (tumor)"
    )
    parser.add_argument("--out", type=Path, help="results folder (default bench/results/<task>)")
    parser.add_argument(
        "--per-subject", type=int, default=2, help="simulated cases per test label map"
    )
    parser.add_argument("--update-card", action="store_true")
    args = parser.parse_args()
    if args.anatomy_only and (args.task != "tumor" or not args.brain_bundle):
        parser.error("--anatomy-only needs the tumor task and --brain-bundle")
    return args


def tumor_results(args: argparse.Namespace, simulated: list[dict], out: Path) -> dict:
    """The tumour task's comparisons beyond the simulated cases: the crude baseline, the real
    BraTS cases, a fresh process's time and memory, brain extraction with a tumour."""
    results: dict = {"simulated_baseline": score_baseline(simulated, zscored=False)}
    if args.brats and args.cases:
        real = brats_cases(args.brats, args.cases)
        results["real_brats"] = {
            "cases": args.cases,
            "FLAIR+T1ce": score_bundle(args.bundle, real, ["FLAIR", "T1ce"], out / "brats"),
            "baseline": score_baseline(real, zscored=True),
        }
    speed_case = args.speed_case or (args.cases[0] if args.cases else None)
    if args.brats and speed_case:
        results["fresh_process"] = peak_memory(
            args.bundle, brats_cases(args.brats, [speed_case])[0], ["FLAIR", "T1ce"],
            out / "memory",
        )  # fmt: skip
    if args.brain_bundle:
        results["brain_extraction_with_tumour"] = brain_extraction_check(
            args.brain_bundle, simulated, args.structures_bundle
        )
    return results


def main() -> None:
    args = parse_args()
    torch.set_num_threads(2)
    out = args.out or ROOT / "results" / args.task
    results: dict = {"bundle": str(args.bundle)}
    simulated = simulated_cases(args.task, args.label_maps, out / "cases", args.per_subject)
    combinations = (
        [["FLAIR", "T1ce", "T1w", "T2w"], ["FLAIR", "T1ce"], ["FLAIR"]] if args.task == "tumor"
        else [["FLAIR", "T1w"], ["FLAIR"]]
    )  # fmt: skip
    if args.anatomy_only:
        combinations = []
    results["simulated"] = {
        "+".join(c): score_bundle(args.bundle, simulated, c, out / f"simulated_{'+'.join(c)}")
        for c in combinations
    }
    if args.anatomy_only:
        results["brain_extraction_with_tumour"] = brain_extraction_check(
            args.brain_bundle, simulated, args.structures_bundle
        )
    elif args.task == "tumor":
        extra = tumor_results(args, simulated, out)
        results["simulated"]["baseline"] = extra.pop("simulated_baseline")
        results.update(extra)
    else:
        results["fresh_process"] = peak_memory(args.bundle, simulated[0], ["FLAIR", "T1w"],
                                               out / "memory")  # fmt: skip
    for case in simulated:  # the in-memory arrays are not results
        for key in [
            k for k in case if k.startswith("head_") or k in ("brain", "structures", "affine")
        ]:
            del case[key]
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(json.dumps(results, indent=2, default=str))
    if args.update_card:
        record_test_results(args.bundle, results)


if __name__ == "__main__":
    main()
