"""Lay the shared stroke-outcome cohort out as BIDS derivatives for bids_dl-classify.

It then checks that the ``--atlas`` path of ``bids_dl-classify`` gives the lesion loads per
arterial territory that the source's ``artery.tsv`` lists:

    python bench/stroke_to_derivatives.py ../shared/data/stroke_outcome bench/stroke_derivatives

The lesion maps are symbolic links to the originals (nothing is copied or modified):
``sub-<id>/anat/sub-<id>_space-SOOP_desc-lesion_mask.nii.gz``, each with a JSON sidecar. The
grid (157x189x136 at 1 mm) is an MNI-space crop, but not a TemplateFlow template (not
MNI152NLin2009cAsym nor MNI152NLin6Asym: nothing says which registration made it), so its
space gets a custom label, ``SOOP``, and every sidecar's ``SpatialReference`` names the
arterial territory atlas on that grid, laid out as a template folder ``tpl-SOOP/``
(``tpl-SOOP_res-1_atlas-Arterial_dseg.nii.gz`` + ``.tsv``). ``participants.tsv`` is copied with
a data dictionary; outcome classes (NIHSS >= 5, modified Rankin >= 3) are left to
``--threshold`` rather than written as columns.

With ``--train OUT`` it then runs, as the source's demo does, a regression of the NIHSS on
the lesion load per territory and age (``bids_dl-classify train``, linear and svm models) and
prints each model's Pearson r beside the demo's (0.51 neural network, 0.55 support vector
regression, leave-one-out rather than nested 5-fold cross-validation):

    bids_dl-classify train bench/stroke_derivatives OUT --target nihss \\
        --image-features desc-lesion_mask --covariates age --models linear svm \\
        --atlas bench/stroke_derivatives/tpl-SOOP/tpl-SOOP_res-1_atlas-Arterial_dseg.nii.gz \\
        --atlas-names bench/stroke_derivatives/tpl-SOOP/tpl-SOOP_atlas-Arterial_dseg.tsv
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

SPACE = "SOOP"
ATLAS = Path(f"tpl-{SPACE}") / f"tpl-{SPACE}_res-1_atlas-Arterial_dseg.nii.gz"
ATLAS_TABLE = Path(f"tpl-{SPACE}") / f"tpl-{SPACE}_atlas-Arterial_dseg.tsv"
SOURCE_URL = "https://github.com/neurolabusc/StrokeOutcomeOptimizationProjectDemo"
PARTICIPANT_COLUMNS = {
    "participant_id": {"Description": "participant label"},
    "sex": {"Description": "sex", "Levels": {"M": "male", "F": "female"}},
    "age": {
        "Description": "age at the stroke; ages over 89 are top-coded as '89+' (HIPAA), which "
        "bids_dl-classify reads as 89",
        "Units": "year",
    },
    "race": {"Description": "race as the source codes it (w, b, ...)"},
    "acuteischaemicstroke": {"Description": "acute ischaemic stroke (1: yes)"},
    "priorstroke": {"Description": "stroke before this one (1: yes)"},
    "bmi": {"Description": "body-mass index", "Units": "kg/m^2"},
    "nihss": {"Description": "NIH stroke scale at admission (0-42; 0-35 here)"},
    "gs_rankin_6isdeath": {
        "Description": "modified Rankin scale at follow-up (0-5; 6 = death); often missing"
    },
}


def write_json(content: dict, path: Path) -> None:
    path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def atlas_table(names_file: Path) -> pd.DataFrame:
    """``1|ACAL|anterior cerebral artery left|1`` lines -> a BIDS dseg.tsv (index, name,
    description); the source names two regions MCAPL (9, 10), MCATL, MCAOL and MCAIL too."""
    rows = [line.split("|") for line in names_file.read_text().splitlines() if line.strip()]
    return pd.DataFrame(
        {
            "index": [int(r[0]) for r in rows],
            "name": [r[1] for r in rows],
            "description": [r[2] for r in rows],
        }
    )


def convert(source: Path, target: Path) -> list[str]:
    """Link every lesion map of ``source`` into ``target``; return the participant ids."""
    target.mkdir(parents=True, exist_ok=True)
    (target / ATLAS.parent).mkdir(exist_ok=True)
    if not (target / ATLAS).exists():
        (target / ATLAS).symlink_to((source / "ArterialAtlas136.nii.gz").resolve())
    atlas_table(source / "ArterialAtlas136.txt").to_csv(target / ATLAS_TABLE, sep="\t", index=False)
    sidecar = {
        "Description": "acute ischaemic stroke lesion, traced on the clinical scan and "
        "normalised to the SOOP MNI-space grid (binary)",
        "SpatialReference": f"bids::{ATLAS.as_posix()}",
        "Type": "Lesion",
    }
    ids = []
    for lesion in sorted((source / "lesions").glob("sub-*_lesion.nii.gz")):
        participant = lesion.name.split("_")[0]
        folder = target / participant / "anat"
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{participant}_space-{SPACE}_desc-lesion_mask"
        link = folder / f"{stem}.nii.gz"
        if not link.exists():
            link.symlink_to(lesion.resolve())
        source_uri = f"{SOURCE_URL}/lesions/{lesion.name}"
        write_json({**sidecar, "Sources": [source_uri]}, folder / f"{stem}.json")
        ids.append(participant)
    shutil.copyfile(source / "participants.tsv", target / "participants.tsv")
    write_json(PARTICIPANT_COLUMNS, target / "participants.json")
    (target / ".bidsignore").write_text(f"tpl-{SPACE}/\n")
    write_json(
        {
            "Name": "Stroke Outcome Optimization Project: lesion maps (demo subset)",
            "BIDSVersion": "1.10.0",
            "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "SOOP lesion tracing and normalisation",
                             "CodeURL": SOURCE_URL}],
            "SourceDatasets": [{"URL": f"{SOURCE_URL}/tree/ae553f8"}],
            "License": "BSD-2-Clause",
        },
        target / "dataset_description.json",
    )  # fmt: skip
    return ids


def check_regional_loads(source: Path, target: Path, n: int) -> float:
    """The largest difference between ``artery.tsv`` and the loads that bids_dl-classify's
    ``--atlas`` path computes (through :func:`plan_training` and :func:`load_cohort`) for
    ``n`` participants spread over the cohort."""
    from bids_dl.classify_features import FeatureOptions, load_cohort, plan_training

    reference = pd.read_csv(source / "artery.tsv", sep="\t").set_index("participant_id")
    chosen = tuple(reference.index[np.linspace(0, len(reference) - 1, n).astype(int)])
    options = FeatureOptions(
        target="nihss",
        images=("desc-lesion_mask",),
        atlas=target / ATLAS,
        atlas_names=target / ATLAS_TABLE,
        participant_labels=chosen,
    )
    start = time.perf_counter()
    cohort = load_cohort(plan_training(target, target / "participants.tsv", options))
    seconds = time.perf_counter() - start
    ours = pd.DataFrame(cohort.tabular, index=list(cohort.participant_ids),
                        columns=list(cohort.feature_names))  # fmt: skip
    columns = [c for c in reference.columns if c != "lesion_volume"]
    missing = [c for c in columns if f"lesion_{c}" not in ours]
    if missing:
        raise SystemExit(f"columns of artery.tsv not computed: {', '.join(missing)}")
    difference = (ours[[f"lesion_{c}" for c in columns]].to_numpy()
                  - reference.loc[ours.index, columns].to_numpy())  # fmt: skip
    print(
        f"regional loads of {len(ours)} participants ({', '.join(ours.index)}), "
        f"{len(columns)} territories, in {seconds:.1f} s: largest difference to artery.tsv "
        f"{np.abs(difference).max():.2e}"
    )
    return float(np.abs(difference).max())


def train_nihss(target: Path, output: Path) -> dict[str, float]:
    """Run the demo's regression through ``bids_dl-classify``; each model's r."""
    command = [
        str(Path(sys.executable).parent / "bids_dl-classify"), "train", str(target), str(output),
        "--target", "nihss", "--image-features", "desc-lesion_mask", "--covariates", "age",
        "--atlas", str(target / ATLAS), "--atlas-names", str(target / ATLAS_TABLE),
        "--models", "linear", "svm",
    ]  # fmt: skip
    subprocess.run(command, check=True)
    metrics = json.loads((output / "metrics.json").read_text())
    scores = {name: m["metrics"]["r"]["estimate"] for name, m in metrics["models"].items()}
    for name, r in scores.items():
        print(f"{name}: r {r:.3f} (the demo's: 0.51 neural network, 0.55 SVR)")
    print(f"seconds: {metrics['timings']}")
    return scores


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--check", type=int, default=8, metavar="N",
                        help="participants whose loads are compared with artery.tsv")  # fmt: skip
    parser.add_argument("--train", type=Path, metavar="OUT",
                        help="then run the demo's NIHSS regression into OUT")  # fmt: skip
    arguments = parser.parse_args()
    if not (arguments.source / "lesions").is_dir():
        raise SystemExit(f"{arguments.source} has no lesions/ folder: see ../shared/data/README.md")
    participants = convert(arguments.source, arguments.target)
    print(f"{len(participants)} participants laid out in {arguments.target}")
    if arguments.check:
        worst = check_regional_loads(arguments.source, arguments.target, arguments.check)
        if worst > 1e-5:
            sys.exit(1)
    if arguments.train:
        train_nihss(arguments.target, arguments.train)
