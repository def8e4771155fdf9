"""Synthetic ASL from label maps: a label/control series, its M0 and the noise-free perfusion.

A case starts from tissue fractions (cortex, deep grey matter, white matter, CSF, other head
tissue) of a FreeSurfer-style label map (the SynthSeg maps, or the sample dataset's). Everything
physical is drawn on a supersampled copy of a thick-slice 2D EPI grid (2x in-plane, 3 points
through each slice), then averaged to the acquired voxels, so partial volume is that of the
acquisition:

- **perfusion**: CBF per tissue (cortex 40-80, white matter 0.3-0.5 of it, deep grey matter in
  between, CSF 0; mL/100 g/min), a per-case global scale, smooth log-normal heterogeneity and
  now and then hypo- or hyper-perfused patches; arterial transit time (ATT) 0.6-1.3 s plus a
  posterior gradient, longer in white matter and a smooth random part (0.5-2.5 s);
- **kinetics**: the label-control difference of every tissue from ``asl_kinetics`` (Buxton's
  model) at each slice's own delay (2D readout: the delay grows slice by slice), PCASL or PASL;
- **vessels**: sparse short tubes of arterial blood, near CSF and cortex, whose labelled blood
  is still in the artery when the delay is shorter than its transit time (bright spots);
- **M0**: proton density by tissue times a smooth coil/bias field;
- **acquisition**: a 64x64 grid of 3-4 mm voxels, 12-24 slices of 4-7.5 mm with a random
  orientation jitter; the control images carry the static tissue signal (with or without
  background suppression), the labels that signal minus the difference; every volume gets a
  global and a smooth low-frequency fluctuation and pulsation noise in CSF (physiology, all
  proportional to the static signal, so background suppression lowers them), a small rigid
  motion, then
  Gaussian thermal noise whose level gives the requested SNR of one pair's difference in grey
  matter.

The normalised difference ``dm = (control - label) / M0`` is what the ASL enhancement network
reads and ``AslCase.clean_dm`` (the noise-free, motion-free dm) what it learns. The training set
of that network and the sample dataset's ASL both come from here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from bids_dl.models.asl_kinetics import (
    BLOOD_T1,
    LabelingScheme,
    difference_signal,
    labeling_efficiency,
)
from bids_dl.models.geometry import rotation_matrix

#: tissue classes of the fraction maps, in order
TISSUES = ("cortex", "deep_gm", "wm", "csf", "other")
#: FreeSurfer label values of deep grey matter and of white matter (cerebral, cerebellar,
#: brain stem, ventral diencephalon); CSF: ventricles and extra-cerebral CSF
DEEP_GM_LABELS = (10, 11, 12, 13, 17, 18, 26, 49, 50, 51, 52, 53, 54, 58)
WM_LABELS = (2, 7, 16, 28, 41, 46, 60, 85)
CSF_LABELS = (4, 5, 14, 15, 24, 43, 44, 72)
#: label values 1-99 not listed above count as cortex; 100 and up are head tissue
BRAIN_MAX_LABEL = 99
#: supersampling of the acquisition grid: in-plane factor and points through each slice
IN_PLANE_SUPERSAMPLING = 2
THROUGH_SLICE_POINTS = 3


@dataclass(frozen=True)
class AslSimulation:
    """The ranges every random draw of a case comes from (stored in the model card)."""

    pairs: int = 4
    #: SNR of one label-control pair's difference in grey matter (thermal noise only)
    snr_range: tuple[float, float] = (0.3, 4.0)
    pcasl_probability: float = 0.8
    #: post-labelling delay of the first slice (PCASL/CASL) and labelling duration, s
    pld_range: tuple[float, float] = (0.5, 2.8)
    labeling_duration_range: tuple[float, float] = (1.2, 2.0)
    #: PASL: inversion time of the first slice and bolus width TI1, s
    ti_range: tuple[float, float] = (1.0, 2.8)
    ti1_range: tuple[float, float] = (0.6, 0.9)
    slice_time_range: tuple[float, float] = (0.025, 0.05)
    background_suppression_probability: float = 0.5
    #: grey-matter CBF, white matter's ratio to it and the per-case global scale
    gm_cbf_range: tuple[float, float] = (40.0, 80.0)
    wm_ratio_range: tuple[float, float] = (0.3, 0.5)
    global_scale_range: tuple[float, float] = (0.75, 1.25)
    #: sd of the log-CBF heterogeneity field (upper bound; drawn from 0 to this)
    heterogeneity: float = 0.3
    patch_probability: float = 0.4
    #: arterial transit time: base, posterior excess, white-matter excess, smooth part (s)
    att_base_range: tuple[float, float] = (0.6, 1.3)
    att_posterior_max: float = 0.5
    att_wm_range: tuple[float, float] = (0.1, 0.5)
    att_smooth: float = 0.2
    #: vessel tubes per case (drawn from 0 to this) and their arterial blood fraction
    max_vessels: int = 40
    vessel_blood_fraction_range: tuple[float, float] = (0.01, 0.08)
    #: acquisition grid
    matrix: int = 64
    in_plane_mm_range: tuple[float, float] = (3.0, 4.0)
    slice_mm_range: tuple[float, float] = (4.0, 7.5)
    slices_range: tuple[int, int] = (12, 24)
    rotation_deg: tuple[float, float, float] = (12.0, 5.0, 5.0)
    #: physiology: sd of the per-volume global fluctuation of the static signal and amplitude
    #: of its smooth part (upper bounds, relative to the static signal)
    global_fluctuation: float = 0.001
    smooth_fluctuation: float = 0.0015
    #: sd of CSF's per-volume pulsation noise (upper bound, relative to its static signal)
    csf_pulsation: float = 0.03
    #: sd of the per-pair labelling efficiency fluctuation
    efficiency_fluctuation: float = 0.05
    #: head motion between volumes (upper bounds of the sd; mm and degrees)
    motion_mm: float = 0.25
    motion_deg: float = 0.2
    bias_strength: float = 0.25

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AslCase:
    """One simulated ASL acquisition and its truth, all on the acquisition grid (X, Y, Z).

    ``series`` (X, Y, Z, 2 * pairs): label, control, label, control, ... (``context`` names
    them); ``m0``: the M0 image (same units as the series); ``clean_dm``: the noise-free,
    motion-free ``(control - label) / M0`` (vessels included; ``vascular`` is their part);
    ``cbf`` (mL/100 g/min) and ``att`` (s): the tissue truth, partial-volume weighted;
    ``tissues`` (5, X, Y, Z): the fractions of ``TISSUES``; ``plds``: each slice's delay (s,
    PLD for PCASL, TI for PASL); ``noise_sigma``: the thermal noise sd in series units.
    """

    series: np.ndarray
    context: list[str]
    m0: np.ndarray
    clean_dm: np.ndarray
    cbf: np.ndarray
    att: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    plds: np.ndarray
    scheme: LabelingScheme
    tissues: np.ndarray
    vascular: np.ndarray
    snr: float
    noise_sigma: float
    protocol: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Protocol:
    """What was drawn for the acquisition of a case."""

    scheme: LabelingScheme
    first_delay: float
    slice_time: float
    in_plane_mm: float
    slice_mm: float
    thickness_mm: float
    slices: int
    rotation_deg: tuple[float, float, float]
    background_suppression: bool
    snr: float


def class_lookup(max_label: int = 1024) -> np.ndarray:
    """Label value -> tissue class index (0: background, 1..5: ``TISSUES``)."""
    lookup = np.zeros(max_label, dtype=np.uint8)
    lookup[1 : BRAIN_MAX_LABEL + 1] = 1
    for index, values in ((2, DEEP_GM_LABELS), (3, WM_LABELS), (4, CSF_LABELS)):
        lookup[list(values)] = index
    lookup[BRAIN_MAX_LABEL + 1 :] = 5
    return lookup


def tissue_fractions(labels: np.ndarray, factor: int = 1) -> np.ndarray:
    """Fractions (5, X/factor, Y/factor, Z/factor) float32 of ``TISSUES`` in a label map
    (FreeSurfer values), averaged over blocks of ``factor``^3 voxels (the map is cropped to a
    multiple of ``factor``)."""
    labels = np.asarray(labels)
    lookup = class_lookup(max(1024, int(labels.max()) + 1))
    classes = lookup[np.clip(labels, 0, None).astype(np.int64)]
    shape = [s // factor for s in classes.shape]
    classes = classes[: shape[0] * factor, : shape[1] * factor, : shape[2] * factor]
    blocks = (shape[0], factor, shape[1], factor, shape[2], factor)
    return np.stack(
        [(classes == c).reshape(blocks).mean((1, 3, 5), dtype=np.float32) for c in range(1, 6)]
    )


def smooth_field(shape: tuple[int, ...], cells: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth random field of zero mean and unit sd: white noise on a coarse grid (one
    value per ``cells`` voxels) interpolated (cubic) to ``shape``."""
    coarse = tuple(max(2, int(np.ceil(s / cells)) + 1) for s in shape)
    field_ = ndimage.zoom(
        rng.standard_normal(coarse), [s / c for s, c in zip(shape, coarse, strict=True)], order=3
    )
    field_ = field_[tuple(slice(0, s) for s in shape)]
    return ((field_ - field_.mean()) / (field_.std() + 1e-12)).astype(np.float32)


