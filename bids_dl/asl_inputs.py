"""Checks of an ASL perfusion series (BIDS ``perf/``) before any work: its sidecar, its
``aslcontext.tsv``, its M0 and its image. Each problem is one sentence naming the file."""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nb
import numpy as np

LOGGER = logging.getLogger("bids_dl.inputs")

#: volume types of an ``aslcontext.tsv`` (BIDS)
VOLUME_TYPES = ("label", "control", "m0scan", "deltam", "cbf")
LABELING_TYPES = ("PCASL", "CASL", "PASL")
M0_TYPES = ("Separate", "Included", "Estimate", "Absent")
#: sidecar fields BIDS requires of every ASL series (the rest depend on these)
REQUIRED_FIELDS = (
    "ArterialSpinLabelingType",
    "PostLabelingDelay",
    "BackgroundSuppression",
    "M0Type",
    "MagneticFieldStrength",
)
SLICE_AXES = {"i": 0, "j": 1, "k": 2}


class AslInputError(ValueError):
    """An ASL series that cannot be processed, with the reason."""


@dataclass(frozen=True)
class AslSeries:
    """One ASL series and what CBF quantification needs of its sidecar (BIDS inheritance
    applied), each field read and checked once here."""

    #: the ``*_asl.nii[.gz]``
    path: str
    #: volume types from ``*_aslcontext.tsv``, one per volume
    context: tuple[str, ...]
    #: ``Separate``, ``Included``, ``Estimate`` or ``Absent``
    m0_type: str
    #: the ``*_m0scan.nii[.gz]`` when ``m0_type`` is ``Separate``
    m0scan: str | None
    #: ``M0Estimate`` when ``m0_type`` is ``Estimate``
    m0_estimate: float | None
    #: ``PCASL``, ``CASL`` or ``PASL``
    labeling_type: str
    #: seconds, one per volume (a scalar broadcast); for PASL the inversion time TI
    post_labeling_delays: tuple[float, ...]
    #: seconds: LabelingDuration of (P)CASL; for PASL BolusCutOffDelayTime (its first value
    #: for Q2TIPS)
    labeling_duration: float
    #: LabelingEfficiency when the sidecar gives it
    labeling_efficiency: float | None
    #: background-suppression pulses; 0 without background suppression
    background_pulses: int
    #: tesla
    field_strength: float
    #: seconds, one per slice, for 2D readouts (MRAcquisitionType 2D); None otherwise
    slice_timing: tuple[float, ...] | None
    #: voxel axis of the slices (SliceEncodingDirection i/j/k -> 0/1/2, default 2)
    slice_axis: int
    #: seconds: RepetitionTimePreparation, else RepetitionTime
    repetition_time_preparation: float
    total_acquired_pairs: int | None
    vascular_crushing: bool


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _numbers(name: str, key: str, value) -> tuple[float, ...]:
    """A number or a non-empty list of numbers, as a tuple."""
    values = value if isinstance(value, list) else [value]
    if not values or not all(_is_number(v) for v in values):
        raise AslInputError(f"{name}: {key} is {value!r}, not a number or a list of numbers")
    return tuple(float(v) for v in values)


def _number(name: str, metadata: dict, key: str) -> float | None:
    """A numeric field that holds one value, or None when absent."""
    value = metadata.get(key)
    if value is None:
        return None
    if not _is_number(value):
        raise AslInputError(f"{name}: {key} is {value!r}, not a number")
    return float(value)


def _count(name: str, metadata: dict, key: str) -> int | None:
    """A field that counts something (a whole number >= 0), or None when absent."""
    value = _number(name, metadata, key)
    if value is not None and (value < 0 or value != int(value)):
        raise AslInputError(f"{name}: {key} is {metadata[key]!r}, not a whole number")
    return None if value is None else int(value)


