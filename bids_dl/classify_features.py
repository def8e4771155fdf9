"""The features of group-level classification (``bids_dl-classify``; ``bids_dl ... group
--classify``): a label from ``participants.tsv`` and the features that a derivatives folder
holds, gathered into a :class:`~bids_dl.models.classifier_data.Cohort`.

Any derivatives folder works, not only bids_dl's. Image features are found by their BIDS
entities (``desc-lesion_mask`` matches ``sub-*/**/sub-*_desc-lesion_mask.nii.gz``, whatever its
other entities), tabular ones by column prefix in the participant-level ``*_measures.tsv``
files. :func:`plan_training` and :func:`plan_prediction` run every check on headers and tables
only, so a bad input fails in seconds; :func:`load_cohort` then reads the images
(:mod:`bids_dl.classify_images` finds, checks and reads them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from bids_dl.classify_images import (
    Atlas,
    atlas_on_grid,
    check_grid,
    common_grid,
    image_key,
    images_by_participant,
    read_atlas,
    read_image_features,
)
from bids_dl.inputs import InputError
from bids_dl.models.classifier_data import Cohort

#: How a missing value is written (BIDS says ``n/a``; spreadsheets write the others).
MISSING_VALUES = ("", "n/a", "N/A", "NA", "nan", "NaN")
#: A top-coded number: HIPAA de-identification writes every age over 89 as ``89+``; it is
#: read as 89 (an underestimate for those participants, the only value the table gives).
TOP_CODED = r"\d+(?:\.\d*)?\+"
#: The participant-level tables whose columns ``--features`` picks from.
MEASURES_GLOB = "sub-*/**/sub-*_measures.tsv"
#: the columns a bids_dl prediction adds to a participant's measures (``<target>_predicted``
#: and ``<target>_model``): never features, so that a model cannot learn from an older one
PREDICTION_COLUMNS = ("_predicted", "_model")


@dataclass(frozen=True)
class Target:
    """What is predicted: a column of participants.tsv, and how its values become labels."""

    column: str
    task: str
    threshold: float | None = None
    class_names: tuple[str, ...] = ()
    #: a text label -> 0 or 1 (text targets)
    coding: dict[str, int] | None = None


@dataclass(frozen=True)
class Covariate:
    """A column of participants.tsv used as a feature; text values get the 0/1 ``coding``
    learnt at training (sorted: F -> 0, M -> 1), so a prediction codes them alike."""

    column: str
    coding: dict[str, int] | None = None


@dataclass(frozen=True)
class FeatureSpec:
    """Everything needed to compute the same features again at prediction; saved in the
    bundle as ``features.json``."""

    target: Target
    covariates: tuple[Covariate, ...] = ()
    prefixes: tuple[str, ...] = ()
    #: the measure columns that the prefixes picked, in table order
    columns: tuple[str, ...] = ()
    images: tuple[str, ...] = ()
    #: (label value, region name) of the atlas, in column order; empty without ``--atlas``
    regions: tuple[tuple[int, str], ...] = ()
    #: images are kept (block means at ``image_voxel_mm``) for a convolutional network
    keep_images: bool = False
    image_voxel_mm: float = 6.0
    #: the grid of the image features: {"shape": [...], "affine": [[...]]}
    grid: dict | None = None
    session: str | None = None

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The tabular features in column order: measures, regional loads, covariates."""
        loads = [f"{image_key(p)}_{name}" for p in self.images for _, name in self.regions]
        return (*self.columns, *loads, *(c.column for c in self.covariates))

    def to_json(self) -> dict:
        return {"feature_names": list(self.feature_names), **asdict(self)}

    @classmethod
    def from_json(cls, data: dict) -> FeatureSpec:
        """The spec that :meth:`to_json` saved (KeyError or TypeError when it is not one)."""
        data = {k: v for k, v in data.items() if k != "feature_names"}
        target = data.pop("target")
        return cls(
            target=Target(**{**target, "class_names": tuple(target["class_names"])}),
            covariates=tuple(Covariate(**c) for c in data.pop("covariates")),
            prefixes=tuple(data.pop("prefixes")),
            columns=tuple(data.pop("columns")),
            images=tuple(data.pop("images")),
            regions=tuple((int(v), str(n)) for v, n in data.pop("regions")),
            **data,
        )


