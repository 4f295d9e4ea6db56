"""The frozen DINOv2-with-registers encoder: a timm ViT that returns the patch tokens of its taps.

Only the blocks up to the last tap exist and run (later ones are pruned after the weights are
loaded); cls and register tokens are dropped from every tap. Inputs may be rectangular: any
height and width that are multiples of the patch size give an h x w token grid.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn

from filterformer.errors import CheckpointError, ConfigError
from filterformer.io import file_sha256


@dataclass(frozen=True)
class EncoderSpec:
    """One encoder variant: the timm architecture, its shape and the blocks INP-Former taps."""

    arch: str
    embed_dim: int
    num_heads: int
    depth: int
    taps: tuple[int, ...]
    meta_file: str | None  # name of Meta's released checkpoint (None: no pretrained weights)
    random_init: tuple[tuple[str, object], ...] = ()
    """timm arguments for a random-weights-only variant (loaded weights set these layers)."""
    hub_tag: str = "lvd142m"
    """timm's pretrained tag of ``arch`` (its hub copy of the weights)."""


# Mirrors configs/encoder/*.yaml (INP-Former code: `load` in models/vit_encoder.py, the sizes
# and target layers in INP_Former_Single_Class.py); the configs are the source of `taps`.
ENCODERS: dict[str, EncoderSpec] = {
    "dinov2_vits14_reg": EncoderSpec(
        arch="vit_small_patch14_reg4_dinov2",
        embed_dim=384,
        num_heads=6,
        depth=12,
        taps=tuple(range(2, 10)),
        meta_file="dinov2_vits14_reg4_pretrain.pth",
    ),
    "dinov2_vitb14_reg": EncoderSpec(
        arch="vit_base_patch14_reg4_dinov2",
        embed_dim=768,
        num_heads=12,
        depth=12,
        taps=tuple(range(2, 10)),
        meta_file="dinov2_vitb14_reg4_pretrain.pth",
    ),
    "dinov2_vitl14_reg": EncoderSpec(
        arch="vit_large_patch14_reg4_dinov2",
        embed_dim=1024,
        num_heads=16,
        depth=24,
        taps=tuple(range(4, 19, 2)),
        meta_file="dinov2_vitl14_reg4_pretrain.pth",
    ),
    # The ViT-S/14-reg architecture shrunk for tests and the demo (random weights only).
    # DINOv2's LayerScale starts at 1e-5 and timm's default Linear init (std 0.02) is tiny:
    # random blocks would then add nothing and all taps would equal the patch embedding.
    # LayerScale 1 and timm's "jax" (Xavier) init make every block change the tokens.
    "tiny_random": EncoderSpec(
        arch="vit_small_patch14_reg4_dinov2",
        embed_dim=64,
        num_heads=2,
        depth=10,
        taps=tuple(range(2, 10)),
        meta_file=None,
        random_init=(("init_values", 1.0), ("weight_init", "jax")),
    ),
    # DINO ViT-S/8 (Caron et al., "Emerging Properties in Self-Supervised Vision Transformers"):
    # EAR / FADeR read its last block's [CLS] attention (configs/model/ear.yaml); tap = last block.
    "dino_vits8": EncoderSpec(
        arch="vit_small_patch8_224",
        embed_dim=384,
        num_heads=6,
        depth=12,
        taps=(11,),
        meta_file="dino_deitsmall8_pretrain.pth",
        hub_tag="dino",
    ),
    # The ViT-S/8 architecture shrunk for tests (random weights only; "jax" init so that the
    # attention is not near uniform).
    "tiny_random_vits8": EncoderSpec(
        arch="vit_small_patch8_224",
        embed_dim=64,
        num_heads=2,
        depth=3,
        taps=(2,),
        meta_file=None,
        random_init=(("weight_init", "jax"),),
    ),
}