def _log_uniform(bounds: tuple[float, float], rng: np.random.Generator) -> float:
    return float(np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]))))


def draw_protocol(settings: AslSimulation, rng: np.random.Generator) -> Protocol:
    """Labelling, delays, grid and noise level of one acquisition."""
    suppressed = bool(rng.random() < settings.background_suppression_probability)
    pulses = int(rng.integers(2, 5)) if suppressed else 0
    if rng.random() < settings.pcasl_probability:
        kind, bolus = "PCASL", float(rng.uniform(*settings.labeling_duration_range))
        delay = float(rng.uniform(*settings.pld_range))
    else:
        kind, bolus = "PASL", float(rng.uniform(*settings.ti1_range))
        delay = float(rng.uniform(max(settings.ti_range[0], bolus + 0.1), settings.ti_range[1]))
    t1_blood = BLOOD_T1[3.0] if rng.random() < 0.85 else BLOOD_T1[1.5]
    scheme = LabelingScheme(kind, bolus, labeling_efficiency(kind, None, pulses), t1_blood)
    slice_mm = float(rng.uniform(*settings.slice_mm_range))
    return Protocol(
        scheme=scheme,
        first_delay=delay,
        slice_time=float(rng.uniform(*settings.slice_time_range)),
        in_plane_mm=float(rng.uniform(*settings.in_plane_mm_range)),
        slice_mm=slice_mm,
        thickness_mm=slice_mm * float(rng.uniform(0.75, 1.0)),
        slices=int(rng.integers(settings.slices_range[0], settings.slices_range[1] + 1)),
        rotation_deg=tuple(float(rng.uniform(-r, r)) for r in settings.rotation_deg),
        background_suppression=suppressed,
        snr=_log_uniform(settings.snr_range, rng),
    )


