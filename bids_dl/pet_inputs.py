"""Checks of a PET series (BIDS ``pet/``) before any work: its sidecar's frame timing, dose
and decay correction, the participant's body weight, and its image; and the factor that turns
the image into SUV. Each problem is one sentence naming the file.

Times are seconds relative to the sidecar's ``TimeZero`` (BIDS); ``InjectedRadioactivity`` is
taken as the activity at ``InjectionStart`` (DICOM's Radionuclide Total Dose).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nb
import numpy as np

from bids_dl.asl_inputs import _is_number

LOGGER = logging.getLogger("bids_dl.inputs")

#: the sidecar's timing that bids_dl reads (all REQUIRED by BIDS); ``TimeZero``, the clock
#: time they are relative to, is not needed
TIMING_FIELDS = ("ScanStart", "InjectionStart", "FrameTimesStart", "FrameDuration")
#: half-lives (s) of PET radionuclides (NNDC nuclear data), keyed as BIDS writes
#: TracerRadionuclide
HALF_LIVES_S = {
    "C11": 1221.8,  # 20.364 min
    "N13": 597.9,  # 9.965 min
    "O15": 122.24,
    "F18": 6586.2,  # 109.77 min
    "Cu62": 580.4,  # 9.673 min
    "Cu64": 45721.0,  # 12.70 h
    "Ga68": 4062.6,  # 67.71 min
    "Br76": 58320.0,  # 16.2 h
    "Rb82": 75.45,  # 1.2575 min
    "Zr89": 282276.0,  # 78.41 h
    "I124": 360806.0,  # 4.176 d
}
#: SI prefixes of activity units (``K`` is a common misspelling of kilo)
PREFIXES = {"": 1.0, "G": 1e9, "M": 1e6, "k": 1e3, "K": 1e3, "m": 1e-3, "u": 1e-6, "µ": 1e-6,
            "μ": 1e-6, "n": 1e-9, "p": 1e-12}  # fmt: skip
#: becquerels per unit of activity
ACTIVITY_UNITS = {"Bq": 1.0, "BQ": 1.0, "bq": 1.0, "Ci": 3.7e10, "CI": 3.7e10, "ci": 3.7e10}
#: kilograms per unit of a ``body_weight`` column (its ``Units`` in the TSV's JSON; kg without)
WEIGHT_UNITS = {"kg": 1.0, "g": 1e-3, "lb": 0.45359237, "lbs": 0.45359237}
#: the participants.tsv / sessions.tsv column BIDS names for the weight (PET: "Recommended
#: patient data")
WEIGHT_COLUMN = "body_weight"

#: the default window: frames that start at least this share of the way from injection to
#: the end of the acquisition (the last 20 min of a 0-60 min FDG scan, 47-70 min of a 0-70 min
#: amyloid scan, every frame of a static 50-70 min one)
LATE_FRAMES_SHARE = 2 / 3


class PetInputError(ValueError):
    """A PET series that cannot be processed, with the reason."""


def activity_scale(units: str | None) -> float | None:
    """Becquerels per unit of activity (``MBq`` -> 1e6, ``mCi`` -> 3.7e7); None if unknown."""
    found = re.fullmatch(r"\s*([GMkKmuµμnp]?)(Bq|BQ|bq|Ci|CI|ci)\s*", units or "")
    return None if found is None else PREFIXES[found[1]] * ACTIVITY_UNITS[found[2]]


def concentration_scale(units: str | None) -> float | None:
    """Bq/mL per unit of an image's activity concentration (``kBq/mL`` -> 1e3, ``nCi/mL``
    -> 37, DICOM's ``BQML`` -> 1); None for anything else (SUV, counts, per gram)."""
    if (units or "").strip().upper() == "BQML":
        return 1.0
    found = re.fullmatch(r"(.+?)\s*/\s*(mL|ml|ML|cc|cm3|cm\^3)\s*", units or "")
    return None if found is None else activity_scale(found[1])


def radionuclide_key(value: str | None) -> str | None:
    """``F18``, ``18F``, ``[18F]``, ``F-18`` -> ``F18``; None for anything else."""
    text = re.sub(r"[\[\]\s-]", "", value or "")
    found = re.fullmatch(r"([A-Za-z]{1,2})(\d{1,3})|(\d{1,3})([A-Za-z]{1,2})", text)
    if found is None:
        return None
    element, mass = (found[1], found[2]) if found[1] else (found[4], found[3])
    return f"{element.capitalize()}{mass}"