def _series_value(name: str, key: str, value, context: tuple[str, ...], m0: bool) -> float:
    """One value of a field that BIDS allows per volume: a scalar, or the value a list holds
    at the m0scan rows (``m0`` True and there are some) or else at the other rows, which must
    agree (one value per series is what bids_dl quantifies with)."""
    values = _numbers(name, key, value)
    if not isinstance(value, list):
        return values[0]
    if len(values) != len(context):
        raise AslInputError(
            f"{name}: {key} has {len(values)} values for {len(context)} volumes (the rows of "
            "its aslcontext.tsv)"
        )
    rows = [i for i, kind in enumerate(context) if (kind == "m0scan") == m0]
    if not rows:
        rows = list(range(len(context)))
    chosen = {values[i] for i in rows}
    if len(chosen) > 1:
        kinds = "/".join(sorted({context[i] for i in rows}))
        raise AslInputError(
            f"{name}: {key} differs between its {kinds} volumes ({sorted(chosen)}); bids_dl "
            "quantifies a series with one value"
        )
    return chosen.pop()


def _require(name: str, metadata: dict, keys: tuple[str, ...]) -> None:
    missing = [key for key in keys if metadata.get(key) is None]
    if missing:
        raise AslInputError(
            f"{name}: its sidecar lacks {', '.join(missing)} (required for ASL by BIDS)"
        )


def _stem(path: str) -> str:
    """``.../sub-01_asl.nii.gz`` -> ``.../sub-01``."""
    return re.sub(r"_asl\.nii(\.gz)?$", "", str(path))


def _read_context(layout, path: str) -> tuple[str, ...]:
    """The volume types of the series' ``aslcontext.tsv``: the one with its entities, else
    the nearest by BIDS inheritance."""
    name = Path(path).name
    tsv = Path(f"{_stem(path)}_aslcontext.tsv")
    if not tsv.is_file():
        found = layout.get_nearest(
            path,
            suffix="aslcontext",
            extension=".tsv",
            ignore_strict_entities=["extension", "suffix"],
        )
        tsv = Path(found) if found else tsv
    if not tsv.is_file():
        raise AslInputError(
            f"{name}: no _aslcontext.tsv beside it (one row per volume: label, control, "
            "m0scan, deltam or cbf)"
        )
    try:
        lines = [line.strip() for line in tsv.read_text(encoding="utf-8-sig").splitlines()]
    except (OSError, UnicodeDecodeError) as error:
        raise AslInputError(f"{tsv.name}: not a readable text file ({error})") from None
    rows = [line for line in lines if line]
    if not rows or rows[0] != "volume_type":
        header = rows[0] if rows else ""
        raise AslInputError(f"{tsv.name}: its header is {header!r}, not 'volume_type'")
    unknown = sorted(set(rows[1:]) - set(VOLUME_TYPES))
    if unknown:
        raise AslInputError(
            f"{tsv.name}: unknown volume type(s) {', '.join(unknown)} (known: "
            f"{', '.join(VOLUME_TYPES)})"
        )
    if len(rows) == 1:
        raise AslInputError(f"{tsv.name}: no rows below its header")
    return tuple(rows[1:])


def _check_pairs(name: str, context: tuple[str, ...]) -> None:
    """Label and control volumes come in adjacent pairs (label,control or control,label);
    a series without any pair needs deltam or cbf volumes."""
    labels, controls = context.count("label"), context.count("control")
    if labels != controls:
        raise AslInputError(
            f"{name}: {labels} label and {controls} control volume(s) in its aslcontext.tsv; "
            "they come in pairs"
        )
    index = 0
    while index < len(context):
        kind = context[index]
        if kind not in ("label", "control"):
            index += 1
            continue
        other = "control" if kind == "label" else "label"
        if context[index + 1 : index + 2] != (other,):
            raise AslInputError(
                f"{name}: volume {index} ({kind}) has no adjacent {other} to pair with "
                "(pairs are adjacent rows: label,control or control,label)"
            )
        index += 2
    if not labels and not {"deltam", "cbf"} & set(context):
        raise AslInputError(
            f"{name}: no label/control pair and no deltam or cbf volume in its aslcontext.tsv: "
            "nothing to measure perfusion from"
        )


