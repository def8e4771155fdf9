"""Write a small, valid BIDS dataset built from the MNI152 template that nilearn installs.

Each subject is the ICBM152 2009a brain wrapped in a simulated head (CSF rim, skull, scalp),
placed with its own random affine pose, field of view and voxel order, multiplied by a smooth
bias field and given Rician noise. A T2w-like image is synthesised from the same tissue maps.
The true brain mask and tissue labels go to ``derivatives/sample-truth`` so that the pipeline's
outputs can be scored. Everything is deterministic for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nb
import numpy as np
from nibabel.orientations import axcodes2ornt, ornt_transform
from scipy import ndimage

from bids_dl import __version__
from bids_dl.derivatives import write_json_atomic, write_nifti_atomic, write_text_atomic

#: Mean intensity of each tissue class in the simulated contrasts (WM of T1w = 1).
TISSUE_INTENSITY = {
    #        background, CSF, GM, WM, skull, scalp
    "T1w": (0.0, 0.25, 0.62, 1.0, 0.06, 0.85),
    "T2w": (0.0, 1.0, 0.55, 0.35, 0.05, 0.45),
}
TRUTH_LABELS = {0: "background", 1: "GM", 2: "WM", 3: "CSF"}
#: Voxel orders the subjects cycle through, so that every run meets non-RAS data.
ORIENTATIONS = (("L", "I", "A"), ("R", "A", "S"), ("L", "P", "S"))
HEAD_MARGIN_MM = 24


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


def _rotation(angles_deg: np.ndarray) -> np.ndarray:
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


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


def _resample(
    volume: np.ndarray, voxel_to_source: np.ndarray, shape: tuple[int, ...], order: int
) -> np.ndarray:
    return ndimage.affine_transform(
        volume, voxel_to_source[:3, :3], voxel_to_source[:3, 3], output_shape=shape, order=order
    )


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


def _simulate_subject(
    subject: SampleSubject,
    tissues: np.ndarray,
    template_t1: np.ndarray,
    template_affine: np.ndarray,
    voxel_mm: float,
    rng: np.random.Generator,
) -> dict[str, nb.Nifti1Image]:
    brain = tissues.sum(0) > 0.5
    skull, scalp = _head_layers(brain, rng)
    head_classes = np.stack([skull, scalp]).astype(np.float32)

    pose = np.eye(4)
    pose[:3, :3] = _rotation(np.array(subject.rotation_deg)) @ np.diag(subject.scale)
    pose[:3, 3] = subject.translation_mm
    shape, affine = _target_grid(np.array(subject.fov_mm), voxel_mm, tuple(subject.orientation))
    # output voxel -> world -> (inverse pose) template world -> template voxel
    voxel_to_source = np.linalg.inv(template_affine) @ np.linalg.inv(pose) @ affine

    def resample(volume: np.ndarray, order: int = 1) -> np.ndarray:
        return _resample(volume, voxel_to_source, shape, order)

    csf, gm, wm = (resample(t) for t in tissues)
    skull_f, scalp_f = (resample(h) for h in head_classes)
    t1_brain = resample(template_t1)
    inside = resample(brain.astype(np.float32)) > 0.5
    fractions = {"CSF": csf, "GM": gm, "WM": wm, "skull": skull_f, "scalp": scalp_f}

    images = {}
    bias = _bias_field(shape, subject.bias_amplitude, rng)
    for contrast, means in TISSUE_INTENSITY.items():
        _, m_csf, m_gm, m_wm, m_skull, m_scalp = means
        signal = (
            m_csf * fractions["CSF"]
            + m_gm * fractions["GM"]
            + m_wm * fractions["WM"]
            + m_skull * fractions["skull"]
            + m_scalp * fractions["scalp"]
        )
        if contrast == "T1w":
            # Keep the template's real T1 texture inside the brain.
            signal = np.where(inside, t1_brain / np.percentile(template_t1[brain], 95), signal)
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
    for image in images.values():
        image.header.set_xyzt_units("mm", "sec")
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=1)
    return images


def _to_int16_image(data: np.ndarray, affine: np.ndarray) -> nb.Nifti1Image:
    image = nb.Nifti1Image(np.clip(np.round(data), 0, 32767).astype(np.int16), affine)
    return image


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


def write_sample_dataset(
    output_dir: Path, n_subjects: int = 3, voxel_mm: float = 1.0, seed: int = 42
) -> list[SampleSubject]:
    """Write the sample BIDS dataset to ``output_dir`` and return what was drawn per subject."""
    if n_subjects < 1:
        raise ValueError("n_subjects must be at least 1")
    output_dir = Path(output_dir)
    truth_dir = output_dir / "derivatives" / "sample-truth"
    rng = np.random.default_rng(seed)
    tissues, template_t1, template_affine = _template_tissues()

    subjects = []
    for index in range(n_subjects):
        subject = _draw_subject(f"{index + 1:02d}", rng, index)
        images = _simulate_subject(subject, tissues, template_t1, template_affine, voxel_mm, rng)
        anat = output_dir / f"sub-{subject.label}" / "anat"
        prefix = f"sub-{subject.label}"
        write_nifti_atomic(images["T1w"], anat / f"{prefix}_T1w.nii.gz")
        write_json_atomic(T1W_SIDECAR, anat / f"{prefix}_T1w.json")
        write_nifti_atomic(images["T2w"], anat / f"{prefix}_T2w.nii.gz")
        write_json_atomic(T2W_SIDECAR, anat / f"{prefix}_T2w.json")
        truth_anat = truth_dir / f"sub-{subject.label}" / "anat"
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
        subjects.append(subject)

    ages = rng.integers(20, 80, n_subjects)
    sexes = rng.choice(["F", "M"], n_subjects)
    rows = ["participant_id\tage\tsex"] + [
        f"sub-{s.label}\t{age}\t{sex}" for s, age, sex in zip(subjects, ages, sexes, strict=True)
    ]
    write_text_atomic("\n".join(rows) + "\n", output_dir / "participants.tsv")
    write_json_atomic(
        {
            "age": {"Description": "age of the simulated participant", "Units": "year"},
            "sex": {
                "Description": "sex of the simulated participant",
                "Levels": {"F": "female", "M": "male"},
            },
        },
        output_dir / "participants.json",
    )
    description = _dataset_description(
        "bids_dl sample dataset (simulated from MNI152 2009a)", "raw"
    )
    write_json_atomic(description, output_dir / "dataset_description.json")
    write_text_atomic(
        _README.format(n=n_subjects, voxel=voxel_mm, seed=seed), output_dir / "README"
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
