"""What the PET imputation network has to beat: SIMULATED held-out T1w/FDG pairs against two
baselines in the same run, the REAL SPM12 template pair end to end, and the inference cost.

1. **Held-out simulation** (``models/pet_simulation.py``, the settings in the bundle's card
   where it stores them, else the defaults): label maps 19 and 20, ``--cases-per-map`` draws
   each (seed ``[0, map, draw]``); whether a case carries the atrophy-tied and the
   MRI-invisible (independent) hypometabolism is the simulation's own draw (probability 0.5
   each), counted in the results. Every method is scored against the noise-free SUVR
   (``case.suvr``, reference cerebellar cortex) inside ``case.brain_mask``:

   - ``model``: ``pet_imputation.impute_suvr`` on (t1w, brain_mask, labels, affine), 2
     threads, given the same TRUE labels as ``regional_mean`` (its prior channel is that
     baseline's kind of image, with the card's values);
   - ``template``: SPM12's OldNorm PET template (an average of 12 H2-15O blood-flow scans: not
     FDG, not one subject; the best public PET template a user has here) warped to the
     subject: antspyx ``registration`` (``--template-transform``, default ``SyN``: affine then
     deformable, antspyx defaults, ANTs seed 0) of ``spm12_T1`` to the case's T1w, both
     brain-masked (the subject by its brain mask, the template by nilearn's MNI152 brain mask
     resampled onto its grid), applied to ``spm12_PET`` (linear), then divided by its mean
     over the case's cerebellar cortex (labels 8/47 of ``case.labels``);
   - ``regional_mean``: one SUVR per label value (structure) from simulated cases of the
     TRAINING label maps (01-16, ``--regional-draws`` draws each, never 17-20), painted on the
     case's TRUE labels (``case.labels``; the pipeline would have the structures model's),
     blurred with the simulation's mean scanner FWHM and divided by its cerebellar-cortex
     mean (``pet_prior.RegionalPrior``). The value of a structure is the population value
     that, painted and blurred with each training case's own FWHM, best fits (least squares
     over brain voxels, a small ridge towards the plain mean) the training cases' SUVR: the
     plain mean of the blurred SUVR in a structure would blur twice (thin cortex mixes with
     CSF and WM). Both tables are in the results.

   Per case: MAE of SUVR in the brain; per structure (cerebral cortex 3/42, cerebral WM 2/41,
   deep GM thalamus/caudate/putamen/pallidum/accumbens, hippocampus 17/53, cerebellum 7/8/46/
   47: brain voxels of ``case.labels``); inside ``tied_region`` and ``independent_region``
   (cases having them); SSIM (``metrics.ssim``: Gaussian window of sigma 1.5 voxels = 3 mm on
   every axis, statistics from brain voxels); PSNR (data range: the truth's maximum in the
   brain). Recovery of a hypometabolism, for cases having it: the share of the true deficit
   the prediction shows there, ``mean(normal_suvr - pred) / mean(normal_suvr - suvr)`` (1:
   all of it, 0: none; the MRI-invisible one should be ~0, the atrophy-tied one > 0); that
   ratio also counts a prediction's overall offset (a case's cortex drawn above the
   population's reads as a deficit shown), so a ``matched`` ratio is given beside it: each
   voxel's ``normal_suvr - image`` less its label's mean around the region (brain voxels
   outside both regions within 15 mm of it), for the prediction over the same for the truth.
   The baselines' recoveries are the floor a method reaches without the hypometabolism: the
   regional mean shows some of the tied one through the atrophied labels' partial volume, and
   neither ratio is exactly 0 for what a method cannot see (its local errors over a small
   deficit). Means over cases with 95 % percentile bootstrap intervals (2000 resamples,
   seeded), and the paired difference model minus each baseline per case with its interval;
   a recovery is pooled over the cases having the region, sum of the deficits shown over sum
   of the true ones (a per-case ratio, in ``cases.tsv``, is unstable where a deficit is small),
   cases resampled for its interval.
   Targets (from the issue; nothing is tuned on the held-out cases): lower MAE than both
   baselines in the brain and in the tied regions with non-overlapping intervals, and SSIM
   >= 0.90.

2. **Real template pair end to end**: a BIDS dataset in a temporary folder, ``sub-01`` with
   ``anat/sub-01_T1w`` = ``spm12_T1`` and ``pet/sub-01_trc-H2O_pet`` = ``spm12_PET`` (one
   frame; the sample's sidecar with TracerName H2O, O15, no dose nor body weight: SUVR, no
   SUV), run as ``bids_dl BIDS OUT participant --analyses pet --skip-bids-validation
   --nprocs 2 --omp-nthreads 1`` (its wall time; the peak memory is the main process's only,
   the workers' is not counted), then the measured SUVR's mean in cortical GM (aseg 3/42),
   cerebral WM (2/41, and its core: eroded by 2 voxels, less partial volume) and their ratio
   (H2-15O / FDG GM/WM ~ 1.5-3), and how far the pipeline's rigid PET -> T1w registration
   moved the PET (the pair shares one grid: the ideal is the identity). The imputed SUVR of
   the same T1w, the same figures: with the shipped bundle, a second run with
   ``--pet-imputation always`` (same work folder, so the anatomy is cached); with another
   bundle, the same dataset without its PET and ``--pet-imputation BUNDLE`` (a full run: the
   new input path misses the cache).
   The template T1w is an average at 2 mm: a pipeline and plausibility check, not accuracy.

3. **Inference cost**: ``impute_suvr`` on a 1 mm 256^3 T1w-like volume (the first held-out
   case's T1w and mask upsampled x2, padded), in a fresh process (``peak_memory.py``'s VmHWM),
   2 threads: the call's seconds, the process's seconds and peak memory (targets 30 s, 4 GB).

Results: ``bench/results/pet_imputation/summary.json`` (settings, counts, summaries, targets,
the real run, the cost) and ``cases.tsv`` (a row per case and method); a compact table printed.

    python bench/pet_imputation.py [--bundle models/zoo/pet] [--cases-per-map 10]
        [--regional-draws 2] [--template-transform SyN] [--parts simulated real cost]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bootstrap import BOOTSTRAP_SAMPLES as BOOTSTRAP  # noqa: E402
from bootstrap import bootstrap_interval  # noqa: E402
from peak_memory import run_logged, run_measured  # noqa: E402

from bids_dl.models.bundle import load_bundle  # noqa: E402
from bids_dl.models.card import ModelCard, weights_sha256  # noqa: E402
from bids_dl.models.metrics import ssim  # noqa: E402
from bids_dl.models.pet_imputation import impute_suvr  # noqa: E402
from bids_dl.models.pet_prior import RegionalPrior, TrainingRegions, voxel_mm  # noqa: E402
from bids_dl.models.pet_simulation import (  # noqa: E402
    CEREBELLAR_CORTEX,
    CEREBRAL_CORTEX,
    PetCase,
    PetSimulation,
    group_labels,
    simulate_case,
)
from bids_dl.models.registry import find_bundle, shipped_bundles  # noqa: E402
from bids_dl.sample_pet import pet_sidecar  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
DEFAULT_OUT = ROOT / "bench" / "results" / "pet_imputation"
DEFAULT_BUNDLE = ROOT / "models" / "zoo" / "pet"
THREADS = 2
SEED = 0
TEST_MAPS = ("19", "20")
TRAINING_MAPS = tuple(f"{i:02d}" for i in range(1, 17))
#: SSIM's Gaussian window (voxels of the 2 mm grid, every axis)
SSIM_SIGMA = 1.5
#: the matched recovery's offsets come from each label's voxels this close to the region (mm)
SHELL_MM = 15.0
METHODS = ("model", "template", "regional_mean")
BASELINES = METHODS[1:]
STRUCTURE_GROUPS = {
    "cortex": CEREBRAL_CORTEX,
    "white_matter": group_labels("Cerebral-White-Matter"),
    "deep_gm": group_labels("Thalamus", "Caudate", "Putamen", "Pallidum", "Accumbens"),
    "hippocampus": group_labels("Hippocampus"),
    "cerebellum": group_labels("Cerebellum-Cortex", "Cerebellum-White-Matter"),
}
#: aseg labels of the real run's ratio
CORTICAL_GM, CEREBRAL_WM = STRUCTURE_GROUPS["cortex"], STRUCTURE_GROUPS["white_matter"]
TEMPLATE_TRANSFORMS = ("SyN", "antsRegistrationSyNQuick[s]", "SyNRA", "Affine")
SUBJECT = "01"
#: the real run's "WM core": cerebral WM eroded by this many voxels (less partial volume)
WM_CORE_EROSION = 2
TRACER = "H2O"
#: the inference-cost volume (1 mm voxels)
COST_SHAPE = (256, 256, 256)
TARGETS = {"ssim": 0.90, "cost_seconds": 30.0, "cost_peak_gb": 4.0}
PARTS = ("simulated", "real", "cost")


# ---------------------------------------------------------------- simulated cases


def simulation_settings(card: ModelCard) -> tuple[PetSimulation, str]:
    """The simulation the bundle was trained on where its card stores it (a dict of
    :class:`PetSimulation` fields under ``training``), else the defaults; and which."""
    names = {f.name for f in fields(PetSimulation)}
    for key in ("simulation", "pet_simulation", "settings"):
        stored = card.training.get(key)
        if isinstance(stored, dict) and stored and set(stored) <= names:
            values = {k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()}
            return PetSimulation(**values), f"card training.{key}"
    return PetSimulation(), "PetSimulation defaults (the card stores none)"


def label_map(data: Path, number: str) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(data / "synthseg_label_maps" / f"training_seg_{number}.nii.gz")
    return np.asarray(image.dataobj), image.affine


def simulated_cases(
    data: Path, maps: tuple[str, ...], draws: int, settings: PetSimulation
) -> Iterator[tuple[str, int, PetCase]]:
    """(map, draw, case) of ``draws`` cases per label map, seeds ``[SEED, map, draw]``."""
    for number in maps:
        labels, affine = label_map(data, number)
        for draw in range(draws):
            rng = np.random.default_rng([SEED, int(number), draw])
            yield number, draw, simulate_case(labels, affine, rng, settings)


def reference_normalised(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``image`` over its mean in cerebellar cortex (labels 8/47), as the truth is."""
    reference = np.isin(labels, CEREBELLAR_CORTEX)
    return (image / max(float(image[reference].mean()), 1e-6)).astype(np.float32)


