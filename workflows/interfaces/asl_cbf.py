"""CBF from a preprocessed ASL series: label-control subtraction, the consensus single-delay
model or, with several delays, a CBF and arrival-time fit (``bids_dl.models.asl_kinetics``);
and the quality figures ASLPrep reports (QEI, share of negative and implausible CBF).

Functions work on files and return files.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import File, SimpleInterface, TraitedSpec, isdefined, traits

from bids_dl.derivatives import ASL_MEASURE_REGIONS, write_text_atomic
from bids_dl.images import save_image
from bids_dl.models.asl_kinetics import (
    LabelingScheme,
    cbf_from_difference,
    fit_cbf_att,
    label_control_pairs,
)
from bids_dl.workflows.interfaces.asl_preproc import load_series, smooth_in_mask
from bids_dl.workflows.interfaces.deep_learning import _ModelInterface, _ModelRunInputSpec
from bids_dl.workflows.interfaces.images import label_images, regional_means

#: CBF above this (mL/100 g/min) is not a tissue perfusion (ASLPrep's users' flag)
IMPLAUSIBLE_CBF = 150.0
#: tissue probability above which a voxel counts as that tissue (as ASLPrep's QEI)
TISSUE_THRESHOLD = 0.7
#: smoothing of the CBF before QEI (Dolui et al. 2017)
QEI_SMOOTHING_FWHM_MM = 5.0
#: the columns of ``desc-qualitycontrol_cbf.tsv``
QUALITY_COLUMNS = (
    "mean_fd",
    "max_fd",
    "qei_cbf",
    "mean_gm_cbf",
    "mean_wm_cbf",
    "ratio_gm_wm_cbf",
    "percentage_negative_cbf",
    "percentage_negative_cbf_brain",
    "percentage_implausible_cbf_brain",
)


def scheme_from_parameters(parameters: dict) -> LabelingScheme:
    return LabelingScheme(
        parameters["labeling_type"],
        bolus_duration=parameters["bolus_duration"],
        efficiency=parameters["efficiency"],
        t1_blood=parameters["t1_blood"],
    )


def slice_delays(delay: float, shape: tuple, parameters: dict) -> np.ndarray:
    """The delay of every voxel: the volume's delay plus its slice's acquisition time (2D
    readouts), the consensus paper's slice-timing correction of the PLD."""
    timing = parameters.get("slice_timing")
    if not timing:
        return np.full(shape, delay)
    axis = parameters.get("slice_axis", 2)
    view = [1, 1, 1]
    view[axis] = len(timing)
    return np.broadcast_to(delay + np.asarray(timing, float).reshape(view), shape)


def difference_delays(parameters: dict) -> np.ndarray:
    """The delay of each difference (:func:`label_control_pairs`: pairs and ``deltam``)."""
    delays = np.asarray(parameters["delays"], float)
    return np.asarray([delays[label] for label, _ in label_control_pairs(parameters["context"])])


def differences(series: np.ndarray, parameters: dict) -> tuple[np.ndarray, np.ndarray]:
    """Control-minus-label differences (X, Y, Z, K) of every pair and ``deltam`` volume, and
    the delay of each."""
    volumes = [
        series[..., label] if label == control else series[..., control] - series[..., label]
        for label, control in label_control_pairs(parameters["context"])
    ]
    if not volumes:
        return np.zeros((*series.shape[:3], 0), np.float32), np.zeros(0)
    return np.stack(volumes, -1), difference_delays(parameters)


