"""Checks of a BOLD series (BIDS ``func/``) before any work: its sidecar's timing and its
image. Each problem is one sentence naming the file."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nb
import numpy as np

LOGGER = logging.getLogger("bids_dl.inputs")

#: steady-state volumes a run needs: below this, motion parameters, aCompCor and a
#: correlation matrix have too few samples to mean anything
MIN_BOLD_VOLUMES = 10
#: a header repetition time within this fraction of the sidecar's agrees with it
TR_TOLERANCE = 0.01
SLICE_AXES = {"i": 0, "j": 1, "k": 2}
#: seconds per unit of a NIfTI header's time unit
TIME_UNITS = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}


class BoldInputError(ValueError):
    """A BOLD series that cannot be processed, with the reason."""


@dataclass(frozen=True)
class BoldSeries:
    """One BOLD run and the timing its preprocessing needs, read from its sidecar (BIDS
    inheritance applied) and checked once here."""

    #: the ``*_bold.nii[.gz]``
    path: str
    #: the ``task-`` label
    task: str
    #: seconds, from the sidecar (it wins over the NIfTI header, as in fMRIPrep)
    repetition_time: float
    #: seconds after the volume's start at which each slice was read; None without it
    slice_timing: tuple[float, ...] | None
    #: voxel axis of the slices (SliceEncodingDirection i/j/k -> 0/1/2, default 2)
    slice_axis: int
    #: the image's shape in its header (x, y, z, volumes)
    shape: tuple[int, ...] = (1, 1, 1, 1)

    @property
    def n_volumes(self) -> int:
        """Volumes in the image (1 for a 3D image)."""
        return self.shape[3] if len(self.shape) == 4 else 1


def _task(path: str) -> str:
    found = re.search(r"(?:^|_)task-([a-zA-Z0-9]+)_", Path(path).name)
    return found.group(1) if found else "unknown"


def _positive_number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


def _slice_timing(name: str, metadata: dict, repetition_time: float) -> tuple[float, ...] | None:
    """SliceTiming as numbers within one repetition time, or None when the sidecar has none."""
    timing = metadata.get("SliceTiming")
    if timing is None:
        return None
    values = timing if isinstance(timing, list) else [timing]
    numbers = [v for v in values if not isinstance(v, bool) and isinstance(v, int | float)]
    if not values or len(numbers) != len(values) or not all(map(math.isfinite, numbers)):
        raise BoldInputError(f"{name}: SliceTiming is {timing!r}, not a list of numbers")
    if min(numbers) < 0 or max(numbers) >= repetition_time:
        raise BoldInputError(
            f"{name}: SliceTiming runs from {min(numbers):g} to {max(numbers):g} s, outside one "
            f"repetition time (0 to {repetition_time:g} s)"
        )
    return tuple(float(v) for v in numbers)


def read_bold_series(layout, path: str) -> BoldSeries:
    """Read a BOLD run's sidecar (``layout.get_metadata``: BIDS inheritance); BoldInputError
    for a missing or non-positive RepetitionTime or unusable SliceTiming. The image itself is
    checked by :func:`check_bold_series`."""
    name = Path(path).name
    metadata = layout.get_metadata(path)
    value = metadata.get("RepetitionTime")
    repetition_time = _positive_number(value)
    if repetition_time is None:
        state = "missing from its sidecar" if value is None else f"{value!r}"
        raise BoldInputError(f"{name}: RepetitionTime is {state}; BIDS requires a positive one")
    direction = metadata.get("SliceEncodingDirection", "k")
    axis = SLICE_AXES.get(str(direction).rstrip("-"))
    if axis is None:
        raise BoldInputError(f"{name}: SliceEncodingDirection {direction!r} is none of i, j, k")
    return BoldSeries(
        path=str(path),
        task=_task(path),
        repetition_time=repetition_time,
        slice_timing=_slice_timing(name, metadata, repetition_time),
        slice_axis=axis,
        shape=_header_shape(path),
    )


def _header_shape(path: str) -> tuple[int, ...]:
    """The shape the header declares (the data are read by :func:`check_bold_series`)."""
    try:
        return tuple(int(n) for n in nb.load(path).shape)
    except Exception as error:  # nibabel raises many types for unreadable or truncated files
        raise BoldInputError(f"{Path(path).name}: not a readable NIfTI image ({error})") from None


def _header_repetition_time(image: nb.Nifti1Image) -> float | None:
    """The header's fourth zoom in seconds, or None where the header leaves it unset."""
    zooms = image.header.get_zooms()
    if len(zooms) < 4 or not zooms[3] or zooms[3] <= 0:
        return None
    unit = image.header.get_xyzt_units()[1]
    return float(zooms[3]) * TIME_UNITS.get(unit, 1.0)


def check_bold_series(series: BoldSeries, dummy_scans: int | None = None) -> None:
    """Raise BoldInputError unless the run is a readable 4D image of finite values with at
    least :data:`MIN_BOLD_VOLUMES` volumes after ``dummy_scans``, and one SliceTiming value
    per slice; warn where the header's repetition time disagrees with the sidecar's."""
    name = Path(series.path).name
    try:
        image = nb.load(series.path)
        data = np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel raises many types for unreadable or truncated files
        raise BoldInputError(f"{name}: not a readable NIfTI image ({error})") from None
    if data.ndim != 4:
        raise BoldInputError(
            f"{name}: a BOLD run is 4D (one volume per repetition time); this image is "
            f"{data.ndim}D {data.shape}"
        )
    if min(data.shape[:3]) < 2:
        raise BoldInputError(f"{name}: volumes of shape {data.shape[:3]} are not 3D images")
    kept = data.shape[3] - (dummy_scans or 0)
    if kept < MIN_BOLD_VOLUMES:
        dropped = f" after {dummy_scans} dummy scans" if dummy_scans else ""
        raise BoldInputError(
            f"{name}: {kept} volumes{dropped}; the functional analysis needs at least "
            f"{MIN_BOLD_VOLUMES}"
        )
    if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
        bad = np.flatnonzero(~np.isfinite(data).all(axis=(0, 1, 2)))
        raise BoldInputError(
            f"{name}: NaN or infinite values in volume(s) {', '.join(map(str, bad[:10]))}"
        )
    slices = data.shape[series.slice_axis]
    if series.slice_timing is not None and len(series.slice_timing) != slices:
        raise BoldInputError(
            f"{name}: SliceTiming has {len(series.slice_timing)} times for {slices} slices "
            f"(voxel axis {series.slice_axis})"
        )
    header = _header_repetition_time(image)
    if header is not None and abs(header - series.repetition_time) > (
        TR_TOLERANCE * series.repetition_time
    ):
        LOGGER.warning(
            "%s: the NIfTI header says a repetition time of %g s, the sidecar %g s; using the "
            "sidecar's (as fMRIPrep does)",
            name, header, series.repetition_time,
        )  # fmt: skip
