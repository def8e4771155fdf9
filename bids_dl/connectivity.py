"""Denoising of template-space BOLD runs and functional connectivity: nilearn + scikit-learn.

One confound strategy serves every analysis (networks, atlas connectomes), so a network map
and a region-to-region matrix of the same run are made from the same signal. Matrices are
written as the BIDS connectivity proposal (BEP017) names them: ``*_meas-<measure>_relmat.tsv``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
from nibabel.affines import apply_affine

from bids_dl import __version__
from bids_dl.derivatives import write_json_atomic, write_text_atomic

#: fMRIPrep's head-motion parameters; the strategy takes each with its expansions
MOTION_PARAMETERS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
#: Friston's 24-parameter expansion: the parameters, their derivatives, and both squared
MOTION_EXPANSIONS = ("", "_derivative1", "_power2", "_derivative1_power2")
#: mean signals of the eroded CSF and white-matter masks (physiological noise)
TISSUE_CONFOUNDS = ("csf", "white_matter")
#: fMRIPrep's discrete-cosine basis of the 128 s high-pass filter
HIGH_PASS_PREFIX = "cosine"
#: one column per volume fMRIPrep flags as before the steady state
NON_STEADY_STATE_PREFIX = "non_steady_state_outlier"
#: The denoising, as written into every sidecar.
DENOISING_STRATEGY = {
    "Name": "simple",
    "Description": (
        "nilearn's 'simple' strategy (Wang et al. 2024, the denoising benchmark of nilearn's "
        "load_confounds_strategy): regression of the 24 motion parameters (6 rigid-body "
        "parameters, their temporal derivatives and the squares of both), the mean CSF and "
        "white-matter signals, and fMRIPrep's cosine regressors (128 s high-pass), together "
        "with a linear detrend, in one step (nilearn.signal.clean, confounds standardized); "
        "non-steady-state volumes are censored (sample mask) before the regression; each "
        "voxel's or region's cleaned signal is z-scored. No global signal regression, no "
        "scrubbing and no low-pass: the strategy keeps the most degrees of freedom that a "
        "short run still has after motion correction"
    ),
}
#: The coordinate atlases nilearn ships in its wheel (no download), by the ``seg-`` label
ATLASES = {
    "Power2011": "fetch_coords_power_2011",
    "Dosenbach2010": "fetch_coords_dosenbach_2010",
    "Seitzman2018": "fetch_coords_seitzman_2018",
}
#: radius of the sphere around each coordinate: Power et al. (2011) use 10 mm diameter spheres
SPHERE_RADIUS_MM = 5.0
#: a run needs this many steady-state volumes for a connectome: the strategy's 26 regressors
#: (and a cosine per 64 s) leave too few degrees of freedom in shorter runs
MIN_CONNECTIVITY_VOLUMES = 40
#: decimals of the values in a TSV: correlations are meaningful to about 1e-4
TSV_FLOAT_FORMAT = "%.6f"


def confound_regressors(confounds_file: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """The strategy's regressors (T, C) of a confounds TSV, and the kept volumes (indices).

    fMRIPrep leaves ``n/a`` in the first rows of derivatives: those take the column's mean,
    which makes them no regressor at all after the columns are standardized.
    """
    table = pd.read_csv(confounds_file, sep="\t", na_values="n/a")
    wanted = [p + e for p in MOTION_PARAMETERS for e in MOTION_EXPANSIONS] + list(TISSUE_CONFOUNDS)
    missing = [column for column in wanted if column not in table]
    if missing:
        raise ValueError(f"{confounds_file} lacks the confounds {', '.join(missing)}")
    wanted += [c for c in table.columns if c.startswith(HIGH_PASS_PREFIX)]
    regressors = table[wanted].astype(float)
    regressors = regressors.fillna(regressors.mean()).fillna(0.0)
    flags = table[[c for c in table.columns if c.startswith(NON_STEADY_STATE_PREFIX)]]
    kept = np.flatnonzero(~flags.fillna(0).to_numpy().astype(bool).any(axis=1))
    return regressors.to_numpy(), kept


def denoise(
    signals: np.ndarray, confounds_file: str | os.PathLike, repetition_time: float
) -> tuple[np.ndarray, np.ndarray]:
    """Clean (T, N) signals with :data:`DENOISING_STRATEGY`; return (T_kept, N) and the kept
    volumes."""
    from nilearn.signal import clean

    regressors, kept = confound_regressors(confounds_file)
    if regressors.shape[0] != signals.shape[0]:
        raise ValueError(
            f"{confounds_file} has {regressors.shape[0]} rows for {signals.shape[0]} volumes"
        )
    if kept.size <= regressors.shape[1] + 2:
        raise ValueError(
            f"{confounds_file}: {kept.size} steady-state volumes cannot be cleaned of "
            f"{regressors.shape[1]} confounds"
        )
    cleaned = clean(
        signals,
        detrend=True,
        standardize="zscore_sample",
        confounds=regressors,
        standardize_confounds=True,
        sample_mask=kept,
        filter=False,
        t_r=repetition_time,
    )
    return cleaned.astype(np.float32), kept


def load_mask(mask: str | os.PathLike | nb.Nifti1Image) -> nb.Nifti1Image:
    """A binary mask image (uint8) from a file or an image."""
    image = mask if isinstance(mask, nb.Nifti1Image) else nb.load(mask)
    data = (np.asanyarray(image.dataobj) > 0.5).astype(np.uint8)
    return nb.Nifti1Image(data, image.affine)


def load_on_grid(
    bold_file: str | os.PathLike, mask_file: str | os.PathLike | nb.Nifti1Image
) -> tuple[nb.Nifti1Image, nb.Nifti1Image]:
    """A BOLD run and its binary mask, checked to share one grid."""
    bold, mask = nb.load(bold_file), load_mask(mask_file)
    if bold.shape[:3] != mask.shape or not np.allclose(bold.affine, mask.affine, atol=1e-3):
        raise ValueError(f"{bold_file} and its mask are not on the same grid")
    return bold, mask


def clean_run(
    bold_file: str | os.PathLike,
    mask_file: str | os.PathLike | nb.Nifti1Image,
    confounds_file: str | os.PathLike,
    repetition_time: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The in-mask voxels of a BOLD run, denoised: (T_kept, V) float32, and the kept volumes.

    ``mask_file`` may be an image (the group's common mask); voxels are in the order of
    ``data[mask]`` (numpy's, as nilearn's maskers).
    """
    bold, mask = load_on_grid(bold_file, mask_file)
    inside = mask.get_fdata() > 0
    signals = bold.get_fdata(dtype=np.float32)[inside].T
    return denoise(signals, confounds_file, repetition_time)


