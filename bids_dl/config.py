"""The settings of one run, gathered in one object that the CLI fills and the workflows read."""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

#: nipype execution plugins bids_dl runs on.
PLUGINS = ("MultiProc", "Linear", "SLURM", "SLURMGraph")
#: Analyses bids_dl knows, in the order they run.
ANALYSES = ("anat", "tumor", "wmh", "dwi", "asl", "func", "pet")
#: Group-level decompositions of BOLD runs into networks: the deep model, nilearn's baselines.
NETWORK_METHODS = ("deep", "canica", "dictlearning")
#: Group-level models of ``--classify`` (``bids_dl.models.classifier_estimators``), in run order.
CLASSIFY_MODELS = ("linear", "svm", "mlp", "cnn")
#: Reference regions of PET SUVR (structures of the structures model), the default first.
PET_REFERENCE_REGIONS = ("cerebellum-gm", "cerebellum", "brainstem")


@dataclass
class ExecutionSettings:
    """What to process and where."""

    bids_dir: Path
    output_dir: Path
    work_dir: Path
    participant_labels: list[str] = field(default_factory=list)
    session_labels: list[str] = field(default_factory=list)
    bids_filters: dict = field(default_factory=dict)
    analyses: list[str] = field(default_factory=lambda: list(ANALYSES))
    #: whether ``--analyses`` named them (then a subject without the inputs is an error);
    #: otherwise each analysis runs where its inputs exist
    analyses_requested: bool = False
    skip_bids_validation: bool = False
    dry_run: bool = False
    boilerplate_only: bool = False
    reports_only: bool = False
    #: -1 errors only (``--quiet``), 0 progress lines, 1 more (``-v``), 2 debug (``-vv``)
    verbosity: int = 0
    run_uuid: str = field(
        default_factory=lambda: datetime.now(UTC).strftime("%Y%m%d-%H%M%S_") + uuid.uuid4().hex[:8]
    )


@dataclass
class NipypeSettings:
    """How nipype executes the graph."""

    plugin: str = "MultiProc"
    plugin_args: dict = field(default_factory=dict)
    nprocs: int = 1
    omp_nthreads: int = 1
    mem_gb: float | None = None
    stop_on_first_crash: bool = False
    #: record each node's peak memory and time (nipype's resource monitor)
    resource_monitor: bool = False
    #: deep-learning nodes run on a local GPU (then one at a time)
    use_gpu: bool = False
    #: extra sbatch arguments of the deep-learning nodes under Slurm (``--plugin-config``)
    gpu_sbatch_args: str = ""

    def plugin_settings(self) -> dict:
        """Arguments of ``Workflow.run``: the plugin and its resource limits."""
        args = dict(self.plugin_args)
        if self.plugin == "MultiProc":
            args.setdefault("n_procs", self.nprocs)
            if self.mem_gb:
                args.setdefault("memory_gb", self.mem_gb)
            args.setdefault("raise_insufficient", True)
            if self.use_gpu:  # a deep-learning node takes omp_nthreads GPU slots
                args.setdefault("n_gpu_procs", self.omp_nthreads)
            # Forking a process that already runs BLAS/ITK threads can deadlock the workers.
            args.setdefault("mp_context", "forkserver")
        elif self.plugin == "SLURMGraph":  # the plugin fails on empty arguments
            args.setdefault("dont_resubmit_completed_jobs", False)
        return {"plugin": self.plugin, "plugin_args": args}


@dataclass
class WorkflowSettings:
    """Choices that change the results."""

    device: str = "auto"
    sloppy: bool = False
    #: ANTs' random seed (``ANTS_RANDOM_SEED``), None for ANTs' own
    random_seed: int | None = None
    #: ``--skull-strip-t1w``: auto (detect already skull-stripped T1w images), force or skip
    skull_strip_t1w: str = "auto"
    #: folder of the brain-mask bundle, or None for the classical template baseline
    brain_extraction_bundle: str | None = None
    #: folder of the structures bundle, or None for the classical Atropos tissues
    segmentation_bundle: str | None = None
    #: folders of the lesion bundles (None: that analysis cannot run)
    tumor_bundle: str | None = None
    wmh_bundle: str | None = None
    #: folder of the DTI network's bundle, or None for the measured tensor fit only
    dwi_bundle: str | None = None
    #: ``--dwi-denoise``: auto (MP-PCA for series of at least ``MIN_MPPCA_VOLUMES``), mppca, none
    dwi_denoise: str = "auto"
    #: folder of the ASL enhancement network's bundle, or None for the measured CBF only
    asl_bundle: str | None = None
    #: ``--dummy-scans``: initial BOLD volumes to flag as non-steady-state (None: detected)
    dummy_scans: int | None = None
    #: folder of the functional-network model's bundle (group level), or None for the
    #: baselines only
    networks_bundle: str | None = None
    #: ``--network-methods``: group decompositions to run (deep, canica, dictlearning)
    network_methods: list[str] = field(default_factory=lambda: list(NETWORK_METHODS))
    #: ``--network-components``: networks per decomposition (None: the deep model chooses)
    network_components: int | None = None
    #: folder of the PET imputation model's bundle, or None (no imputed PET)
    pet_imputation_bundle: str | None = None
    #: ``--pet-imputation always``: impute every participant's PET, measured or not (evaluation)
    pet_impute_everywhere: bool = False
    #: ``--pet-window``: minutes after injection summed into the static image (None: late frames)
    pet_window: tuple[float, float] | None = None
    #: ``--pet-reference``: the SUVR reference region (``PET_REFERENCE_REGIONS``)
    pet_reference: str = PET_REFERENCE_REGIONS[0]
    #: ``--pet-suv``: SUV is required (a PET without dose, decay correction or weight is an error)
    pet_suv_required: bool = False
    #: ``--classify``: the participants.tsv column the group level predicts (None: none)
    classify_target: str | None = None
    #: ``--threshold``: class 1 is ``classify_target >= threshold`` (a numeric column)
    classify_threshold: float | None = None
    #: ``--features``: prefixes of the measure columns used as features
    classify_features: list[str] = field(default_factory=list)
    #: ``--image-features``: BIDS patterns of maps used as features (desc-wmh_mask...)
    classify_image_features: list[str] = field(default_factory=list)
    #: ``--covariates``: participants.tsv columns used as features (age, sex...)
    classify_covariates: list[str] = field(default_factory=list)
    #: ``--classify-models``: models to cross-validate (empty: every one that applies)
    classify_models: list[str] = field(default_factory=list)
    #: ``--folds``: outer folds of the nested cross-validation (fewer for small classes)
    classify_folds: int = 5
    #: ``--classify-groups``: the participants.tsv column whose groups no fold splits
    classify_groups: str | None = None
    #: ``--classifier``: a classify bundle whose prediction joins each participant's measures
    classifier_bundle: str | None = None


@dataclass
class Config:
    """All settings of a run."""

    execution: ExecutionSettings
    nipype: NipypeSettings = field(default_factory=NipypeSettings)
    workflow: WorkflowSettings = field(default_factory=WorkflowSettings)

    @property
    def template_dir(self) -> Path:
        return self.execution.work_dir / "templates"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)
