"""What the ASL enhancement network has to beat: leave-repetitions-out on the real scans, and
the simulated held-out test.

Real scans (``../shared/data/asl``), each pair's ``dm = (control - label) / M0``:

- ``xa30_pcasl``: volume 0 the M0, then 3 label/control pairs (label first). Rows: each pair
  alone as input, the mean of the other two as reference (3 rows); the first two pairs as
  input, the third as reference (1 row);
- ``niivue_mpld``: volume 0 the M0, then 6 delays x label/control x 2 repeats (label first;
  the delays are undocumented). Rows: per delay, one repeat's pair as input, the other
  repeat's as reference, both ways (12 rows); every delay is enhanced on its own.

Brain: dipy's ``median_otsu`` on the M0 (median radius 2, one pass). Grey-matter proxy (GM):
the 30 % of brain voxels with the highest all-pair mean dm of that delay after in-plane Gaussian
smoothing (sigma 1.5 voxels); a row's normaliser is its reference's mean over them. Scores over
the brain: RMSE in % of that normaliser, raw and noise-corrected: the reference's own noise
variance is subtracted from the MSE (a reference of n >= 2 pairs: the per-voxel variance of its
pairs over n; of one pair: the variance pooled over every pair of that delay in the scan, i.e.
half the mean squared difference of the two repeats for MPLD), so the corrected figure
estimates the error against the clean signal. Its standard error takes slices as independent
blocks (95 % intervals in brackets; the corrected MSE can fall below zero, shown as 'floor',
when the error is within the uncertainty of the reference's noise estimate). Methods are also
compared pairwise: a method's corrected MSE minus the network's on the same rows, where the
reference's noise cancels, with its standard error (slices as blocks; for several rows, the
mean of the rows' SEs, as the rows share pairs). SSIM (Gaussian window 1.5 voxels in-plane,
inside the brain) against the noisy reference.

Methods, on the same input in the same run: ``raw`` (the input pairs' mean dm); ``gaussian``
(in-plane Gaussian smoothing inside the mask, sigma and a through-slice sigma tuned);
``nlmeans`` (dipy's classic non-local means, Gaussian noise, patch radius 1, run on dm plus
10 noise sds; sigma = h times the noise sd estimated from the input; h and the block radius
tuned); ``network`` (the bundle, through
``asl_enhancement.enhance_difference``). Baselines are tuned twice, never on the scan they are
reported on: on the other real scan (its rows' mean noise-corrected MSE), and on simulated
validation cases (label maps 17-18). Simulated test: label maps 19-20, the first k = 1 and 2
pairs, scored against the noise-free dm (exact, nothing to correct), GM = cortex fraction > 0.5;
baselines tuned on the simulated validation cases.

Timings: the median wall time of each method's call, 2 threads; the network's peak memory in a
fresh process running one XA30 inference (``peak_memory.py``'s VmHWM).

    python bench/asl_enhance.py [--bundle asl] [--update-card]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from dipy.denoise.nlmeans import nlmeans
from dipy.segment.mask import median_otsu
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peak_memory import run_measured  # noqa: E402

from bids_dl.models.asl_enhancement import (  # noqa: E402
    enhance_difference,
    noise_level,
    normalised_differences,
)
from bids_dl.models.asl_phantom import AslCase, AslSimulation, simulate_from_fractions  # noqa: E402
from bids_dl.models.asl_training import load_fractions  # noqa: E402
from bids_dl.models.bundle import load_bundle  # noqa: E402
from bids_dl.models.card import load_card, weights_sha256, write_card  # noqa: E402
from bids_dl.models.metrics import masked_smooth, ssim  # noqa: E402
from bids_dl.models.registry import find_bundle  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
DEFAULT_OUT = ROOT / "bench" / "results" / "asl_enhance"
THREADS = 2
SEED = 0
GM_SHARE = 0.3
GM_SMOOTHING = 1.5
SSIM_SIGMA = 1.5
#: tuning grids: Gaussian (in-plane sigma, through-slice sigma) in voxels; NLM's h
GAUSSIAN_GRID = [
    (s, z)
    for s in (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.5, 8.0, 12.0, 16.0, 24.0)
    for z in (0.0, 0.5, 1.0, 2.0, 3.0, 5.0)
]
NLM_GRID = [(h, b) for h in (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0) for b in (2, 3)]
#: NLM runs on dm plus this many noise sds (its weights assume a positive image)
NLM_OFFSET = 10.0
VALIDATION_SUBJECTS = ("17", "18")
TEST_SUBJECTS = ("19", "20")


@dataclass(frozen=True)
class Group:
    """The pairs of one delay of a real scan: series (X, Y, Z, N), their (label, control)
    volume indices, the M0 and the brain mask."""

    scan: str
    delay: str
    series: np.ndarray
    pairs: list[tuple[int, int]]
    m0: np.ndarray
    mask: np.ndarray

    def dm(self, chosen: list[int]) -> np.ndarray:
        """dm of each chosen pair (X, Y, Z, len(chosen))."""
        return normalised_differences(
            self.series, [self.pairs[i] for i in chosen], self.m0, self.mask
        )


@dataclass(frozen=True)
class Row:
    """An input (pair indices of the group) and its reference (pair indices)."""

    group: Group
    inputs: list[int]
    reference: list[int]
    kind: str


def brain_mask(m0: np.ndarray) -> np.ndarray:
    _, mask = median_otsu(m0, median_radius=2, numpass=1)
    return mask.astype(bool)


def load_groups(data: Path) -> list[Group]:
    """XA30 (one delay, 3 pairs) and MPLD (6 delays, 2 repeats each)."""
    groups = []
    xa30 = np.asarray(nib.load(data / "asl/xa30_pcasl/xa30_asl.nii.gz").dataobj, np.float32)
    m0 = xa30[..., 0]
    pairs = [(1 + 2 * i, 2 + 2 * i) for i in range(3)]
    groups.append(Group("xa30_pcasl", "1.8", xa30, pairs, m0, brain_mask(m0)))
    mpld = np.asarray(nib.load(data / "asl/niivue_mpld/niivue_mpld_asl.nii.gz").dataobj, np.float32)
    m0 = mpld[..., 0]
    mask = brain_mask(m0)
    for delay in range(6):
        pairs = [(1 + 12 * r + 2 * delay, 2 + 12 * r + 2 * delay) for r in range(2)]
        groups.append(Group("niivue_mpld", f"d{delay + 1}", mpld, pairs, m0, mask))
    return groups


def real_rows(groups: list[Group]) -> list[Row]:
    rows = []
    for group in groups:
        if group.scan == "xa30_pcasl":
            rows += [
                Row(group, [i], [j for j in range(3) if j != i], "1 pair vs 2") for i in range(3)
            ]
            rows.append(Row(group, [0, 1], [2], "2 pairs vs 1"))
        else:
            rows += [Row(group, [r], [1 - r], "1 pair vs 1") for r in range(2)]
    return rows


def gm_proxy(group: Group) -> np.ndarray:
    mean = group.dm(list(range(len(group.pairs)))).mean(-1)
    smooth = masked_smooth(mean, group.mask, (GM_SMOOTHING, GM_SMOOTHING, 0))
    return group.mask & (smooth >= np.quantile(smooth[group.mask], 1 - GM_SHARE))


def reference_noise_variance(row: Row) -> np.ndarray:
    """Per-voxel estimate (X, Y, Z) of the noise variance of the reference's mean dm."""
    if len(row.reference) >= 2:
        return row.group.dm(row.reference).var(-1, ddof=1) / len(row.reference)
    return row.group.dm(list(range(len(row.group.pairs)))).var(-1, ddof=1)