def atlas_regions(atlas: str = "Power2011") -> tuple[list[str], np.ndarray, dict]:
    """Labels (``roi001``...), MNI coordinates (R, 3) and a description of a packaged atlas."""
    from nilearn import datasets

    if atlas not in ATLASES:
        raise ValueError(f"unknown atlas {atlas!r}: choose one of {', '.join(ATLASES)}")
    bunch = getattr(datasets, ATLASES[atlas])()
    coordinates = bunch.rois[["x", "y", "z"]].to_numpy(dtype=float)
    labels = [f"roi{index:03d}" for index in range(1, len(coordinates) + 1)]
    description = {
        "Atlas": atlas,
        "AtlasSource": f"nilearn.datasets.{ATLASES[atlas]} (shipped with nilearn)",
        "SphereRadiusMillimeters": SPHERE_RADIUS_MM,
    }
    return labels, coordinates, description


def regions_inside(
    coordinates: np.ndarray, mask: nb.Nifti1Image, radius: float = SPHERE_RADIUS_MM
) -> np.ndarray:
    """True for each sphere that holds at least one mask voxel (nilearn rejects empty ones)."""
    from scipy.spatial import cKDTree

    voxels = np.argwhere(mask.get_fdata() > 0)
    if voxels.size == 0:
        return np.zeros(len(coordinates), bool)
    world = apply_affine(mask.affine, voxels)
    counts = cKDTree(world).query_ball_point(coordinates, radius, return_length=True)
    return np.asarray(counts) > 0


def ledoit_wolf_correlation(timeseries: np.ndarray) -> np.ndarray:
    """Correlation (R, R) from scikit-learn's Ledoit-Wolf shrunk covariance of (T, R) signals.

    Columns that are not finite (regions outside the mask) give ``NaN`` rows and columns, so
    every matrix of an atlas has the same shape.
    """
    from nilearn.connectome import ConnectivityMeasure
    from sklearn.covariance import LedoitWolf

    valid = np.isfinite(timeseries).all(axis=0)
    matrix = np.full((timeseries.shape[1],) * 2, np.nan)
    measure = ConnectivityMeasure(
        cov_estimator=LedoitWolf(store_precision=False),
        kind="correlation",
        standardize="zscore_sample",
    )
    matrix[np.ix_(valid, valid)] = measure.fit_transform([timeseries[:, valid]])[0]
    return matrix


def atlas_timeseries(
    bold_file: str | os.PathLike,
    mask_file: str | os.PathLike,
    confounds_file: str | os.PathLike,
    repetition_time: float,
    atlas: str = "Power2011",
) -> tuple[list[str], np.ndarray, np.ndarray, dict]:
    """Denoised mean signal of each atlas sphere inside the brain mask.

    Returns the labels, the time series (T_kept, R) with ``NaN`` columns for spheres that hold
    no mask voxel, the kept volumes and the atlas description (excluded regions named).
    """
    from nilearn.maskers import NiftiSpheresMasker

    labels, coordinates, description = atlas_regions(atlas)
    bold, mask = load_on_grid(bold_file, mask_file)
    inside = regions_inside(coordinates, mask)
    masker = NiftiSpheresMasker(
        seeds=coordinates[inside].tolist(),
        radius=SPHERE_RADIUS_MM,
        mask_img=mask,
        allow_overlap=True,
        standardize=None,  # the means are standardized once, after denoising
    )
    means = masker.fit_transform(bold)
    cleaned, kept = denoise(means, confounds_file, repetition_time)
    timeseries = np.full((kept.size, len(labels)), np.nan, dtype=np.float32)
    timeseries[:, inside] = cleaned
    description["RegionsOutsideMask"] = [
        lab for lab, ok in zip(labels, inside, strict=True) if not ok
    ]
    return labels, timeseries, kept, description


