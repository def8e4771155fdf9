"""Find each participant's inputs (pybids) and check them before any work starts."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bids_dl.asl_inputs import AslInputError, AslSeries, check_asl_series, read_asl_series
from bids_dl.bold_inputs import BoldInputError, BoldSeries, check_bold_series, read_bold_series
from bids_dl.dwi_inputs import DwiInputError, DwiSeries, check_dwi_series
from bids_dl.images import ImageError, foreground_ml, is_skull_stripped, load_3d_image
from bids_dl.pet_inputs import (
    PetInputError,
    PetSeries,
    body_weight,
    check_pet_series,
    read_pet_series,
)

LOGGER = logging.getLogger("bids_dl.inputs")

#: Default pybids queries; ``--bids-filter-file`` entries update them key by key.
#: ``ceagent: None`` keeps contrast-enhanced T1w images (``ce-<agent>``) out of the T1w; ``"*"``
#: stands for any value (pybids' ``Query.ANY``).
DEFAULT_QUERIES = {
    "t1w": {"datatype": "anat", "suffix": "T1w", "ceagent": None, "extension": [".nii", ".nii.gz"]},
    "t1ce": {"datatype": "anat", "suffix": "T1w", "ceagent": "*", "extension": [".nii", ".nii.gz"]},
    "t2w": {"datatype": "anat", "suffix": "T2w", "extension": [".nii", ".nii.gz"]},
    "flair": {"datatype": "anat", "suffix": "FLAIR", "extension": [".nii", ".nii.gz"]},
    "dwi": {"datatype": "dwi", "suffix": "dwi", "extension": [".nii", ".nii.gz"]},
    "epi": {"datatype": "fmap", "suffix": "epi", "extension": [".nii", ".nii.gz"]},
    "asl": {"datatype": "perf", "suffix": "asl", "extension": [".nii", ".nii.gz"]},
    "bold": {"datatype": "func", "suffix": "bold", "extension": [".nii", ".nii.gz"]},
    "pet": {"datatype": "pet", "suffix": "pet", "extension": [".nii", ".nii.gz"]},
}
#: How messages name an input whose BIDS suffix reads badly in a sentence.
DISPLAY_NAMES = {"asl": "ASL", "bold": "BOLD", "pet": "PET"}
#: Top-level folders of a BIDS dataset that pybids does not index by default.
UNINDEXED_FOLDERS = {"derivatives", "sourcedata", "code", "stimuli", "models"}
#: The inputs each analysis needs (any one of them), beyond the T1w.
ANALYSIS_INPUTS = {
    "tumor": ("t1ce", "flair"),
    "wmh": ("flair",),
    "dwi": ("dwi",),
    "asl": ("asl",),
    "func": ("bold",),
}
#: The input that makes an analysis run by default (without ``--analyses``).
ANALYSIS_TRIGGERS = {
    "tumor": "t1ce",
    "wmh": "flair",
    "dwi": "dwi",
    "asl": "asl",
    "func": "bold",
}
#: Analyses that run without a model (their model adds outputs): the rest need one.
MODEL_OPTIONAL = ("dwi", "asl", "func")


class InputError(Exception):
    """Invalid input: the CLI prints the message on one line and exits with code 2."""


@dataclass(frozen=True)
class SeriesOptions:
    """The options that decide whether a participant's series can be processed: BOLD volumes
    to drop (``--dummy-scans``), SUV required (``--pet-suv``) and the PET's static window in
    minutes (``--pet-window``)."""

    dummy_scans: int | None = None
    require_suv: bool = False
    pet_window: tuple[float, float] | None = None


@dataclass
class SubjectInputs:
    """The files found for one participant."""

    label: str
    files: dict[str, list[str]] = field(default_factory=dict)
    #: every diffusion series (each run and session), with its gradient files
    dwi: list[DwiSeries] = field(default_factory=list)
    #: every ASL series (each run and session), with its sidecar's quantification fields
    asl: list[AslSeries] = field(default_factory=list)
    #: every BOLD run (each task, run and session), with its sidecar's timing
    bold: list[BoldSeries] = field(default_factory=list)
    #: every PET (each tracer, run and session), with its sidecar's timing and dose
    pet: list[PetSeries] = field(default_factory=list)
    #: a PET is predicted from the T1w (``--pet-imputation``): none was measured, or ``always``
    impute_pet: bool = False

    analyses: list[str] = field(default_factory=lambda: ["anat"])
    #: the T1w is already skull-stripped: its background gives the brain mask
    skull_stripped: bool = False

    @property
    def has_anatomy(self) -> bool:
        """Whether a T1w (plain or contrast-enhanced) exists; without one only the ASL runs,
        on its own grid."""
        return bool(self.files.get("t1w") or self.files.get("t1ce"))

    @property
    def t1w(self) -> str:
        """The T1-weighted image that is processed: the first plain T1w in BIDS order or,
        in a session without one (BraTS-style FLAIR + ce-T1w), the first contrast-enhanced T1w."""
        return (self.files.get("t1w") or self.files["t1ce"])[0]

    @property
    def reference_is_contrast_enhanced(self) -> bool:
        """Whether the processed T1-weighted image is the contrast-enhanced one (no plain T1w)."""
        return not self.files.get("t1w")

    def first(self, kind: str) -> str | None:
        """The file of an input kind (``flair``, ``t1ce``, ``t2w``) that is processed with the
        T1w: the first of the T1w's session, else the first of any session; or None."""
        files = self.files.get(kind) or []
        reference = session_of(self.t1w) if self.has_anatomy else None
        same_session = [f for f in files if session_of(f) == reference]
        return (same_session or files or [None])[0]


