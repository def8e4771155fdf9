"""The regional SUVR prior: one FDG SUVR per structure, painted on a segmentation and blurred
to PET resolution.

It is what a user could do without a network (the population mean SUVR of each structure on
the subject's labels), and the PET imputation network starts from it: the prior is one of the
network's input channels and the network predicts only the correction (``pet_imputation``).
The values are fitted on training pairs (labels, SUVR) by least squares on the blurred label
indicators, so that partial volume at PET resolution does not pull small structures towards
their neighbours (a plain mean of each label's voxels would).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: ridge (relative to the mean diagonal of the normal matrix) towards the plain label means
RIDGE = 1e-3
#: FreeSurfer label values above this are not brain structures (the prior's default covers them)
LAST_BRAIN_LABEL = 99
#: the fit's key of those other labels (painted with the prior's ``default``)
OTHER = -1


def fwhm_sigma(fwhm_mm: float, voxel_mm: float) -> float:
    """The Gaussian sigma (voxels) of a ``fwhm_mm`` blur on ``voxel_mm`` voxels."""
    return fwhm_mm / (2 * np.sqrt(2 * np.log(2))) / voxel_mm


def voxel_mm(affine: np.ndarray) -> float:
    """The mean voxel size of a grid (mm)."""
    return float(np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0)).mean())


@dataclass(frozen=True)
class TrainingRegions:
    """One training pair as the prior reads it: integer labels, SUVR and brain mask on one
    grid (``affine``), and the resolution of the PET (FWHM, mm)."""

    labels: np.ndarray
    suvr: np.ndarray
    brain_mask: np.ndarray
    affine: np.ndarray
    fwhm_mm: float


@dataclass(frozen=True)
class RegionalPrior:
    """SUVR per label value (``values``), ``default`` for any other label inside the brain,
    blurred with ``fwhm_mm`` when painted."""

    values: dict[int, float]
    default: float
    fwhm_mm: float

    @classmethod
    def fit(cls, pairs: Iterable[TrainingRegions], fwhm_mm: float) -> RegionalPrior:
        """Least-squares SUVR of each brain label and of the other labels together (what
        :meth:`paint` paints; background is zero) over the brain voxels of ``pairs``, each
        blurred with its own FWHM, with a small ridge towards the plain means; painted later
        with ``fwhm_mm``."""
        gram: dict[tuple[int, int], float] = {}
        moment: dict[int, float] = {}
        total: dict[int, float] = {}
        count: dict[int, int] = {}
        for pair in pairs:
            labels = np.asarray(pair.labels, np.int64)
            columns = np.where(labels > LAST_BRAIN_LABEL, OTHER, labels)
            mask, suvr = np.asarray(pair.brain_mask, bool), np.asarray(pair.suvr, np.float64)
            present = [int(v) for v in np.unique(columns) if v != 0]
            sigma = fwhm_sigma(pair.fwhm_mm, voxel_mm(pair.affine))
            design = np.stack(
                [ndimage.gaussian_filter((columns == v).astype(np.float32), sigma)[mask]
                 for v in present], 1,
            ).astype(np.float64)  # fmt: skip
            products, projections = design.T @ design, design.T @ suvr[mask]
            for i, a in enumerate(present):
                moment[a] = moment.get(a, 0.0) + float(projections[i])
                total[a] = total.get(a, 0.0) + float(suvr[mask & (columns == a)].sum())
                count[a] = count.get(a, 0) + int((mask & (columns == a)).sum())
                for j, b in enumerate(present):
                    gram[a, b] = gram.get((a, b), 0.0) + float(products[i, j])
        keys = sorted(moment)
        if not keys:
            raise ValueError("no training pair has labels to fit the regional prior on")
        matrix = np.array([[gram.get((a, b), 0.0) for b in keys] for a in keys])
        plain = np.array([total[a] / max(count[a], 1) for a in keys])
        ridge = RIDGE * float(np.mean(np.diag(matrix)))
        fitted = dict(zip(keys, np.linalg.solve(
            matrix + ridge * np.eye(len(keys)), [moment[a] for a in keys] + ridge * plain
        ), strict=True))  # fmt: skip
        values = {a: float(f) for a, f in fitted.items() if a != OTHER}
        default = float(fitted.get(OTHER, np.median(list(values.values()))))
        return cls(values, default, fwhm_mm)

    def paint(self, labels: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """The prior SUVR (float32) on the labels' grid: each label's value (``default`` for
        other labels, zero for background), blurred to ``fwhm_mm``."""
        labels = np.clip(np.asarray(labels, np.int64), 0, None)
        lookup = np.full(max(int(labels.max()), max(self.values)) + 1, self.default, np.float32)
        lookup[list(self.values)] = list(self.values.values())
        lookup[0] = 0
        sigma = fwhm_sigma(self.fwhm_mm, voxel_mm(affine))
        return ndimage.gaussian_filter(lookup[labels], sigma)

    def to_dict(self) -> dict:
        """The prior as a model card stores it."""
        return {
            "values": {str(k): round(v, 5) for k, v in sorted(self.values.items())},
            "default": round(self.default, 5),
            "fwhm_mm": self.fwhm_mm,
        }

    @classmethod
    def from_dict(cls, content: dict) -> RegionalPrior:
        values = {int(k): float(v) for k, v in content["values"].items()}
        return cls(values, float(content["default"]), float(content["fwhm_mm"]))