def gaussian(dm: np.ndarray, mask: np.ndarray, parameter: tuple[float, float]) -> np.ndarray:
    """Normalised Gaussian smoothing inside the mask (in-plane sigma, through-slice sigma)."""
    return masked_smooth(dm, mask, (parameter[0], parameter[0], parameter[1]))


def non_local_means(dm: np.ndarray, mask: np.ndarray, parameter: tuple[float, int]) -> np.ndarray:
    """dipy's classic NLM (Gaussian noise, patch radius 1, block radius ``parameter[1]``) with
    sigma = ``parameter[0]`` times the noise sd estimated from the input, run on dm plus
    ``NLM_OFFSET`` noise sds (then removed): dipy's blockwise method, and the classic one
    without the offset, barely denoise a signal that sits around zero."""
    noise = max(noise_level(dm, mask), 1e-12)
    offset = NLM_OFFSET * noise
    denoised = nlmeans(
        np.where(mask, dm + offset, 0.0).astype(np.float64), parameter[0] * noise, mask=mask,
        patch_radius=1, block_radius=int(parameter[1]), rician=False, num_threads=THREADS,
        method="classic",
    )  # fmt: skip
    return np.where(mask, denoised - offset, 0.0)


def score(
    output: np.ndarray, reference: np.ndarray, mask: np.ndarray, scale: float, noise
) -> dict[str, float]:
    """Raw and noise-corrected squared error (in % of ``scale``, squared; ``noise``: the
    reference's noise variance, per voxel or one value), the standard error of the corrected
    one with slices as independent blocks, and SSIM."""
    squared = (output - reference) ** 2
    corrected = squared - noise
    slices = [z for z in range(mask.shape[2]) if mask[..., z].any()]
    unit = 1e4 / scale**2
    per_slice = unit * np.array([corrected[..., z][mask[..., z]].mean() for z in slices])
    mean, se = block_mean_se(per_slice, mask)
    return {
        "mse_raw": unit * float(squared[mask].mean()),
        "mse_corrected": mean,
        "mse_corrected_se": se,
        "ssim": ssim(output, reference, mask, (SSIM_SIGMA, SSIM_SIGMA, 0)),
        "per_slice": per_slice.tolist(),
    }