@dataclass(frozen=True)
class PetSeries:
    """One PET series and what SUVR and SUV need of its sidecar (BIDS inheritance applied)
    and of the participant's table, read once here; :func:`check_pet_series` says whether
    they are usable."""

    #: the ``*_pet.nii[.gz]``
    path: str
    #: TracerName
    tracer: str | None
    #: TracerRadionuclide as :func:`radionuclide_key` writes it (``F18``), else as written
    radionuclide: str | None
    #: the image's Units, as written
    units: str | None
    #: FrameTimesStart (s after TimeZero), one per frame; None when missing
    frame_starts: tuple[float, ...] | None
    #: FrameDuration (s), one per frame; None when missing
    frame_durations: tuple[float, ...] | None
    #: InjectionStart (s after TimeZero)
    injection_start: float | None
    #: ScanStart (s after TimeZero)
    scan_start: float | None
    #: InjectedRadioactivity in Bq (None when missing or in unknown units)
    injected_radioactivity_bq: float | None
    #: InjectedRadioactivityUnits, as written
    injected_radioactivity_units: str | None
    #: ImageDecayCorrected
    decay_corrected: bool | None
    #: ImageDecayCorrectionTime (s after TimeZero): the time the image's activity refers to
    decay_correction_time: float | None
    #: from participants.tsv / sessions.tsv (:func:`body_weight`)
    body_weight_kg: float | None
    #: the image's shape in its header
    shape: tuple[int, ...]

    @property
    def n_frames(self) -> int:
        """Frames in the image (a 3D image is one frame)."""
        return self.shape[3] if len(self.shape) == 4 else 1

    @property
    def is_dynamic(self) -> bool:
        return self.n_frames > 1

    @property
    def activity_scale_to_bq_ml(self) -> float | None:
        """Bq/mL per unit of the image; None for unknown Units."""
        return concentration_scale(self.units)

    @property
    def half_life(self) -> float | None:
        """The radionuclide's half-life (s), None when unknown."""
        return HALF_LIVES_S.get(self.radionuclide or "")

    @property
    def suv_missing(self) -> tuple[str, ...]:
        """What SUV needs and this series lacks (empty when SUV can be computed)."""
        missing = []
        if self.injected_radioactivity_bq is None:
            units = self.injected_radioactivity_units
            missing.append(
                f"InjectedRadioactivityUnits in Bq or Ci, not {units!r}"
                if units and activity_scale(units) is None
                else "InjectedRadioactivity with its InjectedRadioactivityUnits"
            )
        if self.body_weight_kg is None:
            missing.append(f"a {WEIGHT_COLUMN} in participants.tsv or sessions.tsv")
        if self.decay_corrected is None:
            missing.append("ImageDecayCorrected")
        elif not self.decay_corrected:
            missing.append("a decay-corrected image, and ImageDecayCorrected is false")
        elif self.decay_correction_time is None:
            missing.append("ImageDecayCorrectionTime")
        elif self.injection_start is None:
            missing.append("InjectionStart")
        elif self.half_life is None and self.decay_correction_time != self.injection_start:
            known = f", not {self.radionuclide!r}" if self.radionuclide else ""
            missing.append(f"a TracerRadionuclide of known half-life{known}")
        if self.activity_scale_to_bq_ml is None:
            written = f", not {self.units!r}" if self.units else ""
            missing.append(f"Units of activity per mL{written}")
        return tuple(missing)

    @property
    def suv_ready(self) -> bool:
        return not self.suv_missing


def _numbers(name: str, metadata: dict, key: str) -> tuple[float, ...] | None:
    """A number or a non-empty list of numbers as a tuple; None when absent."""
    value = metadata.get(key)
    if value is None:
        return None
    values = value if isinstance(value, list) else [value]
    if not values or not all(_is_number(v) for v in values):
        raise PetInputError(f"{name}: {key} is {value!r}, not a number or a list of numbers")
    return tuple(float(v) for v in values)


def _number(name: str, metadata: dict, key: str) -> float | None:
    values = _numbers(name, metadata, key)
    if values is not None and len(values) != 1:
        raise PetInputError(f"{name}: {key} is {metadata[key]!r}, not one number")
    return None if values is None else values[0]


def _suv_field(name: str, metadata: dict, key: str, kind: type) -> float | bool | None:
    """A field only SUV needs: its value, or None (with a warning when it is there but not
    a ``kind``), so that a malformed dose does not stop SUVR."""
    value = metadata.get(key)
    valid = _is_number(value) if kind is float else isinstance(value, kind)
    if value is not None and not valid:
        LOGGER.warning("%s: %s is %r, not a %s; SUV cannot use it", name, key, value, kind.__name__)
    return (float(value) if kind is float else value) if valid else None


def _header_shape(path: str) -> tuple[int, ...]:
    try:
        return tuple(int(n) for n in nb.load(path).shape)
    except Exception as error:  # nibabel raises many types for unreadable or truncated files
        raise PetInputError(f"{Path(path).name}: not a readable NIfTI image ({error})") from None


