"""Simulated resting-state BOLD with known functional networks, to test network extraction.

The truth is a fixed set of template networks (``NETWORK_NODES``): each network is the sum of
Gaussian nodes placed at MNI coordinates, some networks overlapping others (``OVERLAPPING``).
A subject's maps move and reshape every node (``position_jitter_mm``, ``shape_jitter``). A run
mixes the maps with haemodynamic time courses that are coupled to each other with weights that
drift over the run, while each map's balance between its nodes sways slowly (non-stationary
networks, so the data are not the fixed-maps, independent-sources model that ICA assumes). On
top come spatially smooth AR(1) noise, scanner drift, rigid head motion (the intensity change
that a displacement of the baseline image causes, plus slab signal drops at sudden jerks) and
aliased cardiac and respiratory fluctuations. Every parameter is a field of ``BoldSimulation``;
its defaults are the "realistic" level, fixed before any network-extraction model was built.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, signal, stats

#: node centres (x, y, z in MNI mm) and widths (Gaussian sigma, mm) of each template network
NETWORK_NODES: dict[str, tuple[tuple[float, float, float, float], ...]] = {
    "default_mode": ((0, -53, 26, 9), (0, 52, -6, 9), (-48, -62, 36, 8), (46, -62, 32, 8)),
    "sensorimotor": ((-38, -22, 56, 9), (38, -22, 56, 9), (0, -4, 60, 8)),
    "visual": ((0, -84, 4, 10), (-40, -76, -8, 8), (40, -76, -8, 8)),
    "frontoparietal_left": ((-44, 36, 20, 9), (-44, -56, 44, 8)),
    "frontoparietal_right": ((44, 36, 20, 9), (44, -56, 44, 8)),
    "salience": ((0, 22, 40, 8), (-36, 18, 2, 8), (36, 18, 2, 8)),
    "auditory": ((-54, -22, 8, 9), (54, -22, 8, 9)),
    "dorsal_attention": ((-26, -8, 54, 7), (26, -8, 54, 7), (-24, -60, 56, 8), (24, -60, 56, 8)),
}
#: map values below this fraction of the node peak are zero, so maps are sparse
MAP_FLOOR = 0.02
#: two networks "overlap" where both maps reach this value in a common voxel
OVERLAP_LEVEL = 0.3
#: the network pairs whose maps overlap at OVERLAP_LEVEL on the 4 mm MNI grid (by index)
OVERLAPPING = ((0, 3), (0, 4), (1, 7))
#: baseline signal in the brain and outside it (arbitrary units, like a raw EPI)
BRAIN_BASELINE = 1000.0
BACKGROUND = 50.0
#: spatial texture of the baseline image: relative sd, and smoothness (sigma, mm)
TEXTURE_SD = 0.1
TEXTURE_SIGMA_MM = 6.0
#: radius (mm) at which a head rotation moves tissue as far as the motion steps: rotations are
#: drawn in radians as the translation sd over this radius (the usual framewise-displacement
#: convention)
HEAD_RADIUS_MM = 50.0
#: relative signal drop in the slab of slices hit at a sudden jerk, and the slab's thickness
SPIKE_DROP = 0.03
SPIKE_SLAB_FRACTION = 0.2
#: cardiac and respiratory rates (Hz) and their slow relative variability
CARDIAC_HZ = 1.1
RESPIRATORY_HZ = 0.3
PHYSIOLOGY_RATE_SD = 0.05
#: smoothness (sigma, mm) of the fields that weight physiological noise over the brain
PHYSIOLOGY_SIGMA_MM = 12.0
#: temporal resolution of the neural drive before the haemodynamic response (steps per TR), and
#: seconds of drive simulated before the first volume so the response has settled
DRIVE_STEPS_PER_TR = 4
BURN_IN_SECONDS = 32.0
#: canonical double-gamma haemodynamic response: peak and undershoot delays (s), their ratio,
#: and its length (s)
HRF_PEAK = 6.0
HRF_UNDERSHOOT = 16.0
HRF_RATIO = 1.0 / 6.0
HRF_SECONDS = 32.0
#: volumes run through the AR(1) noise filter before the first kept one (stationary start)
AR_BURN_IN = 20
#: FWHM = this factor times a Gaussian sigma
FWHM_PER_SIGMA = 2.3548


@dataclass(frozen=True)
class BoldSimulation:
    """Parameters of a simulated run; the defaults are the "realistic" level.

    Amplitudes in percent are of the brain baseline (``BRAIN_BASELINE``).
    """

    n_volumes: int = 120  #: volumes per run
    repetition_time: float = 2.0  #: seconds between volumes
    signal_percent: float = 1.0  #: network signal sd at a map's peak voxel
    noise: float = 1.5  #: voxel noise sd over the network signal sd at a map's peak
    noise_ar: float = 0.4  #: AR(1) coefficient of the voxel noise between volumes
    noise_fwhm_mm: float = 6.0  #: spatial smoothness of the voxel noise
    drift_percent: float = 2.0  #: scanner drift amplitude over the run (voxel gains vary)
    motion_mm: float = 0.08  #: sd of each volume's step of each translation (and rotation)
    spike_rate: float = 0.02  #: chance that a volume is a sudden jerk
    spike_mm: float = 0.8  #: sd of a jerk's displacement
    cardiac_percent: float = 0.5  #: cardiac pulsation where its weight field peaks
    respiratory_percent: float = 0.5  #: respiratory fluctuation where its weight field peaks
    position_jitter_mm: float = 4.0  #: sd of a subject's node shift along each axis
    shape_jitter: float = 0.2  #: sd of the log of a subject's node width along each axis
    amplitude_jitter: float = 0.25  #: sd of the log of a run's network amplitudes
    coupling: float = 0.4  #: weight of a shared drive whose sign drifts per network
    nonstationarity: float = 0.5  #: sd of the log gain that sways each map's node balance
    modulation_seconds: float = 40.0  #: time scale of the drifting coupling and balance


@dataclass
class SimulatedRun:
    """A run: ``data`` (X, Y, Z, T) BOLD-like signal, the networks' ``time_courses`` (T, K),
    and the head ``motion`` (T, 6: translations mm, rotations rad) as realignment reports it."""

    data: np.ndarray
    time_courses: np.ndarray
    motion: np.ndarray


@dataclass
class SimulatedGroup:
    """Several subjects' runs as in-mask voxels (T, V), with the truth: template ``group_maps``
    (K, V), each subject's maps (K, V) and time courses (T, K), and each run's motion (T, 6)."""

    runs: list[np.ndarray]
    group_maps: np.ndarray
    subject_maps: list[np.ndarray]
    time_courses: list[np.ndarray]
    motion: list[np.ndarray]


def _voxel_sizes(affine: np.ndarray) -> np.ndarray:
    return np.linalg.norm(affine[:3, :3], axis=0)


def _world_coordinates(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """(X, Y, Z, 3) world coordinates (mm) of every voxel."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return grid @ affine[:3, :3].T + affine[:3, 3]


