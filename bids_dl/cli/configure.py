"""From the command line's options to a checked :class:`~bids_dl.config.Config` and the
participants' inputs, before any work starts (:class:`~bids_dl.inputs.InputError` if not)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from bids_dl.config import (
    ANALYSES,
    NETWORK_METHODS,
    PLUGINS,
    Config,
    ExecutionSettings,
    NipypeSettings,
    WorkflowSettings,
)
from bids_dl.inputs import (
    InputError,
    SeriesOptions,
    SubjectInputs,
    check_folders,
    collect_inputs,
    load_filters,
    plan_analyses,
    plan_pet,
    plan_skull_stripping,
    strip_prefix,
    validate_dataset,
)

LOGGER = logging.getLogger("bids_dl")


def build_config(options: dict) -> Config:
    """The run's settings from the parsed options; the folders and model bundles checked."""
    bids_dir, output_dir = options["bids_dir"], options["output_dir"]
    work_dir = options["work_dir"].absolute()
    check_folders(bids_dir, output_dir, work_dir)
    unknown = sorted(set(options["analyses"]) - set(ANALYSES))
    if unknown:
        raise InputError(f"unknown analysis {', '.join(unknown)} (known: {', '.join(ANALYSES)})")
    execution = ExecutionSettings(
        bids_dir=bids_dir.absolute(),
        output_dir=output_dir.absolute(),
        work_dir=work_dir,
        participant_labels=strip_prefix(options["participant_label"], "sub"),
        session_labels=strip_prefix(options["session_label"], "ses"),
        bids_filters=load_filters(options["bids_filter_file"]),
        analyses=list(options["analyses"]) or list(ANALYSES),
        analyses_requested=bool(options["analyses"]),
        skip_bids_validation=options["skip_bids_validation"],
        dry_run=options["dry_run"],
        boilerplate_only=options["boilerplate_only"],
        reports_only=options["reports_only"],
        verbosity=verbosity(options),
    )
    return Config(execution=execution, nipype=_nipype(options), workflow=_workflow(options))


def verbosity(options: dict) -> int:
    """-1 with ``--quiet``, else the number of ``-v``."""
    if options["quiet"] and options["verbose"]:
        raise InputError("--quiet and --verbose contradict each other: give one of them")
    return -1 if options["quiet"] else options["verbose"]


def _nipype(options: dict) -> NipypeSettings:
    nprocs = options["nprocs"] or os.cpu_count() or 1
    plugin = {"plugin": options["plugin"], "plugin_args": {}, "gpu_sbatch_args": ""}
    if options["plugin_config"]:
        plugin = _read_plugin_config(options["plugin_config"], options["plugin"])
    return NipypeSettings(
        plugin=plugin["plugin"],
        plugin_args=plugin["plugin_args"],
        gpu_sbatch_args=plugin["gpu_sbatch_args"],
        use_gpu=_local_gpu(options["device"], plugin["plugin"]),
        resource_monitor=options["resource_monitor"],
        nprocs=nprocs,
        omp_nthreads=options["omp_nthreads"] or min(nprocs, 8),
        mem_gb=options["mem_gb"],
        stop_on_first_crash=options["stop_on_first_crash"],
    )


def _workflow(options: dict) -> WorkflowSettings:
    return WorkflowSettings(
        device=options["device"],
        sloppy=options["sloppy"],
        random_seed=options["random_seed"],
        skull_strip_t1w=options["skull_strip_t1w"],
        brain_extraction_bundle=_model_bundle(
            options["brain_extraction_model"],
            "--brain-extraction-model",
            task="brain_mask",
            classical="template",
        ),
        segmentation_bundle=_model_bundle(
            options["segmentation_model"],
            "--segmentation-model",
            task="structures",
            classical="atropos",
        ),
        tumor_bundle=_model_bundle(
            options["tumor_model"], "--tumor-model", task="tumor", classical="none"
        ),
        wmh_bundle=_model_bundle(options["wmh_model"], "--wmh-model", task="wmh", classical="none"),
        dwi_bundle=_model_bundle(options["dwi_model"], "--dwi-model", task="dti", classical="none"),
        dwi_denoise=options["dwi_denoise"],
        asl_bundle=_model_bundle(options["asl_model"], "--asl-model", task="asl", classical="none"),
        dummy_scans=options["dummy_scans"],
        networks_bundle=_model_bundle(
            options["networks_model"], "--networks-model", task="networks", classical="none"
        ),
        network_methods=list(options["network_methods"]) or list(NETWORK_METHODS),
        network_components=options["network_components"],
        **_pet_settings(options),
        **_classify_settings(options),
    )


def _pet_settings(options: dict) -> dict:
    """The PET fields of :class:`WorkflowSettings`: ``--pet-imputation always`` is the shipped
    model for every participant; a window must end after it starts."""
    window = options["pet_window"]
    if window and window[1] <= window[0]:
        raise InputError(f"--pet-window {window[0]:g} {window[1]:g}: END must be after START")
    choice = options["pet_imputation"]
    return {
        "pet_imputation_bundle": _model_bundle(
            "auto" if choice == "always" else choice,
            "--pet-imputation",
            task="pet",
            classical="none",
        ),
        "pet_impute_everywhere": choice == "always",
        "pet_window": tuple(window) if window else None,
        "pet_reference": options["pet_reference"],
        "pet_suv_required": options["pet_suv"],
    }


#: the options that only mean something with ``--classify``
CLASSIFY_OPTIONS = {
    "threshold": "--threshold",
    "features": "--features",
    "image_features": "--image-features",
    "covariates": "--covariates",
    "classify_models": "--classify-models",
    "folds": "--folds",
    "classify_groups": "--classify-groups",
}