def read_pet_series(path: str, metadata: dict, body_weight_kg: float | None) -> PetSeries:
    """Read a PET series' sidecar (``metadata``: BIDS inheritance applied) and its header
    (no data). PetInputError for malformed timing (a string where a number belongs); missing
    fields, and malformed ones that only SUV needs, are None here, refused by
    :func:`check_pet_series`."""
    name = Path(path).name
    dose = _suv_field(name, metadata, "InjectedRadioactivity", float)
    # the spec's own PET example spells the units key with a capital A
    dose_units = metadata.get(
        "InjectedRadioactivityUnits", metadata.get("InjectedRadioActivityUnits")
    )
    scale = activity_scale(dose_units)
    nuclide = metadata.get("TracerRadionuclide")
    return PetSeries(
        path=str(path),
        tracer=metadata.get("TracerName"),
        radionuclide=radionuclide_key(nuclide) or nuclide,
        units=metadata.get("Units"),
        frame_starts=_numbers(name, metadata, "FrameTimesStart"),
        frame_durations=_numbers(name, metadata, "FrameDuration"),
        injection_start=_number(name, metadata, "InjectionStart"),
        scan_start=_number(name, metadata, "ScanStart"),
        injected_radioactivity_bq=None if dose is None or scale is None else dose * scale,
        injected_radioactivity_units=dose_units,
        decay_corrected=_suv_field(name, metadata, "ImageDecayCorrected", bool),
        decay_correction_time=_suv_field(name, metadata, "ImageDecayCorrectionTime", float),
        body_weight_kg=body_weight_kg,
        shape=_header_shape(path),
    )


def _check_timing(name: str, series: PetSeries) -> None:
    """Every timing field present, one start and one positive duration per frame of the
    image, starts increasing."""
    values = {
        "ScanStart": series.scan_start,
        "InjectionStart": series.injection_start,
        "FrameTimesStart": series.frame_starts,
        "FrameDuration": series.frame_durations,
    }
    missing = [key for key in TIMING_FIELDS if values[key] is None]
    if missing:
        raise PetInputError(f"{name}: its sidecar lacks {', '.join(missing)} (required by BIDS)")
    starts, durations = series.frame_starts, series.frame_durations
    if len(starts) != series.n_frames or len(durations) != series.n_frames:
        raise PetInputError(
            f"{name}: {series.n_frames} frame(s) in the image, but {len(starts)} "
            f"FrameTimesStart and {len(durations)} FrameDuration value(s)"
        )
    bad = [str(i) for i, d in enumerate(durations) if d <= 0]
    if bad:
        raise PetInputError(
            f"{name}: FrameDuration is not positive at frame(s) {', '.join(bad[:10])}"
        )
    back = [str(i + 1) for i in range(len(starts) - 1) if starts[i + 1] <= starts[i]]
    if back:
        raise PetInputError(
            f"{name}: FrameTimesStart does not increase at frame(s) {', '.join(back[:10])}"
        )


def check_pet_series(
    series: PetSeries, suv: bool, window_min: tuple[float, float] | None = None
) -> None:
    """Raise PetInputError unless the image is 3D or 4D, its frames match the sidecar's
    timing, ``window_min`` (``--pet-window``) overlaps its frames, its voxels are finite, and,
    with ``suv``, everything SUV needs is there (SUVR needs none of it)."""
    name = Path(series.path).name
    if len(series.shape) not in (3, 4):
        raise PetInputError(
            f"{name}: a {len(series.shape)}D image {series.shape}; PET images are 3D or 4D"
        )
    if min(series.shape[:3]) < 2:
        raise PetInputError(f"{name}: volumes of shape {series.shape[:3]} are not 3D images")
    _check_timing(name, series)
    try:
        window_weights(
            series.frame_starts, series.frame_durations, series.injection_start, window_min
        )
    except ValueError as error:
        raise PetInputError(f"{name}: {error}") from None
    try:
        data = np.asanyarray(nb.load(series.path).dataobj)
    except Exception as error:  # nibabel raises many types for unreadable or truncated files
        raise PetInputError(f"{name}: not a readable NIfTI image ({error})") from None
    if data.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise PetInputError(f"{name}: {bad} NaN or infinite voxel value(s)")
    if suv and series.suv_missing:
        raise _suv_refusal(series)


