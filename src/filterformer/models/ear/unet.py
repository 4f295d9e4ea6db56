"""The reconstruction U-Net of EAR and FADeR (FADeR §4.1, "Implementation details").

D levels (D = ``len(widths)``), every convolution but the last 3 x 3 -> BatchNorm ->
LeakyReLU; the deepest level has no skip, levels 1..D-1 each pass one skip to the decoder,
whose features an optional mask multiplies first (FADeR eq. 4). Two layouts
(``UNET_LAYOUTS``):

- ``template`` (:class:`UNet`), the layout of the EAR author's public RIAD re-implementation
  (YeongHyeon/RIAD-PyTorch, ``neuralnet/aesc_l2.py``), extended from its four levels to D.
  Encoder level d < D: conv, conv, *skip taken here*, conv with stride 2, so the skip of
  level 1 is at full resolution; level D: conv, conv. Decoder level d: x2 nearest upsampling
  and a conv to ``widths[d-1]`` channels, concatenation with the skip, two convs. A 3 x 3
  convolution gives the image. Input: a multiple of 2^(D-1).
- ``strided`` (:class:`StridedUNet`), our first reading of §4.1: every encoder block ends with
  its stride-2 conv and passes its skip after it, so the shallowest skip is at H / 2 and none
  runs at full resolution. Decoder block d: x2 nearest upsampling, three convs. A 1 x 1
  convolution gives the image. Input: a multiple of 2^D.

The last convolution is mapped into [0, 1] by ``output`` (``UNET_OUTPUTS``): the template's
``clamp`` (no gradient where the output lies outside [0, 1]) or a ``sigmoid`` (ours).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from filterformer.errors import ConfigError

UNET_LAYOUTS = ("template", "strided")
UNET_OUTPUTS = ("sigmoid", "clamp")


def to_unit_range(output: torch.Tensor, rule: str) -> torch.Tensor:
    """The last convolution's output in [0, 1] by ``rule`` (one of :data:`UNET_OUTPUTS`)."""
    return torch.sigmoid(output) if rule == "sigmoid" else output.clamp(0.0, 1.0)


def conv_bn_act(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """conv 3 x 3 (padding 1, no bias: BatchNorm follows and cancels it) -> BatchNorm ->
    LeakyReLU (slope 0.01)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.LeakyReLU(),
    )


def _check(widths: Sequence[int], output: str) -> tuple[int, ...]:
    widths = tuple(int(w) for w in widths)
    if len(widths) < 2 or min(widths) < 1:
        raise ConfigError(
            f"model.widths {list(widths)} must list at least two positive channel counts "
            "(one per U-Net level)"
        )
    if output not in UNET_OUTPUTS:
        raise ConfigError(f"unknown model.unet_output {output!r}; valid: {', '.join(UNET_OUTPUTS)}")
    return widths


def _masked(skip: torch.Tensor, masks: Sequence[torch.Tensor] | None, level: int) -> torch.Tensor:
    return skip if masks is None else skip * masks[level]


class EncoderLevel(nn.Module):
    """Template encoder level: conv, conv (the skip), then a stride-2 conv unless deepest."""

    def __init__(self, in_channels: int, out_channels: int, down: bool) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_act(in_channels, out_channels), conv_bn_act(out_channels, out_channels)
        )
        self.down = conv_bn_act(out_channels, out_channels, stride=2) if down else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the skip, the input of the next level)."""
        skip = self.features(x)
        return skip, skip if self.down is None else self.down(skip)


class DecoderLevel(nn.Module):
    """Template decoder level: x2 nearest + conv, concatenation with the skip, two convs."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"), conv_bn_act(in_channels, out_channels)
        )
        self.fuse = nn.Sequential(
            conv_bn_act(2 * out_channels, out_channels), conv_bn_act(out_channels, out_channels)
        )

    def forward(self, y: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.up(y), skip], dim=1))


class UNet(nn.Module):
    """The ``template`` layout: skips taken before each level's stride (module docstring).

    Args:
        widths: channels of levels 1..D; decoder level d outputs ``widths[d-1]``.
        output: "sigmoid" or "clamp" into [0, 1].
        channels: image channels in and out.
    """

    def __init__(
        self,
        widths: Sequence[int] = (32, 64, 128, 256, 512),
        output: str = "clamp",
        channels: int = 3,
    ) -> None:
        super().__init__()
        self.widths, self.output = _check(widths, output), output
        deepest = len(self.widths) - 1
        ins = (channels, *self.widths[:-1])
        self.encoder = nn.ModuleList(
            EncoderLevel(i, o, down=d < deepest)
            for d, (i, o) in enumerate(zip(ins, self.widths, strict=True))
        )
        self.decoder = nn.ModuleList(
            DecoderLevel(self.widths[d + 1], self.widths[d]) for d in range(deepest)
        )
        self.head = nn.Conv2d(self.widths[0], channels, 3, padding=1)

    @property
    def levels(self) -> int:
        """D, the number of levels."""
        return len(self.widths)

    @property
    def multiple(self) -> int:
        """What the input height and width must be a multiple of: 2^(D-1)."""
        return 2 ** (self.levels - 1)

    def skip_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """(h, w) of the skips of levels 1..D-1 for an H x W input: H / 2^(d-1)."""
        return [(height >> d, width >> d) for d in range(self.levels - 1)]

    def forward(
        self, images: torch.Tensor, skip_masks: Sequence[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """B x C x H x W (multiples of 2^(D-1)) -> reconstruction in [0, 1].

        ``skip_masks``: one B x 1 x h x w tensor per skip level 1..D-1 (``skip_sizes``),
        multiplied into that level's encoder features before the concatenation.
        """
        skips, x = [], images
        for level in self.encoder:
            skip, x = level(x)
            skips.append(skip)
        for level in reversed(range(self.levels - 1)):
            x = self.decoder[level](x, _masked(skips[level], skip_masks, level))
        return to_unit_range(self.head(x), self.output)


def strided_encoder_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Three conv-BN-LeakyReLU layers, the third with stride 2."""
    return nn.Sequential(
        conv_bn_act(in_channels, out_channels),
        conv_bn_act(out_channels, out_channels),
        conv_bn_act(out_channels, out_channels, stride=2),
    )


def strided_decoder_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Nearest x2 upsampling, then three conv-BN-LeakyReLU layers."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        conv_bn_act(in_channels, out_channels),
        conv_bn_act(out_channels, out_channels),
        conv_bn_act(out_channels, out_channels),
    )


