"""CPR's frozen backbones: two feature scales (a fine one and a coarser one) per image.

- :class:`DenseNetFeatures`: a timm DenseNet cut after ``denseblock2``; its ``denseblock1``
  (stride 4) and ``denseblock2`` (stride 8) outputs are the scales, as in CPR (Li et al.,
  "Target before Shooting", IEEE TIP 2024): 256 and 512 channels for DenseNet-201. Weights
  come from a local file, exactly like the DINOv2 encoder (:mod:`filterformer.models.encoder`).
  ``tiny_densenet`` is the same network shrunk, with random weights, for tests and the demo.
- :class:`ViTScales`: the run's DINOv2 encoder with two taps, each tap's token grid a scale.

Both return a list of two B x C x h x w tensors and expose ``channels`` and ``strides``.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from filterformer.errors import CheckpointError, ConfigError
from filterformer.models.encoder import (
    DinoEncoder,
    download_advice,
    load_weights_file,
    require_reachable_hub,
    require_weights_file,
)


@dataclass(frozen=True)
class DenseNetSpec:
    """One DenseNet variant: growth rate, dense layers per block, and its weights files."""

    growth_rate: int
    block_config: tuple[int, ...]
    arch: str | None
    """timm name of the pretrained model (None: random weights only)."""
    file: str | None
    """What to put into weights/ (the error message names it)."""
    strides: tuple[int, int] = (4, 8)
    """Strides of the denseblock1 and denseblock2 outputs."""


DENSENETS: dict[str, DenseNetSpec] = {
    "densenet201": DenseNetSpec(
        growth_rate=32,
        block_config=(6, 12, 48, 32),
        arch="densenet201.tv_in1k",
        file="densenet201.safetensors (timm's densenet201.tv_in1k) or torchvision's "
        "densenet201-c1103571.pth",
    ),
    # DenseNet-201's layout shrunk for tests and the demo (random weights, no file).
    "tiny_densenet": DenseNetSpec(growth_rate=8, block_config=(2, 2), arch=None, file=None),
}

KNOWN_LAYOUTS = {
    (32, (6, 12, 24, 16)): "densenet121",
    (32, (6, 12, 32, 32)): "densenet169",
    (32, (6, 12, 48, 32)): "densenet201",
    (48, (6, 12, 36, 24)): "densenet161",
}
"""(growth rate, layers per block) of torchvision's / timm's DenseNets, to name a wrong file."""

KEPT = ("conv0", "norm0", "pool0", "denseblock1", "transition1", "denseblock2")
"""The modules of ``features`` up to ``denseblock2``; the rest is cut away."""

_TORCHVISION_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\..*)$")


def _timm_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision's old DenseNet names (``norm.1``) -> timm's (``norm1``); drop ``module.``."""
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        match = _TORCHVISION_KEY.match(key)
        out[match.group(1) + match.group(2) if match else key] = value
    return out


def densenet_layout(state_dict: dict[str, torch.Tensor]) -> tuple[int, tuple[int, ...]] | None:
    """(growth rate, dense layers per block) of DenseNet weights, None if they are no DenseNet."""
    conv = state_dict.get("features.denseblock1.denselayer1.conv2.weight")
    if conv is None:
        return None
    pattern = re.compile(r"features\.denseblock(\d+)\.denselayer(\d+)\.")
    layers: dict[int, int] = {}
    for key in state_dict:
        if match := pattern.match(key):
            block, layer = int(match.group(1)), int(match.group(2))
            layers[block] = max(layers.get(block, 0), layer)
    return int(conv.shape[0]), tuple(layers[b] for b in sorted(layers))


def check_densenet_source(
    variant: str, weights: str | Path | None, pretrained: bool, allow_download: bool
) -> None:
    """Refuse, before any work, DenseNet weights that cannot be had (a missing file, or a
    download that is not allowed); without weights and ``pretrained`` the weights are random."""
    if variant not in DENSENETS:
        raise ConfigError(f"unknown DenseNet variant {variant!r}; valid: {', '.join(DENSENETS)}")
    spec = DENSENETS[variant]
    if weights is not None:
        require_weights_file(weights, spec.file or "it")
        return
    if pretrained and spec.arch is None:
        raise ConfigError(f"{variant} has no pretrained weights; set encoder.pretrained=false")
    if pretrained and not allow_download:
        raise CheckpointError(
            f"no local weights for {variant}: put {spec.file} into weights/ and set "
            f"encoder.weights=weights/<file>{download_advice()}. See weights/README.md."
        )
    if pretrained:
        require_reachable_hub(variant)