class RegionalMean:
    """The training maps' regional prior (``pet_prior.RegionalPrior``, fitted on their
    simulated cases) painted on a case's labels, reference-normalised (module docstring)."""

    def __init__(self, data: Path, draws: int, settings: PetSimulation) -> None:
        cases = [case for _, _, case in simulated_cases(data, TRAINING_MAPS, draws, settings)]
        self.cases = len(cases)
        self.prior = RegionalPrior.fit(
            (TrainingRegions(c.labels, c.suvr, c.brain_mask, c.affine, c.parameters["fwhm_mm"])
             for c in cases),
            float(np.mean(settings.fwhm_mm_range)),
        )  # fmt: skip

    def __call__(self, case: PetCase) -> np.ndarray:
        return reference_normalised(self.prior.paint(case.labels, case.affine), case.labels)

    def describe(self) -> dict:
        return {
            "training_maps": f"{TRAINING_MAPS[0]}-{TRAINING_MAPS[-1]}",
            "training_cases": self.cases,
            "labels_given": "TRUE labels of each case (case.labels), which favours this baseline",
            **self.prior.to_dict(),
        }


class TemplateBaseline:
    """SPM12's H2-15O PET template warped to a case through its T1 template (antspyx)."""

    def __init__(self, data: Path, transform: str, scratch: Path) -> None:
        import ants
        from nilearn import datasets, image

        folder = data / "pet" / "spm12_templates"
        t1 = nib.load(folder / "spm12_T1.nii.gz")
        mask = image.resample_to_img(
            datasets.load_mni152_brain_mask(resolution=2), t1, interpolation="nearest",
            force_resample=True, copy_header=True,
        )  # fmt: skip
        inside = np.asarray(mask.dataobj) > 0
        self.scratch, self.transform, self._ants = scratch, transform, ants
        # the seed antspyx passes as --random-seed (its set_ants_deterministic would also force
        # one thread)
        ants.config._random_seed = SEED
        moving = np.where(inside, t1.get_fdata(dtype=np.float32), 0)
        self.moving = self._image(moving, t1.affine, "template_t1_brain")
        self.pet = ants.image_read(str(folder / "spm12_PET.nii.gz"), pixeltype="float")
        self.mask_voxels = int(inside.sum())

    def _image(self, volume: np.ndarray, affine: np.ndarray, name: str):
        path = self.scratch / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(volume.astype(np.float32), affine), path)
        return self._ants.image_read(str(path))

    def __call__(self, case: PetCase) -> np.ndarray:
        ants = self._ants
        fixed = self._image(np.where(case.brain_mask, case.t1w, 0), case.affine, "subject")
        with tempfile.TemporaryDirectory(dir=self.scratch) as folder:
            registration = ants.registration(
                fixed, self.moving, type_of_transform=self.transform, outprefix=f"{folder}/"
            )
            warped = ants.apply_transforms(
                fixed, self.pet, registration["fwdtransforms"], interpolator="linear"
            )
        # antspyx keeps the array in the image's voxel order: the case's NIfTI order
        return reference_normalised(np.asarray(warped.numpy(), np.float32), case.labels)


