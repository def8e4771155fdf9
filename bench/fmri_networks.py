"""Functional networks on SIMULATED groups: the `networks` model against nilearn's CanICA and
DictLearning, same cleaned data, same run, same K (the true one).

Each group: ``--subjects`` runs from ``bids_dl.models.bold_simulation`` on the 4 mm MNI152 brain
mask at each ``--noise`` level (1.5 is the realistic default) and seed, cleaned alike (cubic
trends, the six motion parameters and their derivatives regressed out, z-scored). The model
gets the runs smoothed at 6 mm (``smooth_run``, CanICA's default FWHM); CanICA and DictLearning
get the cleaned images and apply their own default smoothing (6 and 4 mm). Score: mean
Hungarian-matched absolute spatial correlation with the template maps, a percentile bootstrap
interval over (seed, network) pairs; wall time and peak resident-memory growth of each call.
``--write-bundle`` writes the card of ``models/zoo/networks`` with these figures.

    python bench/fmri_networks.py [--noise 0.5 1 1.5 3] [--seeds 1 2 3] [--write-bundle]
"""

from __future__ import annotations

import argparse
import json
import os
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

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "fmri_networks"
BUNDLE = ROOT / "models" / "zoo" / "networks"
#: template grid of the evaluation (mm)
RESOLUTION_MM = 4
#: smoothing given to the model's input: CanICA's default
SMOOTHING_FWHM_MM = 6.0
#: the realistic noise level (BoldSimulation's default)
REALISTIC = BoldSimulation().noise
BOOTSTRAP_SAMPLES = 2000
#: how often the memory sampler reads VmRSS (s)
MEMORY_POLL_SECONDS = 0.01
METHODS = ("networks", "canica", "dictlearning")


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


def _nilearn(estimator, runs, mask, affine, n_networks, seed) -> np.ndarray:
    mask_image = nib.Nifti1Image(mask.astype(np.uint8), affine)
    model = estimator(n_components=n_networks, mask=mask_image, random_state=seed, n_jobs=1)
    model.fit(_to_images(runs, mask, affine))
    return model.components_


def run_group(noise: float, seed: int, n_subjects: int, mask, affine) -> list[dict]:
    """One simulated group, the three methods on it; a row per method."""
    group = simulate_group(n_subjects, BoldSimulation(noise=noise), mask, affine, seed)
    runs = [
        clean_run(run, np.hstack([motion, np.gradient(motion, axis=0)]))
        for run, motion in zip(group.runs, group.motion, strict=True)
    ]
    k = len(group.group_maps)
    calls = {
        "networks": lambda: _deep(runs, mask, affine, k, seed),
        "canica": lambda: _nilearn(CanICA, runs, mask, affine, k, seed),
        "dictlearning": lambda: _nilearn(DictLearning, runs, mask, affine, k, seed),
    }
    rows = []
    for method in METHODS:
        maps, seconds, memory = measured(calls[method])
        matched = match_maps(np.asarray(maps), group.group_maps)
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
        print(f"noise {noise} seed {seed} {method}: {matched.mean():.3f}, {seconds:.1f} s")
    return rows


def _bootstrap(values: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean."""
    draws = rng.choice(values, size=(BOOTSTRAP_SAMPLES, len(values)), replace=True).mean(axis=1)
    return float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))


def summarise(rows: list[dict]) -> list[dict]:
    """Per method and noise: mean matched correlation with its interval, time, memory."""
    rng = np.random.default_rng(0)
    summary = []
    for noise in sorted({row["noise"] for row in rows}):
        for method in METHODS:
            chosen = [r for r in rows if r["method"] == method and r["noise"] == noise]
            values = np.concatenate([r["matched"] for r in chosen])
            low, high = _bootstrap(values, rng)
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


def _write_results(rows: list[dict], summary: list[dict], config: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"config": config, "summary": summary, "rows": rows}
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


def _headline(summary: list[dict]) -> str:
    realistic = {s["method"]: s for s in summary if s["noise"] == REALISTIC}
    parts = [
        f"{m} {realistic[m]['mean']:.3f} [{realistic[m]['low']:.3f}-{realistic[m]['high']:.3f}] "
        f"in {realistic[m]['seconds_median']:.1f} s"
        for m in METHODS
    ]
    return (
        "SIMULATED resting-state groups (4 mm MNI, 8 networks, realistic noise 1.5), mean "
        "Hungarian-matched spatial correlation with the true maps: " + "; ".join(parts)
    )


def write_bundle(summary: list[dict], config: dict) -> None:
    """The card of ``models/zoo/networks``: settings, data (SIMULATED) and measured figures.
    No weights: the model is trained on each group's own data at run time."""
    card = ModelCard(
        name="bids_dl-networks",
        version="0.1.0",
        task="fmri_networks",
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
            "min_runs": 2,
        },
        outputs={"channels": ["network_maps", "time_courses"]},
        training={
            "data": "none stored; the benchmark's data are SIMULATED (bold_simulation)",
            "development": "settings chosen on simulated seed 0 at noise 1.5, scored on seeds "
            f"{config['seeds']}",
        },
        metrics={
            "headline": _headline(summary),
            "simulated": {"config": config, "summary": summary},
            "machine": "2-core CPU (x86_64), 1 thread",
        },
    )
    BUNDLE.mkdir(parents=True, exist_ok=True)
    write_card(BUNDLE, card)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.5, 1.0, 1.5, 3.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--subjects", type=int, default=10)
    parser.add_argument("--write-bundle", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    mask_image = datasets.load_mni152_brain_mask(resolution=RESOLUTION_MM)
    mask = np.asarray(mask_image.dataobj) > 0
    rows = [
        row
        for noise in args.noise
        for seed in args.seeds
        for row in run_group(noise, seed, args.subjects, mask, mask_image.affine)
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
    _write_results(rows, summary, config)
    _print_table(summary)
    if args.write_bundle:
        write_bundle(summary, config)


if __name__ == "__main__":
    main()