@dataclass(frozen=True)
class FeatureOptions:
    """The command line's feature options."""

    target: str
    #: the option that names the target, in errors (``--classify`` at the BIDS-App group level)
    target_option: str = "--target"
    threshold: float | None = None
    covariates: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    images: tuple[str, ...] = ()
    atlas: Path | None = None
    atlas_names: Path | None = None
    keep_images: bool = False
    image_voxel_mm: float = 6.0
    session: str | None = None
    participant_labels: tuple[str, ...] = ()
    #: the participants.tsv column whose values no fold may split (a site, a family, the label
    #: map a synthetic participant came from); None: each participant apart
    groups: str | None = None
    #: the option that names ``groups``, in errors
    groups_option: str = "--groups"


@dataclass
class CohortPlan:
    """Checked inputs, before any image is read: who, with which label and which files."""

    spec: FeatureSpec
    participant_ids: list[str]
    target: np.ndarray
    #: measures and covariates, one row per participant (regional loads come at loading)
    table: pd.DataFrame
    #: image pattern -> participant -> file
    image_files: dict[str, dict[str, Path]]
    atlas: Atlas | None = None
    #: the atlas labels on the images' grid
    atlas_data: np.ndarray | None = None
    left_out: dict[str, int] = field(default_factory=dict)
    #: values read from a top-coded text such as ``89+``, per column
    top_coded: dict[str, int] = field(default_factory=dict)
    #: each participant's group and the column it comes from (``FeatureOptions.groups``);
    #: None: the participant itself
    groups: np.ndarray | None = None
    groups_column: str | None = None

    @property
    def fold_groups(self) -> np.ndarray:
        """What the cross-validation folds keep together, one value per participant."""
        return self.groups if self.groups is not None else np.asarray(self.participant_ids)


def read_participants(path: Path) -> pd.DataFrame:
    """``participants.tsv`` as text, indexed by ``sub-<label>`` (with or without the prefix)."""
    if not path.is_file():
        raise InputError(f"participants table {path} does not exist (--participants)")
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise InputError(f"{path} cannot be read as a TSV table ({error})") from None
    if "participant_id" not in table:
        raise InputError(f"{path} has no participant_id column")
    table = table.apply(lambda column: column.str.strip())
    ids = "sub-" + table["participant_id"].str.removeprefix("sub-")
    if ids.duplicated().any():
        raise InputError(f"{path} lists {ids[ids.duplicated()].iloc[0]} twice")
    return table.assign(participant_id=ids).set_index("participant_id")


def _column(table: pd.DataFrame, column: str, option: str) -> pd.Series:
    if column not in table:
        raise InputError(
            f"{option} {column}: no such column in participants.tsv (it has: "
            f"{', '.join(table.columns)})"
        )
    return table[column]


def is_numeric(values: pd.Series) -> bool:
    """Whether every value given is a number or a top-coded number such as ``89+``."""
    given = values[~values.isin(MISSING_VALUES)]
    numbers = pd.to_numeric(given, errors="coerce")
    return bool((numbers.notna() | given.str.fullmatch(TOP_CODED)).all())


def numeric_values(values: pd.Series, what: str) -> tuple[pd.Series, int]:
    """The numbers of a text column (NaN where missing) and how many were top-coded (``89+``
    -> 89); any other text is refused."""
    missing = values.isin(MISSING_VALUES)
    numbers = pd.to_numeric(values.where(~missing), errors="coerce").astype(float)
    top = values.str.fullmatch(TOP_CODED) & ~missing
    numbers[top] = values[top].str.rstrip("+").astype(float)
    bad = values[~missing & ~np.isfinite(numbers)]
    if len(bad):
        examples = ", ".join(repr(v) for v in bad.unique()[:3])
        raise InputError(
            f"{what} has non-numeric values ({examples}): only numbers, n/a and top-coded values "
            "such as 89+ (read as 89) are accepted"
        )
    return numbers, int(top.sum())


def parse_target(
    table: pd.DataFrame, column: str, threshold: float | None = None, option: str = "--target"
) -> tuple[Target, pd.Series]:
    """The target and each participant's label (NaN: no label). A numeric column is a
    regression, or a classification with ``threshold`` (1: ``column >= threshold``) or when
    its values are 0 and 1; a text column with two values is a classification (sorted: the
    second value is class 1). ``option``: the command line's name for the target, in errors."""
    values = _column(table, column, option)
    given = values[~values.isin(MISSING_VALUES)]
    if is_numeric(values):
        numbers, _ = numeric_values(values, f"{option} {column}")
        if threshold is not None:
            labels = (numbers >= threshold).astype(float).where(numbers.notna())
            names = (f"{column}<{threshold:g}", f"{column}>={threshold:g}")
            return Target(column, "classification", threshold, names), labels
        if len(given) and set(numbers.dropna().unique()) <= {0.0, 1.0}:
            return Target(column, "classification", None, ("0", "1")), numbers
        return Target(column, "regression"), numbers
    classes = sorted(given.unique())
    if threshold is not None:
        raise InputError(
            f"--threshold needs a numeric {option}: {column} holds text ({classes[0]!r})"
        )
    if len(classes) != 2:
        listed = ", ".join(repr(c) for c in classes[:5])
        raise InputError(
            f"{option} {column} has {len(classes)} text values ({listed}): a text target needs "
            "exactly two classes (for a numeric score, give --threshold)"
        )
    coding = {name: i for i, name in enumerate(classes)}
    return Target(column, "classification", None, tuple(classes), coding), values.map(coding)