def _region_mean(volume: np.ndarray, region: np.ndarray) -> float:
    return float(volume[region].mean()) if region.any() else float("nan")


def _label_means(values: np.ndarray, labels: np.ndarray, where: np.ndarray, size: int):
    """Mean of ``values`` per label value over ``where`` (NaN for a label absent there)."""
    sums = np.bincount(labels[where], values[where], size)
    counts = np.bincount(labels[where], minlength=size)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _matched_deficit(image: np.ndarray, case: PetCase, region: np.ndarray) -> float:
    """Mean of ``normal_suvr - image`` over ``region``, each voxel less the mean of its label's
    voxels around the region (brain, outside both hypometabolisms, within ``SHELL_MM``; the
    whole brain outside them for a label absent there): an offset of the prediction in a
    structure or a part of the brain (a case's cortex drawn above the population's) cancels."""
    difference = (case.normal_suvr - image).astype(np.float64)
    labels = case.labels.astype(np.int64)
    size = int(labels.max()) + 1
    outside = case.brain_mask & ~case.tied_region & ~case.independent_region
    distance = ndimage.distance_transform_edt(~region) * voxel_mm(case.affine)
    near = _label_means(difference, labels, outside & (distance <= SHELL_MM), size)
    offset = np.where(np.isnan(near), _label_means(difference, labels, outside, size), near)
    return float(np.nanmean(difference[region] - offset[labels[region]]))


def scores(prediction: np.ndarray, case: PetCase) -> dict[str, float]:
    """Every metric of one prediction of one case (NaN where a region is absent)."""
    mask, truth = case.brain_mask, case.suvr
    error = np.abs(prediction - truth)
    result = {"mae_brain": float(error[mask].mean())}
    for name, members in STRUCTURE_GROUPS.items():
        result[f"mae_{name}"] = _region_mean(error, mask & np.isin(case.labels, members))
    for name, region in (("tied", case.tied_region), ("independent", case.independent_region)):
        result[f"mae_{name}"] = _region_mean(error, region)
        for kind in ("", "_matched"):
            for key in ("recovery", "shown", "deficit"):
                result[f"{key}_{name}{kind}"] = float("nan")
        if region.any():
            pairs = {
                "": (_region_mean(case.normal_suvr - prediction, region),
                     _region_mean(case.normal_suvr - truth, region)),
                "_matched": (_matched_deficit(prediction, case, region),
                             _matched_deficit(truth, case, region)),
            }  # fmt: skip
            for kind, (shown, deficit) in pairs.items():
                result[f"recovery_{name}{kind}"] = shown / deficit
                result[f"shown_{name}{kind}"], result[f"deficit_{name}{kind}"] = shown, deficit
    result["ssim"] = ssim(prediction, truth, mask, (SSIM_SIGMA,) * 3)
    mse = float(((prediction - truth)[mask] ** 2).mean())
    result["psnr_db"] = float(10 * np.log10(float(truth[mask].max()) ** 2 / max(mse, 1e-12)))
    return result


