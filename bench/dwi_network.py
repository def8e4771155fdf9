"""What a few-direction DTI network has to beat on the real scans: direct tensor fits on subsets
of a scan's directions against the fit on all of them, and the noise floor.

Per scan (``../shared/data/dwi/philips_dti12``, ``xa30_dir20_b2500_PA`` and dipy's ``small_64D``,
a 10^3-voxel patch shipped in dipy's wheel):

- reference: dipy's ``TensorModel`` WLS fit (``fit_tensor_wls``) on every volume: all b~0
  (b <= 50 s/mm^2) and all directions, b-vectors turned to world axes (``bvecs_to_world``);
- brain: dipy's ``median_otsu`` (defaults: median radius 4, 4 passes) on the mean b~0 volume;
  white matter (WM): reference FA > 0.25 inside the brain (a threshold, not a segmentation);
- inputs: all b~0 volumes plus k directions (k = 6 for every scan, also 12 for small_64D: at
  most a third of the directions, except Philips where 6 of 12 is half of them: a weak test);
  ``random`` subsets are uniform draws (seeded); ``well_spread`` subsets are the ones of lowest
  tensor-design condition number (``design_condition_number``) among all subsets of the scan's
  directions, or among 50 000 random draws when there are more (64 choose k);
- per subset, two methods: ``direct``, the WLS fit on the subset (the baseline a user would
  pick), and ``network``, the DTI bundle's prediction from the same b~0 volumes and directions
  (``tensor_inference.predict_tensor`` on the whole image, brain mask as above); each against
  the reference: FA RMSE and median relative MD error (|MD - MD_ref| / MD_ref, voxels with
  MD_ref > 0) in brain and WM, and the median principal-direction angle (degrees, sign ignored)
  in WM; and the subset's design condition number;
- noise floor: random splits of the directions into two disjoint halves, each fitted with all
  the b~0 volumes and compared with each other by the same measures (the second half in the
  reference's place; brain and WM from the reference);
- time of dipy's full WLS fit of the brain voxels and of one network inference on all the
  scan's directions, in the same run, BLAS/OpenMP pools and torch held to 2 threads
  (threadpoolctl, ``torch.set_num_threads``); the process's peak resident memory.

Writes mean, sd and max over subsets per scan, k, kind and method (JSON and TSV, aggregates
only) and prints the table:

    python bench/dwi_network.py [--bundle dti] [--subsets 20] [--splits 10]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import resource
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from dipy.data import get_fnames
from dipy.io.gradients import read_bvals_bvecs
from dipy.segment.mask import median_otsu
from threadpoolctl import threadpool_limits

from bids_dl.models.bundle import load_bundle
from bids_dl.models.card import load_card, weights_sha256, write_card
from bids_dl.models.diffusion_simulation import fit_tensor_wls, tensor_metrics
from bids_dl.models.gradients import (
    B0_THRESHOLD,
    Gradients,
    bvecs_to_world,
    check_tensor_design,
    design_condition_number,
    read_gradients,
)
from bids_dl.models.registry import find_bundle
from bids_dl.models.tensor_features import tensor_maps
from bids_dl.models.tensor_inference import predict_tensor

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
DEFAULT_OUT = ROOT / "bench" / "results" / "dwi_network"
#: scan name -> path stem under the data folder
SHARED_SCANS = {
    "philips_dti12": "dwi/philips_dti12/philips_dti12",
    "xa30_dir20_b2500": "dwi/xa30_dir20_b2500_PA/xa30_dwi_PA",
}
SUBSET_SIZES = {"philips_dti12": (6,), "xa30_dir20_b2500": (6,), "small_64D": (6, 12)}
WM_FA = 0.25
MAX_CANDIDATES = 50_000
THREADS = 2
SEED = 0
METRICS = ("fa_rmse_brain", "fa_rmse_wm", "md_rel_brain", "md_rel_wm", "angle_wm", "condition")


@dataclass(frozen=True)
class Scan:
    """One scan: its series (X, Y, Z, volumes), brain mask, b-values, world b-vectors."""

    name: str
    series: np.ndarray
    mask: np.ndarray
    bvals: np.ndarray
    bvecs: np.ndarray
    note: str

    @property
    def signal(self) -> np.ndarray:
        """The brain voxels' signal (voxels, volumes)."""
        return self.series[self.mask]

    @property
    def b0(self) -> np.ndarray:
        return np.flatnonzero(self.bvals <= B0_THRESHOLD)

    @property
    def weighted(self) -> np.ndarray:
        return np.flatnonzero(self.bvals > B0_THRESHOLD)


@dataclass(frozen=True)
class Maps:
    """Tensor maps of the brain voxels: FA, MD and the principal eigenvector."""

    fa: np.ndarray
    md: np.ndarray
    v1: np.ndarray