def quantify_cbf(
    series_file: str, m0_file: str, mask_file: str, parameters: dict, out_dir: str
) -> dict[str, str]:
    """Mean CBF (mL/100 g/min) and, at one delay with several pairs, its series per pair; with
    several delays, CBF and ATT (s) fitted to the mean difference at each delay. A series of
    scanner ``cbf`` volumes only is averaged as it is. Zero outside the brain mask."""
    image, series = load_series(series_file)
    m0 = np.asarray(nb.load(m0_file).dataobj, dtype=np.float64)
    mask = np.asarray(nb.load(mask_file).dataobj) > 0
    out = Path(out_dir)
    scheme = scheme_from_parameters(parameters)
    dm, delays = differences(series, parameters)
    outputs = {}

    def save(name: str, volume: np.ndarray) -> str:
        inside = mask if volume.ndim == 3 else mask[..., None]
        volume = np.where(inside, np.nan_to_num(volume), 0).astype(np.float32)
        return str(save_image(volume, image.affine, out / f"{name}.nii.gz"))

    if dm.shape[-1] == 0:
        cbf_volumes = [i for i, c in enumerate(parameters["context"]) if c == "cbf"]
        outputs["cbf"] = save("cbf", series[..., cbf_volumes].mean(-1))
        return outputs
    unique_delays = np.unique(delays)
    if unique_delays.size == 1:
        voxel_delays = slice_delays(float(unique_delays[0]), m0.shape, parameters)
        per_pair = cbf_from_difference(dm, m0[..., None], voxel_delays[..., None], scheme)
        outputs["cbf"] = save("cbf", per_pair.mean(-1))
        if per_pair.shape[-1] > 1:
            outputs["cbf_timeseries"] = save("cbf_timeseries", per_pair)
        return outputs
    mean_dm = np.stack([dm[..., delays == d].mean(-1) for d in unique_delays], -1)
    voxel_delays = np.stack(
        [slice_delays(float(d), m0.shape, parameters) for d in unique_delays], -1
    )
    cbf, att = fit_cbf_att(mean_dm[mask], m0[mask], voxel_delays[mask], scheme)
    outputs["cbf"] = save("cbf", _unmask(cbf, mask))
    outputs["att"] = save("att", _unmask(att, mask))
    return outputs


def enhance_cbf(
    series_file: str,
    m0_file: str,
    mask_file: str,
    parameters: dict,
    bundle: str,
    out_file: str,
    pairs: int,
    device: str = "auto",
    num_threads: int = 1,
) -> dict:
    """The perfusion network's CBF from the first ``pairs`` pairs of a single-delay series:
    the enhanced ``(control - label) / M0`` quantified by the same model as the measured CBF.
    Returns the model's identity."""
    from bids_dl.models.asl_enhancement import enhance_difference
    from bids_dl.workflows.interfaces.deep_learning import _identity, _load_model

    card, network, device = _load_model(bundle, "asl", num_threads, device)
    image, series = load_series(series_file)
    m0 = np.asarray(nb.load(m0_file).dataobj, dtype=np.float32)
    mask = np.asarray(nb.load(mask_file).dataobj) > 0
    delays = difference_delays(parameters)
    dm, _ = enhance_difference(
        network, series, parameters["context"], m0, mask, pairs=pairs, device=device
    )
    voxel_delays = slice_delays(float(delays[0]), m0.shape, parameters)
    cbf = cbf_from_difference(dm, 1.0, voxel_delays, scheme_from_parameters(parameters))
    save_image(np.where(mask, cbf, 0).astype(np.float32), image.affine, out_file)
    return _identity(card, bundle)