def evaluate_simulated(
    data: Path,
    per_map: int,
    settings: PetSimulation,
    methods: dict[str, Callable[[PetCase], np.ndarray]],
) -> tuple[list[dict], PetCase]:
    """A row per held-out case and method; and the first case (for the cost check)."""
    records, first = [], None
    for number, draw, case in simulated_cases(data, TEST_MAPS, per_map, settings):
        if first is None:
            first = case
        independent = bool(case.parameters["independent"]["present"])
        common = {
            "case": f"{number}-{draw:02d}", "map": number, "draw": draw,
            "tied": case.parameters["tied_severity"] > 0,
            "tied_severity": round(case.parameters["tied_severity"], 4),
            "independent": independent,
            "independent_reduction": case.parameters["independent"].get("reduction", 0.0),
            "tied_voxels": int(case.tied_region.sum()),
            "independent_voxels": int(case.independent_region.sum()),
            "brain_voxels": int(case.brain_mask.sum()),
        }  # fmt: skip
        for method, function in methods.items():
            start = time.perf_counter()
            prediction = np.asarray(function(case), np.float32)
            seconds = time.perf_counter() - start
            records.append({**common, "method": method, "seconds": seconds,
                            **scores(prediction, case)})  # fmt: skip
        model = next(r for r in records[-len(methods) :] if r["method"] == "model")
        print(
            f"  {common['case']}: tied {common['tied']!s:<5} independent {independent!s:<5} "
            + " ".join(
                f"{r['method']} {r['mae_brain']:.3f}/{r['ssim']:.3f} ({r['seconds']:.0f}s)"
                for r in records[-len(methods) :]
            )
            + f" | model's tied recovery {model['recovery_tied']:.2f} "
            f"(matched {model['recovery_tied_matched']:.2f})",
            flush=True,
        )
    return records, first


RECOVERIES = ("recovery_tied", "recovery_tied_matched", "recovery_independent",
              "recovery_independent_matched")  # fmt: skip
METRICS = ("mae_brain", *(f"mae_{n}" for n in STRUCTURE_GROUPS), "mae_tied", "mae_independent",
           "ssim", "psnr_db", *RECOVERIES)  # fmt: skip


def _interval(values: np.ndarray, key: int) -> dict:
    values = values[np.isfinite(values)]
    if not len(values):
        return {"n": 0, "mean": None, "low": None, "high": None}
    low, high = bootstrap_interval(values, np.random.default_rng([SEED, key]))
    return {"n": int(len(values)), "mean": float(values.mean()), "low": low, "high": high}


def _ratio_interval(shown: np.ndarray, deficit: np.ndarray, key: int) -> dict:
    """The pooled recovery ``sum(shown) / sum(deficit)`` over cases (a per-case ratio is
    unstable where a deficit is small) with its 95 % percentile bootstrap interval (cases
    resampled; ``shown`` may be (cases, 2): a difference of two methods' ratios)."""
    keep = np.isfinite(deficit) & np.all(np.isfinite(shown.reshape(len(shown), -1)), axis=1)
    shown, deficit = shown[keep], deficit[keep]
    if not len(deficit):
        return {"n": 0, "mean": None, "low": None, "high": None}

    def statistic(index: np.ndarray) -> float:
        ratios = shown[index].sum(0) / deficit[index].sum()
        return float(np.atleast_1d(ratios) @ ([1.0, -1.0] if shown.ndim == 2 else [1.0]))

    rng = np.random.default_rng([SEED, key])
    draws = [statistic(rng.integers(0, len(deficit), len(deficit))) for _ in range(BOOTSTRAP)]
    value = statistic(np.arange(len(deficit)))
    return {"n": int(len(deficit)), "mean": value, "low": float(np.percentile(draws, 2.5)),
            "high": float(np.percentile(draws, 97.5)), "pooled": True}  # fmt: skip


def summarise(records: list[dict]) -> dict:
    """Per method and metric, the mean over cases with its bootstrap interval; per baseline
    and metric, the paired difference model minus baseline (cases where both are defined)."""
    by = {m: {r["case"]: r for r in records if r["method"] == m} for m in METHODS}
    cases = list(by["model"])
    summary: dict = {"methods": {}, "model_minus": {}}
    for index, metric in enumerate(METRICS):
        column = {m: np.array([by[m][c][metric] for c in cases], float) for m in METHODS}
        if metric in RECOVERIES:
            parts = {
                m: [np.array([by[m][c][metric.replace("recovery", k)] for c in cases], float)
                    for k in ("shown", "deficit")]
                for m in METHODS
            }  # fmt: skip
        for method in METHODS:
            summary["methods"].setdefault(method, {})[metric] = (
                _ratio_interval(*parts[method], index)
                if metric in RECOVERIES
                else _interval(column[method], index)
            )
        for b, baseline in enumerate(BASELINES):
            key = 1000 * (b + 1) + index
            summary["model_minus"].setdefault(baseline, {})[metric] = (
                _ratio_interval(
                    np.stack([parts["model"][0], parts[baseline][0]], 1), parts["model"][1], key
                )
                if metric in RECOVERIES
                else _interval(column["model"] - column[baseline], key)
            )
    return summary


def case_counts(records: list[dict]) -> dict:
    rows = [r for r in records if r["method"] == "model"]
    tied = sum(r["tied"] for r in rows)
    independent = sum(r["independent"] for r in rows)
    both = sum(r["tied"] and r["independent"] for r in rows)
    return {
        "cases": len(rows), "tied": tied, "independent": independent, "both": both,
        "neither": len(rows) - tied - independent + both,
        "with_tied_region": sum(r["tied_voxels"] > 0 for r in rows),
        "with_independent_region": sum(r["independent_voxels"] > 0 for r in rows),
    }  # fmt: skip


