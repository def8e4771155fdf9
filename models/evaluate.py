"""Evaluate a bundle on labelled images: per-case, per-label Dice, HD95 and volume difference."""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nb
import numpy as np
import torch

from bids_dl.models.card import ModelCard
from bids_dl.models.image_io import load_volume
from bids_dl.models.inference import segment
from bids_dl.models.labels import TUMOR_REGIONS
from bids_dl.models.metrics import (
    absolute_volume_difference_percent,
    label_metrics,
    lesion_detection,
    region_metrics,
    voxel_volume_mm3,
)
from bids_dl.models.postprocessing import postprocess

LOGGER = logging.getLogger("bids_dl.models.evaluate")
COLUMNS = ("case", "label", "name", "dice", "hd95_mm", "volume_difference_mm3")
#: extra columns of lesion models (WMH): lesion-wise detection and the relative volume error
LESION_COLUMNS = (
    "reference_lesions", "predicted_lesions", "lesion_recall", "lesion_precision", "lesion_f1",
    "absolute_volume_difference_percent",
)  # fmt: skip


@dataclass(frozen=True)
class Case:
    """One labelled image: the reference (and the optional brain mask that places a
    brain-centred model's window) must be on the image's grid."""

    name: str
    image: Path | tuple[Path | None, ...]  # one per contrast of the card, None when missing
    reference: Path
    mask: Path | None = None

    @property
    def images(self) -> tuple[Path | None, ...]:
        return self.image if isinstance(self.image, tuple) else (self.image,)


def evaluate(
    card: ModelCard,
    network: torch.nn.Module,
    cases: Sequence[Case],
    output_dir: Path,
    device: str = "cpu",
    save_labels: Path | None = None,
) -> dict:
    """Segment every case, score every foreground label, write ``metrics.tsv`` and ``summary.json``.

    The reference's non-zero voxels count as foreground for a two-label (mask) model. Tumour
    models add the BraTS regions (whole tumour, tumour core, enhancing tumour; a reference's
    BraTS 2013 label 3, non-enhancing tumour, counts as 1), WMH models the lesion-wise
    detection columns. With ``save_labels``, each prediction is also saved there as
    ``<case>.nii.gz``.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    labels = {k: v for k, v in card.labels.items() if k != 0}
    rows = []
    columns = COLUMNS + (LESION_COLUMNS if card.task == "wmh" else ())
    for case in cases:
        images = [load_volume(path) if path else None for path in case.images]
        image = next(i for i in images if i is not None)
        reference_image = _load_on_grid(case.reference, image, case.image)
        values = np.asarray(reference_image.dataobj)
        if len(labels) == 1:  # masks stored as floats (0.99999997...) count as foreground too
            reference = (values > 0).astype(np.int32) * next(iter(labels))
        else:
            reference = np.rint(values).astype(np.int32)
        if card.task == "tumor":
            if (reference == 3).any() and not (reference == 4).any():
                LOGGER.warning(
                    "%s: label 3 but no 4, read as BraTS 2013's non-enhancing core (label 1); "
                    "if 3 is enhancing tumour (BraTS 2023), relabel it 4 first",
                    case.reference,
                )
            reference[reference == 3] = 1
        mask = (
            np.asarray(_load_on_grid(case.mask, image, case.image).dataobj) > 0
            if case.mask
            else None
        )
        prediction, probabilities = segment(
            images if len(images) > 1 else image, card, network, device=device, mask=mask
        )
        if mask is not None and card.inputs.get("needs_brain_mask"):
            prediction[~mask] = 0  # as the pipeline does: lesions only inside the brain
        prediction = postprocess(prediction, card, voxel_volume_mm3(image), probabilities)
        if save_labels is not None:
            save_labels.mkdir(parents=True, exist_ok=True)
            nb.save(nb.Nifti1Image(prediction, image.affine), save_labels / f"{case.name}.nii.gz")
        spacing = tuple(float(z) for z in nb.affines.voxel_sizes(image.affine))
        case_rows = label_metrics(prediction, reference, labels, spacing)
        if card.task == "tumor":
            case_rows += region_metrics(prediction, reference, TUMOR_REGIONS, spacing)
        if card.task == "wmh":
            case_rows[0].update(lesion_detection(prediction > 0, reference > 0))
            case_rows[0]["absolute_volume_difference_percent"] = absolute_volume_difference_percent(
                prediction > 0, reference > 0
            )
        rows.extend({"case": case.name, **row} for row in case_rows)
    with (output_dir / "metrics.tsv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    summary = summarise(rows, card)
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _load_on_grid(path: Path, image: nb.Nifti1Image, image_path) -> nb.Nifti1Image:
    """The reference or mask at ``path``, which must lie on ``image``'s grid."""
    other = load_volume(path)
    if other.shape != image.shape or not np.allclose(other.affine, image.affine, atol=1e-3):
        raise ValueError(f"{path} is not on the grid of {image_path}")
    return other


def summarise(rows: list[dict], card: ModelCard) -> dict:
    """Mean and minimum of each metric per label or region, over cases.

    Undefined values (NaN: HD95 when exactly one of prediction and reference is empty, the
    volume difference in percent of an empty reference) are left out of the mean and counted
    in ``<metric>_undefined``, so a missed region cannot pass unnoticed.

    ``mean_dice`` averages the labels of the card (not the regions).
    """
    per_label = {}
    for name in dict.fromkeys(r["name"] for r in rows):
        selected = [r for r in rows if r["name"] == name]
        summary = {
            "dice_mean": float(np.mean([r["dice"] for r in selected])),
            "dice_min": float(np.min([r["dice"] for r in selected])),
        }
        for key in ("hd95_mm", "volume_difference_mm3", *LESION_COLUMNS[2:]):
            if key not in selected[0]:
                continue
            values = [r[key] for r in selected if not math.isnan(r[key])]
            summary[f"{key}_mean"] = float(np.mean(values)) if values else None
            summary[f"{key}_undefined"] = len(selected) - len(values)
        per_label[name] = summary
    dice_means = [v["dice_mean"] for k, v in per_label.items() if k in card.labels.values()]
    return {
        "model": f"{card.name} {card.version}",
        "cases": len({r["case"] for r in rows}),
        "mean_dice": float(np.mean(dice_means)) if dice_means else None,
        "labels": per_label,
    }