def acquisition_affine(
    fractions: np.ndarray,
    affine: np.ndarray,
    protocol: Protocol,
    matrix: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """World affine of the thick-slice grid: axial slices (LAS voxel order, as scanners write
    them) turned by the protocol's rotation, centred near the brain's centre of mass."""
    brain = fractions[:4].sum(0)
    centre = affine[:3, :3] @ np.array(ndimage.center_of_mass(brain)) + affine[:3, 3]
    world_z = (np.argwhere(brain > 0.5) @ affine[:3, :3].T)[:, 2] + affine[2, 3]
    slab = protocol.slices * protocol.slice_mm
    if slab < np.ptp(world_z):  # prescribed from the vertex down, as the cerebrum is
        centre[2] = world_z.max() + rng.uniform(-10, 10) - slab / 2
    else:
        centre[2] += rng.uniform(-10, 10)
    centre[:2] += rng.uniform(-8, 8, 2)
    axes = rotation_matrix(protocol.rotation_deg) @ np.diag(
        [-protocol.in_plane_mm, protocol.in_plane_mm, protocol.slice_mm]
    )
    result = np.eye(4)
    result[:3, :3] = axes
    result[:3, 3] = centre - axes @ ((np.array([matrix, matrix, protocol.slices]) - 1) / 2)
    return result


def supersampled_affines(grid: np.ndarray, protocol: Protocol) -> list[np.ndarray]:
    """Affines of the fine grids (in-plane factor ``IN_PLANE_SUPERSAMPLING``), one per point
    through the slice thickness."""
    factor = IN_PLANE_SUPERSAMPLING
    fine = np.diag([1 / factor, 1 / factor, 1.0, 1.0])
    fine[:2, 3] = -(factor - 1) / (2 * factor)
    offsets = (np.arange(THROUGH_SLICE_POINTS) + 0.5) / THROUGH_SLICE_POINTS - 0.5
    affines = []
    for offset in offsets * protocol.thickness_mm / protocol.slice_mm:
        shifted = fine.copy()
        shifted[2, 3] = offset
        affines.append(grid @ shifted)
    return affines


def fractions_on_grid(
    fractions: np.ndarray, affine: np.ndarray, fine_affines: list[np.ndarray], shape: tuple
) -> np.ndarray:
    """Tissue fractions (5, P, Xf, Yf, Z) resampled (linear) onto each fine grid."""
    inverse = np.linalg.inv(affine)
    out = np.empty((len(fractions), len(fine_affines), *shape), dtype=np.float32)
    for p, fine in enumerate(fine_affines):
        voxel_map = inverse @ fine
        for c, tissue in enumerate(fractions):
            out[c, p] = ndimage.affine_transform(
                tissue, voxel_map[:3, :3], voxel_map[:3, 3], output_shape=shape, order=1
            )
    return out


def block_mean(volume: np.ndarray) -> np.ndarray:
    """(..., P, Xf, Yf, Z) fine values -> (..., X, Y, Z): the mean of each acquired voxel."""
    factor = IN_PLANE_SUPERSAMPLING
    *lead, points, xf, yf, z = volume.shape
    blocks = volume.reshape(*lead, points, xf // factor, factor, yf // factor, factor, z)
    return blocks.mean(axis=(-6, -4, -2))


def _patches(shape: tuple, mm: np.ndarray, brain: np.ndarray, rng: np.random.Generator):
    """A multiplicative CBF map with 1-3 smooth ellipsoidal hypo- or hyper-perfused patches."""
    factor = np.ones(shape, dtype=np.float32)
    inside = np.argwhere(brain > 0.5)
    coords = np.indices(shape, dtype=np.float32)
    for _ in range(int(rng.integers(1, 4))):
        centre = inside[rng.integers(len(inside))]
        radii = rng.uniform(8, 25, 3)
        distance = np.sqrt(
            sum(((coords[i] - centre[i]) * mm[i] / radii[i]) ** 2 for i in range(len(shape)))
        )
        weight = 1 / (1 + np.exp((distance - 1) * 6))
        change = rng.uniform(0.2, 0.6) if rng.random() < 0.6 else rng.uniform(1.4, 2.2)
        factor *= 1 + (change - 1) * weight
    return factor


def perfusion_fields(
    tissues: np.ndarray, grid_mm: np.ndarray, posterior: np.ndarray, settings, rng
) -> tuple[np.ndarray, np.ndarray]:
    """CBF (mL/100 g/min) and ATT (s) of each tissue class (5, *fine shape)."""
    shape = tissues.shape[1:]
    cells = 24.0 / grid_mm
    gm = rng.uniform(*settings.gm_cbf_range)
    wm = gm * rng.uniform(*settings.wm_ratio_range)
    base = np.array([gm, rng.uniform(wm, gm), wm, 0.0, rng.uniform(0.0, 15.0)])
    base *= rng.uniform(*settings.global_scale_range)
    spread = rng.uniform(0, settings.heterogeneity)
    smooth = np.exp(spread * _fine_field(shape, cells, rng) - spread**2 / 2)
    if rng.random() < settings.patch_probability:
        middle = tissues[:3, shape[0] // 2].sum(0)
        smooth = smooth * _patches(shape[1:], grid_mm, middle, rng)
    cbf = base[:, None, None, None, None] * smooth[None]
    att = (
        rng.uniform(*settings.att_base_range)
        + rng.uniform(0, settings.att_posterior_max) * posterior
        + settings.att_smooth * _fine_field(shape, cells, rng)
    )
    att = np.broadcast_to(att, tissues.shape).copy()
    att[2] += rng.uniform(*settings.att_wm_range)
    return cbf.astype(np.float32), np.clip(att, 0.5, 2.5).astype(np.float32)


def _fine_field(shape: tuple, cells: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A smooth field on the fine grids (P, Xf, Yf, Z), one value per acquired voxel and the
    same across the P points (``cells``: its correlation length in fine voxels)."""
    factor = IN_PLANE_SUPERSAMPLING
    acquired = (shape[1] // factor, shape[2] // factor, shape[3])
    per_voxel = np.asarray(cells, float) / np.array([factor, factor, 1])
    if min(per_voxel) <= 1:
        values = smooth_field(acquired, 1.0, rng)
    else:
        coarse = tuple(
            max(2, int(np.ceil(s / c)) + 1) for s, c in zip(acquired, per_voxel, strict=True)
        )
        values = ndimage.zoom(
            smooth_field(coarse, 1.0, rng),
            [s / c for s, c in zip(acquired, coarse, strict=True)],
            order=3,
        )[tuple(slice(0, s) for s in acquired)]
    values = np.repeat(np.repeat(values, factor, axis=0), factor, axis=1)
    return np.broadcast_to(values, shape)


def tissue_difference(
    fine: np.ndarray,
    density: np.ndarray,
    cbf: np.ndarray,
    att: np.ndarray,
    delays: np.ndarray,
    scheme: LabelingScheme,
) -> np.ndarray:
    """The label-control difference (M0 units) of the tissues on the fine grids: each class's
    kinetic signal times its fraction and M0, evaluated where the class is present."""
    out = np.zeros(fine.shape[1:], dtype=np.float32)
    delay = np.broadcast_to(delays.astype(np.float32), fine.shape[1:])
    for c, fraction in enumerate(fine):
        where = fraction > 0
        if not where.any() or not cbf[c][where].any():
            continue
        signal = difference_signal(cbf[c][where], att[c][where], delay[where], scheme)
        out[where] += density[c] * fraction[where] * signal
    return out


def vessel_map(tissues: np.ndarray, count: int, settings, rng) -> np.ndarray:
    """Arterial blood fraction on the fine grids: ``count`` short random-walk tubes starting
    in CSF or cortex."""
    blood = np.zeros(tissues.shape[1:], dtype=np.float32)
    weight = (tissues[3] + 0.3 * tissues[0]).ravel()
    if count == 0 or weight.sum() <= 0:
        return blood
    starts = rng.choice(weight.size, size=count, p=weight / weight.sum())
    upper = np.array(blood.shape) - 1
    for start in starts:
        position = np.array(np.unravel_index(start, blood.shape), dtype=float)
        step = rng.standard_normal(4) * np.array([0, 1, 1, 0.3])
        fraction = rng.uniform(*settings.vessel_blood_fraction_range)
        for _ in range(int(rng.integers(2, 8))):
            index = tuple(np.clip(np.round(position), 0, upper).astype(int))
            blood[index] = min(0.15, blood[index] + fraction)
            position += step / (np.linalg.norm(step) + 1e-6) * 1.5
    return blood


def arterial_signal(
    blood: np.ndarray, att: np.ndarray, delay: np.ndarray, scheme: LabelingScheme
) -> np.ndarray:
    """Normalised difference of labelled blood still in arteries at the readout: blood that
    left the labelling plane within the bolus and has not yet reached tissue (arterial arrival
    0.2-0.5 s before the tissue's ATT)."""
    arterial_arrival = att - 0.35
    read = delay if scheme.pulsed else scheme.bolus_duration + delay
    # labelled at t in [0, bolus]; in the artery from t + arrival to t + att
    first = np.maximum(0.0, read - att)
    last = np.minimum(scheme.bolus_duration, read - arterial_arrival)
    present = np.clip(last - first, 0.0, None) / (att - arterial_arrival)
    return 2 * scheme.efficiency * blood * np.clip(present, 0, 1) * np.exp(-att / scheme.t1_blood)


def proton_density(rng: np.random.Generator) -> np.ndarray:
    """M0 of each tissue class (fully relaxed, relative)."""
    return np.array(
        [
            rng.uniform(0.78, 0.9),
            rng.uniform(0.74, 0.86),
            rng.uniform(0.6, 0.75),
            rng.uniform(0.9, 1.25),
            rng.uniform(0.2, 0.9),
        ],
        dtype=np.float32,
    )


def static_fraction(protocol: Protocol, rng: np.random.Generator) -> np.ndarray:
    """The control image's static signal over M0 of each tissue: saturation recovery over a
    TR of 3.5-5 s, or the residue of background suppression."""
    if protocol.background_suppression:
        return rng.uniform(0.02, 0.2, 5).astype(np.float32)
    t1 = np.array([1.4, 1.3, 0.85, 4.0, 1.0])
    return (1 - np.exp(-rng.uniform(3.5, 5.0) / t1)).astype(np.float32)


def _brain_mask(tissues: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The brain on the acquisition grid (fraction above a random threshold), holes filled
    per slice, the largest component."""
    brain = tissues[:4].sum(0) > rng.uniform(0.35, 0.6)
    for z in range(brain.shape[2]):
        brain[..., z] = ndimage.binary_fill_holes(brain[..., z])
    components, count = ndimage.label(brain)
    if count > 1:
        sizes = ndimage.sum(brain, components, range(1, count + 1))
        brain = components == 1 + int(np.argmax(sizes))
    return brain


def _move(volume: np.ndarray, affine: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """``volume`` after a rigid head motion ``pose`` (world), on the same grid."""
    voxel_map = np.linalg.inv(affine) @ np.linalg.inv(pose) @ affine
    return ndimage.affine_transform(
        volume, voxel_map[:3, :3], voxel_map[:3, 3], order=1, mode="nearest"
    )


def _draw_pose(settings: AslSimulation, level: float, centre, rng) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, :3] = rotation_matrix(tuple(rng.normal(0, settings.motion_deg * level, 3)))
    pose[:3, 3] = centre - pose[:3, :3] @ centre + rng.normal(0, settings.motion_mm * level, 3)
    return pose


@dataclass(frozen=True)
class _Truth:
    m0: np.ndarray
    static: np.ndarray
    delta: np.ndarray
    signal_scale: float
    #: the static signal of CSF (its fraction of each voxel): where pulsation adds noise
    pulsatile: np.ndarray


def acquire_series(
    truth: _Truth, affine: np.ndarray, settings: AslSimulation, snr: float, rng
) -> tuple[np.ndarray, np.ndarray, float]:
    """Label/control series (X, Y, Z, 2 * pairs), the noisy M0 and the thermal noise sd."""
    sigma = truth.signal_scale / (snr * np.sqrt(2))
    shape = truth.m0.shape
    level = rng.uniform(0, 1)
    centre = affine[:3, :3] @ ((np.array(shape) - 1) / 2) + affine[:3, 3]
    cells = np.array([8.0, 8.0, 3.0])
    global_sd = rng.uniform(0, settings.global_fluctuation)
    smooth_sd = rng.uniform(0, settings.smooth_fluctuation)
    pulsation_sd = rng.uniform(0, settings.csf_pulsation)
    volumes = []
    for index in range(2 * settings.pairs):
        image = truth.static * (1 + rng.normal(0, global_sd))
        image = image * (1 + smooth_sd * _coarse(shape, cells, rng))
        pulsation = ndimage.gaussian_filter(rng.standard_normal(shape), (0.7, 0.7, 0))
        image = image + truth.pulsatile * pulsation * (pulsation_sd / 0.4)
        if index % 2 == 0:  # label
            image = image - truth.delta * (1 + rng.normal(0, settings.efficiency_fluctuation))
        if index:
            image = _move(image, affine, _draw_pose(settings, level, centre, rng))
        volumes.append(image + rng.normal(0, sigma, shape))
    m0 = truth.m0 + rng.normal(0, sigma, shape)
    return np.stack(volumes, -1).astype(np.float32), m0.astype(np.float32), float(sigma)


def _coarse(shape: tuple, cells: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    coarse = tuple(max(2, int(np.ceil(s / c)) + 1) for s, c in zip(shape, cells, strict=True))
    values = ndimage.zoom(
        rng.standard_normal(coarse), [s / c for s, c in zip(shape, coarse, strict=True)], order=1
    )
    return values[tuple(slice(0, s) for s in shape)]


def simulate_from_fractions(
    fractions: np.ndarray,
    affine: np.ndarray,
    rng: np.random.Generator,
    settings: AslSimulation | None = None,
) -> AslCase:
    """A case from tissue fractions (5, X, Y, Z; ``TISSUES``) on the grid ``affine``."""
    settings = settings or AslSimulation()
    protocol = draw_protocol(settings, rng)
    matrix = settings.matrix
    grid = acquisition_affine(fractions, affine, protocol, matrix, rng)
    factor = IN_PLANE_SUPERSAMPLING
    fine_shape = (matrix * factor, matrix * factor, protocol.slices)
    fine = fractions_on_grid(fractions, affine, supersampled_affines(grid, protocol), fine_shape)
    fine_mm = np.array([protocol.in_plane_mm / factor] * 2 + [protocol.slice_mm])
    posterior = _posterior(fine, supersampled_affines(grid, protocol))
    cbf, att = perfusion_fields(fine, fine_mm, posterior, settings, rng)
    delays = protocol.first_delay + protocol.slice_time * np.arange(protocol.slices)
    scheme = protocol.scheme
    density = proton_density(rng)[:, None, None, None, None]
    coil = np.exp(settings.bias_strength * _fine_field(fine.shape[1:], 40.0 / fine_mm, rng))
    m0_fine = (fine * density).sum(0) * coil
    blood = vessel_map(fine, int(rng.integers(0, settings.max_vessels + 1)), settings, rng)
    blood *= fine[:4].sum(0)  # arteries run inside the head's brain and CSF only
    vessel_att = att[0] + rng.uniform(0.0, 0.6)
    vascular_fine = arterial_signal(blood, vessel_att, delays, scheme) * (density[0, 0] * coil)
    delta_fine = tissue_difference(fine, density.ravel(), cbf, att, delays, scheme) * coil
    delta_fine += vascular_fine
    static_fine = fine * density * static_fraction(protocol, rng)[:, None, None, None, None]
    m0, delta = block_mean(m0_fine), block_mean(delta_fine)
    tissues = block_mean(fine)
    safe = np.maximum(m0, 1e-6)
    brain_fraction = np.maximum(tissues[:3].sum(0), 1e-6)
    gm = tissues[0] > 0.5
    signal_scale = float(np.mean(delta[gm])) if gm.any() else float(np.mean(delta[delta > 0]))
    gain = float(rng.uniform(200, 2000))
    truth = _Truth(
        m0=m0 * gain,
        static=block_mean(static_fine.sum(0) * coil) * gain,
        delta=delta * gain,
        signal_scale=signal_scale * gain,
        pulsatile=block_mean(static_fine[3] * coil) * gain,
    )
    series, m0_noisy, sigma = acquire_series(truth, grid, settings, protocol.snr, rng)
    return AslCase(
        series=series,
        context=["label", "control"] * settings.pairs,
        m0=m0_noisy,
        clean_dm=(delta / safe).astype(np.float32),
        cbf=(block_mean((fine * cbf)[:3].sum(0)) / brain_fraction).astype(np.float32),
        att=(block_mean((fine * att)[:3].sum(0)) / brain_fraction).astype(np.float32),
        mask=_brain_mask(tissues, rng),
        affine=grid,
        plds=delays.astype(np.float32),
        scheme=scheme,
        tissues=tissues.astype(np.float32),
        vascular=(block_mean(vascular_fine) / safe).astype(np.float32),
        snr=protocol.snr,
        noise_sigma=sigma,
        protocol=_protocol_record(protocol),
    )


def _posterior(fine: np.ndarray, fine_affines: list[np.ndarray]) -> np.ndarray:
    """0 at the front of the brain to 1 at its back, on the fine grids (world y)."""
    shape = fine.shape[2:]
    index = np.indices(shape, dtype=np.float32).reshape(3, -1)
    out = np.empty(fine.shape[1:], dtype=np.float32)
    for p, fine_affine in enumerate(fine_affines):
        out[p] = (fine_affine[1, :3] @ index + fine_affine[1, 3]).reshape(shape)
    brain = fine[:3].sum(0) > 0.5
    front, back = (out[brain].max(), out[brain].min()) if brain.any() else (1.0, 0.0)
    return np.clip((front - out) / max(front - back, 1e-6), 0, 1)


def _protocol_record(protocol: Protocol) -> dict:
    record = asdict(protocol)
    record["scheme"] = asdict(protocol.scheme)
    return record


def simulate_asl_case(
    labels: np.ndarray,
    rng: np.random.Generator,
    affine: np.ndarray | None = None,
    pairs: int = 4,
    settings: AslSimulation | None = None,
) -> AslCase:
    """A simulated ASL acquisition of the head of a label map (FreeSurfer values, e.g. a
    SynthSeg map or the sample's WM 2 / GM 3 / CSF 24 map) on the grid ``affine`` (default: 1
    mm RAS), with ``pairs`` label/control pairs. Deterministic for a given ``rng``; about a
    second for a 2 mm map."""
    settings = settings or AslSimulation()
    if pairs != settings.pairs:
        settings = AslSimulation(**{**settings.to_dict(), "pairs": pairs})
    affine = np.eye(4) if affine is None else np.asarray(affine, float)
    return simulate_from_fractions(tissue_fractions(labels), affine, rng, settings)
