"""Functional networks on SIMULATED groups: the `networks` model against nilearn's CanICA and
DictLearning, same cleaned data, same run, same K (the true one).

Each group: ``--subjects`` runs from ``bids_dl.models.bold_simulation`` on the 4 mm MNI152 brain
mask at each ``--noise`` level (1.5 is the realistic default) and seed, cleaned alike (cubic
trends, the six motion parameters and their derivatives regressed out, z-scored). The model
gets the runs smoothed at 6 mm (``smooth_run``, CanICA's default FWHM); CanICA and DictLearning
get the cleaned images and apply their own default smoothing (6 and 4 mm); DictLearning's
sparsity ``alpha`` is first chosen on separate tuning groups (``--tuning-seeds``, realistic
noise; the model's settings were chosen on such groups too), as its default (10) leaves most
maps empty on these data. Score: mean
Hungarian-matched absolute spatial correlation with the template maps, a percentile bootstrap
interval over (seed, network) pairs; wall time and peak resident-memory growth of each call.
``--write-bundle`` writes the card of ``models/zoo/networks`` with these figures.

    python bench/fmri_networks.py [--noise 0.5 1 1.5 3] [--seeds 1 2 3] [--tuning-seeds 0 10]
                                  [--write-bundle]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from nilearn import datasets
from nilearn.decomposition import CanICA, DictLearning

from bids_dl.models.bold_simulation import NETWORK_NODES, BoldSimulation, simulate_group
from bids_dl.models.card import ModelCard, write_card
from bids_dl.models.network_extraction import (
    DEFAULT_SETTINGS,
    clean_run,
    fit_networks,
    match_maps,
    smooth_run,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bootstrap import bootstrap_interval  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "fmri_networks"
BUNDLE = ROOT / "models" / "zoo" / "networks"
#: template grid of the evaluation (mm)
RESOLUTION_MM = 4
#: smoothing given to the model's input: CanICA's default
SMOOTHING_FWHM_MM = 6.0
#: the realistic noise level (BoldSimulation's default)
REALISTIC = BoldSimulation().noise
#: alternating repeats of the timing check
TIMING_REPEATS = 5
#: how often the memory sampler reads VmRSS (s)
MEMORY_POLL_SECONDS = 0.01
METHODS = ("networks", "canica", "dictlearning")
#: DictLearning sparsities tried on the tuning groups (nilearn's default is 10)
DICTLEARNING_ALPHAS = (0.5, 1.0, 2.0, 5.0, 10.0)


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def measured(function, *args, **kwargs):
    """Run ``function``; return its result, wall seconds and peak RSS growth (MB) meanwhile."""
    start_rss, peak, done = _rss_mb(), [0.0], threading.Event()

    def poll() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb() - start_rss)
            time.sleep(MEMORY_POLL_SECONDS)

    sampler = threading.Thread(target=poll, daemon=True)
    sampler.start()
    start = time.perf_counter()
    result = function(*args, **kwargs)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    return result, seconds, max(peak[0], _rss_mb() - start_rss)


def _to_images(runs: list[np.ndarray], mask: np.ndarray, affine: np.ndarray) -> list:
    images = []
    for run in runs:
        volume = np.zeros((*mask.shape, run.shape[0]), dtype=np.float32)
        volume[mask] = run.T
        images.append(nib.Nifti1Image(volume, affine))
    return images


def _deep(runs, mask, affine, n_networks, seed) -> np.ndarray:
    smoothed = [smooth_run(run, mask, affine, SMOOTHING_FWHM_MM) for run in runs]
    return fit_networks(smoothed, n_networks, seed=seed).maps


def _nilearn(estimator, runs, mask, affine, n_networks, seed, **options) -> np.ndarray:
    mask_image = nib.Nifti1Image(mask.astype(np.uint8), affine)
    model = estimator(
        n_components=n_networks, mask=mask_image, random_state=seed, n_jobs=1, **options
    )
    model.fit(_to_images(runs, mask, affine))
    return model.components_


def cleaned_group(noise: float, seed: int, n_subjects: int, mask, affine):
    """A simulated group's cleaned runs and its template maps."""
    group = simulate_group(n_subjects, BoldSimulation(noise=noise), mask, affine, seed)
    runs = [
        clean_run(run, np.hstack([motion, np.gradient(motion, axis=0)]))
        for run, motion in zip(group.runs, group.motion, strict=True)
    ]
    return runs, group.group_maps


def _calls(runs, mask, affine, k: int, seed: int, alpha: float) -> dict:
    """Each method as a call without arguments on the same runs."""
    return {
        "networks": lambda: _deep(runs, mask, affine, k, seed),
        "canica": lambda: _nilearn(CanICA, runs, mask, affine, k, seed),
        "dictlearning": lambda: _nilearn(DictLearning, runs, mask, affine, k, seed, alpha=alpha),
    }


