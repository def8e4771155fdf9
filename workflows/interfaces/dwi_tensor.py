"""Tensor maps of a preprocessed diffusion series: the measured WLS fit (dipy) and the DTI
network's prediction; their move to the T1w (rigid b=0 registration, principal directions
rotated with it) and their means per tissue and white-matter structure.

Maps are FA (unitless), MD, AD, RD (mm^2/s) and V1, the principal eigenvector (world RAS+
axes). Functions work on files and return files.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import File, SimpleInterface, TraitedSpec, isdefined, traits

from bids_dl.derivatives import DWI_MEASURE_REGIONS
from bids_dl.images import save_image
from bids_dl.models.diffusion_simulation import TensorMetrics
from bids_dl.models.gradients import B0_THRESHOLD
from bids_dl.models.tensor_features import tensor_maps
from bids_dl.workflows.interfaces.deep_learning import _ModelInterface, _ModelRunInputSpec
from bids_dl.workflows.interfaces.images import label_images, regional_means

#: the maps of a tensor, in output order; ``v1`` is the principal eigenvector
SCALAR_MAPS = ("fa", "md", "ad", "rd")
MAPS = (*SCALAR_MAPS, "v1")
#: above this b (s/mm^2) a tensor's diffusivities and FA are biased low by kurtosis
TENSOR_BIAS_B = 1500.0


def _load_series(series_file: str, bval_file: str, world_bvecs_file: str, mask_file: str):
    image = nb.load(series_file)
    series = np.asarray(image.dataobj, dtype=np.float32)
    bvals = np.loadtxt(bval_file, ndmin=1)
    world_bvecs = np.loadtxt(world_bvecs_file, ndmin=2)
    mask = np.asarray(nb.load(mask_file).dataobj) > 0
    return image, series, bvals, world_bvecs, mask


def save_maps(
    metrics: TensorMetrics, v1: np.ndarray, mask: np.ndarray, affine: np.ndarray, out_dir: Path
) -> dict[str, str]:
    """Write FA, MD, AD, RD and V1 (zero outside ``mask``) as float32 NIfTI files."""
    files = {}
    for name in SCALAR_MAPS:
        volume = np.where(mask, np.nan_to_num(getattr(metrics, name)), 0).astype(np.float32)
        files[name] = str(save_image(volume, affine, out_dir / f"{name}.nii.gz"))
    v1 = np.where(mask[..., None], np.nan_to_num(v1), 0).astype(np.float32)
    files["v1"] = str(save_image(v1, affine, out_dir / "v1.nii.gz"))
    return files


def fit_tensor(
    series_file: str, bval_file: str, world_bvecs_file: str, mask_file: str, out_dir: str
) -> dict[str, str]:
    """dipy's WLS tensor fit on every volume inside the mask; V1 in world axes (the
    b-vectors given are world vectors)."""
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    image, series, bvals, world_bvecs, mask = _load_series(
        series_file, bval_file, world_bvecs_file, mask_file
    )
    table = gradient_table(bvals, bvecs=world_bvecs, b0_threshold=B0_THRESHOLD)
    fit = TensorModel(table, fit_method="WLS").fit(series, mask=mask)
    metrics = TensorMetrics(fa=fit.fa, md=fit.md, ad=fit.ad, rd=fit.rd)
    return save_maps(metrics, fit.evecs[..., 0], mask, image.affine, Path(out_dir))


def predict_tensor_maps(
    series_file: str,
    bval_file: str,
    world_bvecs_file: str,
    mask_file: str,
    bundle: str,
    out_dir: str,
    device: str = "auto",
    num_threads: int = 1,
) -> tuple[dict[str, str], dict]:
    """The DTI network's maps from the b~0 volumes and the main shell's directions, and the
    model's identity."""
    from bids_dl.models.tensor_inference import predict_tensor
    from bids_dl.workflows.interfaces.deep_learning import _identity, _load_model

    card, network, device = _load_model(bundle, "dti", num_threads, device)
    image, series, bvals, world_bvecs, mask = _load_series(
        series_file, bval_file, world_bvecs_file, mask_file
    )
    elements = predict_tensor(network, series, bvals, world_bvecs, mask, device=device)
    metrics, v1 = tensor_maps(elements)
    return save_maps(metrics, v1, mask, image.affine, Path(out_dir)), _identity(card, bundle)


def maps_to_t1w(
    maps: dict[str, str], mask_file: str, transform: str, t1w_file: str, out_dir: str
) -> dict[str, str]:
    """Resample the scalar maps (linear) and the mask and V1 (nearest neighbour: V1's sign is
    arbitrary, averaging neighbours could cancel it) onto the T1w grid; V1 is rotated from
    the b=0's world axes to the T1w's by the registration's rotation."""
    import ants
    from scipy.linalg import polar

    from bids_dl.workflows.interfaces.motion import read_itk_affine

    out = Path(out_dir)
    reference = ants.image_read(t1w_file)
    affine = nb.load(t1w_file).affine
    resampled = {}
    for name, interpolator in [(n, "linear") for n in SCALAR_MAPS] + [("mask", "nearestNeighbor")]:
        source = maps[name] if name != "mask" else mask_file
        image = ants.apply_transforms(
            reference, ants.image_read(source), [transform], interpolator=interpolator
        )
        resampled[name] = str(
            save_image(image.numpy().astype(np.float32), affine, out / f"{name}.nii.gz")
        )
    v1 = np.asarray(nb.load(maps["v1"]).dataobj, dtype=np.float32)
    # the transform maps T1w points to b=0 points: its inverse rotation carries directions
    rotation = polar(read_itk_affine(transform).matrix)[0].T
    components = [
        ants.apply_transforms(
            reference, ants.image_read(source), [transform], interpolator="nearestNeighbor"
        ).numpy()
        for source in _component_files(v1, maps["v1"], out)
    ]
    rotated = np.stack(components, -1) @ rotation.T
    resampled["v1"] = str(save_image(rotated.astype(np.float32), affine, out / "v1.nii.gz"))
    return resampled