def fit_maps(scan: Scan, volumes: np.ndarray) -> Maps:
    """dipy WLS fit of the scan's brain voxels on the given volumes."""
    evals, evecs = fit_tensor_wls(scan.signal[:, volumes], scan.bvals[volumes], scan.bvecs[volumes])
    metrics = tensor_metrics(evals)
    return Maps(fa=metrics.fa, md=metrics.md, v1=evecs[..., 0])


def network_maps(scan: Scan, volumes: np.ndarray, network: torch.nn.Module) -> Maps:
    """The network's maps of the brain voxels from the given volumes."""
    elements = predict_tensor(
        network, scan.series[..., volumes], scan.bvals[volumes], scan.bvecs[volumes], scan.mask
    )
    metrics, v1 = tensor_maps(elements[scan.mask])
    return Maps(fa=metrics.fa, md=metrics.md, v1=v1)


def compare(test: Maps, ref: Maps, wm: np.ndarray) -> dict[str, float]:
    """FA RMSE, median relative MD error (brain, WM) and median WM angle (degrees) to ``ref``."""
    fa_error = test.fa - ref.fa
    positive = ref.md > 0
    md_rel = np.abs(test.md - ref.md)[positive] / ref.md[positive]
    cosine = np.abs(np.sum(test.v1[wm] * ref.v1[wm], axis=-1))
    return {
        "fa_rmse_brain": float(np.sqrt(np.mean(fa_error**2))),
        "fa_rmse_wm": float(np.sqrt(np.mean(fa_error[wm] ** 2))),
        "md_rel_brain": float(np.median(md_rel)),
        "md_rel_wm": float(np.median(md_rel[wm[positive]])),
        "angle_wm": float(np.median(np.degrees(np.arccos(np.clip(cosine, 0.0, 1.0))))),
    }