def parse_covariates(
    table: pd.DataFrame, columns: tuple[str, ...], saved: tuple[Covariate, ...] = ()
) -> tuple[tuple[Covariate, ...], pd.DataFrame, dict[str, int]]:
    """The covariates (their coding), their values (NaN: missing) and the top-coded counts.

    A numeric column is read as numbers (``89+`` -> 89); a text column with at most two values
    is coded 0/1 in sorted order (``F`` -> 0, ``M`` -> 1), or with the ``saved`` coding of a
    trained model; other text is refused.
    """
    coded = {c.column: c.coding for c in saved}
    covariates, values, top_coded = [], {}, {}
    for column in columns:
        text = _column(table, column, "--covariates")
        coding = coded.get(column)
        if coding is None and is_numeric(text):
            values[column], top_coded[column] = numeric_values(text, f"covariate {column}")
            covariates.append(Covariate(column))
            continue
        given = sorted(text[~text.isin(MISSING_VALUES)].unique())
        if coding is None:
            if len(given) > 2:
                words = [v for v in given if not is_numeric(pd.Series([v]))]
                raise InputError(
                    f"covariate {column} has text values ({_listed(words)}): a covariate holds "
                    "numbers (n/a where unknown, 89+ read as 89) or two text values, coded 0/1 "
                    "in sorted order"
                )
            coding = {value: i for i, value in enumerate(given)}
        unknown = [v for v in given if v not in coding]
        if unknown:
            raise InputError(
                f"covariate {column} has values the model was not trained on "
                f"({_listed(unknown)}): it codes {coding}"
            )
        values[column] = text.map(coding).astype(float)
        covariates.append(Covariate(column, coding))
    return tuple(covariates), pd.DataFrame(values, index=table.index), top_coded


def _listed(values: list[str], most: int = 3) -> str:
    return ", ".join(repr(v) for v in values[:most]) + (", ..." if len(values) > most else "")


def read_measures(
    derivatives_dir: Path,
    participant_ids: list[str],
    prefixes: tuple[str, ...],
    session: str | None,
    columns: tuple[str, ...] | None = None,
) -> pd.DataFrame:
    """The measure columns that start with one of ``prefixes`` (or exactly ``columns``, those
    a trained model reads), one row per participant, from each participant's
    ``*_measures.tsv`` files (their columns joined)."""
    rows: dict[str, dict[str, str]] = {}
    where: dict[str, dict[str, Path]] = {}
    wanted = set(participant_ids)
    for path in sorted(derivatives_dir.glob(MEASURES_GLOB)):
        participant = path.name.split("_")[0]
        if participant not in wanted or (session and f"_ses-{session}_" not in path.name):
            continue
        table = _read_measures_table(path)
        for column, value in table.iloc[0].items():
            if column in ("participant_id", "session_id"):
                continue
            if column in where.get(participant, {}):
                raise InputError(
                    f"{participant}: column {column} is in {where[participant][column].name} and "
                    f"{path.name}; choose one session with --session-label"
                )
            rows.setdefault(participant, {})[column] = value.strip()
            where.setdefault(participant, {})[column] = path
    missing = [p for p in participant_ids if p not in rows]
    if missing:
        raise InputError(
            f"{len(missing)} participant(s) have no {MEASURES_GLOB} in {derivatives_dir} "
            f"({', '.join(missing[:5])}): run the participant level for them or leave them out"
        )
    table = pd.DataFrame.from_dict(rows, orient="index")
    if columns is None:
        return _select_columns(table, prefixes)
    for column in columns:
        lacking = table.index[table[column].isna()] if column in table else table.index
        if len(lacking):
            raise InputError(
                f"{lacking[0]} has no {column} in its measures tables, and the model needs it"
            )
    return table[list(columns)]