def _render_nodes(mask: np.ndarray, affine: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """One map from nodes (N, 6: centre x y z, sigma x y z mm): the voxelwise max of the nodes'
    Gaussians, zero below MAP_FLOOR and outside the mask."""
    coordinates = _world_coordinates(mask.shape, affine)
    scaled = (coordinates[..., None, :] - nodes[:, :3]) / nodes[:, 3:]
    blobs = np.exp(-0.5 * np.sum(scaled**2, axis=-1)).max(axis=-1)
    blobs[(blobs < MAP_FLOOR) | ~mask.astype(bool)] = 0.0
    return blobs.astype(np.float32)


def _template_nodes() -> list[np.ndarray]:
    """Each network's nodes as (N, 6) arrays: centre, then the (isotropic) sigma thrice."""
    return [
        np.array([(x, y, z, s, s, s) for x, y, z, s in nodes], dtype=float)
        for nodes in NETWORK_NODES.values()
    ]


def network_maps(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """(K, *mask.shape) float32: the template networks on the grid of ``mask`` (1 at a node's
    centre, 0 outside the mask), in the order of ``NETWORK_NODES``."""
    return np.stack([_render_nodes(mask, affine, nodes) for nodes in _template_nodes()])


def subject_network_maps(
    mask: np.ndarray, affine: np.ndarray, settings: BoldSimulation, rng: np.random.Generator
) -> np.ndarray:
    """The template networks with every node moved and reshaped as one subject's would be."""
    maps = []
    for nodes in _template_nodes():
        moved = nodes.copy()
        moved[:, :3] += rng.normal(0.0, settings.position_jitter_mm, size=(len(nodes), 3))
        moved[:, 3:] *= np.exp(rng.normal(0.0, settings.shape_jitter, size=(len(nodes), 3)))
        maps.append(_render_nodes(mask, affine, moved))
    return np.stack(maps)


def _slow_series(rng: np.random.Generator, n_points: int, sigma_points: float, count: int):
    """(n_points, count) smooth random series with zero mean and unit sd."""
    series = ndimage.gaussian_filter1d(rng.standard_normal((n_points, count)), sigma_points, 0)
    series -= series.mean(axis=0)
    return series / series.std(axis=0)


def haemodynamic_response(step_seconds: float) -> np.ndarray:
    """The canonical double-gamma haemodynamic response sampled every ``step_seconds``."""
    times = np.arange(0.0, HRF_SECONDS, step_seconds)
    response = stats.gamma.pdf(times, HRF_PEAK) - HRF_RATIO * stats.gamma.pdf(times, HRF_UNDERSHOOT)
    return response / response.sum()


def network_time_courses(
    n_networks: int, settings: BoldSimulation, rng: np.random.Generator
) -> np.ndarray:
    """(T, K) unit-sd BOLD time courses: white neural drive, part of it shared with a sign that
    drifts per network (``coupling``), through the haemodynamic response."""
    step = settings.repetition_time / DRIVE_STEPS_PER_TR
    burn_in = int(round(BURN_IN_SECONDS / step))
    n_steps = settings.n_volumes * DRIVE_STEPS_PER_TR + burn_in
    own = rng.standard_normal((n_steps, n_networks))
    shared = rng.standard_normal((n_steps, 1))
    sign = np.tanh(2.0 * _slow_series(rng, n_steps, settings.modulation_seconds / step, n_networks))
    drive = np.sqrt(1.0 - settings.coupling**2) * own + settings.coupling * sign * shared
    bold = signal.lfilter(haemodynamic_response(step), [1.0], drive, axis=0)
    bold = bold[burn_in::DRIVE_STEPS_PER_TR]
    bold -= bold.mean(axis=0)
    return bold / bold.std(axis=0)


def _network_signal(
    maps: np.ndarray,
    brain: np.ndarray,
    coordinates: np.ndarray,
    time_courses: np.ndarray,
    settings: BoldSimulation,
    rng: np.random.Generator,
) -> np.ndarray:
    """(V, T) network signal in units of the peak signal sd: each map times its time course,
    the map tilted along a random axis by a slowly swaying log gain (non-stationarity)."""
    n_volumes, n_networks = time_courses.shape
    sway = _slow_series(
        rng, n_volumes, settings.modulation_seconds / settings.repetition_time, n_networks
    )
    gains = np.exp(rng.normal(0.0, settings.amplitude_jitter, n_networks))
    total = np.zeros((coordinates.shape[0], n_volumes))
    for k in range(n_networks):
        weights = maps[k][brain].astype(float)
        axis = rng.standard_normal(3)
        position = coordinates @ (axis / np.linalg.norm(axis))
        centre = np.average(position, weights=weights + 1e-12)
        spread = np.sqrt(np.average((position - centre) ** 2, weights=weights + 1e-12))
        tilt = np.clip((position - centre) / max(spread, 1e-6), -2.0, 2.0)
        modulation = np.exp(settings.nonstationarity * np.outer(tilt, sway[:, k]))
        total += gains[k] * weights[:, None] * modulation * time_courses[:, k]
    return total


def _smooth_noise(
    brain: np.ndarray, voxel_sizes: np.ndarray, settings: BoldSimulation, rng: np.random.Generator
) -> np.ndarray:
    """(V, T) unit-sd noise, spatially smooth (``noise_fwhm_mm``) and AR(1) in time."""
    n_total = settings.n_volumes + AR_BURN_IN
    sigma = settings.noise_fwhm_mm / FWHM_PER_SIGMA / voxel_sizes
    white = rng.standard_normal((*brain.shape, n_total)).astype(np.float32)
    smooth = ndimage.gaussian_filter(white, (*sigma, 0.0))[brain]
    innovation = np.sqrt(1.0 - settings.noise_ar**2)
    series = signal.lfilter([innovation], [1.0, -settings.noise_ar], smooth, axis=1)
    series = series[:, AR_BURN_IN:]
    return series / series.std()


def _smooth_field(
    shape: tuple[int, ...], sigma_voxels: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """A smooth random field with zero mean and unit sd over the grid."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_voxels)
    return (field - field.mean()) / field.std()


def _baseline_image(
    brain: np.ndarray, voxel_sizes: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """An EPI-like mean image: textured brain, dark background, a slightly soft edge."""
    texture = _smooth_field(brain.shape, TEXTURE_SIGMA_MM / voxel_sizes, rng)
    image = np.where(brain, BRAIN_BASELINE * (1.0 + TEXTURE_SD * texture), BACKGROUND)
    return ndimage.gaussian_filter(image, 0.5)


def head_motion(settings: BoldSimulation, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """(T, 6) rigid motion (translations mm, rotations rad) as random walks with occasional
    jerks, and the indices of the jerk volumes."""
    scale = np.array([1.0, 1.0, 1.0] + [1.0 / HEAD_RADIUS_MM] * 3)
    steps = rng.normal(0.0, settings.motion_mm, (settings.n_volumes, 6))
    jerks = np.flatnonzero(rng.random(settings.n_volumes) < settings.spike_rate)
    steps[jerks] += rng.normal(0.0, settings.spike_mm, (len(jerks), 6))
    steps[0] = 0.0
    return np.cumsum(steps, axis=0) * scale, jerks


def _motion_signal(
    baseline: np.ndarray,
    brain: np.ndarray,
    affine: np.ndarray,
    motion: np.ndarray,
    jerks: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """(V, T) intensity change from moving the baseline image (first order: minus its gradient
    dotted with each voxel's displacement) and the slab signal drop at each jerk."""
    gradient_index = np.stack(np.gradient(baseline), axis=-1)[brain]
    gradient = gradient_index @ np.linalg.inv(affine[:3, :3])
    coordinates = _world_coordinates(brain.shape, affine)[brain]
    lever = np.cross(coordinates - coordinates.mean(axis=0), gradient)
    change = -(gradient @ motion[:, :3].T + lever @ motion[:, 3:].T)
    slices = np.nonzero(brain)[2]
    n_slab = max(1, int(SPIKE_SLAB_FRACTION * brain.shape[2]))
    for volume in jerks:
        start = rng.integers(0, max(1, brain.shape[2] - n_slab))
        hit = (slices >= start) & (slices < start + n_slab)
        change[hit, volume] -= SPIKE_DROP * baseline[brain][hit]
    return change


def _phase_signal(
    rate_hz: float, n_slices: int, settings: BoldSimulation, rng: np.random.Generator
) -> np.ndarray:
    """(slices, T) cos of a quasi-periodic phase sampled at each slice's acquisition time
    (slices acquired in order through the TR), so the rhythm aliases as it does in fMRI."""
    step = 1.0 / (8.0 * rate_hz)
    n_steps = int(np.ceil(settings.n_volumes * settings.repetition_time / step)) + 2
    rate = rate_hz * (1.0 + PHYSIOLOGY_RATE_SD * _slow_series(rng, n_steps, 10.0 / step, 1)[:, 0])
    phase = np.cumsum(rate) * step * 2 * np.pi + rng.uniform(0, 2 * np.pi)
    offsets = np.arange(n_slices)[:, None] / n_slices * settings.repetition_time
    times = np.arange(settings.n_volumes) * settings.repetition_time + offsets
    return np.cos(np.interp(times, np.arange(n_steps) * step, phase))


def _physiology_signal(
    brain: np.ndarray, voxel_sizes: np.ndarray, settings: BoldSimulation, rng: np.random.Generator
) -> np.ndarray:
    """(V, T) cardiac and respiratory fluctuations in percent, each weighted by a patchy field."""
    slices = np.nonzero(brain)[2]
    total = np.zeros((int(brain.sum()), settings.n_volumes))
    for rate, percent in (
        (CARDIAC_HZ, settings.cardiac_percent),
        (RESPIRATORY_HZ, settings.respiratory_percent),
    ):
        field = _smooth_field(brain.shape, PHYSIOLOGY_SIGMA_MM / voxel_sizes, rng)
        weight = np.clip(field, 0.0, None)[brain]
        weight /= max(weight.max(), 1e-12)
        waves = _phase_signal(rate, brain.shape[2], settings, rng)
        total += percent * weight[:, None] * waves[slices]
    return total


def _drift_signal(n_voxels: int, settings: BoldSimulation, rng: np.random.Generator):
    """(V, T) scanner drift in percent: one slow shape (a random mix of a line and the first
    cosines), with a random gain per voxel."""
    times = np.linspace(0.0, 1.0, settings.n_volumes)
    basis = np.stack([times - 0.5, np.cos(np.pi * times), np.cos(2 * np.pi * times)])
    shape = rng.normal(0.0, 1.0, 3) @ basis
    shape /= max(np.abs(shape).max(), 1e-12)
    gains = rng.normal(1.0, 0.5, n_voxels)
    return settings.drift_percent * np.outer(gains, shape)


def simulate_run(
    maps: np.ndarray,
    brain: np.ndarray,
    settings: BoldSimulation,
    rng: np.random.Generator,
    affine: np.ndarray | None = None,
) -> SimulatedRun:
    """One run of BOLD-like data (baseline ~1000 in the brain) from ``maps`` (K, X, Y, Z) on the
    grid of ``brain`` (X, Y, Z, bool); ``affine`` gives voxel sizes and positions (1 mm voxels
    at the origin when None)."""
    brain = brain.astype(bool)
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=float)
    voxel_sizes = _voxel_sizes(affine)
    coordinates = _world_coordinates(brain.shape, affine)[brain]
    time_courses = network_time_courses(len(maps), settings, rng)
    network = _network_signal(maps, brain, coordinates, time_courses, settings, rng)
    noise = settings.noise * _smooth_noise(brain, voxel_sizes, settings, rng)
    relative = settings.signal_percent * (network + noise)
    relative += _physiology_signal(brain, voxel_sizes, settings, rng)
    relative += _drift_signal(int(brain.sum()), settings, rng)
    baseline = _baseline_image(brain, voxel_sizes, rng)
    motion, jerks = head_motion(settings, rng)
    data = np.repeat(baseline[..., None], settings.n_volumes, axis=-1)
    data[brain] *= 1.0 + relative / 100.0
    data[brain] += _motion_signal(baseline, brain, affine, motion, jerks, rng)
    background_noise = BRAIN_BASELINE * settings.signal_percent * settings.noise / 100.0
    data[~brain] += rng.normal(0.0, background_noise, data[~brain].shape)
    return SimulatedRun(data.astype(np.float32), time_courses.astype(np.float32), motion)


def simulate_group(
    n_subjects: int, settings: BoldSimulation, mask: np.ndarray, affine: np.ndarray, seed: int
) -> SimulatedGroup:
    """``n_subjects`` runs on the template grid (``mask``, ``affine``), each from its subject's
    jittered maps, kept as in-mask voxels (T, V) with the truth."""
    mask = mask.astype(bool)
    rng = np.random.default_rng(seed)
    group = SimulatedGroup([], network_maps(mask, affine)[:, mask], [], [], [])
    for _ in range(n_subjects):
        maps = subject_network_maps(mask, affine, settings, rng)
        run = simulate_run(maps, mask, settings, rng, affine)
        group.runs.append(run.data[mask].T.copy())
        group.subject_maps.append(maps[:, mask])
        group.time_courses.append(run.time_courses)
        group.motion.append(run.motion)
    return group
