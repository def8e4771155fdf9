"""Lesion simulator: plants gliomas and white-matter hyperintensities into label maps and draws
skull-stripped, multi-contrast training images from them.

Tumours: a core bounded by a noisy ellipsoidal distance ``f < 1`` around a white-matter centre,
with a necrotic centre (``f`` below a random level; in some tumours fluid-filled, as dark as
CSF on FLAIR), an enhancing rim where a smooth random field
allows it (non-enhancing tumour elsewhere; some tumours do not enhance at all), in some
tumours patches of non-enhancing tumour just outside the rim (where BraTS annotators put it,
beside the enhancing tumour rather than inside it), and vasogenic
edema (``f`` up to a random extent) that stays in white matter and deep grey nuclei; in some
tumours the edema's outer part is only faintly abnormal, as real edema fades into white matter.
White-matter hyperintensities: periventricular caps and bands (white matter within a few mm of
the lateral ventricles, broken up by a smooth field) and deep ovoid lesions. Every lesion class
takes, in each contrast, a mean intensity drawn from its range (``LESION_INTENSITIES``) with
smooth heterogeneity; healthy tissue follows the jittered contrast tables of ``labels``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from bids_dl.models.labels import BRAIN_LABEL_RANGE, LESION_VALUES
from bids_dl.models.samplers import Sampler
from bids_dl.models.synthesis import (
    SynthesisParameters,
    contrast_means,
    corrupt,
    deform_labels,
    smooth_field,
    uniform,
)
from bids_dl.models.transforms import normalise_in_mask

CEREBRAL_WHITE_MATTER = (2, 41)
LATERAL_VENTRICLES = (4, 5, 43, 44)
#: where edema spreads: cerebral white matter and the deep grey nuclei (not cortex, not CSF)
EDEMA_TISSUES = (2, 41, 10, 11, 12, 13, 17, 18, 26, 28, 49, 50, 51, 52, 53, 54, 58, 60)

#: Range of each lesion class's mean intensity per contrast, on the scale of the tissue tables
#: (``CONTRAST_TISSUE_MEANS``: T1w WM 0.85, GM 0.55; FLAIR WM 0.45, GM 0.65; T2w CSF 0.95).
#: Set so that, z-scored inside the brain, lesions land where the real BraTS cases put them
#: (FLAIR edema z ~2, enhancing tumour on contrast T1 z ~2-5). Faint edema lies between white
#: matter and edema. Cystic (fluid-filled) necrosis is as dark as CSF on FLAIR (CSF 0.06) and
#: T1w, and bright on T2w.
LESION_INTENSITIES: dict[str, dict[str, tuple[float, float]]] = {
    "FLAIR": {"necrosis": (0.2, 1.1), "non_enhancing": (0.75, 1.2), "edema": (0.8, 1.3),
              "enhancing": (0.7, 1.2), "wmh": (0.8, 1.3), "faint_edema": (0.55, 0.85),
              "cystic_necrosis": (0.03, 0.2)},
    "T1ce": {"necrosis": (0.05, 0.35), "non_enhancing": (0.35, 0.6), "edema": (0.45, 0.7),
             "enhancing": (1.0, 1.6), "wmh": (0.55, 0.75), "faint_edema": (0.6, 0.8),
             "cystic_necrosis": (0.05, 0.25)},
    "T1w": {"necrosis": (0.05, 0.35), "non_enhancing": (0.35, 0.6), "edema": (0.45, 0.7),
            "enhancing": (0.45, 0.7), "wmh": (0.55, 0.75), "faint_edema": (0.6, 0.8),
            "cystic_necrosis": (0.05, 0.25)},
    "T2w": {"necrosis": (0.8, 1.1), "non_enhancing": (0.65, 0.9), "edema": (0.7, 1.0),
            "enhancing": (0.5, 0.75), "wmh": (0.7, 1.0), "faint_edema": (0.45, 0.7),
            "cystic_necrosis": (0.85, 1.1)},
}  # fmt: skip


@dataclass(frozen=True)
class LesionParameters:
    """The ranges of the simulator's random draws (stored in the model card)."""

    tumor_probability: float = 0.0
    tumor_radius_mm: tuple[float, float] = (8.0, 30.0)
    shape_noise: float = 0.25
    necrosis_probability: float = 0.6
    necrosis_level: tuple[float, float] = (0.3, 0.8)
    #: chance that a tumour's necrosis is fluid-filled (CSF-like intensities)
    cystic_necrosis_probability: float = 0.0
    non_enhancing_probability: float = 0.15
    #: chance that a tumour has non-enhancing tumour outside its core, in patches covering a
    #: share of a shell of the given thickness (in units of the core's radius)
    peripheral_non_enhancing_probability: float = 0.0
    peripheral_non_enhancing_thickness: tuple[float, float] = (0.1, 0.4)
    peripheral_non_enhancing_share: tuple[float, float] = (0.3, 0.8)
    enhancing_share: tuple[float, float] = (0.5, 1.0)
    edema_extent: tuple[float, float] = (1.05, 2.5)
    #: chance that the edema's outer part is faint, and where that part starts (share of the
    #: way from the core to the edema's edge)
    faint_edema_probability: float = 0.0
    faint_edema_start: tuple[float, float] = (0.2, 0.8)
    wmh_probability: float = 0.0
    periventricular_probability: float = 0.8
    periventricular_mm: tuple[float, float] = (2.0, 10.0)
    deep_lesions: tuple[int, int] = (0, 12)
    deep_radius_mm: tuple[float, float] = (1.5, 6.0)
    heterogeneity: float = 0.1
    #: chance that each input channel is left out (all zeros), per channel of the config
    channel_dropout: tuple[float, ...] = ()
    #: chance that the brain mask is one voxel larger than the brain (skull-stripping slack)
    mask_dilation_probability: float = 0.5
    intensities: dict = field(default_factory=lambda: LESION_INTENSITIES)

    def to_dict(self) -> dict:
        return asdict(self)


