"""Run deepbet brain extraction (CPU) on NIfTI images, for benchmarking.

deepbet (https://pypi.org/project/deepbet/, MIT) ships its two TorchScript
models inside the wheel (site-packages/data/models/{bbox_model,model}.pt), so
it runs fully offline. It lives in its own venv, apart from the project's:

    python3.11 -m venv bench/.venv-deepbet
    bench/.venv-deepbet/bin/pip install -r bench/requirements-deepbet.txt

Usage (with that venv's python):

    bench/.venv-deepbet/bin/python bench/run_deepbet.py OUT_DIR IMG.nii.gz [IMG2 ...] [--threads N]

For each image it writes OUT_DIR/<stem>_mask.nii.gz (uint8, on the input
grid) and prints one JSON line
    {"image": ..., "mask": ..., "seconds": ..., "mask_ml": ..., "shape": [...]}
where "seconds" is the wall time of deepbet's extraction for that image only
(model inference + deepbet's post-processing: largest component, hole
filling, reorientation), with the image already read into memory and
excluding model loading and writing the mask. One JSON line
{"model_load_seconds": ..., "threads": N} is printed first.
deepbet settings: threshold 0.5, n_dilate 0, no_gpu=True.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path


def _stem(path: str) -> str:
    name = Path(path).name
    for ext in (".nii.gz", ".nii", ".mgz", ".mnc"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("images", nargs="+")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--n-dilate", type=int, default=0)
    args = ap.parse_args(argv)

    import nibabel as nib
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    with contextlib.suppress(RuntimeError):  # already set once torch ran something
        torch.set_num_interop_threads(args.threads)

    from deepbet import BrainExtraction

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    bet = BrainExtraction(no_gpu=True)
    load_s = time.perf_counter() - t0
    print(json.dumps({"model_load_seconds": round(load_s, 4), "threads": args.threads}), flush=True)

    for path in args.images:
        src = nib.load(path)
        # Read voxels into memory first so file I/O is not timed.
        data = np.asanyarray(src.dataobj).astype(np.float32)
        img = nib.Nifti1Image(data, src.affine)

        t0 = time.perf_counter()
        _, mask_img, _ = bet.run(img, threshold=args.threshold, n_dilate=args.n_dilate)
        secs = time.perf_counter() - t0

        mask = np.asarray(mask_img.dataobj).astype(np.uint8)
        if mask.ndim == 4:
            mask = mask[..., 0]
        assert mask.shape == src.shape[:3], (mask.shape, src.shape)
        out = nib.Nifti1Image(mask, src.affine)
        out.set_qform(src.affine, code=1)
        out.set_sform(src.affine, code=1)
        out.header.set_data_dtype(np.uint8)
        out_path = out_dir / f"{_stem(path)}_mask.nii.gz"
        out.to_filename(out_path)

        voxel_ml = float(abs(np.linalg.det(src.affine[:3, :3]))) / 1000.0
        print(
            json.dumps(
                {
                    "image": os.fspath(path),
                    "mask": os.fspath(out_path),
                    "seconds": round(secs, 4),
                    "mask_ml": round(float(mask.sum()) * voxel_ml, 2),
                    "shape": list(mask.shape),
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