def _delays(name: str, metadata: dict, context: tuple[str, ...]) -> tuple[float, ...]:
    """PostLabelingDelay per volume: a scalar broadcast, or a list of one per volume;
    positive except at m0scan rows (BIDS writes 0 there)."""
    value = metadata["PostLabelingDelay"]
    delays = _numbers(name, "PostLabelingDelay", value)
    if isinstance(value, list) and len(delays) != len(context):
        raise AslInputError(
            f"{name}: PostLabelingDelay has {len(delays)} values for {len(context)} volumes "
            "(the rows of its aslcontext.tsv)"
        )
    if not isinstance(value, list):
        delays = delays * len(context)
    bad = [
        str(i)
        for i, (d, kind) in enumerate(zip(delays, context, strict=True))
        if d <= 0 and kind != "m0scan"
    ]
    if bad:
        raise AslInputError(
            f"{name}: PostLabelingDelay is not positive at volume(s) {', '.join(bad[:10])}"
        )
    return delays


def _labeling(name: str, metadata: dict, context: tuple[str, ...]) -> tuple[str, float | None]:
    """The labeling type and its duration: LabelingDuration of (P)CASL, the bolus cut-off
    delay of PASL (QUIPSS II; the first of Q2TIPS' two), None for PASL without cut-off."""
    kind = metadata["ArterialSpinLabelingType"]
    if kind not in LABELING_TYPES:
        raise AslInputError(
            f"{name}: ArterialSpinLabelingType {kind!r} is none of {', '.join(LABELING_TYPES)}"
        )
    if kind != "PASL":
        _require(name, metadata, ("LabelingDuration",))
        duration = _series_value(
            name, "LabelingDuration", metadata["LabelingDuration"], context, m0=False
        )
        if duration <= 0:
            raise AslInputError(f"{name}: LabelingDuration {duration:g} s is not positive")
        return kind, duration
    if metadata.get("BolusCutOffFlag") is not True:
        raise AslInputError(
            f"{name}: PASL without a bolus cut-off (BolusCutOffFlag false or missing): the "
            "consensus CBF model needs the bolus width of QUIPSS II or Q2TIPS"
        )
    _require(name, metadata, ("BolusCutOffDelayTime",))
    return kind, _numbers(name, "BolusCutOffDelayTime", metadata["BolusCutOffDelayTime"])[0]


def _points_at(layout, m0scan: str, path: str) -> bool | None:
    """Whether the m0scan's IntendedFor names the ASL series (a ``bids::`` URI or a path
    relative to the subject's folder); None without IntendedFor."""
    targets = layout.get_metadata(m0scan).get("IntendedFor")
    if targets is None:
        return None
    relative = Path(os.path.relpath(path, layout.root)).as_posix()
    names = {f"bids::{relative}", relative.split("/", 1)[-1]}
    targets = [targets] if isinstance(targets, str) else targets
    return isinstance(targets, list) and any(t in names for t in targets if isinstance(t, str))


def _find_m0scan(layout, path: str) -> str | None:
    """The m0scan with the series' entities, else one in its folder whose IntendedFor names
    it (an m0scan with another ``dir-``, say)."""
    for extension in (".nii.gz", ".nii"):
        sibling = Path(f"{_stem(path)}_m0scan{extension}")
        if sibling.is_file():
            return str(sibling)
    for candidate in sorted(Path(path).parent.glob("*_m0scan.nii*")):
        if _points_at(layout, str(candidate), path):
            return str(candidate)
    return None


