"""Group-level functional networks of the template-space BOLD runs, per task.

Every run is denoised once (:func:`bids_dl.connectivity.clean_run`) inside the intersection of
the runs' brain masks, so each voxel has signal in every run. The same arrays go to the deep
model trained on the group's own data (``bids_dl.models.network_extraction``) and to nilearn's
CanICA and DictLearning, with the same number of components; each group decomposition is then
brought back to every run by dual regression (subject maps and time courses) and the time
courses' Ledoit-Wolf correlation is the run's network connectome.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nb
import numpy as np

from bids_dl.config import NETWORK_METHODS
from bids_dl.connectivity import (
    DENOISING_STRATEGY,
    clean_run,
    ledoit_wolf_correlation,
    load_mask,
    software_versions,
    write_relmat,
    write_timeseries,
)
from bids_dl.derivatives import bids_uri, parse_entities, write_json_atomic, write_nifti_atomic

LOGGER = logging.getLogger("bids_dl.group")

#: the template grid of the preprocessed runs (nilearn's 2 mm MNI152 grid)
TEMPLATE_ENTITIES = "space-MNI152NLin2009aSym_res-2"
PREPROC_SUFFIX = "_desc-preproc_bold.nii.gz"
MASK_SUFFIX = "_desc-brain_mask.nii.gz"
CONFOUNDS_SUFFIX = "_desc-confounds_timeseries.tsv"
#: where the group decompositions go (BIDS has no group level: listed in .bidsignore)
GROUP_FOLDER = Path("group") / "func"
#: a decomposition needs runs to compare: with one, dual regression gives back the group maps
MIN_RUNS = 2
#: components of the baselines without the deep model nor ``n_components`` (nilearn's default)
DEFAULT_COMPONENTS = 20
#: the deep model's input is smoothed as its card says (``inputs.smoothing_fwhm_mm``; the
#: shipped card: 6 mm, CanICA's default, as in ``bench/fmri_networks.py``); nilearn's baselines
#: get the same denoised runs and keep their default smoothing (6 mm CanICA, 4 mm DictLearning)
DEEP_SMOOTHING_FWHM_MM = 6.0
#: DictLearning's sparsity, chosen among 0.5-10 on simulated tuning groups at realistic noise
#: by ``bench/fmri_networks.py`` (matched correlation 0.61; nilearn's default, 10: 0.23, most
#: maps left empty)
DICTLEARNING_ALPHA = 5.0
#: the decompositions run on blocks of 2x2x2 voxels of the 2 mm grid (4 mm voxels, 8 times
#: fewer): CanICA on the 2 mm grid took over 5 minutes for two 60-volume runs on 2 cores.
#: Group maps are interpolated back onto the 2 mm grid, where dual regression runs.
DECOMPOSITION_BLOCK = 2
#: a block is in the decomposition's mask when at least this share of its voxels are
MIN_BLOCK_SHARE = 0.5
#: how the number of components came, as the sidecars say it
USER_CHOICE = "set by the user (--network-components)"
DEEP_CHOICE = "the deep model's: the largest candidate whose split-half stability reaches its floor"
#: the baselines take the deep model's number
FROM_DEEP = "the deep model's choice (its sidecar says how it chose)"
FALLBACK_CHOICE = (
    "the deep model's: no candidate reached its split-half stability floor ({floor}), so the "
    "most stable one (a weak guide: see CandidateStability)"
)
#: components per time-course column name: ``component_00``
COMPONENT_COLUMN = "component_{:02d}"


@dataclass
class NetworkOptions:
    """What the group level decomposes: ``methods`` among :data:`NETWORK_METHODS`; ``bundle``
    the deep model's folder (None: no deep model); ``n_components`` None lets the deep model
    choose, the baselines then take its number."""

    methods: list[str] = field(default_factory=lambda: list(NETWORK_METHODS))
    bundle: str | None = None
    n_components: int | None = None
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        unknown = set(self.methods) - set(NETWORK_METHODS)
        if unknown:
            raise ValueError(f"unknown network methods: {', '.join(sorted(unknown))}")
        if self.n_components is not None and self.n_components < 1:
            raise ValueError(f"n_components must be positive, not {self.n_components}")

    @property
    def active_methods(self) -> list[str]:
        """The methods that run, the deep model first (it may choose the number of components)."""
        methods = [m for m in NETWORK_METHODS if m in self.methods]
        return [m for m in methods if m != "deep" or self.bundle]


@dataclass(frozen=True)
class Run:
    """One preprocessed template-space BOLD run and the files its denoising needs."""

    bold: Path
    mask: Path
    confounds: Path
    repetition_time: float

    @property
    def prefix(self) -> str:
        """The run's name up to ``desc-`` (``sub-01_task-rest_space-..._res-2``)."""
        return self.bold.name.removesuffix(PREPROC_SUFFIX)

    @property
    def participant(self) -> str:
        return parse_entities(self.bold)["sub"]