def window_weights(
    frame_starts, frame_durations, injection_start: float, window_min: tuple[float, float] | None
) -> np.ndarray:
    """Per-frame weights (summing to 1) of the time-weighted mean of the frames over
    ``window_min`` (start, end in minutes after injection): each frame's overlap with the
    window over the total overlap. ``None`` takes the late frames, those that start at least
    :data:`LATE_FRAMES_SHARE` of the way from injection to the end of the last frame (at least
    the last frame; a 3D image's one frame), weighted by duration. ValueError for a window
    that overlaps no frame."""
    starts = np.asarray(frame_starts, dtype=float) - injection_start
    ends = starts + np.asarray(frame_durations, dtype=float)
    if window_min is None:
        late = starts >= LATE_FRAMES_SHARE * ends[-1]
        late[-1] = True
        overlap = np.where(late, ends - starts, 0.0)
        return overlap / overlap.sum()
    first, last = (60.0 * t for t in window_min)
    overlap = np.clip(np.minimum(ends, last) - np.maximum(starts, first), 0, None)
    if first >= last or overlap.sum() <= 0:
        raise ValueError(
            f"the window {window_min[0]:g}-{window_min[1]:g} min after injection overlaps no "
            f"frame (the frames cover {starts[0] / 60:.4g}-{ends[-1] / 60:.4g} min)"
        )
    return overlap / overlap.sum()


def _suv_refusal(series: PetSeries) -> PetInputError:
    return PetInputError(
        f"{Path(series.path).name}: SUV needs {' and '.join(series.suv_missing)}; SUVR does not"
    )


def suv_factor(series: PetSeries) -> float:
    """The factor that turns the image (its Units) into SUV (g/mL): Bq/mL x body weight (g)
    / injected dose (Bq), the dose decayed from InjectionStart to ImageDecayCorrectionTime,
    the time the image's activity refers to. An image that is not decay-corrected is refused
    (its frames would each need their own factor)."""
    if series.suv_missing:
        raise _suv_refusal(series)
    elapsed = series.decay_correction_time - series.injection_start
    dose = series.injected_radioactivity_bq
    if elapsed:
        dose *= 0.5 ** (elapsed / series.half_life)
    return series.activity_scale_to_bq_ml * series.body_weight_kg * 1000.0 / dose


def _weight_scale(table: Path) -> float | None:
    """Kilograms per unit of the table's ``body_weight`` (the ``Units`` of its JSON beside
    it, kg without); None, with a warning, for unknown units."""
    sidecar = table.with_suffix(".json")
    units = "kg"
    if sidecar.is_file():
        try:
            column = json.loads(sidecar.read_text(encoding="utf-8")).get(WEIGHT_COLUMN) or {}
            units = column.get("Units", "kg") if isinstance(column, dict) else "kg"
        except (OSError, ValueError):
            LOGGER.warning("%s: not readable JSON; taking %s in kg", sidecar, WEIGHT_COLUMN)
    scale = WEIGHT_UNITS.get(str(units).strip())
    if scale is None:
        LOGGER.warning(
            "%s: %s Units %r is none of %s; the weight is not used",
            sidecar, WEIGHT_COLUMN, units, ", ".join(WEIGHT_UNITS),
        )  # fmt: skip
    return scale


def _table_weight(table: Path, key: str, label: str) -> float | None:
    """The ``body_weight`` (kg) of the row whose ``key`` column is ``label``; None when the
    table, column or row is missing or the value is n/a or not a positive number."""
    if not table.is_file():
        return None
    with open(table, encoding="utf-8-sig", newline="") as handle:
        rows = [r for r in csv.DictReader(handle, delimiter="\t") if r.get(key) == label]
    value = (rows[0].get(WEIGHT_COLUMN) or "n/a").strip() if rows else "n/a"
    if value == "n/a":
        return None
    try:
        weight = float(value)
    except ValueError:
        weight = math.nan
    if not math.isfinite(weight) or weight <= 0:
        LOGGER.warning(
            "%s: %s of %s is %r, not a positive number; not used",
            table,
            WEIGHT_COLUMN,
            label,
            value,
        )
        return None
    scale = _weight_scale(table)
    return None if scale is None else weight * scale


def body_weight(bids_dir: Path, subject: str, session: str | None) -> float | None:
    """The participant's body weight (kg) from the ``body_weight`` column BIDS recommends for
    PET: the session's row of ``sub-X/sub-X_sessions.tsv`` first (weights measured per
    session), then ``participants.tsv``; None without a usable value."""
    subject = subject.removeprefix("sub-")
    tables = [(Path(bids_dir) / "participants.tsv", "participant_id", f"sub-{subject}")]
    if session:
        sessions = Path(bids_dir) / f"sub-{subject}" / f"sub-{subject}_sessions.tsv"
        tables.insert(0, (sessions, "session_id", f"ses-{session.removeprefix('ses-')}"))
    for table, key, label in tables:
        weight = _table_weight(table, key, label)
        if weight is not None:
            return weight
    return None
