"""Time the anatomical workflow per subject at 1 mm: wall time and peak memory of each stage.

Each stage runs in its own process (so its peak resident memory is its own), in the order the
workflow runs them, with the thread count given. The whole workflow is then timed once more
through the real CLI (nipype MultiProc), and, as the reference measured in the same run, a
full-resolution antspyx ``SyNRA`` registration (its default settings) is timed on the first
subject and its template correlation compared with ours.

    python bench/bench_anat.py --sample /tmp/bench/sample --out bench/results/anat.tsv
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nb
import numpy as np

from bids_dl.sample import write_sample_dataset
from bids_dl.templates import write_template_files
from bids_dl.workflows.interfaces import ants
from bids_dl.workflows.interfaces.conform import conform_image
from bids_dl.workflows.interfaces.images import apply_brain_mask
from bids_dl.workflows.interfaces.morphometry import registration_quality


def _measure(function, args, queue) -> None:
    start = time.perf_counter()
    result = function(*args)
    elapsed = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((elapsed, peak_mb, result))


def run_stage(function, *args):
    """Run ``function(*args)`` in a fresh process; return (seconds, peak MB, result)."""
    context = mp.get_context("forkserver")
    queue = context.Queue()
    process = context.Process(target=_measure, args=(function, args, queue))
    process.start()
    outcome = queue.get()
    process.join()
    return outcome


def bench_subject(t1w: Path, work: Path, template, threads: int):
    """Run every stage on one T1w; return (stage rows, registration quality, file paths)."""
    work.mkdir(parents=True, exist_ok=True)
    paths = {k: str(work / f"{k}.nii.gz") for k in ("conformed", "n4", "mask", "brain", "std")}
    rows = []
    stages = [
        ("conform", conform_image, (str(t1w), paths["conformed"])),
        ("n4", ants.n4_bias_correct, (paths["conformed"], paths["n4"], threads)),
        (
            "brain_extraction",
            ants.brain_mask_from_template,
            (paths["n4"], template, paths["mask"], str(work / "bet_"), threads),
        ),
        ("skull_strip", apply_brain_mask, (paths["n4"], paths["mask"], paths["brain"])),
        (
            "registration",
            ants.register_to_template,
            (paths["brain"], template, str(work / "reg_"), threads),
        ),
        (
            "tissues",
            ants.segment_tissues,
            (paths["n4"], paths["mask"], str(work / "tis_"), threads),
        ),
    ]
    results = {}
    for name, function, args in stages:
        seconds, peak_mb, result = run_stage(function, *args)
        results[name] = result
        rows.append((name, seconds, peak_mb))
    forward = results["registration"]["forward_transform"]
    seconds, peak_mb, _ = run_stage(
        ants.apply_transform, paths["n4"], str(template.t1w), forward, paths["std"]
    )
    rows.append(("resample_to_template", seconds, peak_mb))
    std_dseg = str(work / "std_dseg.nii.gz")
    ants.apply_transform(results["tissues"]["dseg"], str(template.t1w), forward, std_dseg, True)
    quality = registration_quality(paths["std"], std_dseg, template)
    return rows, quality, paths


def _reference_syn(brain: str, template_t1w: str, prefix: str, threads: int) -> str:
    """antspyx SyNRA with its default (full-resolution) settings."""
    import ants as antspy

    ants._set_threads(threads)
    fixed = antspy.image_read(template_t1w)
    result = antspy.registration(fixed, antspy.image_read(brain), "SyNRA", outprefix=prefix)
    out = f"{prefix}std.nii.gz"
    antspy.image_write(result["warpedmovout"], out)
    return out


def reference_registration(brain: str, template, work: Path, threads: int):
    """Time the reference on the same brain; return seconds, peak MB, template correlation."""
    seconds, peak_mb, warped = run_stage(
        _reference_syn, brain, str(template.t1w), str(work / "ref_"), threads
    )
    brain_mask = nb.load(template.brain_mask).get_fdata() > 0.5
    corr = np.corrcoef(
        nb.load(warped).get_fdata()[brain_mask], nb.load(template.t1w).get_fdata()[brain_mask]
    )[0, 1]
    return seconds, peak_mb, float(corr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sample", type=Path, default=Path(tempfile.mkdtemp()) / "sample")
    parser.add_argument("--subjects", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/anat.tsv"))
    parser.add_argument("--no-reference", action="store_true", help="skip the full SyNRA run")
    args = parser.parse_args()

    if not (args.sample / "dataset_description.json").exists():
        write_sample_dataset(args.sample, n_subjects=args.subjects, voxel_mm=1.0)
    work = Path(tempfile.mkdtemp(prefix="bench_anat_"))
    template = write_template_files(work / "templates")
    lines = ["subject\tstage\tseconds\tpeak_mb"]
    summary = []
    for index in range(args.subjects):
        label = f"{index + 1:02d}"
        t1w = args.sample / f"sub-{label}" / "anat" / f"sub-{label}_T1w.nii.gz"
        rows, quality, paths = bench_subject(t1w, work / label, template, args.threads)
        lines += [f"sub-{label}\t{name}\t{s:.1f}\t{mb:.0f}" for name, s, mb in rows]
        total = sum(s for _, s, _ in rows)
        summary.append(
            f"sub-{label}: stages sum {total:.0f} s, "
            f"peak {max(m for *_, m in rows):.0f} MB, {quality}"
        )
        print(summary[-1], flush=True)

        start = time.perf_counter()
        cli = subprocess.run(
            [str(Path(sys.executable).parent / "bids_dl"), str(args.sample), str(work / "out"),
             "participant", "--participant-label", label, "-w", str(work / "cli_work"),
             "--nprocs", str(args.threads), "--skip-bids-validation"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        cli_seconds = time.perf_counter() - start
        lines.append(f"sub-{label}\twhole_workflow_cli\t{cli_seconds:.1f}\tnan")
        summary.append(
            f"sub-{label}: whole workflow through the CLI {cli_seconds:.0f} s "
            f"(exit {cli.returncode})"
        )
        print(summary[-1], flush=True)
        if index == 0 and not args.no_reference:
            seconds, peak_mb, corr = reference_registration(
                paths["brain"], template, work / label, args.threads
            )
            lines.append(
                f"sub-{label}\treference_antspyx_SyNRA_default\t{seconds:.1f}\t{peak_mb:.0f}"
            )
            ours = next(s for name, s, _ in rows if name == "registration")
            summary.append(
                f"sub-{label}: reference SyNRA (antspyx defaults, 1 mm) {seconds:.0f} s, "
                f"template correlation {corr:.4f}; ours {ours:.0f} s, "
                f"{quality['template_correlation']:.4f}; "
                f"time ratio ours/reference {ours / seconds:.2f}"
            )
            print(summary[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".txt").write_text("\n".join(summary) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