def _component_files(v1: np.ndarray, v1_file: str, out: Path) -> list[str]:
    affine = nb.load(v1_file).affine
    return [
        str(save_image(v1[..., axis], affine, out / f"v1_source_{axis}.nii.gz"))
        for axis in range(3)
    ]


def diffusion_measures(
    t1w_maps: dict[str, str], dseg_file: str, aseg_file: str | None, prefix: str = "dwi"
) -> dict[str, float | str]:
    """Mean FA and MD (10^-3 mm^2/s) per region of ``DWI_MEASURE_REGIONS`` (structures only
    with ``aseg_file``), inside the diffusion brain mask on the T1w grid; n/a below 10 voxels."""
    maps = {
        "fa": np.asarray(nb.load(t1w_maps["fa"]).dataobj),
        "md": np.asarray(nb.load(t1w_maps["md"]).dataobj) * 1e3,
    }
    inside = np.asarray(nb.load(t1w_maps["mask"]).dataobj) > 0.5
    labels = label_images(dseg_file, aseg_file)
    return regional_means(maps, inside, labels, DWI_MEASURE_REGIONS, prefix)


class _SeriesInputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True, desc="preprocessed DWI series")
    bval = File(exists=True, mandatory=True)
    world_bvecs = File(exists=True, mandatory=True, desc="world b-vectors (text, N x 3)")
    brain_mask = File(exists=True, mandatory=True)


class _MapsOutputSpec(TraitedSpec):
    fa = File(exists=True)
    md = File(exists=True)
    ad = File(exists=True)
    rd = File(exists=True)
    v1 = File(exists=True, desc="principal eigenvector, world axes (4D, 3 components)")


class FitTensor(SimpleInterface):
    """The measured tensor maps (:func:`fit_tensor`)."""

    input_spec = _SeriesInputSpec
    output_spec = _MapsOutputSpec

    def _run_interface(self, runtime):
        self._results.update(
            fit_tensor(
                self.inputs.in_file,
                self.inputs.bval,
                self.inputs.world_bvecs,
                self.inputs.brain_mask,
                runtime.cwd,
            )
        )
        return runtime


class _PredictInputSpec(_ModelRunInputSpec, _SeriesInputSpec):
    pass


class _PredictOutputSpec(_MapsOutputSpec):
    model = traits.Dict(desc="name, version and sha256 of the model")


class PredictTensor(_ModelInterface):
    """The DTI network's maps (:func:`predict_tensor_maps`)."""

    input_spec = _PredictInputSpec
    output_spec = _PredictOutputSpec

    def _run_interface(self, runtime):
        files, model = predict_tensor_maps(
            self.inputs.in_file,
            self.inputs.bval,
            self.inputs.world_bvecs,
            self.inputs.brain_mask,
            self.inputs.bundle,
            runtime.cwd,
            self.inputs.device,
            self.inputs.num_threads,
        )
        self._results.update(files)
        self._results["model"] = model
        return runtime


class _ToT1wInputSpec(TraitedSpec):
    fa = File(exists=True, mandatory=True)
    md = File(exists=True, mandatory=True)
    ad = File(exists=True, mandatory=True)
    rd = File(exists=True, mandatory=True)
    v1 = File(exists=True, mandatory=True)
    brain_mask = File(exists=True, mandatory=True, desc="diffusion brain mask")
    transform = File(exists=True, mandatory=True)
    t1w = File(exists=True, mandatory=True)


class _ToT1wOutputSpec(_MapsOutputSpec):
    mask = File(exists=True, desc="the diffusion brain mask on the T1w grid")


class MapsToT1w(SimpleInterface):
    """Tensor maps on the T1w grid (:func:`maps_to_t1w`)."""

    input_spec = _ToT1wInputSpec
    output_spec = _ToT1wOutputSpec

    def _run_interface(self, runtime):
        maps = {name: getattr(self.inputs, name) for name in MAPS}
        self._results.update(
            maps_to_t1w(
                maps, self.inputs.brain_mask, self.inputs.transform, self.inputs.t1w, runtime.cwd
            )
        )
        return runtime


class _MeasuresInputSpec(TraitedSpec):
    fa = File(exists=True, mandatory=True, desc="FA on the T1w grid")
    md = File(exists=True, mandatory=True)
    mask = File(exists=True, mandatory=True, desc="diffusion brain mask on the T1w grid")
    dseg = File(exists=True, mandatory=True, desc="tissue labels")
    aseg = File(exists=True, desc="structure labels (optional)")
    prefix = traits.Str("dwi", usedefault=True, desc="column prefix")


class _MeasuresOutputSpec(TraitedSpec):
    measures = traits.Dict()


class DiffusionMeasures(SimpleInterface):
    """Mean FA/MD per tissue and white-matter structure (:func:`diffusion_measures`)."""

    input_spec = _MeasuresInputSpec
    output_spec = _MeasuresOutputSpec

    def _run_interface(self, runtime):
        maps = {"fa": self.inputs.fa, "md": self.inputs.md, "mask": self.inputs.mask}
        aseg = self.inputs.aseg if isdefined(self.inputs.aseg) else None
        self._results["measures"] = diffusion_measures(
            maps, self.inputs.dseg, aseg, self.inputs.prefix
        )
        return runtime