def _unmask(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    volume = np.zeros(mask.shape, np.float32)
    volume[mask] = values
    return volume


def quality_evaluation_index(
    cbf: np.ndarray, gm: np.ndarray, wm: np.ndarray, csf: np.ndarray, zooms
) -> float:
    """QEI (Dolui et al., ISMRM 2017; as ASLPrep): the geometric mean of three scores of the
    CBF smoothed by 5 mm FWHM. Structural similarity: its correlation r with the
    pseudo-CBF 2.5 GM + WM (score 1 - exp(-3.0126 r^2.4419)); spatial variability: the
    tissues' pooled variance over the mean GM CBF, V (score exp(-0.054 V^0.9272)); negative
    GM CBF: its share p (score exp(-2.8478 p^0.5196)). 1 is best."""
    inside = (gm + wm + csf) > 0
    smoothed = smooth_in_mask(cbf, inside, zooms, QEI_SMOOTHING_FWHM_MM)
    pseudo = 2.5 * gm + wm
    valid = inside & (smoothed != 0)
    correlation = max(0.0, float(np.corrcoef(smoothed[valid], pseudo[valid])[0, 1]))
    tissues = [smoothed[t > TISSUE_THRESHOLD] for t in (gm, wm, csf)]
    tissues = [t for t in tissues if t.size > 1]
    pooled = sum((t.size - 1) * t.var() for t in tissues) / (
        sum(t.size for t in tissues) - len(tissues)
    )
    grey = tissues[0]
    variability = pooled / abs(grey.mean())
    negative = float((grey < 0).mean())
    scores = [
        np.exp(-0.054 * variability**0.9272),
        np.exp(-2.8478 * negative**0.5196),
        1 - np.exp(-3.0126 * correlation**2.4419),
    ]
    return float(np.prod(scores) ** (1 / 3))


def cbf_quality(
    cbf_file: str, mask_file: str, confounds_file: str, probseg: list[str] | None
) -> dict[str, float | str]:
    """The row of ``desc-qualitycontrol_cbf.tsv``: motion, QEI, mean GM and WM CBF, and the
    share (%) of negative CBF in GM (ASLPrep's) and in the brain, and of CBF above 150. The
    tissue columns are n/a without tissue maps (a participant without a T1w)."""
    image = nb.load(cbf_file)
    cbf = np.asarray(image.dataobj, dtype=np.float64)
    brain = np.asarray(nb.load(mask_file).dataobj) > 0
    fd = read_tsv_column(confounds_file, "framewise_displacement")
    row: dict[str, float | str] = {c: "n/a" for c in QUALITY_COLUMNS}
    if np.isfinite(fd).any():
        row["mean_fd"], row["max_fd"] = float(np.nanmean(fd)), float(np.nanmax(fd))
    row["percentage_negative_cbf_brain"] = 100 * float((cbf[brain] < 0).mean())
    row["percentage_implausible_cbf_brain"] = 100 * float((cbf[brain] > IMPLAUSIBLE_CBF).mean())
    if probseg:
        gm, wm, csf = (np.asarray(nb.load(p).dataobj, dtype=np.float64) * brain for p in probseg)
        grey, white = gm > TISSUE_THRESHOLD, wm > TISSUE_THRESHOLD
        if grey.sum() > 1 and white.sum() > 1:
            row["mean_gm_cbf"] = float(cbf[grey].mean())
            row["mean_wm_cbf"] = float(cbf[white].mean())
            row["ratio_gm_wm_cbf"] = row["mean_gm_cbf"] / row["mean_wm_cbf"]
            row["percentage_negative_cbf"] = 100 * float((cbf[grey] < 0).mean())
            zooms = image.header.get_zooms()[:3]
            row["qei_cbf"] = quality_evaluation_index(cbf, gm, wm, csf, zooms)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}


def read_tsv_column(path: str, column: str) -> np.ndarray:
    """One column of a TSV as floats, ``n/a`` as NaN."""
    import csv

    with open(path, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return np.array([np.nan if r[column] == "n/a" else float(r[column]) for r in rows])


def write_quality_table(row: dict[str, float | str], out_file: str) -> str:
    lines = ["\t".join(row), "\t".join(str(v) for v in row.values())]
    write_text_atomic("\n".join(lines) + "\n", Path(out_file))
    return out_file


def perfusion_measures(
    cbf_t1w_file: str, dseg_file: str, aseg_file: str | None
) -> dict[str, float | str]:
    """Mean CBF per region of ``ASL_MEASURE_REGIONS`` (structures only with ``aseg_file``)
    on the T1w grid, where the ASL covers the brain (non-zero CBF)."""
    cbf = np.asarray(nb.load(cbf_t1w_file).dataobj, dtype=np.float64)
    labels = label_images(dseg_file, aseg_file)
    return regional_means({"cbf": cbf}, cbf != 0, labels, ASL_MEASURE_REGIONS, "asl")


class _QuantifyInputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True, desc="motion-corrected ASL series")
    m0 = File(exists=True, mandatory=True)
    brain_mask = File(exists=True, mandatory=True)
    parameters = traits.Dict(mandatory=True, desc="context, delays and the labelling scheme")


