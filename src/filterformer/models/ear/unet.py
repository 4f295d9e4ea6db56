"""The reconstruction U-Net of EAR and FADeR (FADeR §4.1, "Implementation details").

D levels. Encoder block d (1..D): three times conv 3 x 3 -> BatchNorm -> LeakyReLU, the third
with stride 2, so it outputs ``widths[d-1]`` channels at H / 2^d. Decoder block d: a nearest
x2 upsampling, then three times conv 3 x 3 -> BatchNorm -> LeakyReLU, so it outputs at
H / 2^(d-1). The deepest block has no skip; for d = 1..D-1 decoder block d reads the
concatenation of decoder block d+1 and encoder block d, whose features an optional mask
multiplies first (FADeR eq. 4). A 1 x 1 convolution and a sigmoid give the image in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from filterformer.errors import ConfigError


def conv_bn_act(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """conv 3 x 3 (padding 1, no bias: BatchNorm follows) -> BatchNorm -> LeakyReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.LeakyReLU(),
    )


def encoder_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Three conv-BN-LeakyReLU layers, the third with stride 2."""
    return nn.Sequential(
        conv_bn_act(in_channels, out_channels),
        conv_bn_act(out_channels, out_channels),
        conv_bn_act(out_channels, out_channels, stride=2),
    )


def decoder_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Nearest x2 upsampling, then three conv-BN-LeakyReLU layers."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        conv_bn_act(in_channels, out_channels),
        conv_bn_act(out_channels, out_channels),
        conv_bn_act(out_channels, out_channels),
    )


class UNet(nn.Module):
    """U-Net with ``len(widths)`` levels and skips at every level but the deepest.

    Args:
        widths: channels of encoder blocks 1..D; decoder block d outputs ``widths[d-2]``
            (block 1: ``widths[0]``).
        channels: image channels in and out.
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 128, 256), channels: int = 3) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2 or min(widths) < 1:
            raise ConfigError(
                f"model.widths {list(widths)} must list at least two positive channel counts "
                "(one per U-Net level)"
            )
        self.widths = widths
        ins = (channels, *widths[:-1])
        self.encoder = nn.ModuleList(encoder_block(i, o) for i, o in zip(ins, widths, strict=True))
        outs = (widths[0], *widths[:-1])
        decoder_ins = [2 * w for w in widths[:-1]] + [widths[-1]]
        self.decoder = nn.ModuleList(
            decoder_block(i, o) for i, o in zip(decoder_ins, outs, strict=True)
        )
        self.head = nn.Conv2d(widths[0], channels, 1)

    @property
    def levels(self) -> int:
        """D, the number of levels (the input must be a multiple of 2^D)."""
        return len(self.widths)

    def skip_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """(h, w) of the skip features of levels 1..D-1 for an H x W input."""
        return [(height >> d, width >> d) for d in range(1, self.levels)]

    def forward(
        self, images: torch.Tensor, skip_masks: Sequence[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """B x C x H x W (multiples of 2^D) -> reconstruction in [0, 1].

        ``skip_masks``: one B x 1 x h x w tensor per skip level 1..D-1 (``skip_sizes``),
        multiplied into that level's encoder features before the concatenation.
        """
        skips = []
        x = images
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        y = self.decoder[-1](skips[-1])
        for level in reversed(range(self.levels - 1)):
            skip = skips[level] if skip_masks is None else skips[level] * skip_masks[level]
            y = self.decoder[level](torch.cat([y, skip], dim=1))
        return torch.sigmoid(self.head(y))
