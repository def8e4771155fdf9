"""Evaluate a bundle on labelled images: per-case, per-label Dice, HD95 and volume difference."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nb
import numpy as np
import torch

from bids_dl.models.bundle import ModelCard
from bids_dl.models.inference import segment
from bids_dl.models.metrics import label_metrics

COLUMNS = ("case", "label", "name", "dice", "hd95_mm", "volume_difference_mm3")


@dataclass(frozen=True)
class Case:
    """One labelled image: the reference (and the optional brain mask that places a
    brain-centred model's window) must be on the image's grid."""

    name: str
    image: Path
    reference: Path
    mask: Path | None = None


def evaluate(
    card: ModelCard,
    network: torch.nn.Module,
    cases: Sequence[Case],
    output_dir: Path,
    device: str = "cpu",
    save_labels: Path | None = None,
) -> dict:
    """Segment every case, score every foreground label, write ``metrics.tsv`` and ``summary.json``.

    The reference's non-zero voxels count as foreground for a two-label (mask) model. With
    ``save_labels``, each prediction is also saved there as ``<case>.nii.gz``.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    labels = {k: v for k, v in card.labels.items() if k != 0}
    rows = []
    for case in cases:
        image = nb.load(str(case.image))
        reference_image = nb.load(str(case.reference))
        if reference_image.shape[:3] != image.shape[:3] or not np.allclose(
            reference_image.affine, image.affine, atol=1e-3
        ):
            raise ValueError(f"{case.reference} is not on the grid of {case.image}")
        values = np.asarray(reference_image.dataobj)
        if len(labels) == 1:  # masks stored as floats (0.99999997...) count as foreground too
            reference = (values > 0).astype(np.int32) * next(iter(labels))
        else:
            reference = np.rint(values).astype(np.int32)
        mask = np.asarray(nb.load(str(case.mask)).dataobj) > 0 if case.mask else None
        prediction, _ = segment(image, card, network, device=device, mask=mask)
        if save_labels is not None:
            save_labels.mkdir(parents=True, exist_ok=True)
            nb.save(nb.Nifti1Image(prediction, image.affine), save_labels / f"{case.name}.nii.gz")
        spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
        for row in label_metrics(prediction, reference, labels, spacing):
            rows.append({"case": case.name, **row})
    with (output_dir / "metrics.tsv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    summary = summarise(rows, card)
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def summarise(rows: list[dict], card: ModelCard) -> dict:
    """Mean and minimum of each metric per label, over cases (NaN HD95 values left out)."""
    per_label = {}
    for index, name in card.labels.items():
        selected = [r for r in rows if r["label"] == index]
        if not selected:
            continue
        dice_values = [r["dice"] for r in selected]
        hd95 = [r["hd95_mm"] for r in selected if not math.isnan(r["hd95_mm"])]
        per_label[name] = {
            "dice_mean": float(np.mean(dice_values)),
            "dice_min": float(np.min(dice_values)),
            "hd95_mm_mean": float(np.mean(hd95)) if hd95 else None,
            "volume_difference_mm3_mean": float(
                np.mean([r["volume_difference_mm3"] for r in selected])
            ),
        }
    dice_means = [v["dice_mean"] for v in per_label.values()]
    return {
        "model": f"{card.name} {card.version}",
        "cases": len({r["case"] for r in rows}),
        "mean_dice": float(np.mean(dice_means)) if dice_means else None,
        "labels": per_label,
    }