def session_of(path: str) -> str | None:
    """The ``ses-`` label in a BIDS file name, or None."""
    found = re.search(r"(?:^|_)ses-([a-zA-Z0-9]+)_", Path(path).name)
    return found.group(1) if found else None


def strip_prefix(labels: list[str] | tuple[str, ...], prefix: str) -> list[str]:
    """``sub-01`` and ``01`` both mean ``01``, as in the BIDS-Apps specification."""
    return [label.removeprefix(f"{prefix}-") for label in labels]


def check_folders(bids_dir: Path, output_dir: Path, work_dir: Path) -> None:
    """Refuse a missing or non-BIDS input, and outputs that would land inside the input or
    cannot be written."""
    if not bids_dir.exists():
        raise InputError(f"BIDS_DIR {bids_dir} does not exist")
    if not bids_dir.is_dir():
        raise InputError(f"BIDS_DIR {bids_dir} is not a folder")
    description = bids_dir / "dataset_description.json"
    if not description.is_file():
        raise InputError(f"{bids_dir} is not a BIDS dataset: it has no dataset_description.json")
    try:
        json.loads(description.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{description} is not valid JSON ({error})") from error
    resolved_bids = bids_dir.resolve()
    for option, folder in (("OUTPUT_DIR", output_dir), ("--work-dir", work_dir)):
        resolved = folder.resolve()
        if resolved == resolved_bids or resolved_bids in resolved.parents:
            raise InputError(
                f"{option} {folder} is inside the input dataset {bids_dir}; the input is never "
                "written to: choose a folder outside it"
            )
        check_writable_folder(option, folder)


def check_writable_folder(option: str, folder: Path) -> None:
    """Refuse a folder that is a file, lies under a file, or cannot be created or written.

    Nothing is created: the nearest existing folder on its path must be writable.
    """
    existing = next(path for path in (folder, *folder.absolute().parents) if path.exists())
    if not existing.is_dir():
        where = "" if existing == folder else f": {existing} is a file"
        raise InputError(f"{option} {folder} is not a folder{where}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{option} {folder} cannot be written (no write permission on {existing})")


def load_filters(path: Path | None) -> dict:
    """Read ``--bids-filter-file``: a JSON object of pybids queries keyed by input kind."""
    if path is None:
        return {}
    try:
        filters = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"--bids-filter-file {path}: {error}") from error
    unknown = set(filters) - set(DEFAULT_QUERIES) if isinstance(filters, dict) else None
    if unknown is None or unknown:
        raise InputError(
            f"--bids-filter-file {path}: expected a JSON object with keys among "
            f"{sorted(DEFAULT_QUERIES)}"
        )
    return filters


def dataset_fingerprint(bids_dir: Path) -> str:
    """A hash of every file's path, size and modification time: it changes with the dataset.

    Folders that pybids does not index (derivatives, sourcedata, code, hidden ones) are
    skipped; one ``stat`` per file keeps it fast on large datasets.
    """
    import hashlib

    digest = hashlib.sha256()
    for folder, subfolders, files in os.walk(bids_dir):
        subfolders[:] = sorted(
            d for d in subfolders if not d.startswith(".") and d not in UNINDEXED_FOLDERS
        )
        for name in sorted(files):
            path = Path(folder, name)
            stat = path.stat()
            digest.update(
                f"{path.relative_to(bids_dir)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
            )
    return digest.hexdigest()[:16]