def block_mean_se(per_slice: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """The voxel-weighted mean of per-slice means and its standard error, slices taken as
    independent blocks."""
    counts = np.array([mask[..., z].sum() for z in range(mask.shape[2]) if mask[..., z].any()])
    weights = counts / counts.sum()
    mean = float(weights @ per_slice)
    factor = len(weights) / max(len(weights) - 1, 1)
    return mean, float(np.sqrt(factor * np.sum(weights**2 * (per_slice - mean) ** 2)))


def real_methods(
    network: torch.nn.Module, tuned: dict[str, dict]
) -> dict[str, Callable[[Row], np.ndarray]]:
    """Each method's output for a row (baselines with parameters tuned on the other scan and
    on the simulated validation cases)."""

    def raw(row: Row) -> np.ndarray:
        return row.group.dm(row.inputs).mean(-1)

    def network_output(row: Row) -> np.ndarray:
        chosen = [row.group.pairs[i] for i in row.inputs]
        volumes = [v for pair in chosen for v in pair]
        series = row.group.series[..., volumes]
        context = ["label", "control"] * len(chosen)
        dm, _ = enhance_difference(
            network, series, context, row.group.m0, row.group.mask, pairs=len(chosen)
        )
        return dm

    methods: dict[str, Callable[[Row], np.ndarray]] = {"raw": raw}
    for source in ("other_scan", "simulated"):
        for name, function in (("gaussian", gaussian), ("nlmeans", non_local_means)):
            methods[f"{name} ({source})"] = _tuned(function, raw, name, source, tuned)
    methods["network"] = network_output
    return methods


def _tuned(function, raw, name: str, source: str, tuned: dict[str, dict]):
    def run(row: Row) -> np.ndarray:
        key = row.group.scan if source == "other_scan" else "simulated"
        return function(raw(row), row.group.mask, tuned[key][name])

    return run


def evaluate_rows(rows: list[Row], methods: dict[str, Callable]) -> list[dict]:
    """Per row and method: scores, the row's settings and the call's time."""
    records = []
    for row in rows:
        reference = row.group.dm(row.reference).mean(-1)
        scale = float(reference[gm_proxy(row.group)].mean())
        noise = reference_noise_variance(row)
        noise_mean = float(noise[row.group.mask].mean())
        for method, function in methods.items():
            start = time.perf_counter()
            output = function(row)
            seconds = time.perf_counter() - start
            records.append({
                "scan": row.group.scan, "delay": row.group.delay, "kind": row.kind,
                "inputs": "+".join(str(i + 1) for i in row.inputs),
                "reference": "+".join(str(i + 1) for i in row.reference), "method": method,
                "gm_reference": scale, "reference_noise_var": noise_mean, "seconds": seconds,
                **score(output, reference, row.group.mask, scale, noise),
            })  # fmt: skip
        _paired_with_network(records[-len(methods) :], row.group.mask)
    return records


def _paired_with_network(records: list[dict], mask: np.ndarray) -> None:
    """Each method's corrected MSE minus the network's on the same row, with its standard
    error (slices as blocks): the reference's noise cancels in the difference."""
    network = np.array(next(r for r in records if r["method"] == "network")["per_slice"])
    for record in records:
        difference = np.array(record["per_slice"]) - network
        record["mse_minus_network"], record["mse_minus_network_se"] = block_mean_se(
            difference, mask
        )


def tune_on_rows(rows: list[Row]) -> dict[str, object]:
    """Baseline parameters minimising the rows' mean noise-corrected MSE."""
    raws = [(row.group.dm(row.inputs).mean(-1), row) for row in rows]
    references = []
    for _, row in raws:
        reference = row.group.dm(row.reference).mean(-1)
        references.append(
            (reference, float(reference[gm_proxy(row.group)].mean()), reference_noise_variance(row))
        )

    def loss(function, parameter) -> float:
        errors = [
            score(function(dm, row.group.mask, parameter), ref, row.group.mask, s, n)
            for (dm, row), (ref, s, n) in zip(raws, references, strict=True)
        ]
        return float(np.mean([error["mse_corrected"] for error in errors]))

    return {
        "gaussian": min(GAUSSIAN_GRID, key=lambda p: loss(gaussian, p)),
        "nlmeans": min(NLM_GRID, key=lambda h: loss(non_local_means, h)),
    }


def simulated_cases(subjects: tuple[str, ...], count: int, key: int, data: Path) -> list:
    """(case, k, input dm) of ``count`` simulated cases of ``subjects``, k = 1 and 2."""
    rng = np.random.default_rng([SEED, key])
    maps = [load_fractions(data / "synthseg_label_maps", s) for s in subjects]
    settings = AslSimulation(pairs=4)
    cases = []
    for index in range(count):
        fractions, affine = maps[index % len(maps)]
        case = simulate_from_fractions(fractions.astype(np.float32), affine, rng, settings)
        for k in (1, 2):
            pairs = [(2 * i, 2 * i + 1) for i in range(k)]
            cases.append(
                (case, k, normalised_differences(case.series, pairs, case.m0, case.mask).mean(-1))
            )
    return cases


def _simulated_score(output: np.ndarray, case: AslCase) -> dict[str, float]:
    grey = case.tissues[0] > 0.5
    scale = float(case.clean_dm[grey].mean())
    result = score(output, case.clean_dm, case.mask, scale, 0.0)
    return {"mse": result["mse_raw"], "ssim": result["ssim"]}


def tune_on_simulated(cases: list) -> dict[str, object]:
    def loss(function, parameter) -> float:
        return float(np.mean([
            _simulated_score(function(dm, case.mask, parameter), case)["mse"]
            for case, _, dm in cases
        ]))  # fmt: skip

    return {
        "gaussian": min(GAUSSIAN_GRID, key=lambda p: loss(gaussian, p)),
        "nlmeans": min(NLM_GRID, key=lambda h: loss(non_local_means, h)),
    }


def evaluate_simulated(cases: list, network: torch.nn.Module, tuned: dict) -> list[dict]:
    records = []
    for index, (case, k, dm) in enumerate(cases):
        outputs = {
            "raw": lambda dm=dm: dm,
            "gaussian (simulated)": lambda dm=dm, c=case: gaussian(
                dm, c.mask, tuned["gaussian"]),
            "nlmeans (simulated)": lambda dm=dm, c=case: non_local_means(
                dm, c.mask, tuned["nlmeans"]),
            "network": lambda c=case, k=k: enhance_difference(
                network, c.series, c.context, c.m0, c.mask, pairs=k
            )[0],
        }  # fmt: skip
        for method, function in outputs.items():
            records.append({
                "case": index // 2, "k": k, "snr": round(case.snr, 3),
                "labeling": case.scheme.labeling_type, "method": method,
                **_simulated_score(function(), case),
            })  # fmt: skip
    return records


def summarise_real(records: list[dict]) -> list[dict]:
    """Per scan, kind and method (and per delay of a multi-delay scan, kind 'KIND @DELAY'):
    sqrt of the mean MSEs (raw, corrected), mean SSIM, median seconds."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    delays = {r["scan"]: set() for r in records}
    for r in records:
        delays[r["scan"]].add(r["delay"])
    for r in records:
        groups.setdefault((r["scan"], r["kind"], r["method"]), []).append(r)
        if len(delays[r["scan"]]) > 1:
            groups.setdefault((r["scan"], f"{r['kind']} @{r['delay']}", r["method"]), []).append(r)
    summary = []
    for (scan, kind, method), chosen in sorted(groups.items(), key=lambda item: _order(item[0])):
        corrected = float(np.mean([r["mse_corrected"] for r in chosen]))
        # rows share pairs: their errors are not independent, so the mean SE (no 1/sqrt(n))
        se = float(np.mean([r["mse_corrected_se"] for r in chosen]))
        summary.append({
            "scan": scan, "kind": kind, "method": method, "rows": len(chosen),
            "rmse_raw_pct": float(np.sqrt(np.mean([r["mse_raw"] for r in chosen]))),
            "mse_corrected": corrected, "mse_corrected_se": se,
            "rmse_corrected_pct": float(np.sqrt(max(corrected, 0.0))),
            "rmse_corrected_low_pct": float(np.sqrt(max(corrected - 1.96 * se, 0.0))),
            "rmse_corrected_high_pct": float(np.sqrt(max(corrected + 1.96 * se, 0.0))),
            "mse_minus_network": float(np.mean([r["mse_minus_network"] for r in chosen])),
            "mse_minus_network_se": float(np.mean([r["mse_minus_network_se"] for r in chosen])),
            "ssim": float(np.mean([r["ssim"] for r in chosen])),
            "seconds_median": float(np.median([r["seconds"] for r in chosen])),
        })  # fmt: skip
    return summary


def summarise_simulated(records: list[dict]) -> list[dict]:
    summary = []
    for k in (1, 2):
        for method in dict.fromkeys(r["method"] for r in records):
            chosen = [r for r in records if r["k"] == k and r["method"] == method]
            summary.append({
                "scan": "simulated_test", "kind": f"k={k} vs noise-free", "method": method,
                "rows": len(chosen),
                "rmse_pct": float(np.sqrt(np.mean([r["mse"] for r in chosen]))),
                "ssim": float(np.mean([r["ssim"] for r in chosen])),
            })  # fmt: skip
    return summary


def _order(key: tuple[str, str, str]) -> tuple:
    methods = ["raw", "gaussian (other_scan)", "gaussian (simulated)", "nlmeans (other_scan)",
               "nlmeans (simulated)", "network"]  # fmt: skip
    return key[0], key[1], methods.index(key[2]) if key[2] in methods else 99


def peak_memory(bundle: Path, data: Path) -> tuple[float, float]:
    """Seconds and peak GB of a fresh process loading the bundle and enhancing XA30's first
    pair."""
    code = (
        "import nibabel as nib, numpy as np, torch, sys\n"
        "sys.path.insert(0, 'bench')\n"
        "from asl_enhance import brain_mask\n"
        "from bids_dl.models.bundle import load_bundle\n"
        "from bids_dl.models.asl_enhancement import enhance_difference\n"
        f"torch.set_num_threads({THREADS})\n"
        f"d = np.asarray(nib.load('{data}/asl/xa30_pcasl/xa30_asl.nii.gz').dataobj, np.float32)\n"
        f"_, network = load_bundle('{bundle}')\n"
        "enhance_difference(network, d[..., 1:], ['label', 'control'] * 3, d[..., 0],"
        " brain_mask(d[..., 0]), pairs=1)\n"
    )
    return run_measured([sys.executable, "-c", code], cwd=ROOT)


def _ratio(base: float, value: float) -> str:
    """base / value as 'N.NNx', or 'floor' when value is at the noise floor (corrected MSE
    not above zero: the reference's noise estimate is as large as the error)."""
    return f"{base / value:>6.2f}x" if value > 0 else f"{'floor':>7}"


def print_table(real: list[dict], simulated: list[dict]) -> None:
    print(f"{'scan':<13}{'input vs ref':<19}{'method':<23}{'RMSE raw %':>11}"
          f"{'corrected % [95%]':>21}{'ratio':>7}{'MSE - network (SE)':>20}{'SSIM':>7}"
          f"{'s':>7}")  # fmt: skip
    for row in real:
        base = next(
            r
            for r in real
            if (r["scan"], r["kind"], r["method"]) == (row["scan"], row["kind"], "raw")
        )
        ratio = _ratio(base["rmse_corrected_pct"], row["rmse_corrected_pct"])
        interval = f"[{row['rmse_corrected_low_pct']:.0f}-{row['rmse_corrected_high_pct']:.0f}]"
        print(f"{row['scan']:<13}{row['kind']:<19}{row['method']:<23}{row['rmse_raw_pct']:>11.1f}"
              f"{row['rmse_corrected_pct']:>10.1f} {interval:<10}{ratio}"
              f"{row['mse_minus_network']:>12.0f} ({row['mse_minus_network_se']:>4.0f})"
              f"{row['ssim']:>7.3f}{row['seconds_median']:>7.2f}")  # fmt: skip
    for row in simulated:
        base = next(r for r in simulated if r["kind"] == row["kind"] and r["method"] == "raw")
        print(f"{'simulated':<13}{row['kind'][:18]:<19}{row['method']:<23}{'':>11}"
              f"{row['rmse_pct']:>10.1f} {'':<10}{_ratio(base['rmse_pct'], row['rmse_pct'])}"
              f"{'':>20}{row['ssim']:>7.3f}")  # fmt: skip


def write_results(out: Path, payload: dict) -> None:
    """asl_enhance.json (settings, summaries, headline), asl_enhance.tsv (every real row and
    method) and asl_enhance_simulated.tsv (every simulated test case and method)."""
    out.mkdir(parents=True, exist_ok=True)
    summary = {k: v for k, v in payload.items() if not k.endswith("_records")}
    (out / "asl_enhance.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    for name, rows in (("asl_enhance.tsv", payload["real_records"]),
                       ("asl_enhance_simulated.tsv", payload["simulated_records"])):  # fmt: skip
        columns = [c for c in rows[0] if not isinstance(rows[0][c], list)]
        lines = ["\t".join(columns)]
        lines += ["\t".join(_cell(row[c]) for c in columns) for row in rows]
        (out / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _cell(value: object) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def headline(real: list[dict], simulated: list[dict]) -> str:
    """One line: per real scan (one input pair), the noise-corrected RMSE of the raw pair, the
    network (95 % interval) and the best tuned baseline; the simulated test's k = 1 figures."""
    parts = []
    for scan, kind in (("xa30_pcasl", "1 pair vs 2"), ("niivue_mpld", "1 pair vs 1")):
        rows = {r["method"]: r for r in real if (r["scan"], r["kind"]) == (scan, kind)}
        if not rows:
            continue
        value = {m: r["rmse_corrected_pct"] for m, r in rows.items()}
        best = min((m for m in value if m not in ("raw", "network")), key=value.get)
        network = rows["network"]
        parts.append(
            f"{scan} raw {value['raw']:.0f}%, network {value['network']:.0f}% "
            f"[{network['rmse_corrected_low_pct']:.0f}-{network['rmse_corrected_high_pct']:.0f}]"
            f" ({_ratio(value['raw'], value['network']).strip()}), best tuned baseline "
            f"{best} {value[best]:.0f}% (its MSE minus the network's, paired: "
            f"{rows[best]['mse_minus_network']:+.0f} +- {rows[best]['mse_minus_network_se']:.0f}"
            " %^2)"
        )
    sim = {r["method"]: r["rmse_pct"] for r in simulated if r["kind"].startswith("k=1")}
    text = "REAL, one pair in, noise-corrected brain RMSE in % of GM perfusion: "
    text += "; ".join(parts)
    if sim:
        ratio = sim["raw"] / sim["network"]
        baseline = min(v for m, v in sim.items() if m not in ("raw", "network"))
        text += (
            f". SIMULATED test (maps 19-20), k=1: raw {sim['raw']:.0f}%, network "
            f"{sim['network']:.0f}% ({ratio:.2f}x), best tuned baseline {baseline:.0f}%"
        )
    return text


def _rounded(row: dict) -> dict[str, float]:
    return {k: round(v, 4) for k, v in row.items() if isinstance(v, float)}


def update_card(bundle: Path, payload: dict) -> None:
    card = load_card(bundle)
    card.metrics["real"] = {
        "data": "REAL scans: ../shared/data/asl xa30_pcasl (Siemens XA30 2D PCASL, 3 pairs) and "
        "niivue_mpld (6 delays x 2 repeats); leave-repetitions-out, reference = the other "
        "repetitions, noise-corrected",
        "settings": payload["settings"],
        "rows": {
            f"{r['scan']} {r['kind']} {r['method']}": _rounded(r)
            for r in payload["real"]
            if "@" not in r["kind"]
        },
        "per_delay": "bench/results/asl_enhance/asl_enhance.json",
    }
    card.metrics["simulated_test"] = {
        "data": "SIMULATED: asl_phantom cases of label maps 19-20 (held out), against the "
        "noise-free dm",
        "rows": {f"{r['kind']} {r['method']}": _rounded(r) for r in payload["simulated"]},
    }
    card.metrics["headline"] = payload["headline"]
    write_card(bundle, card)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="asl", help="ASL bundle: shipped name or folder")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="../shared/data")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--validation-cases", type=int, default=6)
    parser.add_argument("--test-cases", type=int, default=10)
    parser.add_argument(
        "--update-card", action="store_true", help="write the figures into the card"
    )
    args = parser.parse_args(argv)
    if not (args.data / "asl").is_dir():
        sys.exit(f"asl_enhance: {args.data / 'asl'} is absent; this benchmark needs the real scans")
    start = time.perf_counter()
    torch.set_num_threads(THREADS)
    folder = find_bundle(args.bundle)
    card, network = load_bundle(folder)
    with threadpool_limits(limits=THREADS):
        groups = load_groups(args.data)
        rows = real_rows(groups)
        validation = simulated_cases(VALIDATION_SUBJECTS, args.validation_cases, 17, args.data)
        tuned = {"simulated": tune_on_simulated(validation)}
        for scan in ("xa30_pcasl", "niivue_mpld"):
            tuned[scan] = tune_on_rows([r for r in rows if r.group.scan != scan])
        real_records = evaluate_rows(rows, real_methods(network, tuned))
        test = simulated_cases(TEST_SUBJECTS, args.test_cases, 19, args.data)
        simulated_records = evaluate_simulated(test, network, tuned["simulated"])
    seconds, peak = peak_memory(folder, args.data)
    settings = {
        "seed": SEED, "threads": THREADS, "gm_share": GM_SHARE, "gm_smoothing_vox": GM_SMOOTHING,
        "tuned": {k: {m: list(p) if isinstance(p, tuple) else p for m, p in v.items()}
                  for k, v in tuned.items()},
        "tuned_note": "xa30_pcasl's baselines tuned on niivue_mpld and vice versa; "
        "'simulated': on simulated validation cases (label maps 17-18)",
        "bundle": f"{card.name} {card.version}", "bundle_sha256": weights_sha256(folder),
        "network_fresh_process_s": round(seconds, 2), "network_peak_memory_gb": round(peak, 2),
        "run_s": round(time.perf_counter() - start, 1),
    }  # fmt: skip
    real = summarise_real(real_records)
    simulated = summarise_simulated(simulated_records)
    payload = {
        "settings": settings, "real": real, "simulated": simulated,
        "headline": headline(real, simulated), "real_records": real_records,
        "simulated_records": simulated_records,
    }  # fmt: skip
    write_results(args.out, payload)
    if args.update_card:
        update_card(folder, payload)
    print_table(real, simulated)
    print(payload["headline"])
    print(f"tuned: {settings['tuned']}")
    print(
        f"network in a fresh process: {seconds:.1f} s, peak {peak:.2f} GB; "
        f"run {settings['run_s']} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