def weights_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a weights file (for the run metadata)."""
    return file_sha256(path)


def official_pos_embed(
    table: torch.Tensor, old_hw: tuple[int, int], new_hw: tuple[int, int]
) -> torch.Tensor:
    """Resample a 1 x (H0*W0) x C patch position table the way the official DINOv2 code does.

    Bicubic with scale factor (new + 0.1) / old per axis and no antialiasing (DINOv2's
    ``interpolate_pos_encoding`` with the ``interpolate_offset=0.1`` and
    ``interpolate_antialias=False`` that ``load`` in the INP-Former code's
    ``models/vit_encoder.py`` sets); an unchanged grid returns the table, as there. The cls
    position needs no handling: timm's loader has folded it into `cls_token`, and registers
    never get a position.
    """
    if tuple(new_hw) == tuple(old_hw):
        return table
    channels = table.shape[-1]
    grid = table.reshape(1, *old_hw, channels).permute(0, 3, 1, 2).float()
    scale = ((new_hw[0] + 0.1) / old_hw[0], (new_hw[1] + 0.1) / old_hw[1])
    grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=False)
    return grid.permute(0, 2, 3, 1).reshape(1, -1, channels).to(table.dtype)


def vit_shape(state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> tuple[int, int] | None:
    """(embed dim, number of blocks) of ViT weights whose keys start with ``prefix``.

    None when there is no patch embedding, i.e. the weights are no ViT at all.
    """
    patch = state_dict.get(f"{prefix}patch_embed.proj.weight")
    if patch is None:
        return None
    pattern = re.compile(rf"{re.escape(prefix)}blocks\.(\d+)\.")
    blocks = {int(m.group(1)) for key in state_dict if (m := pattern.match(key))}
    return int(patch.shape[0]), max(blocks) + 1 if blocks else 0


def variant_of(shape: tuple[int, int]) -> str | None:
    """The encoder variant with this (embed dim, number of blocks), if any."""
    return next((n for n, s in ENCODERS.items() if (s.embed_dim, s.depth) == shape), None)


def _check_variant(state_dict: dict[str, torch.Tensor], path: Path, variant: str) -> None:
    """Refuse a weights file whose embedding size or depth belongs to another variant."""
    shape = vit_shape(state_dict)
    if shape is None:
        raise CheckpointError(
            f"{path} has no 'patch_embed.proj.weight': it is not a DINOv2 ViT checkpoint "
            f"(expected Meta's .pth or timm's .safetensors for {variant})."
        )
    spec = ENCODERS[variant]
    if shape == (spec.embed_dim, spec.depth):
        return
    raise CheckpointError(
        f"{path} looks like {variant_of(shape) or 'an unknown ViT'} (embed dim {shape[0]}, "
        f"{shape[1]} blocks), but the config asks for {variant} (embed dim {spec.embed_dim}, "
        f"{spec.depth} blocks). Set encoder.variant to match the file or point encoder.weights "
        f"at the {variant} file."
    )


def encoder_spec(variant: str) -> EncoderSpec:
    """The :class:`EncoderSpec` of ``variant``, refusing an unknown name."""
    if variant not in ENCODERS:
        raise ConfigError(f"unknown encoder variant {variant!r}; valid: {', '.join(ENCODERS)}")
    return ENCODERS[variant]


def check_weights_source(
    variant: str, weights: str | Path | None, pretrained: bool, allow_download: bool
) -> None:
    """Refuse, before any work, an encoder whose weights cannot be had.

    A ``weights`` file must exist; without one, ``pretrained`` needs a variant with released
    weights and permission to download them (never silently).
    """
    spec = encoder_spec(variant)
    if weights is not None:
        require_weights_file(weights)
        return
    if not pretrained:
        return
    if spec.meta_file is None:
        raise ConfigError(
            f"encoder variant {variant!r} has no pretrained weights; set "
            f"encoder.pretrained=false or give encoder.weights"
        )
    if not allow_download:
        raise CheckpointError(
            f"no local weights for {variant}: {_weights_advice(variant)}{download_advice()}."
        )
    require_reachable_hub(variant)


HUB_HOST = ("huggingface.co", 443)
"""Where timm downloads pretrained weights from."""
HUB_TIMEOUT_S = 3.0


@functools.cache
def hub_reachable() -> bool:
    """Whether the model hub answers, checked once per process (False with HF_HUB_OFFLINE)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection(HUB_HOST, timeout=HUB_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def download_advice() -> str:
    """The end of a missing-weights message: offer the download only when it could work."""
    if hub_reachable():
        return ", or set encoder.allow_download=true"
    return f" ({HUB_HOST[0]} is not reachable from here, so downloading them is no option)"


def require_reachable_hub(what: str) -> None:
    """Refuse ``encoder.allow_download=true`` at once when the hub cannot be reached (instead
    of a minute of download retries)."""
    if not hub_reachable():
        raise CheckpointError(
            f"encoder.allow_download=true, but {HUB_HOST[0]} is not reachable from here "
            f"(checked once), so the weights of {what} cannot be downloaded: put the weights "
            "file into weights/ and set encoder.weights (see weights/README.md)."
        )


def require_weights_file(weights: str | Path, name: str = "it") -> None:
    """Refuse an ``encoder.weights`` path that is no file (``name``: the file to put there)."""
    if not Path(weights).is_file():
        raise CheckpointError(
            f"encoder weights file {weights} does not exist; put {name} there or set "
            "encoder.weights (see weights/README.md)."
        )


def _weights_advice(variant: str) -> str:
    """How to give ``variant`` a local weights file (part of an error message)."""
    spec = ENCODERS[variant]
    return (
        f"put Meta's {spec.meta_file} (or timm's {spec.arch}.{spec.hub_tag} model.safetensors) "
        f"into weights/ and set encoder.weights=weights/{spec.meta_file} (see weights/README.md)"
    )


def _first_line(err: Exception) -> str:
    """The first non-empty line of an exception's message (its type name if it has none)."""
    return next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)


