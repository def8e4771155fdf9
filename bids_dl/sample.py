"""Write a small, valid BIDS dataset built from the MNI152 template that nilearn installs.

Each subject is the ICBM152 2009a brain wrapped in a simulated head (CSF rim, skull, scalp),
placed with its own random affine pose, field of view and voxel order, multiplied by a smooth
bias field and given Rician noise. A T2w-like image is synthesised from the same tissue maps.
The true brain mask and tissue labels go to ``derivatives/sample-truth`` so that the pipeline's
outputs can be scored. The healthy subjects with an odd number also get a diffusion series: a
diffusion phantom (``models.diffusion_phantom``) drawn on their tissue maps, scanned with small
known head motion between volumes; its true FA and the motion go to the truth folder too.
Everything is deterministic for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nb
import numpy as np
from nibabel.orientations import axcodes2ornt, ornt_transform
from scipy import ndimage

from bids_dl import __version__
from bids_dl.derivatives import write_json_atomic, write_nifti_atomic, write_text_atomic
from bids_dl.models.geometry import resample_voxels, rotation_matrix

if TYPE_CHECKING:
    from bids_dl.models.diffusion_phantom import Phantom

Scheme = tuple[np.ndarray, np.ndarray]

#: Mean intensity of each tissue class in the simulated contrasts (WM of T1w = 1).
TISSUE_INTENSITY = {
    #        background, CSF, GM, WM, skull, scalp
    "T1w": (0.0, 0.25, 0.62, 1.0, 0.06, 0.85),
    "T2w": (0.0, 1.0, 0.55, 0.35, 0.05, 0.45),
}
#: FLAIR and contrast-enhanced T1w of the lesion subjects (contrast enhancement is the
#: lesions' only difference from the T1w).
LESION_SUBJECT_INTENSITY = {
    "FLAIR": (0.0, 0.05, 0.65, 0.45, 0.05, 0.6),
    "T1ce": TISSUE_INTENSITY["T1w"],
}
#: How the scale of each simulated contrast relates to the simulator's tissue tables
#: (``CONTRAST_TISSUE_MEANS``, white matter): lesion intensities are the middle of the
#: simulator's ranges times this factor.
WHITE_MATTER_TABLE = {"T1w": 0.85, "T1ce": 0.85, "T2w": 0.35, "FLAIR": 0.45}
TRUTH_LABELS = {0: "background", 1: "GM", 2: "WM", 3: "CSF"}
#: The extra subjects of ``lesions=True``: which lesions and contrasts each one has.
LESION_SUBJECTS = {"tumor": ("T1ce", "FLAIR"), "wmh": ("FLAIR",)}
#: the ``diagnosis`` column of participants.tsv, by kind of subject (None: healthy)
DIAGNOSIS = {None: "control", "tumor": "patient", "wmh": "patient"}
#: Voxel orders the subjects cycle through, so that every run meets non-RAS data.
ORIENTATIONS = (("L", "I", "A"), ("R", "A", "S"), ("L", "P", "S"))
HEAD_MARGIN_MM = 24

#: Diffusion protocol of the odd-numbered healthy subjects: b=0 volumes, then well-spread
#: directions on one shell (s/mm^2), isotropic voxels (mm), SNR on white matter's b=0 and the
#: stored value of that b=0.
DWI_B0_VOLUMES = 2
DWI_DIRECTIONS = 12
DWI_B_VALUE = 1000.0
DWI_VOXEL_MM = 2.5
DWI_SNR = 25.0
DWI_WHITE_MATTER_B0 = 1000.0
#: Head motion of each diffusion volume after the first: uniform within +- these.
DWI_MAX_ROTATION_DEG = 1.5
DWI_MAX_TRANSLATION_MM = 1.0
#: The diffusion series draw from their own generators, seeded from the dataset seed and these
#: keys, so that adding them leaves every anatomical image as it was.
DWI_SCHEME_KEY = 1
DWI_SUBJECT_KEY = 2
ASL_SUBJECT_KEY = 3
BOLD_SUBJECT_KEY = 4
PET_SUBJECT_KEY = 5
#: body weight of the participants with a PET (kg, drawn uniformly)
WEIGHT_RANGE_KG = (55.0, 95.0)


@dataclass(frozen=True)
class SampleSubject:
    """What was drawn for one subject (kept in the truth sidecar)."""

    label: str
    rotation_deg: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    scale: tuple[float, float, float]
    fov_mm: tuple[float, float, float]
    orientation: str
    bias_amplitude: float
    noise_sigma: float


def _template_tissues() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the template's tissue fractions (CSF, GM, WM), the T1 and the affine, padded."""
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=1)
    gm = datasets.load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32)
    wm = datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
    brain = datasets.load_mni152_brain_mask(resolution=1).get_fdata(dtype=np.float32) > 0
    csf = np.clip(brain - gm - wm, 0, 1) * brain
    pad = HEAD_MARGIN_MM
    affine = t1.affine.copy()
    affine[:3, 3] -= pad * np.diag(affine)[:3]
    tissues = np.stack([np.pad(x, pad) for x in (csf, gm, wm)])
    return tissues, np.pad(t1.get_fdata(dtype=np.float32), pad), affine


