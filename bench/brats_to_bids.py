"""Lay the shared BraTS 2013 cases out as a BIDS dataset with labels in a derivatives folder,
the form ``bids_dl-train``'s ``bids`` source reads (fine-tuning the tumour model on real cases).

    python bench/brats_to_bids.py ../shared/data/brats2013_dev bench/brats_bids

Files are symbolic links to the originals (nothing is copied or modified):
``sub-pat0003/anat/sub-pat0003_FLAIR.nii.gz``, ``..._ce-gadolinium_T1w.nii.gz`` and, under
``derivatives/labels``, ``..._desc-tumor_dseg.nii.gz`` (BraTS labels) and
``..._desc-brain_mask.nii.gz``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

FILES = {
    "Flair_subtrMeanDivStd.nii.gz": ("", "FLAIR"),
    "T1c_subtrMeanDivStd.nii.gz": ("", "ce-gadolinium_T1w"),
    "OTMultiClass.nii.gz": ("derivatives/labels", "desc-tumor_dseg"),
    "brainmask.nii.gz": ("derivatives/labels", "desc-brain_mask"),
}


def case_label(folder: Path) -> str:
    """``brats_2013_pat0003_1`` -> ``pat0003``."""
    return folder.name.split("_")[2]


def convert(source: Path, target: Path) -> list[str]:
    """Link every case of ``source`` into ``target``; return the participant labels."""
    labels = []
    for case in sorted(p for p in source.iterdir() if p.is_dir()):
        label = case_label(case)
        labels.append(label)
        for name, (prefix, suffix) in FILES.items():
            folder = target / prefix / f"sub-{label}" / "anat"
            folder.mkdir(parents=True, exist_ok=True)
            link = folder / f"sub-{label}_{suffix}.nii.gz"
            if not link.exists():
                link.symlink_to((case / name).resolve())
    for folder, kind in ((target, "raw"), (target / "derivatives" / "labels", "derivative")):
        description = {"Name": "BraTS 2013 (DeepMedic example cases)", "BIDSVersion": "1.9.0",
                       "DatasetType": kind, "License": "CC BY-NC-SA 3.0"}  # fmt: skip
        if kind == "derivative":
            description["GeneratedBy"] = [{"Name": "BraTS 2013 expert annotation"}]
        (folder / "dataset_description.json").write_text(json.dumps(description, indent=2))
    return labels


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    arguments = parser.parse_args()
    print("participants:", " ".join(convert(arguments.source, arguments.target)))