def is_prediction_column(column: str, columns) -> bool:
    """Whether ``column`` is one of the pair a bids_dl prediction writes (``<target>_predicted``
    and ``<target>_model``)."""
    for suffix in PREDICTION_COLUMNS:
        if column.endswith(suffix):
            stem = column.removesuffix(suffix)
            return all(f"{stem}{other}" in columns for other in PREDICTION_COLUMNS)
    return False


def _read_measures_table(path: Path) -> pd.DataFrame:
    """One participant-level table: a header and one row."""
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise InputError(f"{path} cannot be read as a TSV table ({error})") from None
    if len(table) != 1:
        raise InputError(f"{path} has {len(table)} rows: a participant-level table has one")
    return table


def _select_columns(table: pd.DataFrame, prefixes: tuple[str, ...]) -> pd.DataFrame:
    columns = [c for c in table.columns if not is_prediction_column(c, table.columns)]
    for prefix in prefixes:
        if not any(c.startswith(prefix) for c in columns):
            raise InputError(
                f"--features {prefix}: no measure column starts with it (columns: "
                f"{', '.join(columns[:12])}{', ...' if len(columns) > 12 else ''})"
            )
    chosen = [c for c in columns if c.startswith(prefixes)]
    lacking = table[chosen].isna().any(axis=1)
    if lacking.any():
        participant = table.index[lacking][0]
        column = next(c for c in chosen if pd.isna(table.loc[participant, c]))
        raise InputError(f"{participant} has no {column} in its measures tables")
    return table[chosen]


def plan_training(derivatives_dir: Path, participants: Path, options: FeatureOptions) -> CohortPlan:
    """Check the label, covariates and feature files of every labelled participant; those
    without a label, a covariate or a measure (n/a) are left out and counted."""
    if not options.prefixes and not options.covariates and not options.images:
        raise InputError("no features: give --features, --image-features or --covariates")
    if options.atlas is not None and not options.images:
        raise InputError("--atlas summarises image features: give --image-features too")
    table = _restrict(read_participants(participants), options.participant_labels, participants)
    target, labels = parse_target(table, options.target, options.threshold, options.target_option)
    covariates, covariate_values, top_coded = parse_covariates(table, options.covariates)
    atlas = read_atlas(options.atlas, options.atlas_names) if options.atlas else None
    left_out = {"no label": int(labels.isna().sum())}
    labels = labels.dropna()
    if options.groups:
        groups = _column(table, options.groups, options.groups_option).replace("n/a", np.nan)
        missing = groups.loc[labels.index].isna()
        left_out[f"no {options.groups}"] = int(missing.sum())
        labels = labels[~missing]
    for column in covariate_values:
        missing = covariate_values.loc[labels.index, column].isna()
        left_out[f"no {column}"] = int(missing.sum())
        labels = labels[~missing]
    if labels.empty:
        raise InputError(f"no participant has a {options.target} value and every covariate")
    measures, measure_top = _measures(derivatives_dir, list(labels.index), options)
    for column in measures:
        missing = measures.loc[labels.index, column].isna()
        left_out[f"n/a in {column}"] = int(missing.sum())
        labels = labels[~missing]
    spec = FeatureSpec(
        target=target,
        covariates=covariates,
        prefixes=options.prefixes,
        columns=tuple(measures.columns),
        images=options.images,
        keep_images=options.keep_images,
        image_voxel_mm=options.image_voxel_mm,
        session=options.session,
    )
    values = pd.concat([measures, covariate_values.loc[measures.index]], axis=1)
    plan = _plan(derivatives_dir, spec, labels, values, atlas)
    names = pd.Series(plan.spec.feature_names)
    if names.duplicated().any():
        raise InputError(
            f"two features would share the name {names[names.duplicated()].iloc[0]}: give "
            "--image-features patterns with different desc entities (and covariates that are "
            "not measure columns)"
        )
    plan.left_out = {reason: n for reason, n in left_out.items() if n}
    plan.top_coded = {c: n for c, n in {**top_coded, **measure_top}.items() if n}
    if options.groups:
        plan.groups = groups.loc[plan.participant_ids].astype(str).to_numpy()
        plan.groups_column = options.groups
    return plan


def _restrict(table: pd.DataFrame, labels: tuple[str, ...], source: Path | str) -> pd.DataFrame:
    if not labels:
        return table
    wanted = [f"sub-{label.removeprefix('sub-')}" for label in labels]
    unknown = [p for p in wanted if p not in table.index]
    if unknown:
        raise InputError(f"--participant-label {', '.join(unknown[:5])}: not in {source}")
    return table.loc[wanted]