def _head_layers(brain: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Simulate the skull and scalp as shells of smoothly varying thickness around the brain."""
    distance = ndimage.distance_transform_edt(~brain)
    wobble = ndimage.gaussian_filter(rng.standard_normal(brain.shape).astype(np.float32), 8)
    wobble *= 1.5 / (np.abs(wobble).max() + 1e-6)
    skull = (distance > 2.5 + wobble) & (distance <= 8.5 + wobble)
    scalp = (distance > 8.5 + wobble) & (distance <= 14 + 1.5 * wobble)
    return skull, scalp


def _template_lesions(kind: str, tissues: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Lesions planted by the model simulator in template space (1 mm): name -> 0/1 volume.

    The template's tissue maps become a label map with FreeSurfer values (WM 2, GM 3, CSF 24;
    CSF more than 25 mm inside the brain counts as lateral ventricle, 4) for the simulator.
    """
    import torch

    from bids_dl.models.labels import LESION_VALUES
    from bids_dl.models.lesion_simulation import LesionParameters, plant_tumor, plant_wmh

    csf, gm, wm = tissues
    brain = tissues.sum(0) > 0.5
    labels = np.zeros(brain.shape, dtype=np.int64)
    classes = np.argmax(np.stack([csf, gm, wm]), axis=0)
    labels[brain] = np.array([24, 3, 2])[classes[brain]]
    labels[brain & (classes == 0) & (ndimage.distance_transform_edt(brain) > 25)] = 4
    generator = torch.Generator().manual_seed(seed)
    parameters = LesionParameters(tumor_radius_mm=(18.0, 24.0), necrosis_probability=1.0,
                                  non_enhancing_probability=0.0, edema_extent=(1.6, 2.0),
                                  periventricular_probability=1.0, periventricular_mm=(3.0, 6.0),
                                  deep_lesions=(6, 8),
                                  deep_radius_mm=(2.5, 5.0))  # fmt: skip
    plant = plant_tumor if kind == "tumor" else plant_wmh
    planted = plant(torch.from_numpy(labels), 1.0, parameters, generator).numpy()
    return {
        name: (planted == value).astype(np.float32)
        for name, value in LESION_VALUES.items()
        if (planted == value).any()
    }


def _lesion_means(contrast: str) -> dict[str, float]:
    """Intensity of each lesion class in a simulated contrast (see ``WHITE_MATTER_TABLE``)."""
    from bids_dl.models.lesion_simulation import LESION_INTENSITIES

    white_matter = (TISSUE_INTENSITY | LESION_SUBJECT_INTENSITY)[contrast][3]
    factor = white_matter / WHITE_MATTER_TABLE[contrast]
    return {
        name: factor * (low + high) / 2
        for name, (low, high) in LESION_INTENSITIES[contrast].items()
    }


def _target_grid(
    fov_mm: np.ndarray, voxel_mm: float, orientation: tuple[str, str, str]
) -> tuple[tuple[int, int, int], np.ndarray]:
    """A grid centred on the world origin, with the requested voxel order."""
    shape_ras = np.round(fov_mm / voxel_mm).astype(int)
    ras_affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    ras_affine[:3, 3] = -(shape_ras - 1) * voxel_mm / 2
    transform = ornt_transform(axcodes2ornt(("R", "A", "S")), axcodes2ornt(orientation))
    reoriented = nb.orientations.inv_ornt_aff(transform, shape_ras)
    affine = ras_affine @ reoriented
    shape = tuple(int(shape_ras[int(i)]) for i in transform[:, 0].argsort())
    return shape, affine


def _bias_field(shape: tuple[int, ...], amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative field: exp of a random low-order polynomial, within +-amplitude."""
    coords = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    terms = [c for c in coords] + [c * c for c in coords] + [coords[0] * coords[1]]
    field = sum(rng.uniform(-1, 1) * t for t in terms)
    field *= amplitude / (np.abs(field).max() + 1e-6)
    return np.exp(field).astype(np.float32)


def _draw_subject(label: str, rng: np.random.Generator, index: int) -> SampleSubject:
    return SampleSubject(
        label=label,
        rotation_deg=tuple(np.round(rng.uniform(-12, 12, 3), 2)),
        translation_mm=tuple(np.round(rng.uniform(-10, 10, 3), 2)),
        scale=tuple(np.round(rng.uniform(0.92, 1.08, 3), 3)),
        fov_mm=tuple(np.round(rng.uniform([200, 236, 210], [230, 256, 240]))),
        orientation="".join(ORIENTATIONS[index % len(ORIENTATIONS)]),
        bias_amplitude=float(np.round(rng.uniform(0.15, 0.3), 3)),
        noise_sigma=float(np.round(rng.uniform(0.015, 0.03), 4)),
    )


def _pose(
    rotation_deg: tuple[float, ...],
    translation_mm: tuple[float, ...],
    scale: tuple[float, ...] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """The 4x4 world transform: rotation (``rotation_matrix``) times scales, then the
    translation."""
    pose = np.eye(4)
    pose[:3, :3] = rotation_matrix(tuple(rotation_deg)) @ np.diag(scale)
    pose[:3, 3] = translation_mm
    return pose


def _simulate_subject(
    subject: SampleSubject,
    tissues: np.ndarray,
    template_t1: np.ndarray,
    template_affine: np.ndarray,
    voxel_mm: float,
    rng: np.random.Generator,
    lesions: dict[str, np.ndarray] | None = None,
    extra_contrasts: tuple[str, ...] = (),
) -> dict[str, nb.Nifti1Image]:
    """Images of one subject (T1w, T2w and ``extra_contrasts``), its true brain mask and tissue
    labels, and with ``lesions`` (template-space 0/1 volumes) their partial-volume fractions
    blended into every contrast and the true lesion labels (``lesions``)."""
    brain = tissues.sum(0) > 0.5
    skull, scalp = _head_layers(brain, rng)
    head_classes = np.stack([skull, scalp]).astype(np.float32)

    pose = _pose(subject.rotation_deg, subject.translation_mm, subject.scale)
    shape, affine = _target_grid(np.array(subject.fov_mm), voxel_mm, tuple(subject.orientation))
    # output voxel -> world -> (inverse pose) template world -> template voxel
    voxel_to_source = np.linalg.inv(template_affine) @ np.linalg.inv(pose) @ affine

    def resample(volume: np.ndarray, order: int = 1) -> np.ndarray:
        return resample_voxels(volume, voxel_to_source, shape, order)

    csf, gm, wm = (resample(t) for t in tissues)
    skull_f, scalp_f = (resample(h) for h in head_classes)
    t1_brain = resample(template_t1)
    inside = resample(brain.astype(np.float32)) > 0.5
    fractions = {"CSF": csf, "GM": gm, "WM": wm, "skull": skull_f, "scalp": scalp_f}

    lesion_fractions = {name: resample(volume) for name, volume in (lesions or {}).items()}
    lesion_total = sum(lesion_fractions.values()) if lesion_fractions else 0.0
    images = {}
    bias = _bias_field(shape, subject.bias_amplitude, rng)
    contrasts = TISSUE_INTENSITY | {c: LESION_SUBJECT_INTENSITY[c] for c in extra_contrasts}
    for contrast, means in contrasts.items():
        _, m_csf, m_gm, m_wm, m_skull, m_scalp = means
        signal = (
            m_csf * fractions["CSF"]
            + m_gm * fractions["GM"]
            + m_wm * fractions["WM"]
            + m_skull * fractions["skull"]
            + m_scalp * fractions["scalp"]
        )
        if contrast in ("T1w", "T1ce"):
            # Keep the template's real T1 texture inside the brain.
            signal = np.where(inside, t1_brain / np.percentile(template_t1[brain], 95), signal)
        if lesion_fractions:
            lesion_means = _lesion_means(contrast)
            signal = (1 - lesion_total) * signal + sum(
                fraction * lesion_means[name] for name, fraction in lesion_fractions.items()
            )
        signal *= bias
        sigma = subject.noise_sigma
        noisy = np.hypot(signal + rng.normal(0, sigma, shape), rng.normal(0, sigma, shape)).astype(
            np.float32
        )
        images[contrast] = _to_int16_image(noisy * 1000, affine)

    labels = np.argmax(np.stack([0.5 * np.ones(shape), gm, wm, csf]), axis=0).astype(np.uint8)
    labels[~inside] = 0
    images["dseg"] = nb.Nifti1Image(labels, affine)
    images["mask"] = nb.Nifti1Image(inside.astype(np.uint8), affine)
    if lesion_fractions:
        images["lesions"] = nb.Nifti1Image(_lesion_labels(lesion_fractions), affine)
    for image in images.values():
        image.header.set_xyzt_units("mm", "sec")
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=1)
    return images


def _lesion_labels(fractions: dict[str, np.ndarray]) -> np.ndarray:
    """True lesion labels on the subject grid: the lesion class that fills most of a voxel,
    where lesions fill at least half of it; BraTS values for tumours, 1 for WMH."""
    from bids_dl.models.labels import TUMOR_LABELS

    output_value = {"wmh": 1} | {
        member: value for value, (_, members) in TUMOR_LABELS.items() for member in members
    }
    names = list(fractions)
    stacked = np.stack([fractions[n] for n in names])
    labels = np.array([output_value[n] for n in names], dtype=np.uint8)[stacked.argmax(0)]
    labels[stacked.sum(0) < 0.5] = 0
    return labels


def _to_int16_image(data: np.ndarray, affine: np.ndarray) -> nb.Nifti1Image:
    image = nb.Nifti1Image(np.clip(np.round(data), 0, 32767).astype(np.int16), affine)
    return image


@dataclass(frozen=True)
class SampleDwi:
    """One subject's diffusion series, its gradient table (``bvecs`` in the FSL voxel axes of
    ``image``), the true FA on its grid and each volume's head motion (``_draw_motion``)."""

    image: nb.Nifti1Image
    bvals: np.ndarray
    bvecs: np.ndarray
    fa: nb.Nifti1Image
    motion: list[dict[str, list[float]]]


def has_dwi(index: int, kind: str | None) -> bool:
    """Whether the subject ``index`` (0-based) gets a diffusion series: healthy and odd-numbered."""
    return kind is None and index % 2 == 0


def dwi_scheme(seed: int) -> Scheme:
    """The sample's diffusion protocol (the same for every subject of a seed): bvals and unit
    scanner directions in world (RAS+) axes."""
    from bids_dl.models.diffusion_simulation import well_spread_scheme

    rng = np.random.default_rng([seed, DWI_SCHEME_KEY])
    return well_spread_scheme(DWI_DIRECTIONS, DWI_B_VALUE, DWI_B0_VOLUMES, rng)


def _draw_motion(n_volumes: int, rng: np.random.Generator) -> list[dict[str, list[float]]]:
    """Rigid head motion per volume: none for the first, then uniform rotations (degrees about
    world x, y, z, see ``rotation_matrix``) and translations (mm) within the ``DWI_MAX_*``
    bounds."""
    motion = [{"RotationDeg": [0.0] * 3, "TranslationMm": [0.0] * 3}]
    for _ in range(n_volumes - 1):
        rotation = rng.uniform(-DWI_MAX_ROTATION_DEG, DWI_MAX_ROTATION_DEG, 3)
        translation = rng.uniform(-DWI_MAX_TRANSLATION_MM, DWI_MAX_TRANSLATION_MM, 3)
        motion.append(
            {
                "RotationDeg": np.round(rotation, 3).tolist(),
                "TranslationMm": np.round(translation, 3).tolist(),
            }
        )
    return motion


def _scan_moving_head(
    phantom: Phantom, scheme: Scheme, poses: list[np.ndarray], affine: np.ndarray
) -> np.ndarray:
    """The noiseless series (X, Y, Z, N) of a head that moves between volumes: each volume's
    signal for the direction in the head's frame (Q^T g for head rotation Q, scanner direction
    g), its image content then moved by the volume's pose on the grid ``affine``."""
    from bids_dl.models.diffusion_phantom import acquire

    bvals, bvecs = scheme
    head_bvecs = np.stack([pose[:3, :3].T @ g for pose, g in zip(poses, bvecs, strict=True)])
    # np.inf: no noise here (it comes after the motion)
    series = acquire(phantom, (bvals, head_bvecs), np.inf, np.random.default_rng(0))
    for volume, pose in enumerate(poses):
        if not np.allclose(pose, np.eye(4)):
            # moved voxel -> world -> (inverse pose) head world -> voxel of the unmoved head
            voxel_map = np.linalg.inv(affine) @ np.linalg.inv(pose) @ affine
            series[..., volume] = resample_voxels(series[..., volume], voxel_map, series.shape[:3])
    return series


def _truth_fa(phantom: Phantom) -> np.ndarray:
    from bids_dl.models.tensor_features import tensor_maps

    fa = np.zeros(phantom.mask.shape, dtype=np.float32)
    fa[phantom.mask] = tensor_maps(phantom.truth[phantom.mask])[0].fa
    return fa


def _simulate_dwi(
    subject: SampleSubject,
    tissues: np.ndarray,
    template_affine: np.ndarray,
    scheme: Scheme,
    rng: np.random.Generator,
) -> SampleDwi:
    """The subject's diffusion series on a ``DWI_VOXEL_MM`` grid with the T1w's field of view
    and voxel order, its tissue fractions placed with the subject's pose. Noise (Rician, SNR
    ``DWI_SNR``) is added after the motion: it belongs to the scanner, not to the head."""
    from bids_dl.models.diffusion_phantom import draw_phantom
    from bids_dl.models.diffusion_simulation import rician_noise
    from bids_dl.models.gradients import bvecs_to_voxel

    orientation = tuple(subject.orientation)
    shape, affine = _target_grid(np.array(subject.fov_mm), DWI_VOXEL_MM, orientation)
    pose = _pose(subject.rotation_deg, subject.translation_mm, subject.scale)
    voxel_to_source = np.linalg.inv(template_affine) @ np.linalg.inv(pose) @ affine
    fractions = np.stack([resample_voxels(t, voxel_to_source, shape, 1) for t in tissues])
    motion = _draw_motion(len(scheme[0]), rng)
    poses = [_pose(m["RotationDeg"], m["TranslationMm"]) for m in motion]
    phantom = draw_phantom(fractions, DWI_B_VALUE, rng, with_truth=True)
    series = rician_noise(_scan_moving_head(phantom, scheme, poses, affine), DWI_SNR, rng)
    image = _to_int16_image(series * DWI_WHITE_MATTER_B0, affine)
    fa = nb.Nifti1Image(_truth_fa(phantom), affine)
    for output in (image, fa):
        output.header.set_xyzt_units("mm", "sec")
        output.set_qform(affine, code=1)
        output.set_sform(affine, code=1)
    image.header.set_zooms((DWI_VOXEL_MM,) * 3 + (DWI_SIDECAR["RepetitionTime"],))
    return SampleDwi(image, scheme[0], bvecs_to_voxel(scheme[1], affine), fa, motion)


def _write_dwi(output_dir: Path, truth_dir: Path, label: str, dwi: SampleDwi) -> None:
    """The series with its .bval, .bvec (FSL layout) and sidecar; the true FA and the motion."""
    prefix = f"sub-{label}"
    folder = output_dir / prefix / "dwi"
    write_nifti_atomic(dwi.image, folder / f"{prefix}_dwi.nii.gz")
    write_text_atomic(" ".join(f"{b:g}" for b in dwi.bvals) + "\n", folder / f"{prefix}_dwi.bval")
    rows = (" ".join(f"{value:.6f}" for value in row) for row in dwi.bvecs.T)
    write_text_atomic("\n".join(rows) + "\n", folder / f"{prefix}_dwi.bvec")
    write_json_atomic(DWI_SIDECAR, folder / f"{prefix}_dwi.json")
    name = f"{prefix}_model-tensor_param-fa_dwimap"
    truth = truth_dir / prefix / "dwi"
    write_nifti_atomic(dwi.fa, truth / f"{name}.nii.gz")
    write_json_atomic(
        {
            "Description": "true fractional anisotropy of the simulated diffusion phantom (the "
            "tensor fitted to its noiseless signal on a dense 64-direction shell at b=1000), on "
            "the grid of the series' first volume",
            "Sources": [f"bids:raw:{prefix}/dwi/{prefix}_dwi.nii.gz"],
            "SimulationParameters": {
                "Simulator": "bids_dl.models.diffusion_phantom (draw_phantom, acquire)",
                "BValue": DWI_B_VALUE,
                "B0Volumes": DWI_B0_VOLUMES,
                "Directions": DWI_DIRECTIONS,
                "VoxelSizeMm": DWI_VOXEL_MM,
                "SNR": DWI_SNR,
                "WhiteMatterB0": DWI_WHITE_MATTER_B0,
            },
            "MotionDescription": "rigid head motion of each volume relative to the first: "
            "scanner position = R head position + T, R = Rz Ry Rx of RotationDeg (about the "
            "world x, y, z axes through the world origin), T = TranslationMm; each volume's "
            "signal was simulated for the direction R^T g (g, the scanner direction, is in the "
            ".bvec)",
            "Motion": dwi.motion,
        },
        truth / f"{name}.json",
    )


def _dataset_description(name: str, dataset_type: str) -> dict:
    return {
        "Name": name,
        "BIDSVersion": "1.10.0",
        "DatasetType": dataset_type,
        "License": "CC0",
        "Authors": ["bids_dl developers"],
        "GeneratedBy": [{"Name": "bids_dl-sample", "Version": __version__}],
    }


T1W_SIDECAR = {
    "Manufacturer": "bids_dl simulation",
    "MagneticFieldStrength": 3,
    "RepetitionTime": 2.3,
    "EchoTime": 0.00298,
    "InversionTime": 0.9,
    "FlipAngle": 9,
}
T2W_SIDECAR = {
    "Manufacturer": "bids_dl simulation",
    "MagneticFieldStrength": 3,
    "RepetitionTime": 3.2,
    "EchoTime": 0.409,
}
DWI_SIDECAR = {
    "Manufacturer": "bids_dl simulation",
    "MagneticFieldStrength": 3,
    "RepetitionTime": 8.0,
    "EchoTime": 0.08,
    "PhaseEncodingDirection": "j-",
    "TotalReadoutTime": 0.05,
}
SIDECARS = {
    "T1ce": T1W_SIDECAR | {"ContrastBolusIngredient": "GADOLINIUM"},
    "FLAIR": {"Manufacturer": "bids_dl simulation", "MagneticFieldStrength": 3,
              "RepetitionTime": 9.0, "EchoTime": 0.08, "InversionTime": 2.5},
}  # fmt: skip


def write_sample_dataset(
    output_dir: Path,
    n_subjects: int = 3,
    voxel_mm: float = 1.0,
    seed: int = 42,
    lesions: bool = False,
    dwi: bool = True,
    asl: bool = True,
    bold: bool = True,
    pet: bool = True,
) -> list[SampleSubject]:
    """Write the sample BIDS dataset to ``output_dir`` and return what was drawn per subject.

    With ``lesions``, two more subjects follow the ``n_subjects`` healthy ones: one with a
    simulated glioma (plus contrast-enhanced T1w and FLAIR) and one with simulated white-matter
    hyperintensities (plus FLAIR); their true lesion labels go to the truth folder. The healthy
    subjects with an odd number also get a diffusion series (``_simulate_dwi``) and an ASL
    series (``bids_dl.sample_asl``), unless ``dwi`` or ``asl`` is False; every healthy subject
    gets a resting-state BOLD run (``bids_dl.sample_bold``) unless ``bold`` is False, and
    every healthy subject but the last (the only one, when there is one) a dynamic FDG PET
    (``bids_dl.sample_pet``) unless ``pet`` is False: the others have a T1w and no PET, for
    the imputed PET.
    """
    if n_subjects < 1:
        raise ValueError("n_subjects must be at least 1")
    output_dir = Path(output_dir)
    truth_dir = output_dir / "derivatives" / "sample-truth"
    rng = np.random.default_rng(seed)
    tissues, template_t1, template_affine = _template_tissues()
    scheme = dwi_scheme(seed)

    subjects = []
    weights: dict[str, float] = {}
    kinds = [None] * n_subjects + (list(LESION_SUBJECTS) if lesions else [])
    for index, kind in enumerate(kinds):
        subject = _draw_subject(f"{index + 1:02d}", rng, index)
        planted = _template_lesions(kind, tissues, seed + index) if kind else None
        images = _simulate_subject(
            subject, tissues, template_t1, template_affine, voxel_mm, rng,
            lesions=planted, extra_contrasts=LESION_SUBJECTS.get(kind, ()),
        )  # fmt: skip
        anat = output_dir / f"sub-{subject.label}" / "anat"
        prefix = f"sub-{subject.label}"
        write_nifti_atomic(images["T1w"], anat / f"{prefix}_T1w.nii.gz")
        write_json_atomic(T1W_SIDECAR, anat / f"{prefix}_T1w.json")
        write_nifti_atomic(images["T2w"], anat / f"{prefix}_T2w.nii.gz")
        write_json_atomic(T2W_SIDECAR, anat / f"{prefix}_T2w.json")
        for contrast, name in (("T1ce", "ce-gadolinium_T1w"), ("FLAIR", "FLAIR")):
            if contrast in images:
                write_nifti_atomic(images[contrast], anat / f"{prefix}_{name}.nii.gz")
                write_json_atomic(SIDECARS[contrast], anat / f"{prefix}_{name}.json")
        truth_anat = truth_dir / f"sub-{subject.label}" / "anat"
        if kind:
            suffix = "desc-tumor_dseg" if kind == "tumor" else "desc-wmh_mask"
            write_nifti_atomic(images["lesions"], truth_anat / f"{prefix}_{suffix}.nii.gz")
            write_json_atomic(
                {"Description": f"simulated {kind} lesions (bids_dl lesion simulator)"},
                truth_anat / f"{prefix}_{suffix}.json",
            )
        source = [f"bids:raw:sub-{subject.label}/anat/{prefix}_T1w.nii.gz"]
        write_nifti_atomic(images["mask"], truth_anat / f"{prefix}_desc-brain_mask.nii.gz")
        write_json_atomic(
            {"Type": "Brain", "Sources": source}, truth_anat / f"{prefix}_desc-brain_mask.json"
        )
        write_nifti_atomic(images["dseg"], truth_anat / f"{prefix}_dseg.nii.gz")
        write_json_atomic(
            {"Sources": source, "SimulationParameters": subject.__dict__},
            truth_anat / f"{prefix}_dseg.json",
        )
        if dwi and has_dwi(index, kind):
            dwi_rng = np.random.default_rng([seed, DWI_SUBJECT_KEY, index])
            dwi = _simulate_dwi(subject, tissues, template_affine, scheme, dwi_rng)
            _write_dwi(output_dir, truth_dir, subject.label, dwi)
        if asl and has_dwi(index, kind):
            _write_series("asl", output_dir, truth_dir, subject, tissues, template_affine, seed,
                          index)  # fmt: skip
        if bold and kind is None:
            _write_series("bold", output_dir, truth_dir, subject, tissues, template_affine, seed,
                          index)  # fmt: skip
        if pet and kind is None and index < max(n_subjects - 1, 1):
            weights[subject.label] = _write_pet(
                output_dir, truth_dir, subject, tissues, template_affine, seed, index
            )
        subjects.append(subject)

    ages = rng.integers(20, 80, len(subjects))
    sexes = rng.choice(["F", "M"], len(subjects))
    from bids_dl.pet_inputs import WEIGHT_COLUMN

    diagnoses = [DIAGNOSIS[kind] for kind in kinds]
    rows = [f"participant_id\tage\tsex\t{WEIGHT_COLUMN}\tdiagnosis"] + [
        f"sub-{s.label}\t{age}\t{sex}\t{weights.get(s.label, 'n/a')}\t{diagnosis}"
        for s, age, sex, diagnosis in zip(subjects, ages, sexes, diagnoses, strict=True)
    ]
    write_text_atomic("\n".join(rows) + "\n", output_dir / "participants.tsv")
    write_json_atomic(
        {
            "age": {"Description": "age of the simulated participant", "Units": "year"},
            "sex": {
                "Description": "sex of the simulated participant",
                "Levels": {"F": "female", "M": "male"},
            },
            WEIGHT_COLUMN: {"Description": "body weight (participants with a PET)", "Units": "kg"},
            "diagnosis": {
                "Description": "simulated diagnosis: the label the demo's group-level "
                "classifier learns (bids_dl group --classify diagnosis)",
                "Levels": {
                    "control": "no simulated lesion",
                    "patient": "a simulated glioma or white-matter hyperintensities",
                },
            },
        },
        output_dir / "participants.json",
    )
    description = _dataset_description(
        "bids_dl sample dataset (simulated from MNI152 2009a)", "raw"
    )
    write_json_atomic(description, output_dir / "dataset_description.json")
    write_text_atomic(
        _README.format(n=len(subjects), voxel=voxel_mm, seed=seed)
        + _dwi_readme([s.label for i, s in enumerate(subjects) if dwi and has_dwi(i, kinds[i])])
        + _asl_readme([s.label for i, s in enumerate(subjects) if asl and has_dwi(i, kinds[i])])
        + _subjects_readme(
            _BOLD_README,
            [s.label for s, k in zip(subjects, kinds, strict=True) if bold and k is None],
        )
        + _subjects_readme(_PET_README, list(weights))
        + (_LESION_README.format(tumor=n_subjects + 1, wmh=n_subjects + 2) if lesions else ""),
        output_dir / "README",
    )

    truth_description = _dataset_description("bids_dl sample ground truth", "derivative")
    truth_description["SourceDatasets"] = [{"URL": "bids:raw:."}]
    truth_description["DatasetLinks"] = {"raw": "../.."}
    write_json_atomic(truth_description, truth_dir / "dataset_description.json")
    write_text_atomic(
        "index\tname\n" + "".join(f"{i}\t{n}\n" for i, n in TRUTH_LABELS.items() if i),
        truth_dir / "desc-tissue_dseg.tsv",
    )
    return subjects


_README = """bids_dl sample dataset
======================

{n} simulated subjects made by `bids_dl-sample` (seed {seed}, {voxel} mm voxels) from the
ICBM152 2009a symmetric template and tissue maps that nilearn installs. Each subject has the
template brain in a simulated head, its own random affine pose, field of view, voxel order,
bias field and Rician noise, and a T2w-like image synthesised from the tissue maps.
The true brain masks and tissue labels are in derivatives/sample-truth.
This is simulated data: it checks the pipeline, it says nothing about real anatomy.
"""
_DWI_README = """
{subjects} also {verb} diffusion MRI (2 b=0 volumes, then 12 well-spread directions at
b=1000 s/mm^2; 2.5 mm voxels in the T1w's voxel order), simulated by the bids_dl diffusion
phantom on the subject's tissue maps with Rician noise (SNR 25 on white matter's b=0) and small
random head motion between volumes (within 1.5 degrees and 1 mm). The true FA map and each
volume's motion are in derivatives/sample-truth (sub-*/dwi).
"""
_LESION_README = """
sub-{tumor:02d} has a simulated glioma (necrotic core, enhancing rim, edema) and sub-{wmh:02d}
simulated white-matter hyperintensities, planted by the bids_dl lesion simulator; they also have
a FLAIR (and sub-{tumor:02d} a contrast-enhanced T1w). Their true lesion labels are in
derivatives/sample-truth (desc-tumor_dseg, BraTS labels; desc-wmh_mask).
"""


_ASL_README = """
{subjects} also {verb} a 2D PCASL series (an M0 volume, then 4 label/control pairs, label
first; post-labelling delay 1.8 s, labelling duration 1.8 s, no background suppression),
simulated by the bids_dl ASL phantom on the subject's tissue maps (CBF heterogeneity, transit
delays, vessels, thermal and physiological noise, small head motion). The true CBF is in
derivatives/sample-truth (sub-*/perf).
"""


_BOLD_README = """
{subjects} also {verb} a resting-state BOLD run (60 volumes, repetition time 2 s, 3 mm voxels,
no slice timing), simulated by the bids_dl network simulator: overlapping networks with
subject-specific shape and position, haemodynamic time courses with drifting coupling,
autocorrelated noise, drift, cardiac and respiratory signals and small head motion. The true
network maps and time courses are in derivatives/sample-truth (sub-*/func).
"""


_PET_README = """
{subjects} also {verb} a dynamic FDG PET (9 frames over 60 minutes, 2 mm voxels, in Bq/mL
decay-corrected to injection; body weight in participants.tsv), simulated by bids_dl: uptake
painted on the subject's tissue maps (cerebral grey matter 1.3 times cerebellar grey matter,
white matter 0.55, CSF 0.05), blurred to 7 mm FWHM, with an FDG-like time course per frame and
noise; no head motion. The other subjects have no PET: bids_dl imputes one from the T1w
(except for a tumour).
The true SUVR is in derivatives/sample-truth (sub-*/pet).
"""


def _subjects_readme(template: str, labels: list[str]) -> str:
    names = [f"sub-{label}" for label in labels]
    if not names:
        return ""
    subjects = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return template.format(subjects=subjects, verb="has" if len(names) == 1 else "have")


def _dwi_readme(labels: list[str]) -> str:
    return _subjects_readme(_DWI_README, labels)


def _asl_readme(labels: list[str]) -> str:
    return _subjects_readme(_ASL_README, labels)


def _write_pet(
    output_dir: Path,
    truth_dir: Path,
    subject: SampleSubject,
    tissues: np.ndarray,
    template_affine: np.ndarray,
    seed: int,
    index: int,
) -> float:
    """A subject's simulated PET (``bids_dl.sample_pet``) from its own generator; returns the
    body weight drawn for it (kg)."""
    from bids_dl import sample_pet

    rng = np.random.default_rng([seed, PET_SUBJECT_KEY, index])
    weight = round(float(rng.uniform(*WEIGHT_RANGE_KG)), 1)
    pose = _pose(subject.rotation_deg, subject.translation_mm, subject.scale)
    pet = sample_pet.simulate_sample_pet(tissues, template_affine, pose, rng, weight)
    sample_pet.write_sample_pet(output_dir, truth_dir, subject.label, pet)
    return weight


def _write_series(
    kind: str,
    output_dir: Path,
    truth_dir: Path,
    subject: SampleSubject,
    tissues: np.ndarray,
    template_affine: np.ndarray,
    seed: int,
    index: int,
) -> None:
    """A subject's simulated ``asl`` or ``bold`` series (``bids_dl.sample_asl``,
    ``bids_dl.sample_bold``), drawn from its own generator (the dataset seed, the kind's key
    and the subject)."""
    from bids_dl import sample_asl, sample_bold

    simulate, write, key = {
        "asl": (sample_asl.simulate_sample_asl, sample_asl.write_sample_asl, ASL_SUBJECT_KEY),
        "bold": (sample_bold.simulate_sample_bold, sample_bold.write_sample_bold,
                 BOLD_SUBJECT_KEY),
    }[kind]  # fmt: skip
    rng = np.random.default_rng([seed, key, index])
    pose = _pose(subject.rotation_deg, subject.translation_mm, subject.scale)
    write(output_dir, truth_dir, subject.label, simulate(tissues, template_affine, pose, rng))