def targets(summary: dict) -> dict:
    """Each target of the issue, met or not (intervals: the methods' 95 % intervals of the
    mean do not overlap; the paired difference's interval is given too)."""
    result = {}
    model = summary["methods"]["model"]
    for metric in ("mae_brain", "mae_tied"):
        for baseline in BASELINES:
            other = summary["methods"][baseline][metric]
            difference = summary["model_minus"][baseline][metric]
            if model[metric]["mean"] is None or other["mean"] is None:
                result[f"{metric} below {baseline}"] = {"met": None, "why": "no cases"}
                continue
            lower = model[metric]["mean"] < other["mean"]
            apart = model[metric]["high"] < other["low"]
            result[f"{metric} below {baseline}"] = {
                "met": bool(lower and apart), "lower": bool(lower),
                "intervals_apart": bool(apart),
                "paired_difference_below_zero": bool(difference["high"] < 0),
            }  # fmt: skip
    value = model["ssim"]["mean"]
    result[f"ssim >= {TARGETS['ssim']}"] = {"met": bool(value >= TARGETS["ssim"]), "value": value}
    return result


# ---------------------------------------------------------------- real template pair


def real_pet_sidecar() -> dict:
    """The sample's PET sidecar for one H2-15O frame, without dose (no SUV: SUVR only)."""
    sidecar = pet_sidecar()
    for key in ("InjectedRadioactivity", "InjectedRadioactivityUnits"):
        sidecar.pop(key)
    sidecar.update({
        "Manufacturer": "SPM12 (template, OldNorm)", "ManufacturersModelName": "spm12_PET",
        "TracerName": TRACER, "TracerRadionuclide": "O15", "FrameTimesStart": [0],
        "FrameDuration": [90], "AcquisitionMode": "static",
        "ReconMethodName": "unknown (average of 12 H2-15O scans, spatially normalised)",
        "ReconFilterType": "unknown", "ReconFilterSize": 0,
        "AttenuationCorrection": "unknown",
    })  # fmt: skip
    return sidecar


def write_dataset(data: Path, folder: Path, with_pet: bool) -> Path:
    """The SPM12 pair as BIDS in ``folder`` (left as it is when there already: a rewritten
    file would invalidate the pipeline's cache)."""
    if (folder / "dataset_description.json").exists():
        return folder
    templates = data / "pet" / "spm12_templates"
    anat = folder / f"sub-{SUBJECT}" / "anat"
    anat.mkdir(parents=True)
    shutil.copy(templates / "spm12_T1.nii.gz", anat / f"sub-{SUBJECT}_T1w.nii.gz")
    description = {"Name": "SPM12 OldNorm T1 and H2-15O PET templates", "BIDSVersion": "1.10.0",
                   "DatasetType": "raw"}  # fmt: skip
    (folder / "dataset_description.json").write_text(json.dumps(description, indent=1))
    if with_pet:
        pet = folder / f"sub-{SUBJECT}" / "pet"
        pet.mkdir()
        stem = f"sub-{SUBJECT}_trc-{TRACER}_pet"
        shutil.copy(templates / "spm12_PET.nii.gz", pet / f"{stem}.nii.gz")
        (pet / f"{stem}.json").write_text(json.dumps(real_pet_sidecar(), indent=1))
    return folder


def run_pipeline(bids: Path, out: Path, work: Path, extra: list[str], log: Path) -> dict:
    command = [str(Path(sys.executable).parent / "bids_dl"), str(bids), str(out), "participant",
               "--analyses", "pet", "--skip-bids-validation", "-w", str(work), "--nprocs",
               str(THREADS), "--omp-nthreads", "1", *extra]  # fmt: skip
    seconds, peak = run_logged(command, log)
    return {"command": " ".join(command[1:]), "seconds": round(seconds, 1),
            "main_process_peak_gb": round(peak, 2)}  # fmt: skip


def _one(folder: Path, pattern: str) -> Path:
    """The file matching ``pattern`` (the newest, should a reused output folder hold an older
    name too)."""
    found = sorted(folder.glob(pattern), key=lambda path: path.stat().st_mtime)
    if not found:
        raise RuntimeError(f"{folder}: no {pattern}")
    return found[-1]


def gm_wm(suvr_file: Path, aseg_file: Path) -> dict:
    """Mean SUVR in cortical GM and cerebral WM of the aseg, and their ratio (same grid)."""
    suvr, aseg = nib.load(suvr_file), nib.load(aseg_file)
    if suvr.shape[:3] != aseg.shape[:3] or not np.allclose(suvr.affine, aseg.affine, atol=1e-3):
        raise RuntimeError(f"{suvr_file.name} and {aseg_file.name} are on different grids")
    values = np.asarray(suvr.dataobj, np.float32)
    labels = np.asarray(aseg.dataobj).astype(int)
    gm = float(values[np.isin(labels, CORTICAL_GM)].mean())
    wm_mask = np.isin(labels, CEREBRAL_WM)
    wm = float(values[wm_mask].mean())
    core = ndimage.binary_erosion(wm_mask, iterations=WM_CORE_EROSION)
    wm_core = float(values[core].mean()) if core.any() else float("nan")
    cerebellum = float(values[np.isin(labels, CEREBELLAR_CORTEX)].mean())
    return {"file": suvr_file.name, "aseg": aseg_file.name, "gm": round(gm, 4),
            "wm": round(wm, 4), "gm_wm_ratio": round(gm / wm, 3),
            "wm_core": round(wm_core, 4), "gm_wm_core_ratio": round(gm / wm_core, 3),
            "cerebellar_cortex": round(cerebellum, 4)}  # fmt: skip