class _QuantifyOutputSpec(TraitedSpec):
    cbf = File(exists=True, desc="mean CBF, mL/100 g/min")
    cbf_timeseries = File(desc="CBF per pair (one delay, several pairs)")
    att = File(desc="arterial transit time, s (several delays)")


class QuantifyCBF(SimpleInterface):
    """CBF (and ATT) from a preprocessed series (:func:`quantify_cbf`)."""

    input_spec = _QuantifyInputSpec
    output_spec = _QuantifyOutputSpec

    def _run_interface(self, runtime):
        self._results.update(
            quantify_cbf(
                self.inputs.in_file,
                self.inputs.m0,
                self.inputs.brain_mask,
                self.inputs.parameters,
                runtime.cwd,
            )
        )
        return runtime


class _QualityInputSpec(TraitedSpec):
    cbf = File(exists=True, mandatory=True)
    brain_mask = File(exists=True, mandatory=True)
    confounds = File(exists=True, mandatory=True)
    probseg = traits.List(File(exists=True), desc="GM, WM, CSF probabilities on the CBF grid")


class _QualityOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="desc-qualitycontrol_cbf.tsv")
    quality = traits.Dict(desc="the same row")


class CBFQuality(SimpleInterface):
    """The CBF quality row (:func:`cbf_quality`) as a TSV."""

    input_spec = _QualityInputSpec
    output_spec = _QualityOutputSpec

    def _run_interface(self, runtime):
        probseg = self.inputs.probseg if isdefined(self.inputs.probseg) else None
        row = cbf_quality(self.inputs.cbf, self.inputs.brain_mask, self.inputs.confounds, probseg)
        self._results["quality"] = row
        self._results["out_file"] = write_quality_table(row, str(Path(runtime.cwd) / "quality.tsv"))
        return runtime


class _MeasuresInputSpec(TraitedSpec):
    cbf = File(exists=True, mandatory=True, desc="CBF on the T1w grid")
    dseg = File(exists=True, mandatory=True, desc="tissue labels")
    aseg = File(exists=True, desc="structure labels")


class _MeasuresOutputSpec(TraitedSpec):
    measures = traits.Dict(desc="column -> value of the measures table")


class PerfusionMeasures(SimpleInterface):
    """Mean CBF per tissue and structure (:func:`perfusion_measures`)."""

    input_spec = _MeasuresInputSpec
    output_spec = _MeasuresOutputSpec

    def _run_interface(self, runtime):
        aseg = self.inputs.aseg if isdefined(self.inputs.aseg) else None
        self._results["measures"] = perfusion_measures(self.inputs.cbf, self.inputs.dseg, aseg)
        return runtime


class _EnhanceInputSpec(_ModelRunInputSpec, _QuantifyInputSpec):
    pairs = traits.Int(mandatory=True, desc="the first pairs the network reads")


class _EnhanceOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the network's CBF, mL/100 g/min")
    model = traits.Dict(desc="name, version and sha256 of the model")


class EnhancePerfusion(_ModelInterface):
    """The perfusion network's CBF (:func:`enhance_cbf`)."""

    input_spec = _EnhanceInputSpec
    output_spec = _EnhanceOutputSpec

    def _run_interface(self, runtime):
        out_file = str(Path(runtime.cwd) / "enhanced_cbf.nii.gz")
        self._results["model"] = enhance_cbf(
            self.inputs.in_file,
            self.inputs.m0,
            self.inputs.brain_mask,
            self.inputs.parameters,
            self.inputs.bundle,
            out_file,
            self.inputs.pairs,
            self.inputs.device,
            self.inputs.num_threads,
        )
        self._results["out_file"] = out_file
        return runtime