def index_dataset(bids_dir: Path, database_dir: Path | None = None):
    """The dataset's pybids layout, cached as a database under ``database_dir``.

    The cache is named after :func:`dataset_fingerprint`, so a changed dataset is indexed
    again; it is written to a temporary folder and renamed, so concurrent runs (a job
    array sharing a work dir) never read a half-written database.
    """
    import tempfile

    from bids import BIDSLayout

    if database_dir is None:
        return BIDSLayout(str(bids_dir), validate=False)
    database = Path(database_dir) / f"bids_db-{dataset_fingerprint(bids_dir)}"
    if (database / "layout_index.sqlite").exists():
        LOGGER.info("BIDS index read from %s", database)
        return BIDSLayout.load(str(database))
    layout = BIDSLayout(str(bids_dir), validate=False)
    database.parent.mkdir(parents=True, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".bids_db-", dir=database.parent)
    layout.save(staging, replace_connection=False)
    try:
        os.replace(staging, database)
    except OSError:  # another run saved the same index first
        shutil.rmtree(staging, ignore_errors=True)
    return layout


def collect_inputs(
    bids_dir: Path,
    participant_labels: list[str],
    session_labels: list[str],
    filters: dict,
    database_dir: Path | None = None,
    options: SeriesOptions = SeriesOptions(),
) -> dict[str, SubjectInputs]:
    """Index the dataset (cached in ``database_dir``) and return each participant's files.

    Raises :class:`InputError` for unknown participants, a participant without any T1w (plain
    or contrast-enhanced) nor ASL, an image that cannot be read as one 3D volume with contrast,
    and a diffusion, ASL, BOLD or PET series that cannot be processed with ``options`` (SUV
    required: a PET that lacks what SUV needs; a PET window that misses its frames).
    """
    layout = index_dataset(bids_dir, database_dir)
    available = sorted(layout.get_subjects())
    if not available:
        raise InputError(f"{bids_dir} has no sub-<label> folders with data")
    labels = participant_labels or available
    unknown = sorted(set(labels) - set(available))
    if unknown:
        raise InputError(
            f"participant label(s) {', '.join(unknown)} not found in {bids_dir} "
            f"(it has: {', '.join(available)})"
        )
    found = _query_files(layout, labels, session_labels, filters)
    subjects = {}
    for label in labels:
        files = {kind: sorted(found[label].get(kind, [])) for kind in DEFAULT_QUERIES}
        subject = SubjectInputs(
            label=label,
            files=files,
            dwi=_dwi_series(layout, files["dwi"]),
            asl=_asl_series(layout, label, files["asl"]),
            bold=_bold_series(layout, label, files["bold"]),
            pet=_pet_series(layout, bids_dir, label, files["pet"]),
        )
        subjects[label] = _check_subject(subject, session_labels, options)
    return subjects


def _query_files(
    layout, labels: list[str], session_labels: list[str], filters: dict
) -> dict[str, dict[str, list[str]]]:
    """The files of each input kind, per participant: one query per kind for every
    participant (a query per participant and kind took 10 s for 200 participants, pybids
    building an SQL query each time)."""
    from bids.layout import Query

    found: dict[str, dict[str, list[str]]] = {label: {} for label in labels}
    for kind, query in DEFAULT_QUERIES.items():
        query = {**query, **filters.get(kind, {})}
        query = {k: Query.ANY if v == "*" else v for k, v in query.items()}
        if session_labels:
            query["session"] = session_labels
        for image in layout.get(subject=labels, return_type="object", **query):
            found[image.entities["subject"]].setdefault(kind, []).append(image.path)
    return found


def _dwi_series(layout, paths: list[str]) -> list[DwiSeries]:
    """Each diffusion image with its nearest ``.bval`` and ``.bvec`` (BIDS inheritance)."""

    def nearest(path: str, extension: str) -> str | None:
        return layout.get_nearest(path, suffix="dwi", extension=extension)

    return [DwiSeries(p, nearest(p, ".bval"), nearest(p, ".bvec")) for p in sorted(paths)]


