"""Simulated same-subject T1w + FDG PET pairs from FreeSurfer-style label maps.

No real same-subject PET + MRI pair is available, so the missing-PET imputation network learns
from simulation. A case starts from a label map at 1 mm (a SynthSeg map, any orientation),
turned to RAS and cropped to the head:

- **anatomy** (seen by both images): age-like atrophy (outer cortex voxels turned to CSF,
  lateral ventricles dilated into white matter) and, in about half the cases, a disease-like
  atrophy of severity s: hippocampus and amygdala eroded into the temporal horn, temporal
  cortex thinned, both in proportion to s;
- **FDG uptake**: a mean SUVR per structure (relative to cerebellar cortex, drawn from the
  ranges of :class:`PetSimulation`), a per-structure jitter and a smooth low-amplitude
  heterogeneity; the atrophy-tied hypometabolism lowers temporal and parietal cortex by up to
  ``tied_reduction`` x s, and an independent one, invisible in the MRI, lowers a random
  cortical blob in about half the cases. The label maps have no cortical parcellation, so the
  regions are smooth blobs in coordinates normalised to the brain's bounding box (temporal:
  lateral-inferior, parietal: posterior-superior);
- **scanner**: Gaussian resolution (FWHM 6-8 mm), SUVR normalisation by the blurred noise-free
  image's mean over cerebellar cortex, then noise proportional to the square root of the
  signal (a few %), slightly correlated as a reconstruction leaves it;
- **T1w**: tissue intensities of ``labels.CONTRAST_TISSUE_MEANS["T1w"]`` with a per-case
  jitter and gamma, random head-tissue intensities (so the brain mask matters), a smooth bias
  field and Gaussian noise.

Both images live on a 2 mm RAS grid whose voxels average the 1 mm labels, so partial volume is
that of 2 mm voxels. Each part draws from its own random stream, so that the T1w of a seed is
the same whatever the uptake draws (the independent hypometabolism cannot leak into the MRI).
:func:`simulate_frames` turns a static SUVR into an FDG-like dynamic series (the sample
dataset's PET).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import nibabel as nb
import numpy as np
from scipy import ndimage

from bids_dl.models.asl_phantom import (
    BRAIN_MAX_LABEL,
    CSF_LABELS,
    DEEP_GM_LABELS,
    WM_LABELS,
    class_lookup,
    smooth_field,
)
from bids_dl.models.labels import CONTRAST_TISSUE_MEANS, STRUCTURES, tissue_key

#: voxel size of the simulated images (mm)
GRID_MM = 2.0
#: FDG uptake groups by FreeSurfer structure name (``labels.STRUCTURES``); each group's SUVR
#: range is the :class:`PetSimulation` field ``<group>_suvr``
UPTAKE_GROUPS: dict[str, tuple[str, ...]] = {
    "cerebral_cortex": ("Cerebral-Cortex",),
    "cerebellar_cortex": ("Cerebellum-Cortex",),
    "putamen_thalamus": ("Putamen", "Thalamus"),
    "caudate": ("Caudate", "Accumbens"),
    "pallidum": ("Pallidum",),
    "hippocampus_amygdala": ("Hippocampus", "Amygdala"),
    "cerebral_wm": ("Cerebral-White-Matter",),
    "cerebellar_wm": ("Cerebellum-White-Matter",),
    "brainstem": ("Brain-Stem",),
    "ventral_dc": ("VentralDC",),
}
#: tissue class of ``asl_phantom.class_lookup`` -> the group of a brain label not named above
CLASS_GROUPS = {1: "cerebral_cortex", 2: "caudate", 3: "cerebral_wm", 4: "csf", 5: "head"}
#: blobs of the atrophy-tied hypometabolism: centre and radii in brain-box coordinates (x: 0
#: left, 1 right; y: 0 posterior; z: 0 inferior), one per hemisphere
TEMPORAL_BLOBS = (((0.12, 0.48, 0.38), (0.12, 0.2, 0.12)), ((0.88, 0.48, 0.38), (0.12, 0.2, 0.12)))
PARIETAL_BLOBS = (
    ((0.22, 0.25, 0.75), (0.14, 0.14, 0.12)),
    ((0.78, 0.25, 0.75), (0.14, 0.14, 0.12)),
)
#: a hypometabolism's region: voxels lowered by at least this fraction
REGION_THRESHOLD = 0.05


def group_labels(*names: str) -> tuple[int, ...]:
    """Label values of ``STRUCTURES`` whose name contains any of ``names``."""
    return tuple(v for v, row in STRUCTURES.items() if any(n in row[0] for n in names))


CEREBRAL_CORTEX = group_labels(*UPTAKE_GROUPS["cerebral_cortex"])
#: the SUVR reference region
CEREBELLAR_CORTEX = group_labels(*UPTAKE_GROUPS["cerebellar_cortex"])
HIPPOCAMPUS_AMYGDALA = group_labels(*UPTAKE_GROUPS["hippocampus_amygdala"])
LATERAL_VENTRICLES = group_labels("Lateral-Ventricle")
EXTRACEREBRAL_CSF = group_labels("CSF")


@dataclass(frozen=True)
class PetSimulation:
    """The ranges every random draw of a case comes from (stored in the model card)."""

    #: mean FDG SUVR of each uptake group, relative to cerebellar cortex (= 1 before the
    #: normalisation), drawn per case
    cerebral_cortex_suvr: tuple[float, float] = (1.1, 1.35)
    cerebellar_cortex_suvr: tuple[float, float] = (1.0, 1.0)
    putamen_thalamus_suvr: tuple[float, float] = (1.2, 1.45)
    caudate_suvr: tuple[float, float] = (1.0, 1.3)
    pallidum_suvr: tuple[float, float] = (0.8, 1.0)
    hippocampus_amygdala_suvr: tuple[float, float] = (0.75, 0.95)
    cerebral_wm_suvr: tuple[float, float] = (0.45, 0.6)
    cerebellar_wm_suvr: tuple[float, float] = (0.5, 0.6)
    brainstem_suvr: tuple[float, float] = (0.6, 0.8)
    ventral_dc_suvr: tuple[float, float] = (0.75, 0.85)
    csf_suvr: tuple[float, float] = (0.03, 0.07)
    head_suvr: tuple[float, float] = (0.1, 0.3)
    #: sd of a per-label-value factor (left and right differ a little)
    structure_jitter: float = 0.04
    #: sd of the smooth log-uptake heterogeneity (upper bound) and its scale (mm)
    heterogeneity: float = 0.06
    heterogeneity_mm: float = 16.0
    #: age-like atrophy level (0-1): expected outer cortex layers (1 mm) turned to CSF and
    #: ventricle dilation (mm) at level 1
    atrophy_range: tuple[float, float] = (0.0, 1.0)
    cortical_thinning: float = 0.6
    ventricle_dilation_mm: float = 3.0
    #: atrophy-tied hypometabolism: how often, its severity s, the uptake reduction at s = 1,
    #: and the layers lost at s = 1 by hippocampus/amygdala and by temporal cortex
    tied_probability: float = 0.5
    tied_severity_range: tuple[float, float] = (0.2, 1.0)
    tied_reduction: float = 0.3
    hippocampal_atrophy: float = 1.5
    temporal_thinning: float = 1.2
    #: the blobs' centres move by up to this much (brain-box units)
    region_jitter: float = 0.04
    #: independent hypometabolism (not in the MRI): how often, its reduction and radius (mm)
    independent_probability: float = 0.5
    independent_reduction_range: tuple[float, float] = (0.05, 0.3)
    independent_radius_mm: tuple[float, float] = (10.0, 25.0)
    #: scanner: resolution (FWHM, mm) and noise sd at SUVR 1 (fraction)
    fwhm_mm_range: tuple[float, float] = (6.0, 8.0)
    noise_range: tuple[float, float] = (0.02, 0.05)
    #: T1w: sd of the tissue means' jitter, gamma, bias amplitude, noise sd, head intensities
    t1w_jitter: float = 0.05
    t1w_gamma_range: tuple[float, float] = (0.8, 1.25)
    t1w_bias: float = 0.2
    t1w_noise_range: tuple[float, float] = (0.01, 0.04)
    head_intensity_range: tuple[float, float] = (0.05, 0.95)
    #: margin around the head (mm)
    margin_mm: float = 6.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PetCase:
    """One simulated subject on a 2 mm RAS grid (``affine``).

    ``t1w``: the T1w-like image; ``brain_mask``: brain and CSF (labels 1-99 fill half a voxel);
    ``suvr``: the noise-free blurred SUVR (the training target); ``pet``: the noisy SUVR a
    scanner gives; ``labels``: the atrophied label map (1 mm labels sampled every 2 mm);
    ``tied_region`` / ``independent_region``: brain voxels whose SUVR each hypometabolism
    lowered by at least ``REGION_THRESHOLD``; ``normal_suvr``: the noise-free SUVR without
    either hypometabolism; ``parameters``: what was drawn.
    """

    t1w: np.ndarray
    brain_mask: np.ndarray
    suvr: np.ndarray
    pet: np.ndarray
    labels: np.ndarray
    tied_region: np.ndarray
    independent_region: np.ndarray
    normal_suvr: np.ndarray
    affine: np.ndarray
    parameters: dict


def canonical_head(
    label_map: np.ndarray, affine: np.ndarray, margin_mm: float = 6.0
) -> tuple[np.ndarray, np.ndarray]:
    """A label map (int16) in RAS voxel order, cropped to the head plus ``margin_mm`` and
    padded to whole 2 mm blocks, and its affine."""
    ornt = nb.orientations.io_orientation(affine)
    labels = nb.orientations.apply_orientation(np.asarray(label_map), ornt)
    affine = np.asarray(affine, float) @ nb.orientations.inv_ornt_aff(ornt, label_map.shape)
    factors = _block_factors(affine)
    head = _bounding_box(labels > 0, 0)
    if head is None:
        raise ValueError("the label map is empty")
    margin = np.ceil(margin_mm / np.sqrt((affine[:3, :3] ** 2).sum(0))).astype(int)
    low = np.array([s.start for s in head]) - margin
    size = np.array([s.stop for s in head]) + margin - low
    size = np.ceil(size / factors).astype(int) * factors
    out = np.zeros(size, dtype=np.int16)
    source = [
        slice(max(a, 0), min(a + s, n)) for a, s, n in zip(low, size, labels.shape, strict=True)
    ]
    target = [slice(s.start - a, s.stop - a) for s, a in zip(source, low, strict=True)]
    out[tuple(target)] = labels[tuple(source)]
    shifted = affine.copy()
    shifted[:3, 3] = affine[:3, :3] @ low + affine[:3, 3]
    return out, shifted


def _block_factors(affine: np.ndarray) -> np.ndarray:
    """Voxels of the label map in one 2 mm voxel, per axis (its voxel size must divide 2 mm)."""
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    factors = np.maximum(np.round(GRID_MM / zooms), 1).astype(int)
    if np.any(np.abs(factors * zooms - GRID_MM) > 0.1 * GRID_MM):
        raise ValueError(f"label map voxels of {tuple(zooms.round(2))} mm do not tile 2 mm")
    return factors


def block_mean(volume: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """The mean of each block of ``factors`` voxels (float32; strided sums axis by axis,
    faster than a 6D reshape's mean)."""
    out = np.asarray(volume, np.float32)
    for axis, step in enumerate(factors):
        out = sum(out[(slice(None),) * axis + (slice(i, None, step),)] for i in range(step))
    return out / np.float32(np.prod(factors))


def _smooth(shape: tuple[int, ...], cells: float, rng: np.random.Generator) -> np.ndarray:
    """``asl_phantom.smooth_field`` (one value per ``cells`` voxels) drawn on a grid of half
    the resolution and interpolated linearly to ``shape``: the same field, several times
    faster."""
    half = tuple((s + 1) // 2 for s in shape)
    field_ = smooth_field(half, cells / 2, rng)
    return ndimage.zoom(field_, [s / h for s, h in zip(shape, half, strict=True)], order=1)


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...] | None:
    """The bounding box of a mask plus ``margin`` voxels (None for an empty mask)."""
    found = ndimage.find_objects(mask.astype(np.uint8))
    if not found or found[0] is None:
        return None
    return tuple(slice(max(s.start - margin, 0), s.stop + margin) for s in found[0])


def _outside_tissue(labels: np.ndarray) -> np.ndarray:
    """CSF, background and head tissue: what the pial side of the cortex faces."""
    return (labels <= 0) | (labels > BRAIN_MAX_LABEL) | np.isin(labels, CSF_LABELS)


def _erode_layers(
    labels: np.ndarray,
    members: tuple[int, ...],
    layers_at: Callable[[tuple[np.ndarray, ...]], np.ndarray],
    replacement: np.ndarray,
    rng: np.random.Generator,
    pial: bool = False,
) -> None:
    """Remove outer layers of ``members`` in place. ``layers_at(index)`` gives the expected
    layers lost at voxels ``index`` (index arrays into ``labels``): whole layers go, then each
    voxel of the last one with the fractional part as probability; a removed voxel becomes
    ``replacement[its label]``. Outer voxels face any other label, or with ``pial`` only CSF
    and what lies outside the brain (cortex thins from the pial side)."""
    box = _bounding_box(np.isin(labels, members), 1)
    if box is None:
        return
    view, start = labels[box], [s.start for s in box]
    layer = 0
    while True:
        inside = np.isin(view, members)
        facing = _outside_tissue(view) if pial else ~inside
        index = np.nonzero(inside & ndimage.binary_dilation(facing))
        wanted = layers_at(tuple(i + s for i, s in zip(index, start, strict=True)))
        chance = np.clip(wanted - layer, 0, 1)
        if not chance.any():
            return
        keep = rng.random(len(chance)) < chance
        chosen = tuple(i[keep] for i in index)
        view[chosen] = replacement[view[chosen]]
        layer += 1


def _dilate_ventricles(labels: np.ndarray, millimetres: float, rng: np.random.Generator) -> None:
    """Grow each lateral ventricle into the white matter and deep grey matter next to it by
    ``millimetres`` voxels (the last one partly), in place."""
    layers = int(np.ceil(millimetres))
    box = _bounding_box(np.isin(labels, LATERAL_VENTRICLES), layers + 1)
    if box is None:
        return
    view = labels[box]
    room = np.isin(view, WM_LABELS + DEEP_GM_LABELS)
    for layer in range(layers):
        chance = min(millimetres - layer, 1.0)
        for value in LATERAL_VENTRICLES:
            grown = ndimage.binary_dilation(view == value) & room
            grown &= rng.random(view.shape, dtype=np.float32) < chance
            view[grown] = value
            room &= ~grown


def _relabel(size: int, mapping: dict[int, int]) -> np.ndarray:
    """A lookup table that maps the label values in ``mapping`` and keeps every other one."""
    table = np.arange(size, dtype=np.int16)
    for old, new in mapping.items():
        table[old] = new
    return table


@dataclass(frozen=True)
class _BrainBox:
    """The brain's bounding box in voxels of the 1 mm map, for normalised coordinates."""

    low: np.ndarray
    high: np.ndarray

    def blob(
        self, shape: tuple[int, ...], factors: np.ndarray, centre, radii, jitter: np.ndarray
    ) -> np.ndarray:
        """A Gaussian blob (1 at ``centre``, sd ``radii``, brain-box units) on a grid whose
        voxels are ``factors`` voxels of the 1 mm map."""
        profiles = []
        for axis, size in enumerate(shape):
            position = factors[axis] * np.arange(size) + (factors[axis] - 1) / 2
            u = (position - self.low[axis]) / max(self.high[axis] - self.low[axis], 1)
            profiles.append(np.exp(-0.5 * ((u - centre[axis] - jitter[axis]) / radii[axis]) ** 2))
        return np.einsum("i,j,k->ijk", *profiles).astype(np.float32)


def _regions(
    box: _BrainBox,
    shape: tuple[int, ...],
    factors: np.ndarray,
    jitters: np.ndarray,
    sides: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Temporal and parietal weights (0-1) on a grid; ``jitters`` (4, 3) moves each blob,
    ``sides`` (2,) scales the left and right hemisphere."""
    blobs = [
        sides[side] * box.blob(shape, factors, centre, radii, jitters[2 * group + side])
        for group, pair in enumerate((TEMPORAL_BLOBS, PARIETAL_BLOBS))
        for side, (centre, radii) in enumerate(pair)
    ]
    return np.clip(blobs[0] + blobs[1], 0, 1), np.clip(blobs[2] + blobs[3], 0, 1)


def _atrophy(
    labels: np.ndarray,
    box: _BrainBox,
    factors: np.ndarray,
    settings: PetSimulation,
    rng: np.random.Generator,
) -> dict:
    """Apply age-like and disease-like atrophy to the 1 mm ``labels`` in place; what was drawn
    (the disease-like severity and its regions' placement are also the uptake's)."""
    level = float(rng.uniform(*settings.atrophy_range))
    tied = rng.random() < settings.tied_probability
    severity = float(rng.uniform(*settings.tied_severity_range)) if tied else 0.0
    jitters = rng.uniform(-settings.region_jitter, settings.region_jitter, (4, 3))
    sides = rng.uniform(0.7, 1.0, 2)
    coarse = tuple(int(n) for n in np.array(labels.shape) // factors)
    temporal, _ = _regions(box, coarse, factors, jitters, sides)
    rate = level * settings.cortical_thinning + severity * settings.temporal_thinning * temporal
    rate *= np.clip(1 + 0.3 * _smooth(coarse, 20.0 / GRID_MM, rng), 0.4, 1.6)
    size = int(labels.max()) + 1
    _erode_layers(
        labels,
        CEREBRAL_CORTEX,
        lambda index: rate[tuple(i // f for i, f in zip(index, factors, strict=True))],
        _relabel(size, {v: EXTRACEREBRAL_CSF[0] for v in CEREBRAL_CORTEX}),
        rng,
        pial=True,
    )
    if severity:
        horns = {
            v: group_labels(STRUCTURES[v][0].split("-")[0] + "-Inf-Lat-Vent")[0]
            for v in HIPPOCAMPUS_AMYGDALA
        }
        lost = severity * settings.hippocampal_atrophy
        _erode_layers(
            labels,
            HIPPOCAMPUS_AMYGDALA,
            lambda index: np.full(len(index[0]), lost),
            _relabel(size, horns),
            rng,
        )
    _dilate_ventricles(labels, level * settings.ventricle_dilation_mm, rng)
    return {
        "atrophy": level,
        "tied_severity": severity,
        "region_jitters": jitters.round(4).tolist(),
        "region_sides": sides.round(4).tolist(),
    }


def _uptake_tables(
    settings: PetSimulation, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Label value -> uptake (relative to cerebellar cortex) of cerebral cortex and of every
    other label, and the group means drawn."""
    means = {
        g: float(rng.uniform(*getattr(settings, f"{g}_suvr")))
        for g in (*UPTAKE_GROUPS, "csf", "head")
    }
    classes = class_lookup(size)
    table = np.array([means[CLASS_GROUPS[c]] if c else 0.0 for c in classes], dtype=np.float32)
    for group, names in UPTAKE_GROUPS.items():
        table[list(group_labels(*names))] = means[group]
    table *= rng.normal(1.0, settings.structure_jitter, size).astype(np.float32).clip(0.8, 1.2)
    cortex = np.zeros_like(table)
    cortex[list(CEREBRAL_CORTEX)] = table[list(CEREBRAL_CORTEX)]
    table[list(CEREBRAL_CORTEX)] = 0.0
    return cortex, table, {g: round(v, 4) for g, v in means.items()}


def _t1w_table(settings: PetSimulation, size: int, rng: np.random.Generator) -> np.ndarray:
    """Label value -> T1w intensity: the tissue means jittered, random head tissues."""
    means = {
        key: value * (1 + rng.normal(0, settings.t1w_jitter))
        for key, value in CONTRAST_TISSUE_MEANS["T1w"].items()
    }
    table = rng.uniform(*settings.head_intensity_range, size).astype(np.float32)
    table[0] = 0.0
    for value in range(1, min(BRAIN_MAX_LABEL + 1, size)):
        key = tissue_key(value)
        table[value] = means[key] if key else means["GM"]
    return table


def _t1w(labels: np.ndarray, factors: np.ndarray, settings: PetSimulation, rng) -> np.ndarray:
    """The T1w-like image of the 1 mm ``labels`` on the 2 mm grid."""
    image = block_mean(_t1w_table(settings, labels.max() + 1, rng)[labels], factors)
    image = image ** rng.uniform(*settings.t1w_gamma_range)
    bias = np.exp(rng.uniform(0, settings.t1w_bias) * _smooth(image.shape, 60.0 / GRID_MM, rng))
    noise = rng.uniform(*settings.t1w_noise_range) * rng.standard_normal(image.shape)
    return np.abs(image * bias + noise).astype(np.float32)


def _independent_blob(
    cortex: np.ndarray, settings: PetSimulation, rng: np.random.Generator
) -> tuple[np.ndarray, dict]:
    """The uptake factor of the MRI-invisible hypometabolism (1 where there is none)."""
    if not rng.random() < settings.independent_probability:
        return np.ones(cortex.shape, np.float32), {"present": False}
    candidates = np.argwhere(cortex > 0.3)
    centre = candidates[rng.integers(len(candidates))]
    radius = rng.uniform(*settings.independent_radius_mm) / GRID_MM
    reduction = float(rng.uniform(*settings.independent_reduction_range))
    distance = np.sqrt(
        sum(
            ((np.arange(n) - c) ** 2).reshape([-1 if a == i else 1 for a in range(3)])
            for i, (n, c) in enumerate(zip(cortex.shape, centre, strict=True))
        )
    )
    weight = 1 / (1 + np.exp((distance / radius - 1) * 6))
    record = {
        "present": True,
        "centre_voxel": centre.tolist(),
        "radius_mm": round(radius * GRID_MM, 2),
        "reduction": round(reduction, 4),
    }
    return (1 - reduction * weight).astype(np.float32), record


def _scanner_suvr(uptake: np.ndarray, sigma: float, reference: np.ndarray) -> np.ndarray:
    """Blurred uptake over its mean in the reference region."""
    blurred = ndimage.gaussian_filter(uptake, sigma)
    return (blurred / max(float(blurred[reference].mean()), 1e-6)).astype(np.float32)


def simulate_case(
    label_map: np.ndarray,
    affine: np.ndarray,
    rng: np.random.Generator,
    settings: PetSimulation = PetSimulation(),
) -> PetCase:
    """A simulated T1w + FDG SUVR pair of the head of a 1 mm label map (FreeSurfer values, any
    voxel order; ``affine`` its grid), on a 2 mm RAS grid cropped to the head. Deterministic
    for a given ``rng``."""
    streams = [np.random.default_rng(s) for s in rng.integers(0, 2**63, 5)]
    anatomy, mri, uptake, independent, scanner = streams
    labels, affine = canonical_head(label_map, affine, settings.margin_mm)
    factors = _block_factors(affine)
    brain = _bounding_box((labels > 0) & (labels <= BRAIN_MAX_LABEL), 0)
    if brain is None:
        raise ValueError("the label map has no brain labels (1-99)")
    box = _BrainBox(np.array([s.start for s in brain]), np.array([s.stop - 1 for s in brain]))
    drawn = _atrophy(labels, box, factors, settings, anatomy)
    grid = np.asarray(affine) @ np.diag([*factors, 1.0])
    grid[:3, 3] = affine[:3, :3] @ ((factors - 1) / 2) + affine[:3, 3]
    t1w = _t1w(labels, factors, settings, mri)
    brain_fraction = block_mean((labels > 0) & (labels <= BRAIN_MAX_LABEL), factors)
    brain_mask = ndimage.binary_fill_holes(brain_fraction >= 0.5)
    cortex_table, other_table, means = _uptake_tables(settings, int(labels.max()) + 1, uptake)
    cortex, other = (
        block_mean(cortex_table[labels], factors),
        block_mean(other_table[labels], factors),
    )
    spread = uptake.uniform(0, settings.heterogeneity)
    texture = np.exp(spread * _smooth(cortex.shape, settings.heterogeneity_mm / GRID_MM, uptake))
    jitters, sides = np.array(drawn["region_jitters"]), np.array(drawn["region_sides"])
    temporal, parietal = _regions(box, cortex.shape, factors, jitters, sides)
    tied = 1 - settings.tied_reduction * drawn["tied_severity"] * np.maximum(temporal, parietal)
    hidden, hidden_record = _independent_blob(cortex, settings, independent)
    fwhm = float(scanner.uniform(*settings.fwhm_mm_range))
    sigma = fwhm / (2 * np.sqrt(2 * np.log(2))) / GRID_MM
    sampled = labels[tuple(slice(f // 2, None, f) for f in factors)]
    reference = np.isin(sampled, CEREBELLAR_CORTEX)
    if not reference.any():
        raise ValueError("the label map has no cerebellar cortex (8, 47): no SUVR reference")
    normal = _scanner_suvr((cortex + other) * texture, sigma, reference)
    tied_only = _scanner_suvr((cortex * tied + other) * texture, sigma, reference)
    suvr = _scanner_suvr((cortex * tied * hidden + other) * texture, sigma, reference)
    noise_level = float(scanner.uniform(*settings.noise_range))
    noise = ndimage.gaussian_filter(scanner.standard_normal(suvr.shape, dtype=np.float32), 0.7)
    noise /= noise.std() + 1e-12
    pet = suvr + noise_level * np.sqrt(np.clip(suvr, 0, None)) * noise
    lowered = 1 - REGION_THRESHOLD
    return PetCase(
        t1w=t1w,
        brain_mask=brain_mask,
        suvr=suvr,
        pet=pet.astype(np.float32),
        labels=sampled.astype(np.int16),
        tied_region=brain_mask & (tied_only <= lowered * normal) & (normal > 0.1),
        independent_region=brain_mask & (suvr <= lowered * tied_only) & (tied_only > 0.1),
        normal_suvr=normal,
        affine=grid,
        parameters={
            **drawn,
            "suvr_means": means,
            "heterogeneity": round(spread, 4),
            "independent": hidden_record,
            "fwhm_mm": round(fwhm, 3),
            "noise": round(noise_level, 4),
        },
    )


def simulate_frames(
    static_suvr: np.ndarray,
    frame_starts_s: np.ndarray,
    frame_durations_s: np.ndarray,
    rng: np.random.Generator,
    scale_bq_ml: float,
) -> np.ndarray:
    """An FDG-like dynamic series (X, Y, Z, frames; Bq/mL, decay-corrected) of a static SUVR.

    Activity is ``scale_bq_ml * (suvr * (1 - exp(-t / tau)) + A * blood * b(t))``: trapped
    FDG rising with time constant tau (5-10 min) in proportion to the SUVR, plus a blood-pool
    bolus ``b(t) = t / tp * exp(1 - t / tp)`` (peak at tp = 30-60 s, A = 2-4 times the
    plateau) over a smooth map of the head. After ~15 min the bolus is gone, so late frames are
    proportional to the SUVR: their time-weighted mean over its cerebellar-cortex mean gives the
    SUVR back. Each frame gets noise of sd ~3 % of the plateau at SUVR 1 for a 5 min frame,
    growing as the square root of the signal over the frame's duration.
    """
    starts = np.asarray(frame_starts_s, float)
    durations = np.asarray(frame_durations_s, float)
    suvr = np.clip(np.asarray(static_suvr, np.float32), 0, None)
    blood = ndimage.gaussian_filter(suvr, 3.0)
    blood /= max(float(blood.max()), 1e-6)
    tau, peak_time = rng.uniform(300, 600), rng.uniform(30, 60)
    amplitude, noise = rng.uniform(2, 4), rng.uniform(0.02, 0.04)
    frames = np.empty((*suvr.shape, len(starts)), dtype=np.float32)
    for index, (start, duration) in enumerate(zip(starts, durations, strict=True)):
        t = start + (np.arange(64) + 0.5) / 64 * duration  # midpoint rule over the frame
        trapped = float(np.mean(1 - np.exp(-t / tau)))
        bolus = float(np.mean(t / peak_time * np.exp(1 - t / peak_time)))
        activity = suvr * trapped + amplitude * bolus * blood
        sd = noise * np.sqrt(activity * 300.0 / duration)
        frames[..., index] = scale_bq_ml * (activity + sd * rng.standard_normal(suvr.shape))
    return frames