def registration_offset(work: Path, aseg_file: Path) -> dict:
    """How far the pipeline's rigid PET -> T1w transform moves the brain: the pair shares
    one grid, so the ideal transform is the identity (mean and max displacement in mm over
    the aseg's brain voxels, and the rotation in degrees)."""
    import ants

    found = sorted(work.glob("**/static_to_t1w/*GenericAffine.mat"))
    if len(found) != 1:
        return {"found": [str(p) for p in found]}
    transform = ants.read_transform(str(found[0]))
    matrix = np.asarray(transform.parameters[:9]).reshape(3, 3)
    translation = np.asarray(transform.parameters[9:12])
    centre = np.asarray(transform.fixed_parameters)
    aseg = nib.load(aseg_file)
    voxels = np.argwhere(np.asarray(aseg.dataobj) > 0)
    points = nib.affines.apply_affine(aseg.affine, voxels) * [-1, -1, 1]  # RAS -> ITK's LPS
    moved = (points - centre) @ (matrix - np.eye(3)).T + translation
    distance = np.linalg.norm(moved, axis=1)
    angle = np.degrees(np.arccos(np.clip((np.trace(matrix) - 1) / 2, -1, 1)))
    return {"mean_mm": round(float(distance.mean()), 2), "max_mm": round(float(distance.max()), 2),
            "rotation_deg": round(float(angle), 2)}  # fmt: skip


def real_template_run(data: Path, bundle: Path, scratch: Path) -> dict:
    """The end-to-end run on the SPM12 pair, then the imputed SUVR of the same T1w."""
    bids, out, work = scratch / "bids", scratch / "out", scratch / "work"
    write_dataset(data, bids, with_pet=True)
    result: dict = {"work_folder_reused": work.exists()}
    result["measured_run"] = run_pipeline(bids, out, work, [], scratch / "run_measured.log")
    subject = out / f"sub-{SUBJECT}"
    aseg = _one(subject / "anat", "*desc-aseg_dseg.nii.gz")
    measured = _one(subject / "pet", "*space-T1w_desc-suvr_pet.nii.gz")
    result["measured"] = gm_wm(measured, aseg)
    result["tracer_entity_kept"] = f"trc-{TRACER}" in measured.name
    result["pet_to_t1w"] = registration_offset(work, aseg)
    result["pet_files"] = sorted(p.name for p in (subject / "pet").glob("*.nii.gz"))
    result["suv_written"] = any("desc-suv_pet" in name for name in result["pet_files"])
    shipped = shipped_bundles().get("pet")
    if shipped is not None and shipped.resolve() == bundle.resolve():
        extra, imputed_bids, imputed_out = ["--pet-imputation", "always"], bids, out
        result["imputation_run_kind"] = "--pet-imputation always, same work folder (cached)"
    else:
        imputed_bids = write_dataset(data, scratch / "bids_t1w_only", with_pet=False)
        imputed_out = scratch / "out_imputed"
        extra = ["--pet-imputation", str(bundle)]
        result["imputation_run_kind"] = (
            "the bundle is not the shipped one: the dataset without its PET, "
            "--pet-imputation BUNDLE, same work folder"
        )
    result["imputation_run"] = run_pipeline(
        imputed_bids, imputed_out, work, extra, scratch / "run_imputed.log"
    )
    imputed_subject = imputed_out / f"sub-{SUBJECT}"
    imputed = _one(imputed_subject / "pet", "*space-T1w_desc-imputed_pet.nii.gz")
    result["imputed"] = gm_wm(imputed, _one(imputed_subject / "anat", "*desc-aseg_dseg.nii.gz"))
    return result


# ---------------------------------------------------------------- inference cost

COST_CODE = """
import json, sys, time
import nibabel as nib, numpy as np, torch
from bids_dl.models.bundle import load_bundle
from bids_dl.models.pet_imputation import impute_suvr
torch.set_num_threads({threads})
t1w, mask, labels = nib.load({t1w!r}), nib.load({mask!r}), nib.load({labels!r})
card, network = load_bundle({bundle!r})
start = time.perf_counter()
suvr = impute_suvr(np.asarray(t1w.dataobj, np.float32), np.asarray(mask.dataobj) > 0,
                   np.asarray(labels.dataobj, np.int16), t1w.affine, network, card)
seconds = time.perf_counter() - start
json.dump({{"call_seconds": seconds, "shape": list(suvr.shape)}}, open({result!r}, "w"))
"""