def _asl_series(layout, label: str, paths: list[str]) -> list[AslSeries]:
    """Each ASL series with its sidecar, aslcontext.tsv and M0 read (InputError if one is
    inconsistent)."""
    try:
        return [read_asl_series(layout, path) for path in sorted(paths)]
    except AslInputError as error:
        raise InputError(f"sub-{label}: {error}") from None


def _bold_series(layout, label: str, paths: list[str]) -> list[BoldSeries]:
    """Each BOLD run with its sidecar's timing read (InputError if unusable)."""
    try:
        return [read_bold_series(layout, path) for path in sorted(paths)]
    except BoldInputError as error:
        raise InputError(f"sub-{label}: {error}") from None


def _pet_series(layout, bids_dir: Path, label: str, paths: list[str]) -> list[PetSeries]:
    """Each PET with its sidecar (BIDS inheritance) and the body weight of its session."""
    try:
        return [
            read_pet_series(
                path, layout.get_metadata(path), body_weight(bids_dir, label, session_of(path))
            )
            for path in sorted(paths)
        ]
    except PetInputError as error:
        raise InputError(f"sub-{label}: {error}") from None


def _check_subject(
    subject: SubjectInputs, session_labels: list[str], options: SeriesOptions
) -> SubjectInputs:
    """Refuse a participant without a T1w nor ASL, or with an unreadable image; warn about
    choices."""
    label, files = subject.label, subject.files
    if not subject.has_anatomy and not subject.asl:
        sessions = f" in session(s) {', '.join(session_labels)}" if session_labels else ""
        raise InputError(f"sub-{label} has no T1w image (plain or contrast-enhanced){sessions}")
    for series in subject.asl:
        try:
            check_asl_series(series)
        except AslInputError as error:
            raise InputError(f"sub-{label}: {error}") from None
    if not subject.has_anatomy:
        unused = [kind for kind in ("t2w", "flair", "dwi", "bold", "pet") if files[kind]]
        LOGGER.warning(
            "sub-%s has no T1w: its ASL is processed on its own grid only, without T1w/template "
            "outputs or tissue measures%s",
            label, f" (its {', '.join(unused)} images are not used)" if unused else "",
        )  # fmt: skip
        return subject
    return _check_anatomy(subject, options)


def _check_anatomy(subject: SubjectInputs, options: SeriesOptions) -> SubjectInputs:
    """Check the anatomical images, diffusion series and BOLD runs of a participant with a
    T1w."""
    label, files = subject.label, subject.files
    if not files["t1w"]:
        LOGGER.warning(
            "sub-%s has no T1w without contrast; processing its contrast-enhanced T1w %s "
            "in its place (Atropos tissue volumes from it are written n/a)",
            label, files["t1ce"][0],
        )  # fmt: skip
    if len(files["t1w"]) > 1:
        LOGGER.warning(
            "sub-%s has %d T1w images; processing %s", label, len(files["t1w"]), files["t1w"][0]
        )
    for kind in ("t1w", "t1ce", "t2w", "flair"):
        path = subject.t1w if kind == "t1w" else subject.first(kind)
        if path is not None:
            _check_image(subject, kind, path)
    _check_series(subject, options)
    return subject


def _check_series(subject: SubjectInputs, options: SeriesOptions) -> None:
    """Check the diffusion series, BOLD runs and PETs of a participant with a T1w."""
    label, files = subject.label, subject.files
    try:
        for series in subject.dwi:
            check_dwi_series(series)
        for run in subject.bold:
            check_bold_series(run, options.dummy_scans)
        for pet in subject.pet:
            check_pet_series(pet, suv=options.require_suv, window_min=options.pet_window)
    except (DwiInputError, BoldInputError, PetInputError) as error:
        raise InputError(f"sub-{label}: {error}") from None
    series_kinds = [name for name, found in (("diffusion", subject.dwi), ("BOLD", subject.bold))
                    if found]  # fmt: skip
    if series_kinds and files["epi"]:
        LOGGER.warning(
            "sub-%s: %s (a phase-encoding fieldmap) is not used: bids_dl does not correct "
            "susceptibility distortions of the %s series",
            label, Path(files["epi"][0]).name, " and ".join(series_kinds),
        )  # fmt: skip