def _run_of(bold: Path) -> Run | None:
    """The run of a preprocessed BOLD file, or None (with a warning) when a file is missing."""
    prefix = bold.name.removesuffix(PREPROC_SUFFIX)
    mask = bold.with_name(prefix + MASK_SUFFIX)
    confounds = bold.with_name(prefix.replace(f"_{TEMPLATE_ENTITIES}", "") + CONFOUNDS_SUFFIX)
    sidecar = bold.with_name(prefix + PREPROC_SUFFIX.replace(".nii.gz", ".json"))
    missing = [p.name for p in (mask, confounds, sidecar) if not p.is_file()]
    if missing:
        LOGGER.warning("%s left out of the networks: no %s", bold.name, ", ".join(missing))
        return None
    repetition_time = json.loads(sidecar.read_text(encoding="utf-8")).get("RepetitionTime")
    if not repetition_time:
        LOGGER.warning("%s left out of the networks: its sidecar has no RepetitionTime", bold.name)
        return None
    return Run(bold, mask, confounds, float(repetition_time))


def find_runs(
    output_dir: str | os.PathLike, participant_labels: list[str] | None = None
) -> dict[str, list[Run]]:
    """The preprocessed template-space runs of the participants (all when None), by task."""
    pattern = f"sub-*_{TEMPLATE_ENTITIES}{PREPROC_SUFFIX}"
    root = Path(output_dir)
    files = sorted([*root.glob(f"sub-*/func/{pattern}"), *root.glob(f"sub-*/ses-*/func/{pattern}")])
    wanted = {label.removeprefix("sub-") for label in participant_labels or []}
    runs: dict[str, list[Run]] = {}
    for bold in files:
        entities = parse_entities(bold)
        if wanted and entities["sub"] not in wanted:
            continue
        run = _run_of(bold)
        if run:
            runs.setdefault(entities.get("task", "unknown"), []).append(run)
    return runs


def common_mask(runs: list[Run]) -> nb.Nifti1Image:
    """The voxels inside every run's brain mask (all runs on one grid)."""
    first = load_mask(runs[0].mask)
    inside = first.get_fdata() > 0
    for run in runs[1:]:
        mask = load_mask(run.mask)
        if mask.shape != first.shape or not np.allclose(mask.affine, first.affine, atol=1e-3):
            raise ValueError(f"{run.mask} is not on the grid of {runs[0].mask}")
        inside &= mask.get_fdata() > 0
    return nb.Nifti1Image(inside.astype(np.uint8), first.affine)


def maps_image(maps: np.ndarray, mask: nb.Nifti1Image) -> nb.Nifti1Image:
    """(K, V) in-mask maps as a 4D image on the mask's grid (zero outside)."""
    data = np.zeros((*mask.shape, maps.shape[0]), np.float32)
    data[np.asanyarray(mask.dataobj) > 0] = maps.T
    return nb.Nifti1Image(data, mask.affine)