def _voxel_coordinates(shape: tuple[int, ...]) -> torch.Tensor:
    axes = [torch.arange(n, dtype=torch.float32) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def _random_voxel(mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
    candidates = mask.nonzero()
    if not len(candidates):
        return None
    return candidates[int(torch.randint(0, len(candidates), (1,), generator=generator))].float()


def _noisy_distance(
    shape: tuple[int, ...],
    centre: torch.Tensor,
    radii_vox: torch.Tensor,
    noise: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Ellipsoidal distance to ``centre`` (1 on the ellipsoid) plus a smooth random field."""
    offsets = (_voxel_coordinates(shape) - centre) / radii_vox
    distance = offsets.square().sum(-1).sqrt()
    return distance + smooth_field(shape, 5, noise, 1, generator)[0, 0]


def _inner_region(shape: tuple[int, ...]) -> torch.Tensor:
    """The central half of a window along each axis, where lesion centres go."""
    region = torch.zeros(shape, dtype=torch.bool)
    region[tuple(slice(n // 4, n - n // 4) for n in shape)] = True
    return region


def plant_tumor(
    labels: torch.Tensor, voxel_mm: float, params: LesionParameters, generator: torch.Generator
) -> torch.Tensor:
    """Labels with a tumour (necrosis, non-enhancing, enhancing, edema) around a random
    white-matter voxel of the window's central half; unchanged when there is none."""
    shape = tuple(labels.shape)
    centre = _random_voxel(
        torch.isin(labels, torch.tensor(CEREBRAL_WHITE_MATTER)) & _inner_region(shape), generator
    )
    if centre is None:
        return labels
    radii = uniform(*params.tumor_radius_mm, generator, (3,)) / voxel_mm
    distance = _noisy_distance(shape, centre, radii, params.shape_noise, generator)
    low, high = BRAIN_LABEL_RANGE
    brain = (labels >= low) & (labels <= high)
    core = (distance < 1) & brain
    edema_distance = distance + smooth_field(shape, 6, params.shape_noise, 1, generator)[0, 0]
    edema_extent = float(uniform(*params.edema_extent, generator))
    edema_tissue = torch.isin(labels, torch.tensor(EDEMA_TISSUES))
    edema = (edema_distance < edema_extent) & edema_tissue & ~core
    necrosis_level, necrosis = 0.0, LESION_VALUES["necrosis"]
    if float(torch.rand((), generator=generator)) < params.necrosis_probability:
        necrosis_level = float(uniform(*params.necrosis_level, generator))
        if params.cystic_necrosis_probability and (
            float(torch.rand((), generator=generator)) < params.cystic_necrosis_probability
        ):
            necrosis = LESION_VALUES["cystic_necrosis"]
    enhancing_share = 0.0
    if float(torch.rand((), generator=generator)) >= params.non_enhancing_probability:
        enhancing_share = float(uniform(*params.enhancing_share, generator))
    # enhancement where a smooth field is below its quantile: contiguous patches of the rim
    patches = smooth_field(shape, 4, 1.0, 1, generator)[0, 0]
    # the noisy distance dips below 0 at the centre: necrosis only where some was drawn
    necrotic = core & (distance < necrosis_level) if necrosis_level > 0 else torch.zeros_like(core)
    rim = core & ~necrotic
    enhancing = torch.zeros_like(rim)
    if enhancing_share > 0 and rim.any():
        enhancing = _patches_of(rim, patches, enhancing_share)
    out = labels.clone()
    out[edema] = LESION_VALUES["edema"]
    if params.faint_edema_probability and (
        float(torch.rand((), generator=generator)) < params.faint_edema_probability
    ):
        start = 1 + (edema_extent - 1) * float(uniform(*params.faint_edema_start, generator))
        out[edema & (edema_distance >= start)] = LESION_VALUES["faint_edema"]
    out[_peripheral_non_enhancing(distance, edema_tissue, params, generator)] = LESION_VALUES[
        "non_enhancing"
    ]
    out[core] = LESION_VALUES["non_enhancing"]
    out[necrotic] = necrosis
    out[enhancing] = LESION_VALUES["enhancing"]
    return out


def _peripheral_non_enhancing(
    distance: torch.Tensor,
    tissue: torch.Tensor,
    params: LesionParameters,
    generator: torch.Generator,
) -> torch.Tensor:
    """Patches of a shell just outside the core (``1 <= distance < 1 + thickness``) in
    ``tissue``; empty for most tumours (``peripheral_non_enhancing_probability``)."""
    shell = torch.zeros_like(tissue)
    if not params.peripheral_non_enhancing_probability or (
        float(torch.rand((), generator=generator)) >= params.peripheral_non_enhancing_probability
    ):
        return shell
    thickness = float(uniform(*params.peripheral_non_enhancing_thickness, generator))
    share = float(uniform(*params.peripheral_non_enhancing_share, generator))
    shell = (distance >= 1) & (distance < 1 + thickness) & tissue
    if not shell.any():
        return shell
    patches = smooth_field(tuple(distance.shape), 4, 1.0, 1, generator)[0, 0]
    return _patches_of(shell, patches, share)


def _patches_of(region: torch.Tensor, field: torch.Tensor, share: float) -> torch.Tensor:
    """Contiguous patches covering ``share`` of ``region``: where a smooth ``field`` is below
    its ``share`` quantile inside the region."""
    return region & (field <= torch.quantile(field[region], share))


def _dilate(mask: torch.Tensor, voxels: int) -> torch.Tensor:
    if voxels < 1:
        return mask
    kernel = 2 * voxels + 1
    return F.max_pool3d(mask[None, None].float(), kernel, stride=1, padding=voxels)[0, 0] > 0


def plant_wmh(
    labels: torch.Tensor, voxel_mm: float, params: LesionParameters, generator: torch.Generator
) -> torch.Tensor:
    """Labels with white-matter hyperintensities: periventricular caps and bands and deep
    ovoid lesions, all inside cerebral white matter."""
    shape = tuple(labels.shape)
    white_matter = torch.isin(labels, torch.tensor(CEREBRAL_WHITE_MATTER))
    lesions = torch.zeros(shape, dtype=torch.bool)
    if float(torch.rand((), generator=generator)) < params.periventricular_probability:
        reach = round(float(uniform(*params.periventricular_mm, generator)) / voxel_mm)
        near = _dilate(torch.isin(labels, torch.tensor(LATERAL_VENTRICLES)), max(reach, 1))
        field = smooth_field(shape, 6, 1.0, 1, generator)[0, 0]
        lesions |= near & (field > float(uniform(-0.5, 1.0, generator)))
    low, high = params.deep_lesions
    for _ in range(int(torch.randint(low, high + 1, (1,), generator=generator))):
        centre = _random_voxel(white_matter, generator)
        if centre is None:
            break
        radii = uniform(*params.deep_radius_mm, generator, (3,)) / voxel_mm
        lesions |= _noisy_distance(shape, centre, radii, 0.15, generator) < 1
    out = labels.clone()
    out[lesions & white_matter] = LESION_VALUES["wmh"]
    return out


def lesion_image(
    labels: torch.Tensor,
    contrast: str,
    lesion: LesionParameters,
    synthesis: SynthesisParameters,
    generator: torch.Generator,
) -> torch.Tensor:
    """One contrast of a label map with lesions: tissue table + lesion intensities, artefacts."""
    size = max(int(labels.max()) + 1, max(LESION_VALUES.values()) + 1)
    means = contrast_means(contrast, size, synthesis.contrast_prior_jitter, generator)
    for name, value in LESION_VALUES.items():
        means[value] = float(uniform(*lesion.intensities[contrast][name], generator))
    stds = uniform(*synthesis.intensity_std, generator, (size,))
    image = means[labels] + stds[labels] * torch.randn(labels.shape, generator=generator)
    in_lesion = torch.isin(labels, torch.tensor(list(LESION_VALUES.values())))
    texture = 1 + smooth_field(tuple(labels.shape), 8, lesion.heterogeneity, 1, generator)[0, 0]
    image = torch.where(in_lesion, image * texture, image)
    return corrupt(image, synthesis, generator, normalise=False)


class LesionSynthesiser(Sampler):
    """Draws (channels, target) pairs: label maps deformed, lesions planted, one image per
    contrast of ``channels`` (same anatomy, independent artefacts), skull-stripped and
    normalised inside the brain; random channels left out as zeros.

    ``task`` is ``"tumor"`` (tumours are the target; WMH may be planted as distractors) or
    ``"wmh"``.
    """

    def __init__(
        self,
        label_maps: list[torch.Tensor],
        target_lut: torch.Tensor,
        out_shape: tuple[int, int, int],
        channels: list[str],
        task: str,
        voxel_mm: float,
        synthesis: SynthesisParameters,
        lesion: LesionParameters,
        seed: int = 0,
    ) -> None:
        if not label_maps:
            raise ValueError("at least one label map is needed")
        unknown = [c for c in channels if c not in LESION_INTENSITIES]
        if unknown:
            raise ValueError(
                f"no lesion intensities for {unknown} (known: {list(LESION_INTENSITIES)})"
            )
        self.label_maps = label_maps
        self.target_lut = target_lut.long()
        self.out_shape = out_shape
        self.channels = channels
        self.task = task
        self.voxel_mm = voxel_mm
        self.synthesis = synthesis
        self.lesion = lesion
        self.dropout = list(lesion.channel_dropout) or [0.0] * len(channels)
        self.generator = torch.Generator().manual_seed(seed)

    def _chance(self, probability: float) -> bool:
        return float(torch.rand((), generator=self.generator)) < probability

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One ``(images [C, D, H, W] float, target [D, H, W] long)`` pair."""
        g = self.generator
        index = int(torch.randint(0, len(self.label_maps), (1,), generator=g))
        labels = deform_labels(self.label_maps[index], self.out_shape, self.synthesis, g)
        if self.task == "tumor" and self._chance(self.lesion.tumor_probability):
            labels = plant_tumor(labels, self.voxel_mm, self.lesion, g)
        if self._chance(self.lesion.wmh_probability):
            labels = plant_wmh(labels, self.voxel_mm, self.lesion, g)
        low, high = BRAIN_LABEL_RANGE
        mask = (labels >= low) & (labels <= high)
        if self._chance(self.lesion.mask_dilation_probability):
            mask = _dilate(mask, 1)
        kept = [not self._chance(p) for p in self.dropout]
        if not any(kept):
            kept[int(torch.randint(0, len(kept), (1,), generator=g))] = True
        images = [
            normalise_in_mask(lesion_image(labels, c, self.lesion, self.synthesis, g), mask)
            if keep
            else torch.zeros(labels.shape)
            for c, keep in zip(self.channels, kept, strict=True)
        ]
        target = self.target_lut[labels.clamp(0, len(self.target_lut) - 1)]
        return torch.stack(images), target