def random_subsets(n: int, k: int, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` uniform draws of k of n directions (indices into the weighted volumes)."""
    return [np.sort(rng.choice(n, size=k, replace=False)) for _ in range(count)]


def _candidates(n: int, k: int, rng: np.random.Generator) -> Iterable[tuple[int, ...]]:
    """Every k-subset of n, or MAX_CANDIDATES distinct random ones when there are more."""
    if math.comb(n, k) <= MAX_CANDIDATES:
        return itertools.combinations(range(n), k)
    drawn = {tuple(sorted(rng.choice(n, size=k, replace=False))) for _ in range(MAX_CANDIDATES)}
    return sorted(drawn)


def well_spread_subsets(
    directions: np.ndarray, k: int, count: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """The ``count`` candidate k-subsets of lowest design condition number."""
    scored = [
        (design_condition_number(directions[list(subset)]), subset)
        for subset in _candidates(len(directions), k, rng)
    ]
    scored.sort(key=lambda item: item[0])
    return [np.array(subset) for _, subset in scored[:count]]


def evaluate_subsets(
    scan: Scan, ref: Maps, wm: np.ndarray, subsets: list[np.ndarray], network: torch.nn.Module
) -> dict[str, list[dict[str, float]]]:
    """Direct fit and network on b~0 + each subset of directions against the reference."""
    methods = {
        "direct": lambda volumes: fit_maps(scan, volumes),
        "network": lambda volumes: network_maps(scan, volumes, network),
    }
    records: dict[str, list[dict[str, float]]] = {method: [] for method in methods}
    for subset in subsets:
        directions = scan.weighted[subset]
        volumes = np.concatenate([scan.b0, directions])
        for method, maps in methods.items():
            record = compare(maps(volumes), ref, wm)
            record["condition"] = design_condition_number(scan.bvecs[directions])
            records[method].append(record)
    return records


def noise_floor(
    scan: Scan, wm: np.ndarray, splits: int, rng: np.random.Generator
) -> list[dict[str, float]]:
    """Fits on two disjoint halves of the directions (each with all b~0) against each other."""
    half = len(scan.weighted) // 2
    records = []
    for _ in range(splits):
        order = rng.permutation(scan.weighted)
        first, second = order[:half], order[half : 2 * half]
        maps = [fit_maps(scan, np.concatenate([scan.b0, part])) for part in (first, second)]
        record = compare(maps[0], maps[1], wm)
        record["condition"] = max(design_condition_number(scan.bvecs[p]) for p in (first, second))
        records.append(record)
    return records


def summarise(records: list[dict[str, float]]) -> dict[str, float]:
    """Mean, sd and max of every metric over the records."""
    summary: dict[str, float] = {}
    for metric in METRICS:
        values = np.array([record[metric] for record in records])
        summary[f"{metric}_mean"] = float(np.mean(values))
        summary[f"{metric}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        summary[f"{metric}_max"] = float(np.max(values))
    return summary


def brain_mask(data: np.ndarray, bvals: np.ndarray) -> np.ndarray:
    """median_otsu (dipy defaults) on the mean b~0 volume."""
    mean_b0 = data[..., bvals <= B0_THRESHOLD].mean(axis=-1)
    _, mask = median_otsu(mean_b0)
    return mask.astype(bool)


def make_scan(name: str, image: nib.Nifti1Image, gradients: Gradients, note: str) -> Scan:
    """Check the table, turn b-vectors to world axes and keep the brain voxels."""
    data = np.asarray(image.dataobj, dtype=np.float32)
    check_tensor_design(gradients.bvals, gradients.bvecs, source=name)
    bvecs = bvecs_to_world(gradients.bvecs, image.affine)
    bvecs[gradients.bvals <= B0_THRESHOLD] = 0.0
    mask = brain_mask(data, gradients.bvals)
    return Scan(name, data, mask, gradients.bvals, bvecs, note)


def load_shared(name: str, stem: Path) -> Scan:
    """A scan of ../shared/data/dwi read with the project's gradient reader."""
    image = nib.load(f"{stem}.nii.gz")
    gradients = read_gradients(f"{stem}.bval", f"{stem}.bvec", image.shape[-1])
    note = "weak test: 6 of 12 directions" if name == "philips_dti12" else ""
    return make_scan(name, image, gradients, note)


def load_small_64d() -> Scan | None:
    """dipy's small_64D from the wheel's files (None when they are not installed locally).

    Its .bvec is one row per volume with NaN for the b=0 row, a layout the project's reader
    refuses, so dipy's reader is used and the NaN row set to zero.
    """
    paths = [Path(path) for path in get_fnames(name="small_64D")]
    if not all(path.is_file() for path in paths):
        return None
    image = nib.load(paths[0])
    bvals, bvecs = read_bvals_bvecs(str(paths[1]), str(paths[2]))
    gradients = Gradients(bvals=bvals, bvecs=np.nan_to_num(bvecs), source=paths[2].name)
    return make_scan("small_64D", image, gradients, "10x10x10 patch")


def timed(function: Callable[[], Maps]) -> tuple[Maps, float]:
    """Result and wall time (s) of a call."""
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def scan_rows(
    scan: Scan, subsets: int, splits: int, network: torch.nn.Module
) -> list[dict[str, object]]:
    """Aggregate rows (random, well_spread per k and method; noise floor) of one scan."""
    every_volume = np.arange(len(scan.bvals))
    ref, full_fit_s = timed(lambda: fit_maps(scan, every_volume))
    _, network_s = timed(lambda: network_maps(scan, every_volume, network))
    wm = ref.fa > WM_FA
    rng = np.random.default_rng(SEED)
    common = {
        "scan": scan.name,
        "n_b0": len(scan.b0),
        "n_directions": len(scan.weighted),
        "b_value": round(float(np.median(scan.bvals[scan.weighted]))),
        "brain_voxels": int(scan.mask.sum()),
        "wm_voxels": int(wm.sum()),
        "full_condition": design_condition_number(scan.bvecs[scan.weighted]),
        "full_fit_s": full_fit_s,
        "network_s": network_s,
        "note": scan.note,
    }
    directions = scan.bvecs[scan.weighted]
    kinds = {
        "random": lambda k: random_subsets(len(directions), k, subsets, rng),
        "well_spread": lambda k: well_spread_subsets(directions, k, subsets, rng),
    }
    rows = []
    for k in SUBSET_SIZES[scan.name]:
        for kind, draw in kinds.items():
            by_method = evaluate_subsets(scan, ref, wm, draw(k), network)
            rows += [
                {**common, "k": k, "kind": kind, "method": method, "n": len(records),
                 **summarise(records)}
                for method, records in by_method.items()
            ]  # fmt: skip
    halves = noise_floor(scan, wm, splits, rng)
    k = len(scan.weighted) // 2
    rows.append(
        {**common, "k": k, "kind": "noise_floor", "method": "direct", "n": len(halves),
         **summarise(halves)}
    )  # fmt: skip
    return rows


def load_scans(data: Path) -> list[Scan]:
    """The shared scans and, when dipy ships it, small_64D."""
    scans = [load_shared(name, data / stem) for name, stem in SHARED_SCANS.items()]
    small = load_small_64d()
    if small is None:
        print("small_64D: not in dipy's installed data files; skipped (no download)")
    else:
        scans.append(small)
    return scans


def print_table(rows: list[dict[str, object]]) -> None:
    """One line per scan, k and kind: means (sd) of the metrics."""
    header = (
        f"{'scan':<17}{'k':>3} {'kind':<12}{'method':<8}{'FA RMSE brain':>16}{'FA RMSE WM':>16}"
        f"{'MD rel brain':>15}{'MD rel WM':>15}{'angle WM':>13}{'cond':>13}{'full fit s':>11}"
        f"{'network s':>10}"
    )
    print(header)
    for row in rows:
        cells = "".join(
            f"{row[f'{m}_mean']:>9.3f} ({row[f'{m}_sd']:.3f})" if m.startswith("fa") else
            f"{row[f'{m}_mean']:>8.3f} ({row[f'{m}_sd']:.3f})" if m.startswith("md") else
            f"{row[f'{m}_mean']:>7.1f} ({row[f'{m}_sd']:.1f})"
            for m in METRICS
        )  # fmt: skip
        print(
            f"{row['scan']:<17}{row['k']:>3} {row['kind']:<12}{row['method']:<8}{cells}"
            f"{row['full_fit_s']:>11.2f}{row['network_s']:>10.2f}"
        )


def write_results(rows: list[dict[str, object]], out: Path, settings: dict[str, object]) -> None:
    """dwi_network.json (settings and rows) and dwi_network.tsv in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "dwi_network.json").write_text(
        json.dumps({"settings": settings, "rows": rows}, indent=1) + "\n", encoding="utf-8"
    )
    columns = list(rows[0])
    lines = ["\t".join(columns)]
    lines += ["\t".join(_cell(row[column]) for column in columns) for row in rows]
    (out / "dwi_network.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def card_metrics(rows: list[dict[str, object]], settings: dict[str, object]) -> dict:
    """The card's ``real`` entry: per scan, k and kind, the means of both methods and the
    floor, and a one-line headline of the 6-direction FA RMSE ratios."""
    real: dict = {"data": "REAL scans: ../shared/data/dwi (Philips 12 directions b=1000, "
                  "Siemens XA30 20 directions b=2500) and dipy's small_64D (64 directions "
                  "b~1000, a 10^3 patch); reference: WLS fit on all directions",
                  "settings": settings, "rows": {}}  # fmt: skip
    ratios = []
    for row in rows:
        key = f"{row['scan']} k={row['k']} {row['kind']} {row['method']}"
        real["rows"][key] = {m: round(float(row[f"{m}_mean"]), 4) for m in METRICS}
    for row in rows:
        if row["method"] == "network" and row["k"] == 6:
            direct = real["rows"][f"{row['scan']} k=6 {row['kind']} direct"]
            ratio = direct["fa_rmse_brain"] / float(row["fa_rmse_brain_mean"])
            ratios.append(f"{row['scan']} {row['kind']} {ratio:.2f}x")
    real["headline"] = "REAL, 6 directions: direct-fit FA RMSE / network FA RMSE: " + ", ".join(
        ratios
    )
    return real


def update_card(bundle: Path, rows: list[dict[str, object]], settings: dict[str, object]) -> None:
    """Write the real-data figures into the bundle's card (``metrics.real``)."""
    card = load_card(bundle)
    card.metrics["real"] = card_metrics(rows, settings)
    card.metrics["headline"] = card.metrics["real"]["headline"]
    write_card(bundle, card)


def _cell(value: object) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="dti", help="DTI bundle: shipped name or folder")
    parser.add_argument("--subsets", type=int, default=20, help="subsets per kind and k")
    parser.add_argument("--splits", type=int, default=10, help="half/half noise-floor splits")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="../shared/data")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--update-card", action="store_true", help="write the figures into the card"
    )
    args = parser.parse_args(argv)
    if not (args.data / "dwi").is_dir():
        sys.exit(f"dwi_network: {args.data / 'dwi'} is absent; this benchmark needs the real scans")
    start = time.perf_counter()
    torch.set_num_threads(THREADS)
    card, network = load_bundle(find_bundle(args.bundle))
    with threadpool_limits(limits=THREADS):
        scans = load_scans(args.data)
        rows = [
            row for scan in scans for row in scan_rows(scan, args.subsets, args.splits, network)
        ]
    settings = {
        "subsets": args.subsets,
        "splits": args.splits,
        "seed": SEED,
        "wm_fa": WM_FA,
        "b0_threshold": B0_THRESHOLD,
        "max_candidates": MAX_CANDIDATES,
        "threads": THREADS,
        "bundle": f"{card.name} {card.version}",
        "bundle_sha256": weights_sha256(find_bundle(args.bundle)),
        "peak_memory_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "run_s": round(time.perf_counter() - start, 1),
    }
    write_results(rows, args.out, settings)
    if args.update_card:
        update_card(find_bundle(args.bundle), rows, settings)
    print_table(rows)
    print(f"run time {settings['run_s']} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