def atlas_connectivity(
    bold_file: str | os.PathLike,
    mask_file: str | os.PathLike,
    confounds_file: str | os.PathLike,
    repetition_time: float,
    atlas: str = "Power2011",
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Labels, denoised sphere time series (T_kept, R) and their Ledoit-Wolf correlation."""
    labels, timeseries, _, _ = atlas_timeseries(
        bold_file, mask_file, confounds_file, repetition_time, atlas
    )
    return labels, timeseries, ledoit_wolf_correlation(timeseries)


def write_atlas_outputs(
    bold_file: str | os.PathLike,
    mask_file: str | os.PathLike,
    confounds_file: str | os.PathLike,
    repetition_time: float,
    out_prefix: str | os.PathLike,
    atlas: str = "Power2011",
) -> tuple[Path, Path]:
    """Write ``<out_prefix>_meas-PearsonCorrelation_relmat.tsv`` and ``<out_prefix>_timeseries.tsv``
    (each with its JSON sidecar) of an atlas; return both TSVs."""
    labels, timeseries, kept, description = atlas_timeseries(
        bold_file, mask_file, confounds_file, repetition_time, atlas
    )
    sources = [Path(f).name for f in (bold_file, mask_file, confounds_file)]
    _, coordinates, _ = atlas_regions(atlas)
    metadata = {**description, "RegionCoordinatesMNI": coordinates, "Denoising": DENOISING_STRATEGY}
    relmat = write_relmat(
        ledoit_wolf_correlation(timeseries),
        labels,
        f"{out_prefix}_meas-PearsonCorrelation_relmat.tsv",
        sources,
        metadata=metadata,
    )
    series = write_timeseries(
        timeseries,
        kept,
        nb.load(bold_file).shape[3],
        labels,
        f"{out_prefix}_timeseries.tsv",
        {**description, "Sources": sources},
    )
    return relmat, series


def software_versions() -> dict[str, str]:
    """The versions of the software that cleaned, decomposed and correlated the signals."""
    import nilearn
    import sklearn

    return {
        "bids_dl": __version__,
        "nilearn": nilearn.__version__,
        "scikit-learn": sklearn.__version__,
    }


def _table_text(table: pd.DataFrame) -> str:
    buffer = io.StringIO()
    table.to_csv(
        buffer,
        sep="\t",
        index=False,
        na_rep="n/a",
        float_format=TSV_FLOAT_FORMAT,
        lineterminator="\n",
    )
    return buffer.getvalue()


def write_relmat(
    matrix: np.ndarray,
    labels: list[str],
    out_tsv: str | os.PathLike,
    sources: list[str],
    measure: str = "PearsonCorrelation",
    metadata: dict | None = None,
) -> Path:
    """Write a BEP017 relationship matrix: TSV (a header row of node labels, then one row per
    node, no index column, ``n/a`` where undefined) and its JSON sidecar; return the TSV."""
    matrix = np.asarray(matrix, dtype=float)
    if matrix.shape != (len(labels), len(labels)):
        raise ValueError(f"a {matrix.shape} matrix for {len(labels)} labels")
    out_tsv = write_text_atomic(_table_text(pd.DataFrame(matrix, columns=labels)), out_tsv)
    sidecar = {
        "RelationshipMeasure": measure,
        "Directed": False,
        "Weighted": True,
        "ValidDiagonal": False,
        "Software": software_versions(),
        "CovarianceEstimator": "LedoitWolf (scikit-learn), correlation from the shrunk "
        "covariance (nilearn.connectome.ConnectivityMeasure)",
        "NodeLabels": list(labels),
        "Sources": list(sources),
        **(metadata or {}),
    }
    write_json_atomic(sidecar, Path(str(out_tsv).removesuffix(".tsv") + ".json"))
    return out_tsv


def write_timeseries(
    timeseries: np.ndarray,
    kept: np.ndarray,
    n_volumes: int,
    columns: list[str],
    out_tsv: str | os.PathLike,
    metadata: dict,
) -> Path:
    """Write (T_kept, N) signals as a TSV with one row per volume of the run (``n/a`` for the
    censored ones, so rows line up with the BOLD series and its confounds) and its sidecar."""
    full = np.full((n_volumes, len(columns)), np.nan)
    full[kept] = timeseries
    out_tsv = write_text_atomic(_table_text(pd.DataFrame(full, columns=columns)), out_tsv)
    write_json_atomic(
        {"Denoising": DENOISING_STRATEGY, "Software": software_versions(), **metadata},
        Path(str(out_tsv).removesuffix(".tsv") + ".json"),
    )
    return out_tsv