def _m0(
    layout, path: str, metadata: dict, context: tuple[str, ...]
) -> tuple[str | None, float | None]:
    """The m0scan file (Separate) or M0Estimate (Estimate), checked against M0Type."""
    name, m0_type = Path(path).name, metadata["M0Type"]
    if m0_type not in M0_TYPES:
        raise AslInputError(f"{name}: M0Type {m0_type!r} is none of {', '.join(M0_TYPES)}")
    if m0_type == "Separate":
        m0scan = _find_m0scan(layout, path)
        if m0scan is None:
            raise AslInputError(
                f"{name}: M0Type is Separate but no _m0scan.nii[.gz] with its entities (or an "
                "IntendedFor naming it) is beside it"
            )
        if _points_at(layout, m0scan, path) is False:
            raise AslInputError(f"{Path(m0scan).name}: its IntendedFor does not name {name}")
        return m0scan, None
    if m0_type == "Included" and "m0scan" not in context:
        raise AslInputError(f"{name}: M0Type is Included but its aslcontext.tsv has no m0scan row")
    if m0_type == "Estimate":
        estimate = metadata.get("M0Estimate")
        if not _is_number(estimate) or estimate <= 0:
            raise AslInputError(
                f"{name}: M0Type is Estimate but M0Estimate is {estimate!r}, not a positive number"
            )
        return None, float(estimate)
    if m0_type == "Absent":
        LOGGER.warning("%s: M0Type Absent: its perfusion is relative (no ml/100 g/min)", name)
    return None, None


def _background_pulses(name: str, metadata: dict) -> int:
    """Background-suppression pulses: 0 without suppression; with suppression and no count,
    the number of BackgroundSuppressionPulseTime entries, else 1 (as ASLPrep assumes)."""
    suppression = metadata["BackgroundSuppression"]
    if not isinstance(suppression, bool):
        raise AslInputError(f"{name}: BackgroundSuppression is {suppression!r}, not true or false")
    if not suppression:
        return 0
    count = _count(name, metadata, "BackgroundSuppressionNumberPulses")
    if count is not None:
        return count
    times = metadata.get("BackgroundSuppressionPulseTime")
    if times is not None:
        return len(_numbers(name, "BackgroundSuppressionPulseTime", times))
    LOGGER.warning(
        "%s: BackgroundSuppression is true but neither BackgroundSuppressionNumberPulses nor "
        "BackgroundSuppressionPulseTime is given; assuming 1 pulse, as ASLPrep does",
        name,
    )
    return 1


def _slice_timing(name: str, metadata: dict) -> tuple[tuple[float, ...] | None, int]:
    """SliceTiming of a 2D readout (None for 3D) and the voxel axis of its slices."""
    direction = metadata.get("SliceEncodingDirection", "k")
    axis = SLICE_AXES.get(str(direction).rstrip("-"))
    if axis is None:
        raise AslInputError(f"{name}: SliceEncodingDirection {direction!r} is none of i, j, k")
    if metadata.get("MRAcquisitionType") != "2D":
        return None, axis
    timing = metadata.get("SliceTiming")
    if timing is None:
        LOGGER.warning(
            "%s: a 2D readout without SliceTiming; every slice is taken as read at the "
            "PostLabelingDelay (later slices' CBF comes out low)",
            name,
        )
        return None, axis
    return _numbers(name, "SliceTiming", timing), axis


def _repetition_time_preparation(name: str, metadata: dict, context: tuple[str, ...]) -> float:
    """RepetitionTimePreparation (the m0scan volumes' value of a list: the M0 calibration
    needs it); zero or missing falls back to RepetitionTime, with a warning."""
    value = metadata.get("RepetitionTimePreparation")
    preparation = None
    if value is not None:
        preparation = _series_value(name, "RepetitionTimePreparation", value, context, m0=True)
        if preparation < 0:
            raise AslInputError(f"{name}: RepetitionTimePreparation {preparation:g} is negative")
    if preparation:
        return preparation
    fallback = metadata.get("RepetitionTime")
    fallback = None if fallback is None else _numbers(name, "RepetitionTime", fallback)[0]
    if not fallback or fallback <= 0:
        raise AslInputError(
            f"{name}: neither RepetitionTimePreparation nor RepetitionTime is a positive "
            "number (one is required to quantify CBF)"
        )
    LOGGER.warning(
        "%s: RepetitionTimePreparation is %s; using RepetitionTime %g s in its place (a zero "
        "there gave ASLPrep all-zero CBF on its own example data)",
        name, "missing" if value is None else "0", fallback,
    )  # fmt: skip
    return fallback


