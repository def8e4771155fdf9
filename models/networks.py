"""3D U-Net family in plain torch: every hyper-parameter is a constructor argument, so a model
card can rebuild the network from its ``architecture`` entry alone."""

from __future__ import annotations

import torch
from torch import nn

NORMALISATIONS = {"instance": nn.InstanceNorm3d, "batch": nn.BatchNorm3d, "none": None}


class ConvBlock(nn.Module):
    """Two 3x3x3 convolutions, each followed by normalisation and LeakyReLU; optional residual."""

    def __init__(self, in_channels: int, out_channels: int, norm: str, residual: bool) -> None:
        super().__init__()
        norm_layer = NORMALISATIONS[norm]
        layers: list[nn.Module] = []
        for index in range(2):
            layers.append(
                nn.Conv3d(in_channels if index == 0 else out_channels, out_channels, 3, padding=1)
            )
            if norm_layer is not None:
                layers.append(norm_layer(out_channels, affine=True))
            layers.append(nn.LeakyReLU(0.01, inplace=True))
        self.body = nn.Sequential(*layers)
        self.skip = None
        if residual:
            self.skip = (
                nn.Identity()
                if in_channels == out_channels
                else nn.Conv3d(in_channels, out_channels, 1)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return out + self.skip(x) if self.skip is not None else out


class UNet3D(nn.Module):
    """A 3D U-Net: ``len(features)`` levels, max-pooling down, transposed convolutions up.

    Args:
        in_channels: input contrasts.
        out_channels: classes (logits are returned; apply softmax for probabilities).
        features: channels at each level, finest first, e.g. ``(8, 16, 32, 64)``.
        norm: ``"instance"``, ``"batch"`` or ``"none"``.
        residual: residual connections inside each block.

    Spatial sizes must be divisible by ``2 ** (len(features) - 1)``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        features: tuple[int, ...] = (8, 16, 32, 64),
        norm: str = "instance",
        residual: bool = False,
    ) -> None:
        super().__init__()
        if norm not in NORMALISATIONS:
            raise ValueError(f"norm must be one of {sorted(NORMALISATIONS)}, not {norm!r}")
        if len(features) < 2:
            raise ValueError("a U-Net needs at least two levels")
        self.divisor = 2 ** (len(features) - 1)
        self.down = nn.ModuleList()
        channels = in_channels
        for width in features:
            self.down.append(ConvBlock(channels, width, norm, residual))
            channels = width
        self.pool = nn.MaxPool3d(2)
        self.upsample = nn.ModuleList()
        self.up = nn.ModuleList()
        for coarse, fine in zip(features[:0:-1], features[-2::-1], strict=True):
            self.upsample.append(nn.ConvTranspose3d(coarse, fine, 2, stride=2))
            self.up.append(ConvBlock(2 * fine, fine, norm, residual))
        self.head = nn.Conv3d(features[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(size % self.divisor for size in x.shape[2:]):
            raise ValueError(f"spatial size {tuple(x.shape[2:])} not divisible by {self.divisor}")
        skips = []
        for index, block in enumerate(self.down):
            x = block(x if index == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for upsample, block in zip(self.upsample, self.up, strict=True):
            x = block(torch.cat([upsample(x), skips.pop()], dim=1))
        return self.head(x)


class UNet3DEnsemble(nn.Module):
    """Several U-Nets of one architecture whose softmax probabilities are averaged, as nnU-Net
    ensembles its folds' models.

    The output is the log of the mean probabilities, so that a softmax of it (what inference
    applies to any network's logits) gives the mean probabilities themselves.

    Args:
        members: how many U-Nets.
        **unet_args: the arguments of each :class:`UNet3D`.
    """

    def __init__(self, members: int = 2, **unet_args) -> None:
        super().__init__()
        if members < 2:
            raise ValueError("an ensemble needs at least two members")
        self.members = nn.ModuleList(UNet3D(**unet_args) for _ in range(members))
        self.divisor = self.members[0].divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probabilities = torch.stack(
            [torch.softmax(member(x).float(), dim=1) for member in self.members]
        ).mean(dim=0)
        return probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny).log()


class TensorNet(nn.Module):
    """A small fully convolutional network that corrects a projected diffusion tensor.

    It reads ``in_channels`` maps (the first six: the tensor projected from the acquired
    directions, see ``tensor_features``; the last: the brain mask), looks at a neighbourhood of
    ``2 * context_layers + 1`` voxels through 3x3x3 convolutions, and returns the projected
    tensor plus a learned correction, zero outside the mask. Any spatial size works.

    Args:
        in_channels: input maps.
        out_channels: tensor elements (6).
        features: channels of every hidden layer.
        context_layers: 3x3x3 convolutions before the voxel-wise (1x1x1) ones.
        voxel_layers: hidden 1x1x1 convolutions.
    """

    def __init__(
        self,
        in_channels: int = 15,
        out_channels: int = 6,
        features: int = 32,
        context_layers: int = 2,
        voxel_layers: int = 2,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for index in range(context_layers + voxel_layers):
            kernel = 3 if index < context_layers else 1
            layers += [nn.Conv3d(channels, features, kernel, padding=kernel // 2), nn.GELU()]
            channels = features
        layers.append(nn.Conv3d(channels, out_channels, 1))
        self.body = nn.Sequential(*layers)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = x[:, -1:]
        return (x[:, : self.out_channels] + self.body(x)) * mask


class PerfusionNet(nn.Module):
    """A small 2D U-Net that denoises an ASL perfusion (difference) slice.

    It reads ``in_channels`` maps of a slice (see ``asl_enhancement``: the slice's dm and its
    neighbours', smoothed dm, M0, signal level, 1/sqrt(k); the last: the brain mask) and
    returns the map of channel ``residual_channel`` plus a learned correction, zero outside
    the mask. Levels:
    two 3x3 convolutions (LeakyReLU) each, average-pooling down, bilinear upsampling up. Any
    in-plane size works (padded to a multiple of ``2 ** (len(features) - 1)``).

    Args:
        in_channels: input maps.
        out_channels: 1 (the denoised dm).
        features: channels at each level, finest first.
        residual_channel: the input channel the correction is added to.
    """

    def __init__(
        self,
        in_channels: int = 9,
        out_channels: int = 1,
        features: tuple[int, ...] = (32, 64, 96, 128),
        residual_channel: int = 3,
    ) -> None:
        super().__init__()
        self.divisor = 2 ** (len(features) - 1)
        self.residual_channel = residual_channel
        self.out_channels = out_channels

        def block(inputs: int, outputs: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(inputs, outputs, 3, padding=1),
                nn.LeakyReLU(0.01, inplace=True),
                nn.Conv2d(outputs, outputs, 3, padding=1),
                nn.LeakyReLU(0.01, inplace=True),
            )

        channels = [in_channels, *features]
        self.down = nn.ModuleList(
            block(a, b) for a, b in zip(channels[:-1], channels[1:], strict=True)
        )
        levels = zip(features[:0:-1], features[-2::-1], strict=True)
        self.up = nn.ModuleList(block(coarse + fine, fine) for coarse, fine in levels)
        self.head = nn.Conv2d(features[0], out_channels, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % self.divisor, -width % self.divisor
        padded = nn.functional.pad(x, (0, pad_w, 0, pad_h))
        skips = []
        for index, block in enumerate(self.down):
            padded = block(padded if index == 0 else nn.functional.avg_pool2d(padded, 2))
            skips.append(padded)
        padded = skips.pop()
        for block in self.up:
            skip = skips.pop()
            upsampled = nn.functional.interpolate(
                padded, size=skip.shape[-2:], mode="bilinear", align_corners=False
            )
            padded = block(torch.cat([upsampled, skip], dim=1))
        correction = self.head(padded)[..., :height, :width]
        base = x[:, self.residual_channel : self.residual_channel + self.out_channels]
        return (base + correction) * x[:, -1:]