def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a Meta `.pth` or a timm `.safetensors` file.

    A file that is neither (truncated, another format, not a checkpoint at all) is refused
    with a :class:`CheckpointError` naming it, never with the unpickler's traceback.
    """
    loader = "safetensors" if path.suffix == ".safetensors" else "torch.load"
    try:
        if loader == "safetensors":
            return load_file(str(path))
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip, safetensors and runtime errors alike
        raise CheckpointError(
            f"{path} is not a readable weights file ({loader}: {_first_line(err)}); point "
            "encoder.weights at Meta's .pth or timm's .safetensors file of the encoder "
            "(see weights/README.md)."
        ) from None
    if not isinstance(state_dict, dict):
        raise CheckpointError(
            f"{path} does not hold a state dict (found {type(state_dict).__name__})."
        )
    return state_dict


class DinoEncoder(nn.Module):
    """Frozen DINOv2-reg ViT returning the tapped blocks' patch tokens (B x N x C each).

    Args:
        variant: a key of ENCODERS.
        taps: increasing 0-based block indices whose raw residual-stream outputs (before
            the final norm) are returned; default: the variant's INP-Former taps.
        weights: local Meta `.pth` or timm `.safetensors` file; overrides `pretrained`.
        pretrained: without `weights`, False gives random weights (tests), True the timm hub
            weights, which are only fetched when `allow_download` is True.
        allow_download: permit the hub download for `pretrained=True` without a file.
        official_pos_interp: resample position embeddings like the official DINOv2 code
            (parity with INP-Former) instead of timm's antialiased resample.
        pretrain_img_size: resolution of the stored position table (518 -> 37 x 37 grid).
    """

    def __init__(
        self,
        variant: str = "dinov2_vitb14_reg",
        taps: Sequence[int] | None = None,
        weights: str | Path | None = None,
        pretrained: bool = False,
        allow_download: bool = False,
        official_pos_interp: bool = False,
        pretrain_img_size: int = 518,
    ) -> None:
        super().__init__()
        spec = encoder_spec(variant)
        self.variant = variant
        self.taps = tuple(spec.taps if taps is None else taps)
        increasing = list(self.taps) == sorted(set(self.taps))
        if not (self.taps and increasing and 0 <= self.taps[0] and self.taps[-1] < spec.depth):
            raise ConfigError(
                f"encoder taps {list(self.taps)} must be increasing block indices in "
                f"0..{spec.depth - 1} for {variant}"
            )
        self.official_pos_interp = official_pos_interp
        self.vit = self._build(spec, weights, pretrained, allow_download, pretrain_img_size)
        self.vit.prune_intermediate_layers(list(self.taps), prune_norm=True, prune_head=True)
        self.vit.requires_grad_(False)
        self.vit.eval()
        self.embed_dim = spec.embed_dim
        self.num_heads = spec.num_heads
        self.patch_size = self.vit.patch_embed.patch_size[0]
        self.num_prefix_tokens = self.vit.num_prefix_tokens
        self._fixed_positions: torch.Tensor | None = None

    def _build(
        self,
        spec: EncoderSpec,
        weights: str | Path | None,
        pretrained: bool,
        allow_download: bool,
        img_size: int,
    ) -> nn.Module:
        shape = dict(embed_dim=spec.embed_dim, depth=spec.depth, num_heads=spec.num_heads)
        kwargs = dict(dynamic_img_size=True, img_size=img_size, num_classes=0, **shape)
        kwargs |= dict(spec.random_init)
        check_weights_source(self.variant, weights, pretrained, allow_download)
        if weights is None and pretrained:
            try:
                return timm.create_model(spec.arch, pretrained=True, **kwargs)
            except OSError as err:  # offline, hub or cache errors all derive from OSError
                raise CheckpointError(
                    f"could not download the {self.variant} weights ({_first_line(err)}); "
                    f"{_weights_advice(self.variant)}."
                ) from None
        if weights is None:
            return timm.create_model(spec.arch, pretrained=False, **kwargs)
        path = Path(weights)
        state_dict = load_weights_file(path)
        _check_variant(state_dict, path, self.variant)
        vit = timm.create_model(spec.arch, pretrained=False, **kwargs)
        try:
            vit.load_state_dict(checkpoint_filter_fn(state_dict, vit), strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"{path} does not fit {self.variant}: {err}") from err
        return vit

    def train(self, mode: bool = True) -> DinoEncoder:
        """Keep the frozen ViT in eval mode whatever the parent module asks."""
        super().train(mode)
        self.vit.eval()
        return self

    def grid_size(self, input_hw: tuple[int, int]) -> tuple[int, int]:
        """Token grid (h, w) for an input of height x width pixels (both multiples of the patch)."""
        height, width = input_hw
        p = self.patch_size
        if height % p or width % p:
            raise ConfigError(
                f"input size {height} x {width} is not a multiple of the patch size {p}; "
                f"use e.g. {height // p * p or p} x {width // p * p or p}"
            )
        return height // p, width // p

    def position_table(self, grid: tuple[int, int]) -> torch.Tensor:
        """The 1 x (h*w) x C positions this encoder adds to the patch tokens of an h x w grid.

        Resampled from the stored table as :meth:`forward` does: the official DINOv2 way, or
        timm's (antialiased bicubic). Every supported ViT keeps the cls position out of the
        table (timm's ``no_embed_class``), so the table holds patch positions only.
        """
        vit = self.vit
        if self.official_pos_interp:
            return official_pos_embed(vit.pos_embed, vit.patch_embed.grid_size, grid)
        if tuple(grid) == tuple(vit.patch_embed.grid_size):
            return vit.pos_embed
        return resample_abs_pos_embed(
            vit.pos_embed,
            new_size=list(grid),
            old_size=vit.patch_embed.grid_size,
            num_prefix_tokens=0,
        )

    @contextlib.contextmanager
    def fixed_positions(self, grid: tuple[int, int]) -> Iterator[None]:
        """Within the block, use the positions of ``grid`` computed once, as a constant.

        For exporting a graph of one input size: the resample then is no part of the graph
        (runtimes differ from torch in antialiased bicubic resizing), and the tokens are those
        :meth:`forward` computes. An input of another grid size is refused meanwhile.
        """
        self._fixed_positions = self.position_table(grid).detach().clone()
        try:
            yield
        finally:
            self._fixed_positions = None

    def _tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Patch-embed, add positions and prepend cls + register tokens: B x (5 + h*w) x C."""
        vit = self.vit
        patches = vit.patch_embed(images)  # B x h x w x C (dynamic_img_size)
        if self._fixed_positions is None and not self.official_pos_interp:
            return vit._pos_embed(patches)
        batch, h, w, channels = patches.shape
        pos = self._fixed_positions
        if pos is None:
            pos = self.position_table((h, w))
        elif pos.shape[1] != h * w:
            raise ConfigError(
                f"input grid {h} x {w} differs from the fixed positions' grid "
                f"({pos.shape[1]} tokens); use one input size inside fixed_positions()."
            )
        prefix = [vit.cls_token.expand(batch, -1, -1), vit.reg_token.expand(batch, -1, -1)]
        return torch.cat([*prefix, patches.reshape(batch, h * w, channels) + pos], dim=1)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Images B x 3 x H x W (normalised) -> one B x (h*w) x C tensor per tap."""
        self.grid_size(images.shape[-2:])
        x = self.vit.norm_pre(self.vit.patch_drop(self._tokens(images)))
        outputs = []
        for index, block in enumerate(self.vit.blocks):
            x = block(x)
            if index in self.taps:
                outputs.append(x[:, self.num_prefix_tokens :])
        return outputs