class StridedUNet(nn.Module):
    """The ``strided`` layout: skips taken after each block's stride (module docstring).

    Args:
        widths: channels of encoder blocks 1..D; decoder block d outputs ``widths[d-2]``
            (block 1: ``widths[0]``).
        output: "sigmoid" or "clamp" into [0, 1].
        channels: image channels in and out.
    """

    def __init__(
        self,
        widths: Sequence[int] = (16, 32, 64, 128, 256),
        output: str = "sigmoid",
        channels: int = 3,
    ) -> None:
        super().__init__()
        self.widths = widths = _check(widths, output)
        self.output = output
        ins = (channels, *widths[:-1])
        self.encoder = nn.ModuleList(
            strided_encoder_block(i, o) for i, o in zip(ins, widths, strict=True)
        )
        outs = (widths[0], *widths[:-1])
        decoder_ins = [2 * w for w in widths[:-1]] + [widths[-1]]
        self.decoder = nn.ModuleList(
            strided_decoder_block(i, o) for i, o in zip(decoder_ins, outs, strict=True)
        )
        self.head = nn.Conv2d(widths[0], channels, 1)

    @property
    def levels(self) -> int:
        """D, the number of levels."""
        return len(self.widths)

    @property
    def multiple(self) -> int:
        """What the input height and width must be a multiple of: 2^D."""
        return 2**self.levels

    def skip_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """(h, w) of the skip features of levels 1..D-1 for an H x W input: H / 2^d."""
        return [(height >> d, width >> d) for d in range(1, self.levels)]

    def forward(
        self, images: torch.Tensor, skip_masks: Sequence[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """B x C x H x W (multiples of 2^D) -> reconstruction in [0, 1]; ``skip_masks`` as
        :meth:`UNet.forward`."""
        skips = []
        x = images
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        y = self.decoder[-1](skips[-1])
        for level in reversed(range(self.levels - 1)):
            y = self.decoder[level](torch.cat([y, _masked(skips[level], skip_masks, level)], 1))
        return to_unit_range(self.head(y), self.output)


def build_unet(layout: str, widths: Sequence[int], output: str = "clamp") -> UNet | StridedUNet:
    """The U-Net of ``layout`` (one of :data:`UNET_LAYOUTS`) with ``widths`` and ``output``."""
    if layout == "template":
        return UNet(widths, output)
    if layout == "strided":
        return StridedUNet(widths, output)
    raise ConfigError(f"unknown model.unet_layout {layout!r}; valid: {', '.join(UNET_LAYOUTS)}")