def _check_image(subject: SubjectInputs, kind: str, path: str) -> None:
    """Refuse an image that is not one 3D volume with contrast; warn when it comes from
    another session than the T1w."""
    try:
        load_3d_image(path, require_signal=True)
    except ImageError as error:
        raise InputError(f"sub-{subject.label}: {error}") from error
    if session_of(path) != session_of(subject.t1w):
        LOGGER.warning(
            "sub-%s: no %s in the session of %s; using %s (registered to it, named "
            "after the T1w's session)",
            subject.label, "ce-T1w" if kind == "t1ce" else DEFAULT_QUERIES[kind]["suffix"],
            Path(subject.t1w).name, path,
        )  # fmt: skip


def plan_skull_stripping(subjects: dict[str, SubjectInputs], mode: str) -> None:
    """Decide, per subject, whether the brain is extracted (``SubjectInputs.skull_stripped``).

    As fMRIPrep's ``--skull-strip-t1w``: ``force`` extracts the brain from every T1w, ``auto``
    checks each one (:func:`bids_dl.images.is_skull_stripped`) and ``skip`` takes every T1w as
    already skull-stripped, whatever its size, as long as it has a background to tell the brain
    from. Extracting a brain from an image that is one already fails (a brain-extraction model
    is trained on heads).
    """
    for subject in subjects.values():
        if not subject.has_anatomy:  # an ASL-only participant: no T1w to extract
            continue
        if mode == "skip":
            volume = foreground_ml(subject.t1w)
            if not volume:
                raise InputError(
                    f"--skull-strip-t1w skip: sub-{subject.label}'s {Path(subject.t1w).name} is "
                    "not skull-stripped (most voxels on its faces do not share one background "
                    "value); use auto or force"
                )
        subject.skull_stripped = mode == "skip" or (
            mode == "auto" and is_skull_stripped(subject.t1w)
        )
        if mode == "auto" and subject.skull_stripped:
            LOGGER.warning(
                "sub-%s: %s is already skull-stripped; its brain mask is the voxels that differ "
                "from its background (--skull-strip-t1w force extracts the brain anyway)",
                subject.label, subject.t1w,
            )  # fmt: skip


def plan_analyses(
    subjects: dict[str, SubjectInputs],
    analyses: list[str],
    requested: bool,
    bundles: dict[str, str | None],
) -> None:
    """Decide, per subject, which analyses run (``SubjectInputs.analyses``).

    Without ``--analyses`` (``requested`` False), an analysis runs where its trigger input
    exists (tumour: a contrast-enhanced T1w; WMH: a FLAIR, unless the tumour analysis runs;
    diffusion: a DWI series; ASL: an ASL series) and its model is installed (diffusion and ASL
    run without one: their model only adds the network's maps).
    Named with ``--analyses``, it runs wherever any of its inputs exists, and a subject with
    none of them, or a missing model, is an error. A subject without a T1w runs ASL only.
    """

    def available(analysis: str) -> bool:
        return bundles.get(analysis) is not None or analysis in MODEL_OPTIONAL

    for analysis in ANALYSIS_INPUTS:
        if analysis in analyses and requested and not available(analysis):
            raise InputError(
                f"--analyses {analysis}: no {analysis} model is installed; give one with "
                f"--{analysis}-model PATH"
            )
    for subject in subjects.values():
        if subject.has_anatomy:
            subject.analyses = _analyses_with_anatomy(subject, analyses, requested, available)
        else:
            subject.analyses = _analyses_without_anatomy(subject, analyses, requested)


def _analyses_with_anatomy(
    subject: SubjectInputs, analyses: list[str], requested: bool, available: Callable
) -> list[str]:
    """``anat`` and each analysis of :func:`plan_analyses` whose inputs the subject has."""
    planned = ["anat"]
    for analysis, kinds in ANALYSIS_INPUTS.items():
        if analysis not in analyses or not available(analysis):
            continue
        if requested:
            if not any(subject.first(kind) for kind in kinds):
                names = " or ".join(
                    DISPLAY_NAMES.get(k, DEFAULT_QUERIES[k]["suffix"])
                    + (" (ce-)" if k == "t1ce" else "")
                    for k in kinds
                )
                article = "an" if names[0] in "AEIO" else "a"
                raise InputError(
                    f"sub-{subject.label}: --analyses {analysis} needs {article} {names} image"
                )
            planned.append(analysis)
        elif subject.first(ANALYSIS_TRIGGERS[analysis]) and not (
            analysis == "wmh" and "tumor" in planned
        ):  # edema would pass for white-matter hyperintensities
            planned.append(analysis)
    return planned