def upsampled_volume(case: PetCase, scratch: Path) -> tuple[Path, Path, Path]:
    """The case's T1w (linear), mask and labels (nearest) at 1 mm, padded into
    ``COST_SHAPE``."""
    t1w = ndimage.zoom(case.t1w, 2, order=1).astype(np.float32)
    mask = ndimage.zoom(case.brain_mask.astype(np.uint8), 2, order=0)
    labels = ndimage.zoom(case.labels.astype(np.int16), 2, order=0)
    if any(n > m for n, m in zip(t1w.shape, COST_SHAPE, strict=True)):
        raise RuntimeError(f"upsampled case {t1w.shape} exceeds {COST_SHAPE}")
    start = [(m - n) // 2 for n, m in zip(t1w.shape, COST_SHAPE, strict=True)]
    box = tuple(slice(s, s + n) for s, n in zip(start, t1w.shape, strict=True))
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = case.affine[:3, 3] - 0.5 - np.array(start)
    paths = []
    volumes = (("t1w", t1w, np.float32), ("mask", mask, np.uint8), ("labels", labels, np.int16))
    for name, volume, dtype in volumes:
        padded = np.zeros(COST_SHAPE, dtype)
        padded[box] = volume
        paths.append(scratch / f"cost_{name}.nii.gz")
        nib.save(nib.Nifti1Image(padded, affine), paths[-1])
    return paths[0], paths[1], paths[2]


def inference_cost(case: PetCase, bundle: Path, scratch: Path) -> dict:
    t1w, mask, labels = upsampled_volume(case, scratch)
    result = scratch / "cost.json"
    code = COST_CODE.format(threads=THREADS, t1w=str(t1w), mask=str(mask), labels=str(labels),
                            bundle=str(bundle), result=str(result))  # fmt: skip
    seconds, peak = run_measured([sys.executable, "-c", code], cwd=ROOT)
    call = json.loads(result.read_text())
    return {
        "volume": f"{COST_SHAPE[0]}^3 at 1 mm: the first held-out case's T1w (linear), mask and "
        "labels (nearest) upsampled x2, zero-padded",
        "threads": THREADS, "call_seconds": round(call["call_seconds"], 2),
        "process_seconds": round(seconds, 2), "peak_gb": round(peak, 2),
        "meets_30s": call["call_seconds"] < TARGETS["cost_seconds"],
        "meets_4gb": peak < TARGETS["cost_peak_gb"],
    }  # fmt: skip


# ---------------------------------------------------------------- results


def _fmt(entry: dict, digits: int = 3) -> str:
    if entry["mean"] is None:
        return "n/a"
    return f"{entry['mean']:.{digits}f} [{entry['low']:.{digits}f}, {entry['high']:.{digits}f}]"


def _print_rows(summary: dict, title: str, columns: tuple[str, ...]) -> None:
    print(f"{title:<17}" + "".join(f"{c.removeprefix('recovery_'):>27}" for c in columns))
    for method in METHODS:
        cells = [_fmt(summary[method][c], 1 if c == "psnr_db" else 3) for c in columns]
        print(f"{method:<17}" + "".join(f"{c:>27}" for c in cells))


def print_table(payload: dict) -> None:
    simulated = payload.get("simulated")
    if simulated:
        counts = simulated["counts"]
        print(
            f"\nSIMULATED held-out (maps 19-20): {counts['cases']} cases, atrophy-tied "
            f"{counts['tied']}, MRI-invisible {counts['independent']} (both {counts['both']}, "
            f"neither {counts['neither']}); means [95 % bootstrap]"
        )
        print(f"template: {simulated['template_baseline']['images']}; regional_mean: "
              "population SUVR per structure painted on the TRUE labels, blurred")  # fmt: skip
        summary = simulated["summary"]["methods"]
        columns = ("mae_brain", "mae_tied", "mae_independent", "ssim", "psnr_db")
        _print_rows(summary, "method", columns)
        print("share of the true deficit shown, pooled over cases (raw: the issue's ratio; "
              "matched: each label's offset around the region removed)")  # fmt: skip
        _print_rows(summary, "recovery", RECOVERIES)
        print(f"{'MAE by structure':<17}" + "".join(f"{n:>14}" for n in STRUCTURE_GROUPS))
        for method in METHODS:
            means = [summary[method][f"mae_{n}"]["mean"] for n in STRUCTURE_GROUPS]
            print(f"{method:<17}" + "".join(f"{m:>14.3f}" for m in means))
        for baseline in BASELINES:
            difference = simulated["summary"]["model_minus"][baseline]
            print(
                f"model - {baseline}: MAE brain {_fmt(difference['mae_brain'])}, tied "
                f"{_fmt(difference['mae_tied'])}, SSIM {_fmt(difference['ssim'])}"
            )
        for name, target in simulated["targets"].items():
            details = ", ".join(f"{k} {v}" for k, v in target.items() if k != "met")
            print(f"target {name}: {'MET' if target['met'] else 'NOT met'} ({details})")
    real = payload.get("real")
    if real:
        m, i = real["measured"], real["imputed"]
        cached = ", work folder reused: cached" if real["work_folder_reused"] else ""
        print(
            f"\nREAL SPM12 pair end to end ({real['measured_run']['seconds']:.0f} s{cached}): "
            "measured "
            f"H2-15O SUVR GM {m['gm']:.3f}, WM {m['wm']:.3f}, GM/WM {m['gm_wm_ratio']:.2f}; "
            f"imputed GM {i['gm']:.3f}, WM {i['wm']:.3f}, GM/WM {i['gm_wm_ratio']:.2f} "
            f"(imputation run {real['imputation_run']['seconds']:.0f} s)"
        )
    cost = payload.get("cost")
    if cost:
        print(
            f"inference on 256^3 at 1 mm, {cost['threads']} threads: call {cost['call_seconds']}"
            f" s, fresh process {cost['process_seconds']} s, peak {cost['peak_gb']} GB"
        )


def _cell(value: object) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def write_results(out: Path, payload: dict, records: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    if records:
        columns = list(records[0])
        lines = ["\t".join(columns)] + ["\t".join(_cell(r[c]) for c in columns) for r in records]
        (out / "cases.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _mean(entry: dict) -> str:
    return "n/a" if entry["mean"] is None else f"{entry['mean']:.3f}"


def headline(payload: dict) -> str:
    parts = []
    simulated = payload.get("simulated")
    if simulated:
        methods = simulated["summary"]["methods"]
        parts.append(
            "SIMULATED held-out (maps 19-20, "
            f"{simulated['counts']['cases']} cases; template: SPM12's H2-15O PET template warped "
            f"by {payload['settings']['template_transform']}; regional_mean: population SUVR on "
            "the true labels), SUVR MAE in the brain / in the atrophy-tied hypometabolism, SSIM: "
            + "; ".join(
                f"{m} {_mean(methods[m]['mae_brain'])} / {_mean(methods[m]['mae_tied'])}, "
                f"{_mean(methods[m]['ssim'])}"
                for m in METHODS
            )
            + "; model shows "
            + " and ".join(
                f"{_mean(methods['model'][f'recovery_{r}'])} ("
                f"{_mean(methods['model'][f'recovery_{r}_matched'])} matched) of the {name} deficit"
                for r, name in (("tied", "atrophy-tied"), ("independent", "MRI-invisible"))
            )
        )
    real = payload.get("real")
    if real:
        parts.append(
            f"REAL SPM12 templates: H2-15O SUVR GM/WM {real['measured']['gm_wm_ratio']:.2f}, "
            f"imputed from the T1 template {real['imputed']['gm_wm_ratio']:.2f}"
        )
    cost = payload.get("cost")
    if cost:
        parts.append(f"256^3 1 mm T1w: {cost['call_seconds']} s, {cost['peak_gb']} GB (2 threads)")
    return ". ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=str(DEFAULT_BUNDLE), help="pet bundle folder/name")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="../shared/data")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--cases-per-map", type=int, default=10)
    parser.add_argument("--regional-draws", type=int, default=2,
                        help="simulated cases per training map for the regional means")  # fmt: skip
    parser.add_argument("--template-transform", default="SyN", choices=TEMPLATE_TRANSFORMS)
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument(
        "--keep", type=Path, help="scratch folder, kept (the real run's BIDS, outputs, work); "
        "a rerun with the same folder reuses the pipeline's cache (its times are then not "
        "those of a fresh run)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    start = time.perf_counter()
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(THREADS)
    torch.set_num_threads(THREADS)
    folder = find_bundle(args.bundle).resolve()
    card, network = load_bundle(folder)
    settings, source = simulation_settings(card)
    split = card.training.get("split") or {}
    seen = sorted(set(TEST_MAPS) & set(split.get("train", []) + split.get("validation", [])))
    if seen:
        sys.exit(f"pet_imputation: the bundle was trained or validated on label maps {seen}")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    scratch = args.keep or Path(tempfile.mkdtemp(prefix="pet_imputation_"))
    payload: dict = {"settings": {
        "bundle": f"{card.name} {card.version}", "bundle_folder": str(folder),
        "bundle_sha256": weights_sha256(folder), "bundle_training": card.training.get("data"),
        "threads": THREADS, "seed": SEED, "cases_per_map": args.cases_per_map,
        "simulation": source, "bundle_split": split or "not in the card",
        "template_transform": args.template_transform,
        "ssim_sigma_voxels": SSIM_SIGMA, "grid_mm": 2.0,
        "structures": {k: list(v) for k, v in STRUCTURE_GROUPS.items()},
    }}  # fmt: skip
    records: list[dict] = []
    first = None
    phases: dict[str, float] = {}
    try:
        with threadpool_limits(limits=THREADS):
            if "simulated" in args.parts:
                print("regional means from the training maps ...", flush=True)
                phase = time.perf_counter()
                regional = RegionalMean(args.data, args.regional_draws, settings)
                phases["regional_fit"] = round(time.perf_counter() - phase, 1)
                phase = time.perf_counter()
                template = TemplateBaseline(args.data, args.template_transform, scratch)
                methods = {
                    "model": lambda case: impute_suvr(
                        case.t1w, case.brain_mask, case.labels, case.affine, network, card
                    ),
                    "template": template,
                    "regional_mean": regional,
                }
                print("held-out cases ...", flush=True)
                records, first = evaluate_simulated(
                    args.data, args.cases_per_map, settings, methods
                )
                phases["held_out_cases"] = round(time.perf_counter() - phase, 1)
                summary = summarise(records)
                payload["simulated"] = {
                    "counts": case_counts(records), "summary": summary,
                    "targets": targets(summary),
                    "template_baseline": {
                        "images": "SPM12 OldNorm spm12_T1 -> subject T1w (antspyx "
                        f"{args.template_transform}), applied to spm12_PET (H2-15O, not FDG)",
                        "template_mask": "nilearn MNI152 brain mask (2 mm) on the SPM12 grid, "
                        f"{template.mask_voxels} voxels",
                    },
                    "regional_mean_baseline": regional.describe(),
                }  # fmt: skip
            if "cost" in args.parts:
                if first is None:
                    first = next(simulated_cases(args.data, TEST_MAPS[:1], 1, settings))[2]
                print("inference cost ...", flush=True)
                phase = time.perf_counter()
                payload["cost"] = inference_cost(first, folder, scratch)
                phases["cost"] = round(time.perf_counter() - phase, 1)
            if "real" in args.parts:
                print("real template pair end to end ...", flush=True)
                phase = time.perf_counter()
                payload["real"] = real_template_run(args.data, folder, scratch)
                phases["real"] = round(time.perf_counter() - phase, 1)
    finally:
        if args.keep is None:
            shutil.rmtree(scratch, ignore_errors=True)
    payload["settings"]["run_s"] = round(time.perf_counter() - start, 1)
    payload["settings"]["phase_s"] = phases
    payload["headline"] = headline(payload)
    write_results(args.out, payload, records)
    print_table(payload)
    print(payload["headline"])
    print(f"run {payload['settings']['run_s']} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