def _classify_settings(options: dict) -> dict:
    """The classification fields of :class:`WorkflowSettings`: ``--classify`` and its options
    at the group level, ``--classifier`` (a checked classify bundle) at the participant level."""
    group = options["analysis_level"] == "group"
    given = [name for key, name in CLASSIFY_OPTIONS.items() if options[key] not in (None, ())]
    if options["classify"] is None and given:
        raise InputError(f"{', '.join(given)}: give --classify COLUMN too (group level)")
    if options["classify"] is not None and not group:
        raise InputError(
            "--classify trains at the group level: run the participant level first, then "
            "'bids_dl BIDS_DIR OUTPUT_DIR group --classify COLUMN'"
        )
    if options["classifier"] is not None and group:
        raise InputError(
            "--classifier predicts at the participant level; the group level trains with --classify"
        )
    bundle = None
    if options["classifier"] is not None:
        bundle = _classifier_bundle(options["classifier"])
    return {
        "classify_target": options["classify"],
        "classify_threshold": options["threshold"],
        "classify_features": list(options["features"]),
        "classify_image_features": list(options["image_features"]),
        "classify_covariates": list(options["covariates"]),
        "classify_models": list(options["classify_models"]),
        "classify_folds": options["folds"] or 5,
        "classify_groups": options["classify_groups"],
        "classifier_bundle": bundle,
    }


def _classifier_bundle(folder: Path) -> str:
    """``--classifier``: a folder whose card is a classify model with its feature spec."""
    from bids_dl.classify_prediction import read_bundle

    if not folder.is_dir():
        raise InputError(f"--classifier {folder}: no such folder (a bundle/ folder of a training)")
    read_bundle(folder, "--classifier")
    return str(folder.absolute())


def collect_subjects(config: Config) -> dict[str, SubjectInputs]:
    """Validate the dataset, find each participant's inputs and plan what runs for whom."""
    execution = config.execution
    if not execution.skip_bids_validation and not execution.reports_only:
        for code in validate_dataset(execution.bids_dir, execution.participant_labels):
            LOGGER.info("BIDS validator warning: %s", code)
    subjects = collect_inputs(
        execution.bids_dir,
        execution.participant_labels,
        execution.session_labels,
        execution.bids_filters,
        database_dir=execution.work_dir / "bids_db",
        options=SeriesOptions(
            dummy_scans=config.workflow.dummy_scans,
            require_suv=config.workflow.pet_suv_required,
            pet_window=config.workflow.pet_window,
        ),
    )
    plan_analyses(
        subjects,
        execution.analyses,
        execution.analyses_requested,
        {"tumor": config.workflow.tumor_bundle, "wmh": config.workflow.wmh_bundle},
    )
    settings = config.workflow
    plan_pet(
        subjects,
        execution.analyses,
        execution.analyses_requested,
        imputation=settings.pet_imputation_bundle is not None,
        everywhere=settings.pet_impute_everywhere,
        structures=settings.segmentation_bundle is not None,
    )
    plan_skull_stripping(subjects, config.workflow.skull_strip_t1w)
    if settings.classifier_bundle:
        from bids_dl.group_classify import check_classifier_covariates

        check_classifier_covariates(
            Path(settings.classifier_bundle), execution.bids_dir, list(subjects)
        )
    return subjects


def _model_bundle(choice: str, option: str, task: str, classical: str) -> str | None:
    """Resolve a model option to a checked bundle folder, or None for the classical method.

    ``auto`` is the shipped bundle of ``task`` when there is one; ``classical`` names the
    baseline; anything else is a shipped name or a bundle folder whose card is for ``task``.
    """
    from bids_dl.models.card import BundleError, load_card
    from bids_dl.models.registry import find_bundle, shipped_bundles

    if choice == classical:
        return None
    if choice == "auto":
        shipped = shipped_bundles().get(task)
        return str(shipped) if shipped else None
    try:
        folder = find_bundle(choice)
        card = load_card(folder)
    except BundleError as error:
        raise InputError(f"{option}: {error}") from error
    if card.task != task:
        raise InputError(f"{option}: {folder} is a {card.task!r} model, not a {task!r} model")
    return str(folder.absolute())


def _local_gpu(device: str, plugin: str) -> bool:
    """Whether the deep-learning nodes run on a GPU of this machine (InputError if asked for
    and absent). Under Slurm the GPUs are on the compute nodes: ``auto`` decides there."""
    from bids_dl.execution import SLURM_PLUGINS

    if device == "cpu" or plugin in SLURM_PLUGINS:
        return False
    from bids_dl.models.device import resolve_device

    local = resolve_device("auto")
    if device == "cuda" and local != "cuda":
        raise InputError("--device cuda was asked for, but torch sees no CUDA device")
    return local == "cuda"


def _read_plugin_config(path: Path, plugin: str) -> dict:
    """``--plugin-config``: ``plugin``, ``plugin_args`` and ``gpu_sbatch_args`` (YAML/JSON)."""
    import yaml

    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise InputError(f"--plugin-config {path}: not valid YAML ({problem}{where})") from error
    known = {"plugin", "plugin_args", "gpu_sbatch_args"}
    if not isinstance(content, dict) or set(content) - known:
        raise InputError(
            f"--plugin-config {path}: expected a mapping with keys among {sorted(known)}"
        )
    settings = {
        "plugin": content.get("plugin", plugin),
        "plugin_args": content.get("plugin_args") or {},
        "gpu_sbatch_args": content.get("gpu_sbatch_args") or "",
    }
    if settings["plugin"] not in PLUGINS:
        raise InputError(f"--plugin-config {path}: plugin must be one of {', '.join(PLUGINS)}")
    if not isinstance(settings["plugin_args"], dict):
        raise InputError(f"--plugin-config {path}: plugin_args must be a mapping")
    return settings