def read_asl_series(layout, path: str) -> AslSeries:
    """Read an ASL series' sidecar (``layout.get_metadata``: BIDS inheritance), its
    ``aslcontext.tsv`` and its M0 file; AslInputError for a missing or inconsistent field.
    The image itself is checked by :func:`check_asl_series`."""
    name = Path(path).name
    metadata = layout.get_metadata(path)
    context = _read_context(layout, path)
    _require(name, metadata, REQUIRED_FIELDS)
    labeling_type, labeling_duration = _labeling(name, metadata, context)
    _check_pairs(name, context)
    m0scan, m0_estimate = _m0(layout, path, metadata, context)
    slice_timing, slice_axis = _slice_timing(name, metadata)
    field_strength = _number(name, metadata, "MagneticFieldStrength")
    if field_strength <= 0:
        raise AslInputError(f"{name}: MagneticFieldStrength {field_strength:g} is not positive")
    return AslSeries(
        path=str(path),
        context=context,
        m0_type=metadata["M0Type"],
        m0scan=m0scan,
        m0_estimate=m0_estimate,
        labeling_type=labeling_type,
        post_labeling_delays=_delays(name, metadata, context),
        labeling_duration=labeling_duration,
        labeling_efficiency=_number(name, metadata, "LabelingEfficiency"),
        background_pulses=_background_pulses(name, metadata),
        field_strength=field_strength,
        slice_timing=slice_timing,
        slice_axis=slice_axis,
        repetition_time_preparation=_repetition_time_preparation(name, metadata, context),
        total_acquired_pairs=_count(name, metadata, "TotalAcquiredPairs"),
        vascular_crushing=metadata.get("VascularCrushing") is True,
    )


def _image_shape(path: str) -> tuple[int, ...]:
    """The shape of a readable 3D or 4D image of finite values, at least 2 voxels per axis."""
    name = Path(path).name
    try:
        data = np.asanyarray(nb.load(path).dataobj)
    except Exception as error:  # nibabel raises many types for unreadable or truncated files
        raise AslInputError(f"{name}: not a readable NIfTI image ({error})") from None
    if data.ndim not in (3, 4):
        raise AslInputError(f"{name}: a {data.ndim}D image {data.shape}; ASL images are 3D or 4D")
    if min(data.shape[:3]) < 2:
        raise AslInputError(f"{name}: volumes of shape {data.shape[:3]} are not 3D images")
    if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
        raise AslInputError(f"{name}: NaN or infinite values")
    return data.shape


def check_asl_series(series: AslSeries) -> None:
    """Raise AslInputError unless the image is readable, finite, 4D with one volume per
    aslcontext row (3D for a single deltam or cbf volume), its SliceTiming has one time per
    slice, and its m0scan is readable on the same grid."""
    name = Path(series.path).name
    shape = _image_shape(series.path)
    volumes = shape[3] if len(shape) == 4 else 1
    if len(shape) == 3 and len(series.context) != 1:
        raise AslInputError(
            f"{name}: a 3D image, but its aslcontext.tsv lists {len(series.context)} volumes"
        )
    if volumes != len(series.context):
        raise AslInputError(
            f"{name}: {volumes} volumes, but its aslcontext.tsv has {len(series.context)} rows"
        )
    slices = shape[series.slice_axis]
    if series.slice_timing is not None and len(series.slice_timing) != slices:
        raise AslInputError(
            f"{name}: SliceTiming has {len(series.slice_timing)} times for {slices} slices "
            f"(voxel axis {series.slice_axis})"
        )
    if series.m0scan is not None:
        m0_shape = _image_shape(series.m0scan)
        if m0_shape[:3] != shape[:3]:
            raise AslInputError(
                f"{Path(series.m0scan).name}: its grid {m0_shape[:3]} differs from {name}'s "
                f"{shape[:3]}"
            )
