"""Connected components of a tumour bundle's labels on the simulated test heads, before the
largest-component step: where false tumour lies, how large and how probable it is.

    python bench/tumor_false_components.py models/zoo/tumor --names seg20_tumor0
    python bench/tumor_false_components.py FOLD_BUNDLE --brats bench/brats_bids --names pat0003

Prints, per case, the whole-tumour Dice that keeping the largest or the most confident
component gives (1 mm images), then one line per component of at least ``--min-cm3``: its
volume, voxels per BraTS label, overlap with the true tumour, mean tumour probability and the
label-map structures under it (SynthSeg label values), with the same simulated heads as
``eval_lesions.py`` (``--names seg17_tumor2``: the third tumour planted in map 17); with
``--brats``, real BraTS cases (no structures known: the distance to the true tumour instead).
``--save DIR`` keeps each case's labels, tumour probability and truth (``CASE.npz``), to try
component rules without running the model again.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import nibabel as nb
import numpy as np
import torch
from scipy import ndimage

from bids_dl.models.bundle import load_bundle
from bids_dl.models.inference import segment
from bids_dl.models.metrics import dice
from bids_dl.models.postprocessing import POSTPROCESSING

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_lesions import brats_cases, simulated_cases  # noqa: E402


def describe_components(labels, probabilities, truth, structures, min_voxels) -> list[str]:
    """One line per 26-connected tumour component of at least ``min_voxels`` (1 mm grid);
    without ``structures``, its nearest voxel's distance to the true tumour (voxels)."""
    components, count = ndimage.label(labels > 0, np.ones((3, 3, 3), dtype=bool))
    tumour_probability = probabilities[1:].sum(0)
    if structures is None:
        distance = ndimage.distance_transform_edt(~truth)
    lines = []
    for index in range(1, count + 1):
        inside = components == index
        size = int(inside.sum())
        if size < min_voxels:
            continue
        per_label = {int(v): int((labels[inside] == v).sum()) for v in np.unique(labels[inside])}
        if structures is None:
            under = f"{distance[inside].min():.0f} vox from the true tumour"
        else:
            values, counts = np.unique(structures[inside], return_counts=True)
            most = np.argsort(counts)[::-1][:4]
            under = dict(zip(values[most].tolist(), counts[most].tolist(), strict=True))
        lines.append(
            f"  {size / 1000:6.1f} cm^3  labels {per_label}  true tumour {int(truth[inside].sum())}"
            f"  mean tumour probability {tumour_probability[inside].mean():.2f}  over {under}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument(
        "--label-maps", type=Path, default=Path("../shared/data/synthseg_label_maps")
    )
    parser.add_argument("--names", nargs="*", help="simulated heads to check (default: all)")
    parser.add_argument("--brats", type=Path, help="real BraTS cases (brats_to_bids.py) instead")
    parser.add_argument("--contrasts", nargs="+", default=["FLAIR", "T1ce"])
    parser.add_argument("--min-cm3", type=float, default=1.0)
    parser.add_argument("--save", type=Path, help="folder for CASE.npz (labels, probability)")
    args = parser.parse_args()
    if args.brats and not args.names:
        parser.error("--brats needs --names (BraTS participants, e.g. pat0003)")
    torch.set_num_threads(2)
    card, network = load_bundle(args.bundle)
    with tempfile.TemporaryDirectory() as folder:
        if args.brats:
            cases = brats_cases(args.brats, args.names)
        else:
            subjects = sorted({n[3:5] for n in args.names}) if args.names else ("19", "20")
            per_subject = 1 + max((int(n.split("tumor")[1]) for n in args.names or []), default=1)
            cases = simulated_cases("tumor", args.label_maps, Path(folder), per_subject, subjects)
        for case in cases:
            if args.names and case["name"] not in args.names:
                continue
            images = [
                nb.load(str(case[c])) if c in args.contrasts else None
                for c in card.inputs["contrasts"]
            ]
            if args.brats:
                mask = np.asarray(nb.load(str(case["mask"])).dataobj) > 0
                structures = None
            else:
                mask = case["brain"]
                structures = np.asarray(nb.load(
                    str(args.label_maps / f"training_seg_{case['name'][3:5]}.nii.gz")
                ).dataobj)  # fmt: skip
            labels, probabilities = segment(images, card, network, mask=mask)
            labels[~mask] = 0  # as the pipeline and evaluate do
            truth = np.asarray(nb.load(str(case["truth"])).dataobj) > 0
            foreground = probabilities[1:].sum(0)
            kept = {
                name: POSTPROCESSING[name](labels, foreground_probability=foreground) > 0
                for name in ("largest_component", "most_confident_component")
            }
            print(
                f"{case['name']}: true tumour {truth.sum() / 1000:.1f} cm^3; whole-tumour Dice "
                + ", ".join(f"{name} {dice(found, truth):.3f}" for name, found in kept.items())
            )
            if args.save:
                args.save.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(
                    args.save / f"{case['name']}.npz", labels=labels, truth=truth,
                    tumour_probability=foreground.astype(np.float16),
                )  # fmt: skip
            print("\n".join(describe_components(labels, probabilities, truth, structures,
                                                args.min_cm3 * 1000)))  # fmt: skip


if __name__ == "__main__":
    main()