def tune_dictlearning(seeds: list[int], n_subjects: int, mask, affine) -> dict:
    """DictLearning's alpha with the best mean matched correlation on realistic tuning groups
    (seeds apart from the scored ones), and each alpha's score."""
    scores = {alpha: [] for alpha in DICTLEARNING_ALPHAS}
    for seed in seeds:
        runs, truth = cleaned_group(REALISTIC, seed, n_subjects, mask, affine)
        for alpha in DICTLEARNING_ALPHAS:
            maps = _nilearn(DictLearning, runs, mask, affine, len(truth), seed, alpha=alpha)
            scores[alpha].append(float(match_maps(np.asarray(maps), truth).mean()))
    means = {alpha: round(float(np.mean(v)), 4) for alpha, v in scores.items()}
    best = max(means, key=means.get)
    print(f"DictLearning alpha on tuning seeds {seeds}: {means} -> {best}", flush=True)
    return {"seeds": seeds, "noise": REALISTIC, "scores": means, "alpha": best}


def run_group(noise: float, seed: int, n_subjects: int, mask, affine, alpha: float) -> list[dict]:
    """One simulated group, the three methods on it; a row per method."""
    runs, truth = cleaned_group(noise, seed, n_subjects, mask, affine)
    calls = _calls(runs, mask, affine, len(truth), seed, alpha)
    rows = []
    for method in METHODS:
        maps, seconds, memory = measured(calls[method])
        matched = match_maps(np.asarray(maps), truth)
        rows.append(
            {
                "method": method,
                "noise": noise,
                "seed": seed,
                "matched": [round(float(m), 4) for m in matched],
                "mean": round(float(matched.mean()), 4),
                "seconds": round(seconds, 2),
                "peak_mb": round(memory, 1),
            }
        )
        print(
            f"noise {noise} seed {seed} {method}: {matched.mean():.3f}, {seconds:.1f} s", flush=True
        )
    return rows


def timing_check(seed: int, n_subjects: int, mask, affine, alpha: float) -> dict:
    """Seconds of each method on one realistic group, the methods alternating TIMING_REPEATS
    times, so that other work on the machine weighs on all of them alike: medians, and the
    median of the model's time over CanICA's within each repeat."""
    runs, truth = cleaned_group(REALISTIC, seed, n_subjects, mask, affine)
    calls = _calls(runs, mask, affine, len(truth), seed, alpha)
    seconds = {method: [] for method in METHODS}
    for _ in range(TIMING_REPEATS):
        for method in METHODS:
            seconds[method].append(round(measured(calls[method])[1], 2))
    ratios = np.divide(seconds["networks"], seconds["canica"])
    return {
        "noise": REALISTIC,
        "seed": seed,
        "seconds": seconds,
        "median": {m: float(np.median(v)) for m, v in seconds.items()},
        "networks_over_canica_median": round(float(np.median(ratios)), 3),
    }


def choose_k_check(seed: int, n_subjects: int, mask, affine) -> dict:
    """The model left to choose K on a realistic group: its choice, the candidates' split-half
    stability, the recovery of the true networks and the time."""
    runs, truth = cleaned_group(REALISTIC, seed, n_subjects, mask, affine)
    smoothed = [smooth_run(run, mask, affine, SMOOTHING_FWHM_MM) for run in runs]
    fit, seconds, _ = measured(fit_networks, smoothed, None, seed=seed)
    matched = match_maps(fit.maps, truth)
    return {
        "noise": REALISTIC,
        "seed": seed,
        "true_k": len(truth),
        "chosen_k": fit.n_components,
        "stability": round(fit.stability, 3),
        "candidates": {k: round(v, 3) for k, v in fit.candidates.items()},
        "matched_mean": round(float(matched.mean()), 3),
        "seconds": round(seconds, 1),
    }


def summarise(rows: list[dict]) -> list[dict]:
    """Per method and noise: mean matched correlation with its interval, time, memory."""
    rng = np.random.default_rng(0)
    summary = []
    for noise in sorted({row["noise"] for row in rows}):
        for method in METHODS:
            chosen = [r for r in rows if r["method"] == method and r["noise"] == noise]
            values = np.concatenate([r["matched"] for r in chosen])
            low, high = bootstrap_interval(values, rng)
            summary.append(
                {
                    "method": method,
                    "noise": noise,
                    "groups": len(chosen),
                    "mean": round(float(values.mean()), 3),
                    "low": round(low, 3),
                    "high": round(high, 3),
                    "seconds_median": round(float(np.median([r["seconds"] for r in chosen])), 2),
                    "peak_mb_max": round(max(r["peak_mb"] for r in chosen), 1),
                }
            )
    return summary