class DenseNetFeatures(nn.Module):
    """Frozen DenseNet to ``denseblock2``: [denseblock1 (stride 4), denseblock2 (stride 8)].

    Args:
        variant: a key of :data:`DENSENETS`.
        weights: local timm ``.safetensors`` or torchvision ``.pth`` file.
        pretrained: without ``weights``, False gives random weights (tests, demo), True the
            timm hub weights, fetched only when ``allow_download`` is True.
        allow_download: permit the hub download for ``pretrained=True`` without a file.
    """

    def __init__(
        self,
        variant: str = "densenet201",
        weights: str | Path | None = None,
        pretrained: bool = False,
        allow_download: bool = False,
    ) -> None:
        super().__init__()
        check_densenet_source(variant, weights, pretrained, allow_download)
        self.variant = variant
        spec = DENSENETS[variant]
        network = self._build(spec, weights, pretrained, allow_download)
        self.features = nn.Sequential(OrderedDict((n, getattr(network.features, n)) for n in KEPT))
        if weights is not None:
            self._load(Path(weights), spec)
        self.requires_grad_(False)
        self.eval()
        self.channels = (
            _block_out(self.features.denseblock1),
            _block_out(self.features.denseblock2),
        )
        self.strides = spec.strides

    def _build(
        self, spec: DenseNetSpec, weights: str | Path | None, pretrained: bool, download: bool
    ) -> nn.Module:
        if weights is None and pretrained:
            return timm.create_model(spec.arch, pretrained=True)
        return timm.models.densenet.DenseNet(
            growth_rate=spec.growth_rate, block_config=spec.block_config
        )

    def _load(self, path: Path, spec: DenseNetSpec) -> None:
        """Load the kept modules' weights from ``path``, refusing another DenseNet variant."""
        state_dict = _timm_keys(load_weights_file(path))
        layout = densenet_layout(state_dict)
        if layout is None:
            raise CheckpointError(
                f"{path} has no 'features.denseblock1.denselayer1.conv2.weight': it is not a "
                f"DenseNet checkpoint (expected {spec.file or 'a DenseNet file'})."
            )
        wanted = (spec.growth_rate, spec.block_config)
        if layout != wanted:
            found = KNOWN_LAYOUTS.get(layout, "an unknown DenseNet")
            raise CheckpointError(
                f"{path} looks like {found} (growth rate {layout[0]}, blocks {list(layout[1])}), "
                f"but the config asks for {self.variant}. Set encoder.variant to match the file "
                f"or point encoder.weights at the {self.variant} file."
            )
        kept = {k: v for k, v in state_dict.items() if k.split(".")[:2][-1] in KEPT}
        try:
            self.load_state_dict(kept, strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"{path} does not fit {self.variant}: {err}") from err

    def train(self, mode: bool = True) -> DenseNetFeatures:
        """Stay in eval mode (frozen BatchNorm statistics) whatever the parent module asks."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Normalised B x 3 x H x W images -> [B x C1 x H/4 x W/4, B x C2 x H/8 x W/8]."""
        net = self.features
        fine = net.denseblock1(net.pool0(net.norm0(net.conv0(images))))
        return [fine, net.denseblock2(net.transition1(fine))]


def _block_out(block: nn.Module) -> int:
    """Output channels of a dense block: its input plus every layer's growth."""
    layers = list(block.children())
    first = layers[0].conv1.in_channels
    return first + sum(layer.conv2.out_channels for layer in layers)


class ViTScales(nn.Module):
    """The run's frozen DINOv2 encoder as CPR's two scales: its two taps as token grids.

    Both scales share the patch grid (stride = patch size); the second tap is the deeper one.
    """

    def __init__(self, encoder: DinoEncoder) -> None:
        super().__init__()
        if len(encoder.taps) != 2:
            raise ConfigError(
                f"model=cpr on a DINOv2 encoder takes its two taps as the two scales, but "
                f"encoder.taps is {list(encoder.taps)}; set two block indices, e.g. "
                "encoder.taps=[7,11] (preset=cpr_dinov2 does)"
            )
        self.vit = encoder
        self.channels = (encoder.embed_dim, encoder.embed_dim)
        self.strides = (encoder.patch_size, encoder.patch_size)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Normalised B x 3 x H x W images -> two B x C x H/p x W/p token grids."""
        height, width = self.vit.grid_size(tuple(images.shape[-2:]))
        return [
            tokens.transpose(1, 2).reshape(tokens.shape[0], -1, height, width)
            for tokens in self.vit(images)
        ]


def as_scales(encoder: nn.Module) -> DenseNetFeatures | ViTScales:
    """The two-scale backbone CPR runs on, from the run's encoder."""
    if isinstance(encoder, DenseNetFeatures):
        return encoder
    if isinstance(encoder, DinoEncoder):
        return ViTScales(encoder)
    raise ConfigError(f"model=cpr cannot use a {type(encoder).__name__} as its backbone")