def _measures(
    derivatives_dir: Path, ids: list[str], options: FeatureOptions | FeatureSpec
) -> tuple[pd.DataFrame, dict[str, int]]:
    if not options.prefixes:
        return pd.DataFrame(index=pd.Index(ids)), {}
    # a trained model reads the columns it was trained on, whatever else the prefixes match now
    columns = options.columns if isinstance(options, FeatureSpec) else None
    text = read_measures(derivatives_dir, ids, options.prefixes, options.session, columns)
    values, top_coded = {}, {}
    for column in text:
        values[column], top_coded[column] = numeric_values(text[column], f"measure {column}")
    return pd.DataFrame(values, index=text.index).loc[ids], top_coded


def _plan(
    derivatives_dir: Path,
    spec: FeatureSpec,
    labels: pd.Series,
    table: pd.DataFrame,
    atlas: Atlas | None,
) -> CohortPlan:
    """Find and check the image files (one grid) and put the atlas on it: the plan."""
    ids = list(labels.index)
    if not ids:
        raise InputError("no participant is left with a label and every feature")
    files = images_by_participant(derivatives_dir, spec.images, ids, spec.session)
    grids = {pattern: check_grid(pattern, paths) for pattern, paths in files.items()}
    grid = common_grid(grids, spec.grid)
    regions = tuple(zip(atlas.labels, atlas.regions, strict=True)) if atlas else ()
    spec = replace(spec, grid=grid, regions=regions)
    atlas_data = atlas_on_grid(atlas, grid) if atlas else None
    target = labels.to_numpy(dtype=float)
    return CohortPlan(spec, ids, target, table.loc[ids], files, atlas, atlas_data)


def plan_prediction(
    derivatives_dir: Path,
    spec: FeatureSpec,
    atlas: Atlas | None,
    participants: Path | None = None,
    participant_labels: tuple[str, ...] = (),
) -> CohortPlan:
    """Check that every participant of ``derivatives_dir`` (or of ``participant_labels``) has
    every feature the model was trained on."""
    ids = sorted(p.name for p in derivatives_dir.glob("sub-*") if p.is_dir())
    if participant_labels:
        ids = list(
            _restrict(pd.DataFrame(index=pd.Index(ids)), participant_labels, derivatives_dir).index
        )
    if not ids:
        raise InputError(f"{derivatives_dir} has no sub-<label> folders")
    covariates = pd.DataFrame(index=pd.Index(ids))
    top_coded: dict[str, int] = {}
    if spec.covariates:
        if participants is None:
            needed = ", ".join(c.column for c in spec.covariates)
            raise InputError(f"the model needs covariates ({needed}): give --participants")
        table = read_participants(participants)
        absent = [p for p in ids if p not in table.index]
        if absent:
            raise InputError(f"{', '.join(absent[:5])} not in {participants} (covariates)")
        columns = tuple(c.column for c in spec.covariates)
        _, covariates, top_coded = parse_covariates(table.loc[ids], columns, spec.covariates)
    measures, _ = _measures(derivatives_dir, ids, spec)
    values = pd.concat([measures, covariates], axis=1)
    lacking = values.columns[values.isna().any()]
    if len(lacking):
        who = values.index[values[lacking[0]].isna()][0]
        raise InputError(f"{who} has no value (n/a) for {lacking[0]}, which the model needs")
    if spec.regions and atlas is None:
        raise InputError("the model summarises images in atlas regions: it needs its atlas")
    labels = pd.Series(0.0, index=pd.Index(ids))
    plan = _plan(derivatives_dir, spec, labels, values, atlas)
    plan.top_coded = {c: n for c, n in top_coded.items() if n}
    return plan


def load_cohort(plan: CohortPlan) -> Cohort:
    """Read the images (regional loads, block means) and build the cohort."""
    spec = plan.spec
    loads, images = read_image_features(plan)
    table = pd.concat([plan.table, loads], axis=1) if loads is not None else plan.table
    names = spec.feature_names
    tabular = table[list(names)].to_numpy(dtype=float) if names else None
    return Cohort(
        participant_ids=tuple(plan.participant_ids),
        target=plan.target if spec.target.task == "regression" else plan.target.astype(int),
        task=spec.target.task,
        groups=plan.fold_groups,
        tabular=tabular,
        feature_names=names,
        images=images,
        image_names=spec.images if images is not None else (),
        target_name=spec.target.column,
        class_names=spec.target.class_names,
        left_out=dict(plan.left_out),
    )