def _analyses_without_anatomy(
    subject: SubjectInputs, analyses: list[str], requested: bool
) -> list[str]:
    """A participant without a T1w (it has ASL: :func:`_check_subject`) runs ASL only, on the
    ASL's grid; any other analysis named with ``--analyses`` needs a T1w."""
    others = [a for a in analyses if a not in ("anat", "asl")] if requested else []
    if others or "asl" not in analyses:
        refused = ", ".join(others) if others else "the analyses named (asl is not among them)"
        raise InputError(
            f"sub-{subject.label} has no T1w image (plain or contrast-enhanced): only asl can "
            f"run for it, not {refused}"
        )
    return ["asl"]


def plan_pet(
    subjects: dict[str, SubjectInputs],
    analyses: list[str],
    requested: bool,
    imputation: bool,
    everywhere: bool,
    structures: bool,
) -> None:
    """Decide, per subject with a T1w, whether the PET analysis runs and whether a PET is
    imputed (``SubjectInputs.impute_pet``).

    The measured PET is processed wherever one exists. A PET is imputed (``imputation``: a
    model is installed) for the participants without one when ``--analyses pet`` names the
    analysis or when some participant of the dataset has a PET (a multi-modal study), and for
    every participant with ``everywhere`` (``--pet-imputation always``); a T1w-only dataset
    gets no synthetic PET unasked, nor (unless ``everywhere``) a participant whose tumour
    analysis runs: the model never saw one. SUVR's reference region comes from the structures model:
    without it PET is refused when named, else skipped with a warning.
    """
    if "pet" not in analyses:
        return
    if everywhere and not imputation:
        raise InputError("--pet-imputation always: no pet model is installed")
    anatomical = [subject for subject in subjects.values() if subject.has_anatomy]
    study_has_pet = any(subject.pet for subject in anatomical)
    for subject in anatomical:
        subject.impute_pet = imputation and (
            everywhere or (not subject.pet and (requested or study_has_pet))
        )
        if subject.impute_pet and "tumor" in subject.analyses and not everywhere:
            LOGGER.warning(
                "sub-%s: no PET is imputed: the imputation model never saw a brain tumour "
                "(--pet-imputation always imputes one anyway)",
                subject.label,
            )
            subject.impute_pet = False
        if not (subject.pet or subject.impute_pet):
            if requested:
                raise InputError(
                    f"sub-{subject.label}: --analyses pet needs a PET image, or a pet model to "
                    "impute one (--pet-imputation)"
                )
            continue
        if not structures:
            if requested:
                raise InputError(
                    "--analyses pet needs the structures model (--segmentation-model auto or a "
                    "structures bundle): SUVR's reference region and regional values come from it"
                )
            LOGGER.warning(
                "sub-%s: PET is not processed: SUVR's reference region comes from the structures "
                "model, and --segmentation-model is atropos",
                subject.label,
            )
            subject.impute_pet = False
            continue
        subject.analyses.append("pet")


def validator_command() -> list[str] | None:
    """The ``bids-validator-deno`` executable installed beside this Python, or on PATH."""
    beside = Path(sys.executable).parent / "bids-validator-deno"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("bids-validator-deno")
    return [found] if found else None


def validate_dataset(bids_dir: Path, participant_labels: list[str] | None = None) -> list[str]:
    """Run the official BIDS validator; return its warnings, raise on errors.

    Errors about participants that are not requested are ignored, as fMRIPrep does.
    """
    command = validator_command()
    if command is None:
        raise InputError(
            "bids-validator-deno is not installed; install it or pass --skip-bids-validation"
        )
    result = subprocess.run(
        [*command, "--format", "json", str(bids_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError as error:
        raise InputError(
            f"the BIDS validator failed to run ({result.stderr.strip()[:300]}); "
            "pass --skip-bids-validation to go on without it"
        ) from error
    issues = report.get("issues", {}).get("issues", [])

    def concerns_request(issue: dict) -> bool:
        location = issue.get("location", "")
        if not participant_labels or not location.startswith("/sub-"):
            return True
        return location.split("/")[1].removeprefix("sub-") in participant_labels

    errors = [i for i in issues if i.get("severity") == "error" and concerns_request(i)]
    if errors:
        first = errors[0]
        raise InputError(
            f"the BIDS validator found {len(errors)} error(s) in {bids_dir}, first: "
            f"{first.get('code')} at {first.get('location', '?')}; fix them or pass "
            "--skip-bids-validation"
        )
    return sorted({i.get("code", "") for i in issues if i.get("severity") == "warning"})
