"""fMRIPrep-style confounds of a BOLD series (numpy, scipy): initial non-steady-state volumes,
DVARS, discrete cosine high-pass regressors, anatomical CompCor, tissue signals with their
derivatives and squares, and one-hot outlier columns, written as fMRIPrep's
``desc-confounds_timeseries.tsv`` + JSON.

The functions work on arrays (files only at the edges) so that they are tested without nipype;
the interfaces at the end are thin wrappers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
from nipype.interfaces.base import File, SimpleInterface, TraitedSpec, isdefined, traits
from scipy import ndimage

from bids_dl.derivatives import write_json_atomic, write_text_atomic
from bids_dl.workflows.interfaces.motion import (
    MOTION_COLUMNS,
    MOTION_DESCRIPTIONS,
    framewise_displacement,
    tsv_text,
)

#: the six rigid-body parameters (the motion columns less framewise displacement)
PARAMETER_COLUMNS = MOTION_COLUMNS[:6]
#: how many initial volumes the non-steady-state detector reads (as nipype's detector)
NON_STEADY_STATE_WINDOW = 50
#: a modified z-score above this marks an outlier (Iglewicz and Hoaglin 1993, as nipype)
OUTLIER_Z = 3.5
#: the standard normal's upper quartile: MAD / 0.6745 and IQR / (2 * 0.6745) estimate the sd
NORMAL_QUARTILE = 0.6745
#: DVARS is computed on intensities scaled to this median (nipype's compute_dvars, FSL)
DVARS_MEDIAN = 1000.0
#: fMRIPrep's defaults: the cosine high-pass period cutoff, the share of variance the aCompCor
#: components of each mask explain, and the motion-outlier thresholds
HIGHPASS_CUTOFF_S = 128.0
COMPCOR_VARIANCE = 0.5
FD_THRESHOLD_MM = 0.5
STD_DVARS_THRESHOLD = 1.5
#: tissue probability a voxel needs to enter a CompCor mask (fMRIPrep's 0.95; Behzadi 0.99)
COMPCOR_PROBABILITY = 0.95
#: the CompCor masks in the order their components are numbered
COMPCOR_MASKS = ("combined", "CSF", "WM")
#: the tissue signals: column name and the mask whose mean it is
SIGNAL_DESCRIPTIONS = {
    "global_signal": "mean signal in the brain mask",
    "csf": "mean signal in the CSF mask (the aCompCor CSF mask)",
    "white_matter": "mean signal in the WM mask (the aCompCor WM mask)",
}
#: fMRIPrep's expansion suffixes (the longest first, as matched): what they are, squared units
EXPANSION_SUFFIXES = (
    ("_derivative1_power2", "square of the temporal derivative of", True),
    ("_derivative1", "temporal derivative (backward difference) of", False),
    ("_power2", "square of", True),
)
OTHER_DESCRIPTIONS = {
    "dvars": ("DVARS: root mean square over the brain of the temporal difference, intensities "
              "scaled to a median of 1000", "arbitrary"),
    "std_dvars": ("DVARS divided by its expected value under an AR(1) null (Nichols 2013)",
                  None),
}  # fmt: skip


@dataclass(frozen=True)
class ConfoundSettings:
    """What the confounds depend on besides the images (fMRIPrep's defaults)."""

    repetition_time: float
    non_steady_state: int = 0
    fd_threshold: float = FD_THRESHOLD_MM
    dvars_threshold: float = STD_DVARS_THRESHOLD
    cutoff_s: float = HIGHPASS_CUTOFF_S


def _require_4d(data: np.ndarray, source: str = "the BOLD series") -> None:
    if data.ndim != 4 or data.shape[-1] < 2:
        raise ValueError(f"{source}: a BOLD series is 4D with 2 volumes or more, got {data.shape}")


def robust_outliers(values: np.ndarray) -> np.ndarray:
    """Outliers by the modified z-score 0.6745 |x - median| / MAD > 3.5 (two-sided; where the
    MAD is 0 every value off the median counts)."""
    deviation = np.abs(values - np.median(values))
    mad = np.median(deviation)
    if mad == 0:
        return deviation > 0
    return NORMAL_QUARTILE * deviation / mad > OUTLIER_Z


def detect_non_steady_state(data: np.ndarray, mask: np.ndarray | None = None) -> int:
    """The number of initial non-steady-state volumes of a series (X, Y, Z, T), as nipype's
    NonSteadyStateDetector: before T1 equilibrium the volumes are brighter, so the global
    signal (mean in ``mask``, else of the whole image) of the first 50 volumes is a robust
    outlier there (``robust_outliers``); counted from the first volume to the first inlier."""
    _require_4d(data)
    window = data[..., :NON_STEADY_STATE_WINDOW]
    voxels = window[mask.astype(bool)] if mask is not None else window.reshape(-1, window.shape[-1])
    outliers = robust_outliers(voxels.mean(axis=0, dtype=np.float64))
    return int(outliers.size if outliers.all() else np.argmin(outliers))


def _lower_percentile(data: np.ndarray, q: float) -> np.ndarray:
    return np.percentile(data, q, axis=1, method="lower")


def _null_difference_sd(data: np.ndarray) -> float:
    """DVARS's expected value under the null (Nichols 2013): the voxel mean of
    sqrt(2 (1 - rho)) * sigma, the sd of an AR(1) voxel's temporal difference, with sigma the
    robust temporal sd (interquartile range of "lower" percentiles / 1.349, as FSL) and rho the
    Yule-Walker lag-1 autocorrelation of the demeaned series (as nipype's compute_dvars)."""
    sigma = (_lower_percentile(data, 75) - _lower_percentile(data, 25)) / (2 * NORMAL_QUARTILE)
    demeaned = data - data.mean(axis=1, keepdims=True)
    rho = np.sum(demeaned[:, 1:] * demeaned[:, :-1], axis=1) / np.sum(demeaned**2, axis=1)
    return float(np.mean(np.sqrt(2 * (1 - rho)) * sigma))


def dvars(
    data: np.ndarray, median: float = DVARS_MEDIAN, skip: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """DVARS and standardised DVARS (NaN first) of in-mask voxel series ``data`` (V, T), as
    nipype's ``compute_dvars``: intensities scaled so their median is ``median`` (0 leaves
    them), voxels constant in time dropped; DVARS is the root mean square over voxels of the
    temporal difference, std DVARS that over its null expectation (``_null_difference_sd``).
    The null is estimated without the ``skip`` initial non-steady-state volumes (fMRIPrep
    keeps them: their step to the steady state pushes rho towards 1 and std DVARS up)."""
    data = np.asarray(data, dtype=np.float64)
    data = data[np.ptp(data[:, skip:], axis=1) > 0]
    if data.shape[0] == 0:
        raise ValueError("DVARS: no voxel of the brain mask varies in time")
    centre = np.median(data)
    if median and centre > 0:
        data = data * (median / centre)
    values = np.sqrt(np.mean(np.diff(data, axis=1) ** 2, axis=0))
    expected = _null_difference_sd(data[:, skip:])
    standardised = values / expected if expected > 0 else np.full_like(values, np.nan)
    return np.concatenate([[np.nan], values]), np.concatenate([[np.nan], standardised])


def cosine_basis(
    n_volumes: int, repetition_time: float, cutoff_s: float = HIGHPASS_CUTOFF_S
) -> np.ndarray:
    """Discrete cosine (DCT-II, orthonormal) regressors (T, N) of the drifts slower than
    ``cutoff_s``, as nilearn's and SPM's cosine drift less its constant:
    N = max(floor(2 T TR / cutoff), 1) - 1. Columns ``cosine00``, ``cosine01``, ..."""
    count = max(int(np.floor(2 * n_volumes * repetition_time / cutoff_s)), 1) - 1
    times = np.arange(n_volumes) + 0.5
    return np.sqrt(2 / n_volumes) * np.cos(
        np.pi / n_volumes * np.outer(times, np.arange(1, count + 1))
    )


def compcor_masks(brain_mask: np.ndarray, wm: np.ndarray, csf: np.ndarray) -> dict[str, np.ndarray]:
    """The aCompCor masks (3D, boolean) ``combined``, ``CSF``, ``WM``: tissue probability above
    0.95 (a binary mask passes whole) inside the brain mask; WM eroded by one voxel (6-connected)
    away from grey-matter partial volume, unless that empties it; CSF not eroded (ventricles are
    a few BOLD voxels wide and erosion would empty them); combined their union."""
    brain = brain_mask > 0.5
    csf_mask = brain & (csf > COMPCOR_PROBABILITY)
    wm_mask = brain & (wm > COMPCOR_PROBABILITY)
    eroded = ndimage.binary_erosion(wm_mask)
    wm_mask = eroded if eroded.any() else wm_mask
    return {"combined": wm_mask | csf_mask, "CSF": csf_mask, "WM": wm_mask}


def _highpass(series: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``series`` (T, V) less its least-squares fit by a constant and ``basis`` (T, N)."""
    design = np.column_stack([np.ones(series.shape[0]), basis])
    betas = np.linalg.lstsq(design, series, rcond=None)[0]
    return series - design @ betas


def _mask_components(series: np.ndarray, basis: np.ndarray, variance: float):
    """Left singular vectors of the high-passed, variance-normalised ``series`` (T, V), those
    up to ``variance`` cumulative variance explained; with the singular values and shares.
    They are the eigenvectors of the T x T Gram matrix (a wide SVD took 6 s a mask at 3 mm)."""
    residual = _highpass(series, basis)
    sd = residual.std(axis=0)
    normalised = residual / np.where(sd > 0, sd, 1)
    eigenvalues, eigenvectors = np.linalg.eigh(normalised @ normalised.T)
    u = eigenvectors[:, ::-1]
    singular = np.sqrt(np.clip(eigenvalues[::-1], 0, None))
    explained = singular**2 / np.sum(singular**2)
    cumulative = np.cumsum(explained)
    keep = min(int(np.searchsorted(cumulative, variance)) + 1, singular.size)
    return u[:, :keep], singular[:keep], explained[:keep], cumulative[:keep]


def acompcor(
    data: np.ndarray,
    wm: np.ndarray,
    csf: np.ndarray,
    highpass: np.ndarray,
    variance: float = COMPCOR_VARIANCE,
) -> tuple[np.ndarray, dict[str, dict]]:
    """Anatomical CompCor (Behzadi 2007, as fMRIPrep): for each mask of ``COMPCOR_MASKS`` (the
    combined WM + CSF mask, CSF, WM; ``wm``/``csf`` select rows of ``data`` (V, T)) the voxel
    series are high-passed (``highpass`` (T, N) cosines and a constant regressed out), scaled
    to unit variance, and decomposed by SVD; the components explaining up to ``variance`` of
    the variance are kept. Returns them (T, K), numbered across masks in that order
    (``a_comp_cor_00``...), and each one's metadata. A mask with no signal gives none."""
    wm, csf = np.asarray(wm, bool), np.asarray(csf, bool)
    selections = {"combined": wm | csf, "CSF": csf, "WM": wm}
    components, metadata = [], {}
    for mask in COMPCOR_MASKS:
        series = np.asarray(data[selections[mask]], dtype=np.float64).T
        if series.size == 0 or not np.ptp(series, axis=0).any():
            continue
        vectors, singular, explained, cumulative = _mask_components(series, highpass, variance)
        for i in range(vectors.shape[1]):
            metadata[f"a_comp_cor_{len(metadata):02d}"] = {
                "Method": "aCompCor",
                "Mask": mask,
                "SingularValue": float(singular[i]),
                "VarianceExplained": float(explained[i]),
                "CumulativeVarianceExplained": float(cumulative[i]),
                "Retained": True,
            }
        components.append(vectors)
    stacked = np.column_stack(components) if components else np.empty((data.shape[1], 0))
    return stacked, metadata


def expansions(name: str, values: np.ndarray) -> dict[str, np.ndarray]:
    """fMRIPrep's expansions of a regressor: itself, its backward difference (NaN first), its
    square and the difference's square."""
    derivative = np.concatenate([[np.nan], np.diff(values)])
    return {
        name: values,
        f"{name}_derivative1": derivative,
        f"{name}_power2": values**2,
        f"{name}_derivative1_power2": derivative**2,
    }


def one_hot(prefix: str, volumes: np.ndarray, n_volumes: int) -> dict[str, np.ndarray]:
    """One column per listed volume (``<prefix>00``, ...): 1 in that volume, 0 elsewhere."""
    identity = np.eye(n_volumes)
    return {f"{prefix}{i:02d}": identity[volume] for i, volume in enumerate(volumes)}


def motion_outliers(
    fd: np.ndarray, std_dvars: np.ndarray, settings: ConfoundSettings
) -> np.ndarray:
    """Volumes with FD above ``fd_threshold`` or std DVARS above ``dvars_threshold`` (fMRIPrep's
    criteria; n/a never counts). Non-steady-state volumes are left out, having their own
    columns (two identical columns would make a design matrix singular), and so is the first
    steady volume's DVARS: its difference is the step from a non-steady-state one."""
    skip = settings.non_steady_state
    dvars_high = np.nan_to_num(std_dvars) > settings.dvars_threshold
    dvars_high[: skip + 1 if skip else 0] = False
    flagged = (np.nan_to_num(fd) > settings.fd_threshold) | dvars_high
    flagged[:skip] = False
    return np.flatnonzero(flagged)


def _padded(prefix: str, columns: np.ndarray, skip: int) -> dict[str, np.ndarray]:
    """Columns fitted on the steady-state volumes, 0 in the ``skip`` first ones (fMRIPrep)."""
    padded = np.vstack([np.zeros((skip, columns.shape[1])), columns])
    return {f"{prefix}{i:02d}": padded[:, i] for i in range(columns.shape[1])}


def _mean_signal(bold: np.ndarray, mask: np.ndarray) -> np.ndarray:
    if not mask.any():
        return np.full(bold.shape[-1], np.nan)
    return bold[mask].mean(axis=0, dtype=np.float64)


def bold_confounds(
    bold: np.ndarray,
    brain_mask: np.ndarray,
    wm: np.ndarray,
    csf: np.ndarray,
    parameters: np.ndarray,
    settings: ConfoundSettings,
) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """The confounds table (columns in fMRIPrep's names and order) of a motion-corrected series
    (X, Y, Z, T), its brain mask and WM and CSF probabilities on its grid and the six motion
    parameters (T, 6); and the aCompCor metadata. DVARS uses every volume (as fMRIPrep); the
    cosines and aCompCor are fitted on the volumes after the non-steady-state ones."""
    _require_4d(bold)
    n_volumes, skip = bold.shape[-1], settings.non_steady_state
    if parameters.shape != (n_volumes, len(PARAMETER_COLUMNS)) or not 0 <= skip < n_volumes - 1:
        raise ValueError(
            f"{n_volumes} volumes: the motion table has {parameters.shape[0]} rows, and "
            f"{skip} non-steady-state volumes must leave two or more"
        )
    brain = brain_mask > 0.5
    masks = compcor_masks(brain, wm, csf)
    columns = {}
    for name, mask in zip(SIGNAL_DESCRIPTIONS, (brain, masks["CSF"], masks["WM"]), strict=True):
        columns |= expansions(name, _mean_signal(bold, mask))
    for name, values in zip(PARAMETER_COLUMNS, parameters.T, strict=True):
        columns |= expansions(name, values)
    fd = framewise_displacement(parameters)
    dvars_values, std_dvars = dvars(bold[brain], skip=skip)
    columns |= {"framewise_displacement": fd, "dvars": dvars_values, "std_dvars": std_dvars}
    basis = cosine_basis(n_volumes - skip, settings.repetition_time, settings.cutoff_s)
    columns |= _padded("cosine", basis, skip)
    union = masks["combined"]
    components, metadata = acompcor(
        bold[union][:, skip:], masks["WM"][union], masks["CSF"][union], basis
    )
    columns |= _padded("a_comp_cor_", components, skip)
    columns |= one_hot("motion_outlier", motion_outliers(fd, std_dvars, settings), n_volumes)
    columns |= one_hot("non_steady_state_outlier", np.arange(skip), n_volumes)
    return columns, metadata


def _base_description(name: str) -> tuple[str, str | None]:
    if name in SIGNAL_DESCRIPTIONS:
        return SIGNAL_DESCRIPTIONS[name], "arbitrary"
    return MOTION_DESCRIPTIONS.get(name) or OTHER_DESCRIPTIONS[name]


def _description(name: str) -> tuple[str, str | None]:
    """Description and units of a signal, motion or DVARS column or of one of its expansions
    (units squared with the values)."""
    for suffix, words, squared in EXPANSION_SUFFIXES:
        if name.endswith(suffix):
            base = name.removesuffix(suffix)
            text, units = _base_description(base)
            if squared and units not in (None, "arbitrary"):
                units = f"{units}^2"
            return f"{words} {base} ({text})", units
    return _base_description(name)


def _column_metadata(name: str, compcor: dict[str, dict], settings: ConfoundSettings) -> dict:
    """A column's sidecar entry: ``Description`` and ``Units``, the aCompCor metadata of a
    component, the thresholds of the outlier columns."""
    if name in compcor:
        return {"Description": "anatomical CompCor component", **compcor[name]}
    thresholds = {
        "FramewiseDisplacementThreshold": settings.fd_threshold,
        "StdDVARSThreshold": settings.dvars_threshold,
    }
    prefixes = {
        "cosine": {"Description": "discrete cosine high-pass regressor (period cutoff "
                   f"{settings.cutoff_s:g} s); 0 in non-steady-state volumes",
                   "CutoffPeriod": settings.cutoff_s},
        "motion_outlier": {"Description": "1 in a volume with framewise_displacement above "
                           f"{settings.fd_threshold:g} mm or std_dvars above "
                           f"{settings.dvars_threshold:g}", **thresholds},
        "non_steady_state_outlier": {"Description": "1 in an initial non-steady-state volume"},
    }  # fmt: skip
    for prefix, entry in prefixes.items():
        if name.startswith(prefix) and name.removeprefix(prefix).isdigit():
            return entry
    text, units = _description(name)
    entry = {"Description": text} | ({"Units": units} if units else {})
    threshold = {"framewise_displacement": "fd_threshold", "std_dvars": "dvars_threshold"}
    if name in threshold:
        entry["OutlierThreshold"] = getattr(settings, threshold[name])
    return entry


def confounds_metadata(
    columns: dict[str, np.ndarray], compcor: dict[str, dict], settings: ConfoundSettings
) -> dict[str, dict]:
    """The JSON sidecar of a confounds table: one entry per column (``_column_metadata``)."""
    return {name: _column_metadata(name, compcor, settings) for name in columns}


def _load_on_grid(path: str, shape: tuple[int, ...]) -> np.ndarray:
    """A 3D mask or probability map that must lie on the series' grid."""
    data = np.asarray(nb.load(path).dataobj, dtype=np.float32)
    if data.shape != shape:
        raise ValueError(f"{path}: shape {data.shape}, the BOLD series' grid is {shape}")
    return data


def read_motion_parameters(motion_file: str) -> np.ndarray:
    """The six motion parameters (T, 6) of a confounds TSV (``motion.write_confounds``)."""
    table = pd.read_csv(motion_file, sep="\t", na_values=["n/a"])
    missing = [name for name in PARAMETER_COLUMNS if name not in table]
    if missing:
        raise ValueError(f"{motion_file}: no column {', '.join(missing)}")
    return table[list(PARAMETER_COLUMNS)].to_numpy(dtype=np.float64)


def write_bold_confounds(
    bold_file: str,
    brain_mask_file: str,
    wm_file: str,
    csf_file: str,
    motion_file: str,
    out_file: str | Path,
    settings: ConfoundSettings,
) -> tuple[Path, Path]:
    """Write the confounds TSV (``n/a`` where a value is missing: derivatives' and FD's and
    DVARS's first row) and its JSON sidecar beside it; returns both paths."""
    bold = np.asarray(nb.load(bold_file).dataobj, dtype=np.float32)
    _require_4d(bold, bold_file)
    grid = bold.shape[:3]
    columns, compcor = bold_confounds(
        bold,
        _load_on_grid(brain_mask_file, grid),
        _load_on_grid(wm_file, grid),
        _load_on_grid(csf_file, grid),
        read_motion_parameters(motion_file),
        settings,
    )
    out_file = Path(out_file)
    sidecar = out_file.with_name(out_file.name.removesuffix(".tsv") + ".json")
    write_text_atomic(tsv_text(columns), out_file)
    write_json_atomic(confounds_metadata(columns, compcor, settings), sidecar)
    return out_file, sidecar


def non_steady_state_volumes(in_file: str, dummy_scans: int | None = None) -> tuple[int, int]:
    """The initial volumes to flag, ``--dummy-scans`` if given (the user knows the sequence)
    else the detected ones, and the detected count (the first 50 volumes are read)."""
    image = nb.load(in_file)
    if len(image.shape) != 4:
        raise ValueError(f"{in_file}: a BOLD series is 4D, got shape {image.shape}")
    window = np.asarray(image.dataobj[..., :NON_STEADY_STATE_WINDOW], dtype=np.float32)
    detected = detect_non_steady_state(window)
    if dummy_scans is None:
        return detected, detected
    if not 0 <= dummy_scans < image.shape[3] - 1:
        raise ValueError(f"--dummy-scans {dummy_scans}: the series has {image.shape[3]} volumes")
    return dummy_scans, detected


class _BoldConfoundsInputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True, desc="motion-corrected BOLD series, own grid")
    brain_mask = File(exists=True, mandatory=True, desc="brain mask on the series' grid")
    wm_mask = File(exists=True, mandatory=True, desc="WM probability or mask, series' grid")
    csf_mask = File(exists=True, mandatory=True, desc="CSF probability or mask, series' grid")
    motion_file = File(exists=True, mandatory=True, desc="TSV of motion.write_confounds")
    repetition_time = traits.Float(mandatory=True, desc="seconds")
    non_steady_state = traits.Int(
        0, usedefault=True, desc="initial volumes flagged, left out of the cosine/aCompCor fit"
    )
    fd_threshold = traits.Float(FD_THRESHOLD_MM, usedefault=True, desc="motion outlier, mm")
    dvars_threshold = traits.Float(STD_DVARS_THRESHOLD, usedefault=True, desc="motion outlier")


class _BoldConfoundsOutputSpec(TraitedSpec):
    confounds_file = File(exists=True, desc="desc-confounds_timeseries.tsv")
    metadata_file = File(exists=True, desc="its JSON sidecar")


class BoldConfounds(SimpleInterface):
    """fMRIPrep's confounds table of a BOLD series (:func:`write_bold_confounds`)."""

    input_spec = _BoldConfoundsInputSpec
    output_spec = _BoldConfoundsOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        settings = ConfoundSettings(
            repetition_time=inputs.repetition_time,
            non_steady_state=inputs.non_steady_state,
            fd_threshold=inputs.fd_threshold,
            dvars_threshold=inputs.dvars_threshold,
        )
        tsv, sidecar = write_bold_confounds(
            inputs.in_file,
            inputs.brain_mask,
            inputs.wm_mask,
            inputs.csf_mask,
            inputs.motion_file,
            Path(runtime.cwd) / "desc-confounds_timeseries.tsv",
            settings,
        )
        self._results.update(confounds_file=str(tsv), metadata_file=str(sidecar))
        return runtime


class _NonSteadyStateInputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True, desc="BOLD series")
    dummy_scans = traits.Int(desc="--dummy-scans: overrides the detection")


class _NonSteadyStateOutputSpec(TraitedSpec):
    n_volumes = traits.Int(desc="initial volumes to flag: dummy_scans if set, else detected")
    detected = traits.Int(desc="initial non-steady-state volumes detected")


class NonSteadyStateDetector(SimpleInterface):
    """Initial non-steady-state volumes (:func:`non_steady_state_volumes`)."""

    input_spec = _NonSteadyStateInputSpec
    output_spec = _NonSteadyStateOutputSpec

    def _run_interface(self, runtime):
        dummy = self.inputs.dummy_scans if isdefined(self.inputs.dummy_scans) else None
        n_volumes, detected = non_steady_state_volumes(self.inputs.in_file, dummy)
        self._results.update(n_volumes=n_volumes, detected=detected)
        return runtime