def _peak_positive(maps: np.ndarray) -> np.ndarray:
    """Each map signed so its largest absolute value is positive and scaled to 1 (as the deep
    model's maps), so the methods' maps read alike."""
    peaks = maps[np.arange(len(maps)), np.abs(maps).argmax(axis=1)]
    peaks[peaks == 0] = 1.0
    return (maps / peaks[:, None]).astype(np.float32)


def fit_baseline(
    method: str, data: list[np.ndarray], mask: nb.Nifti1Image, k: int, seed: int
) -> np.ndarray:
    """nilearn's CanICA or DictLearning on the denoised runs: maps (K, V)."""
    from nilearn.decomposition import CanICA, DictLearning
    from sklearn.exceptions import ConvergenceWarning

    sparsity = {"dictlearning": {"alpha": DICTLEARNING_ALPHA}}.get(method, {})
    estimator = {"canica": CanICA, "dictlearning": DictLearning}[method](
        **sparsity,
        mask=mask,
        n_components=k,
        standardize=False,
        detrend=False,
        random_state=seed,
        n_jobs=1,
    )
    with warnings.catch_warnings():
        # DictLearning's inner lasso steps stop short of their tolerance on every run and say
        # so hundreds of times; the maps are what the benchmark scored
        warnings.simplefilter("ignore", ConvergenceWarning)
        estimator.fit([maps_image(run, mask) for run in data])
    components = estimator.components_img_.get_fdata(dtype=np.float32)
    return _peak_positive(components[np.asanyarray(mask.dataobj) > 0].T)


def _bundle_settings(bundle: str | os.PathLike) -> tuple[dict, float, dict]:
    """The deep model's hyper-parameters (the card's architecture arguments, which override
    ``fit_networks``' defaults), the smoothing of its input (mm) and its identity for the
    sidecars."""
    from bids_dl.models.card import WEIGHTS, load_card, weights_sha256

    card = load_card(bundle)
    settings = dict(card.architecture.get("args", {}))
    smoothing = float(card.inputs.get("smoothing_fwhm_mm", DEEP_SMOOTHING_FWHM_MM))
    identity = {"Name": card.name, "Version": card.version}
    if (Path(bundle) / WEIGHTS).is_file():
        identity["SHA256"] = weights_sha256(bundle)
    return settings, smoothing, identity


def fit_deep(
    data: list[np.ndarray], mask: nb.Nifti1Image, options: NetworkOptions, k: int | None
) -> tuple[np.ndarray, dict]:
    """The deep model fitted on the group's runs (smoothed in ``mask`` first): maps (K, V) and
    what its sidecar reports."""
    from bids_dl.models.network_extraction import fit_networks, smooth_run

    settings, smoothing, identity = _bundle_settings(options.bundle)
    inside = np.asanyarray(mask.dataobj) > 0
    smoothed = [smooth_run(run, inside, mask.affine, smoothing) for run in data]
    fit = fit_networks(
        smoothed,
        k,
        settings=settings,
        seed=options.seed,
        device=options.device,
    )
    report = {
        "Model": identity,
        "InputSmoothingFWHM": smoothing,
        **_deep_choice(k, fit.candidates, settings),
        "Stability": float(fit.stability),
        "StabilityMeasure": "mean Hungarian-matched spatial correlation between fits of "
        "different seeds",
        "CandidateStability": {str(n): float(v) for n, v in fit.candidates.items()},
    }
    return np.asarray(fit.maps, np.float32), report


def _deep_choice(k: int | None, candidates: dict[int, float], settings: dict) -> dict:
    """How the deep model chose its number of networks, when it chose it: its floor reached,
    or the fallback to the most stable candidate."""
    from bids_dl.models.network_extraction import DEFAULT_SETTINGS

    floor = settings.get("stability_floor", DEFAULT_SETTINGS["stability_floor"])
    if k is not None or not candidates or max(candidates.values()) >= floor:
        return {}
    return {"NumberOfComponentsChosenBy": FALLBACK_CHOICE.format(floor=floor)}