def _write_results(rows: list[dict], summary: list[dict], config: dict, checks: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"config": config, "summary": summary, **checks, "rows": rows}
    (RESULTS / "fmri_networks.json").write_text(json.dumps(payload, indent=2) + "\n")
    columns = list(summary[0])
    lines = ["\t".join(columns)] + ["\t".join(str(s[c]) for c in columns) for s in summary]
    (RESULTS / "fmri_networks.tsv").write_text("\n".join(lines) + "\n")


def _print_table(summary: list[dict]) -> None:
    print(f"{'noise':>5} {'method':<13} {'mean':>6} {'95% interval':>15} {'s':>6} {'MB':>7}")
    for s in summary:
        interval = f"[{s['low']:.3f}, {s['high']:.3f}]"
        print(
            f"{s['noise']:>5} {s['method']:<13} {s['mean']:>6.3f} {interval:>15} "
            f"{s['seconds_median']:>6.2f} {s['peak_mb_max']:>7.1f}"
        )


def _headline(summary: list[dict], timing: dict) -> str:
    realistic = {s["method"]: s for s in summary if s["noise"] == REALISTIC}
    parts = [
        f"{m} {realistic[m]['mean']:.3f} [{realistic[m]['low']:.3f}-{realistic[m]['high']:.3f}], "
        f"{timing['median'][m]:.1f} s"
        for m in METHODS
    ]
    return (
        "SIMULATED resting-state groups (10 subjects, 4 mm MNI, 8 networks, realistic noise "
        f"{REALISTIC}), mean Hungarian-matched spatial correlation with the true maps and "
        "median seconds (2-core CPU, 1 thread): " + "; ".join(parts)
    )


def write_bundle(summary: list[dict], config: dict, checks: dict) -> None:
    """The card of ``models/zoo/networks``: settings, data (SIMULATED) and measured figures.
    No weights: the model is trained on each group's own data at run time."""
    card = ModelCard(
        name="bids_dl-networks",
        version="0.1.0",
        task="networks",
        architecture={
            "name": "SparseAutoencoder",
            "args": DEFAULT_SETTINGS,
            "weights": "none: trained from scratch on the group's own runs at every call "
            "(fit_networks); nothing learned elsewhere is carried over",
        },
        inputs={
            "modality": "bold",
            "representation": "in-mask (T, V) runs in a common template space, cleaned "
            "(trends and confounds regressed, z-scored: clean_run), smoothed at "
            f"{SMOOTHING_FWHM_MM} mm FWHM (smooth_run)",
            "smoothing_fwhm_mm": SMOOTHING_FWHM_MM,
            "min_runs": 2,
        },
        outputs={"channels": ["network_maps", "time_courses"]},
        training={
            "data": "none stored; the benchmark's data are SIMULATED (bold_simulation)",
            "development": "settings chosen on other simulated groups (seed 0 at noise 1.5, "
            f"seeds 10-12 at noise 0.5, 1.5 and 3); scored on seeds {config['seeds']}",
        },
        metrics={
            "headline": _headline(summary, checks["timing"]),
            "simulated": {"config": config, "summary": summary, **checks},
            "machine": "2-core CPU (x86_64), 1 thread",
        },
    )
    BUNDLE.mkdir(parents=True, exist_ok=True)
    write_card(BUNDLE, card)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.5, 1.0, 1.5, 3.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--tuning-seeds", type=int, nargs="+", default=[0, 10])
    parser.add_argument("--subjects", type=int, default=10)
    parser.add_argument("--write-bundle", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    mask_image = datasets.load_mni152_brain_mask(resolution=RESOLUTION_MM)
    mask = np.asarray(mask_image.dataobj) > 0
    affine = mask_image.affine
    tuning = tune_dictlearning(args.tuning_seeds, args.subjects, mask, affine)
    rows = [
        row
        for noise in args.noise
        for seed in args.seeds
        for row in run_group(noise, seed, args.subjects, mask, affine, tuning["alpha"])
    ]
    summary = summarise(rows)
    config = {
        "noise": args.noise,
        "seeds": args.seeds,
        "subjects": args.subjects,
        "networks": len(NETWORK_NODES),
        "grid": f"MNI152 brain mask at {RESOLUTION_MM} mm, {int(mask.sum())} voxels",
        "threads": os.environ.get("OMP_NUM_THREADS", "unset"),
    }
    checks = {
        "dictlearning_tuning": tuning,
        "timing": timing_check(args.seeds[0], args.subjects, mask, affine, tuning["alpha"]),
        "choose_k": choose_k_check(args.seeds[0], args.subjects, mask, affine),
    }
    _write_results(rows, summary, config, checks)
    _print_table(summary)
    for name, check in checks.items():
        print(f"{name}: {json.dumps(check)}")
    if args.write_bundle:
        write_bundle(summary, config, checks)


if __name__ == "__main__":
    main()