@dataclass
class CoarseGrid:
    """The blocks of :data:`DECOMPOSITION_BLOCK` voxels the decompositions run on: their mask
    and the sparse (blocks x voxels) matrix that averages a run's voxels into blocks."""

    mask: nb.Nifti1Image
    average: object

    def reduce(self, data: np.ndarray) -> np.ndarray:
        """(T, V) in-mask voxels -> (T, B) block means."""
        return np.asarray(self.average @ data.T, dtype=np.float32).T


def coarse_grid(mask: nb.Nifti1Image, block: int = DECOMPOSITION_BLOCK) -> CoarseGrid:
    """Blocks of ``block``^3 voxels of ``mask``'s grid holding at least
    :data:`MIN_BLOCK_SHARE` of mask voxels; the coarse affine puts each block's centre where
    the centre of its voxels is."""
    from scipy import sparse

    inside = np.argwhere(np.asanyarray(mask.dataobj) > 0)
    shape = tuple(-(-np.asarray(mask.shape) // block))
    blocks = np.ravel_multi_index(tuple((inside // block).T), shape)
    counts = np.bincount(blocks, minlength=int(np.prod(shape)))
    kept = np.flatnonzero(counts >= MIN_BLOCK_SHARE * block**3)
    row = np.full(counts.size, -1)
    row[kept] = np.arange(kept.size)
    voxels = np.flatnonzero(row[blocks] >= 0)
    rows = row[blocks[voxels]]
    weights = 1.0 / counts[blocks[voxels]]
    average = sparse.csr_matrix((weights, (rows, voxels)), shape=(kept.size, len(inside)))
    coarse = np.zeros(int(np.prod(shape)), np.uint8)
    coarse[kept] = 1
    affine = mask.affine @ np.diag([block] * 3 + [1])
    affine[:3, 3] = nb.affines.apply_affine(mask.affine, [(block - 1) / 2] * 3)
    return CoarseGrid(nb.Nifti1Image(coarse.reshape(shape), affine), average)


def upsample_maps(maps: np.ndarray, grid: CoarseGrid, mask: nb.Nifti1Image) -> np.ndarray:
    """(K, B) block maps -> (K, V) maps on ``mask``'s voxels (trilinear interpolation)."""
    from nilearn.image import resample_to_img

    coarse = maps_image(maps, grid.mask)
    fine = resample_to_img(coarse, mask, interpolation="continuous", copy_header=True,
                           force_resample=True)  # fmt: skip
    return fine.get_fdata(dtype=np.float32)[np.asanyarray(mask.dataobj) > 0].T


@dataclass
class TaskData:
    """The denoised runs of one task in its common mask, and their block means on the
    decomposition's coarse grid."""

    task: str
    runs: list[Run]
    mask: nb.Nifti1Image
    data: list[np.ndarray]
    kept: list[np.ndarray]
    grid: CoarseGrid
    coarse: list[np.ndarray]


def _cleaned(run: Run, mask: nb.Nifti1Image) -> tuple[np.ndarray, np.ndarray] | None:
    """A run denoised in ``mask``, or None (with a warning) when it is too short for the
    denoising."""
    try:
        return clean_run(run.bold, mask, run.confounds, run.repetition_time)
    except ValueError as error:
        LOGGER.warning("%s left out of the networks: %s", run.bold.name, error)
        return None


def load_task(task: str, runs: list[Run]) -> TaskData | None:
    """Denoise every run of a task inside the runs' common mask; None when fewer than
    :data:`MIN_RUNS` runs can be denoised."""
    mask = common_mask(runs)
    cleaned = {index: _cleaned(run, mask) for index, run in enumerate(runs)}
    usable = [index for index, result in cleaned.items() if result is not None]
    if len(usable) < MIN_RUNS:
        LOGGER.warning(
            "Task %s: %d run(s) usable, a group decomposition needs %d: no networks",
            task, len(usable), MIN_RUNS,
        )  # fmt: skip
        return None
    data, kept = [cleaned[i][0] for i in usable], [cleaned[i][1] for i in usable]
    grid = coarse_grid(mask)
    coarse = [grid.reduce(run) for run in data]
    return TaskData(task, [runs[i] for i in usable], mask, data, kept, grid, coarse)


def number_of_components(
    task: TaskData, method: str, options: NetworkOptions, deep_k: int | None
) -> tuple[int | None, str]:
    """A method's number of components (None: the deep model chooses) and how it was chosen."""
    if method == "deep":
        return options.n_components, DEEP_CHOICE if options.n_components is None else USER_CHOICE
    if options.n_components is not None:
        chosen, reason = options.n_components, USER_CHOICE
    elif deep_k is not None:
        chosen, reason = deep_k, FROM_DEEP
    else:
        chosen, reason = DEFAULT_COMPONENTS, "nilearn's default (no deep model to choose)"
    shortest = min(len(d) for d in task.data)
    if chosen >= shortest:
        chosen, reason = shortest - 1, f"{reason}, capped below the shortest run's length"
    return chosen, reason


def decompose(task: TaskData, method: str, options: NetworkOptions, deep_k: int | None) -> dict:
    """Fit one method on a task; return its maps and the sidecar's description of the fit."""
    k, reason = number_of_components(task, method, options, deep_k)
    start = time.perf_counter()
    if method == "deep":
        maps, report = fit_deep(task.coarse, task.grid.mask, options, k)
    else:
        maps, report = fit_baseline(method, task.coarse, task.grid.mask, k, options.seed), {}
    report["ElapsedSeconds"] = round(time.perf_counter() - start, 2)
    report["DecompositionGrid"] = (
        f"blocks of {DECOMPOSITION_BLOCK}x{DECOMPOSITION_BLOCK}x{DECOMPOSITION_BLOCK} voxels "
        "(4 mm), maps interpolated back to 2 mm"
    )
    maps = _peak_positive(upsample_maps(maps, task.grid, task.mask))
    report.setdefault("NumberOfComponentsChosenBy", reason)
    return {"maps": maps, "report": report}


def _group_sidecar(task: TaskData, options: NetworkOptions, output_dir: Path) -> dict:
    return {
        "NumberOfRuns": len(task.runs),
        "NumberOfParticipants": len({r.participant for r in task.runs}),
        "Mask": "intersection of the runs' brain masks",
        "MaskVoxels": int(np.asanyarray(task.mask.dataobj).sum()),
        "Denoising": DENOISING_STRATEGY,
        "Software": software_versions(),
        "RandomSeed": options.seed,
        "Sources": [bids_uri(r.bold, output_dir) for r in task.runs],
    }


def write_group_maps(
    output_dir: Path, task: TaskData, method: str, fit: dict, options: NetworkOptions
) -> Path:
    """``group/func/task-T_space-..._desc-<method>_components.nii.gz`` and its sidecar."""
    maps = fit["maps"]
    name = f"task-{task.task}_{TEMPLATE_ENTITIES}_desc-{method}_components"
    path = write_nifti_atomic(
        maps_image(maps, task.mask), output_dir / GROUP_FOLDER / f"{name}.nii.gz"
    )
    sidecar = _group_sidecar(task, options, output_dir)
    sidecar.update(fit["report"], Method=method, NumberOfComponents=int(maps.shape[0]))
    write_json_atomic(sidecar, path.with_name(f"{name}.json"))
    return path


def write_run_networks(
    output_dir: Path, task: TaskData, index: int, method: str, group_maps: Path, maps: np.ndarray
) -> list[Path]:
    """Dual regression of a group decomposition on one run: subject maps, time courses and
    their Ledoit-Wolf correlation, beside the run."""
    from bids_dl.models.network_extraction import dual_regression

    run, kept = task.runs[index], task.kept[index]
    courses, subject_maps = dual_regression(maps, task.data[index])
    columns = [COMPONENT_COLUMN.format(k) for k in range(maps.shape[0])]
    folder = run.bold.parent
    sources = [bids_uri(run.bold, output_dir), bids_uri(group_maps, output_dir)]
    described = {"Method": method, "Sources": sources, "DualRegression": True}
    image = write_nifti_atomic(
        maps_image(subject_maps, task.mask),
        folder / f"{run.prefix}_desc-{method}_components.nii.gz",
    )
    write_json_atomic(described, folder / f"{run.prefix}_desc-{method}_components.json")
    n_volumes = nb.load(run.bold).shape[3]
    series = write_timeseries(
        courses,
        kept,
        n_volumes,
        columns,
        folder / f"{run.prefix}_desc-{method}_timeseries.tsv",
        described,
    )
    relmat = write_relmat(
        ledoit_wolf_correlation(courses),
        columns,
        folder / f"{run.prefix}_seg-{method}_meas-PearsonCorrelation_relmat.tsv",
        sources,
        metadata={
            "Nodes": f"the {method} group networks, dual-regressed on the run",
            "Denoising": DENOISING_STRATEGY,
        },
    )
    return [image, series, relmat]


def write_task_networks(output_dir: Path, task: TaskData, options: NetworkOptions) -> list[Path]:
    """Every method on one task: group maps, then each run's dual regression."""
    written: list[Path] = []
    deep_k = None
    for method in options.active_methods:
        try:
            fit = decompose(task, method, options, deep_k)
        except ValueError as error:  # nilearn's "No component found in data", too few volumes
            LOGGER.warning("Task %s: no %s networks (%s)", task.task, method, error)
            continue
        if method == "deep":
            deep_k = int(fit["maps"].shape[0])
        group_maps = write_group_maps(output_dir, task, method, fit, options)
        written.append(group_maps)
        for index in range(len(task.runs)):
            written += write_run_networks(output_dir, task, index, method, group_maps, fit["maps"])
        LOGGER.info(
            "Networks of task %s by %s: %d components", task.task, method, fit["maps"].shape[0]
        )
    return written


def write_network_outputs(
    output_dir: str | os.PathLike,
    participant_labels: list[str] | None,
    options: NetworkOptions,
) -> list[Path]:
    """Decompose each task's runs with every method; return the files written.

    A task with fewer than :data:`MIN_RUNS` runs is skipped with a warning.
    """
    output_dir = Path(output_dir)
    written: list[Path] = []
    for task_label, runs in sorted(find_runs(output_dir, participant_labels).items()):
        if len(runs) < MIN_RUNS:
            LOGGER.warning(
                "Task %s: %d preprocessed run(s), a group decomposition needs %d: no networks",
                task_label,
                len(runs),
                MIN_RUNS,
            )
            continue
        task = load_task(task_label, runs)
        if task is not None:
            written += write_task_networks(output_dir, task, options)
    return written


def network_summary(output_dir: str | os.PathLike) -> dict[str, dict[str, dict]]:
    """What the report shows, read back from the group sidecars: per task and method the
    components file, K, the deep model's stability and the seconds of the fit."""
    summary: dict[str, dict[str, dict]] = {}
    for sidecar in sorted((Path(output_dir) / GROUP_FOLDER).glob("task-*_components.json")):
        content = json.loads(sidecar.read_text(encoding="utf-8"))
        task = parse_entities(f"sub-x_{sidecar.name}")["task"]
        summary.setdefault(task, {})[content["Method"]] = {
            "components": sidecar.with_name(sidecar.name.replace(".json", ".nii.gz")),
            "n_components": content["NumberOfComponents"],
            "chosen_by": content["NumberOfComponentsChosenBy"],
            "stability": content.get("Stability"),
            "seconds": content["ElapsedSeconds"],
        }
    return summary
