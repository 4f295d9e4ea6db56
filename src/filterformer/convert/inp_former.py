"""Official INP-Former checkpoints (luow23/INP-Former `model.pth`) to our weights.

The official scripts save the whole `INP_Former` module's state dict: the encoder under
`encoder.` with the names of the DINOv2 code they vendor, then `bottleneck.0.`,
`aggregation.N.` (the INP Extractor), `decoder.N.` and `prototype_token` (the learnable
queries). Every key is mapped explicitly by :func:`official_layout`; a checkpoint is accepted
only if its key set and shapes equal that layout exactly (nothing missing, nothing left over).

The encoder goes to timm's DINOv2-reg names. Two tensors change form on the way, both exactly:
DINOv2 adds the first position embedding to the cls token at run time, timm stores the sum in
`cls_token` and keeps only the patch positions in `pos_embed`; `mask_token` (used only by
DINOv2's masked pre-training) has no counterpart in timm's ViT and is dropped.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

from filterformer.errors import CheckpointError
from filterformer.models.encoder import ENCODERS, variant_of, vit_shape

NUM_REGISTERS = 4
"""DINOv2-reg register tokens; the official loader (``load`` in ``models/vit_encoder.py``)
always builds 4."""

OFFICIAL_MLP_RATIO = 4
"""MLP width of the DINOv2 blocks (4 x dim for ViT-S/B/L)."""

PATCH_SIZE = 14
"""Patch side of every DINOv2-reg variant (the /14 of the names)."""

Shape = tuple[int, ...]


@dataclass(frozen=True)
class KeyMap:
    """One official tensor: its name, our name (None: dropped) and its expected shape."""

    official: str
    ours: str | None
    shape: Shape


@dataclass(frozen=True)
class ConvertedWeights:
    """A converted checkpoint: timm-named encoder weights and our trainable weights."""

    encoder: dict[str, torch.Tensor]
    trainable: dict[str, torch.Tensor]
    num_inps: int


def _linear(official: str, ours: str, out_dim: int, in_dim: int) -> Iterator[KeyMap]:
    yield KeyMap(f"{official}.weight", f"{ours}.weight", (out_dim, in_dim))
    yield KeyMap(f"{official}.bias", f"{ours}.bias", (out_dim,))


def _norm(official: str, ours: str, dim: int) -> Iterator[KeyMap]:
    yield KeyMap(f"{official}.weight", f"{ours}.weight", (dim,))
    yield KeyMap(f"{official}.bias", f"{ours}.bias", (dim,))


def _mlp(official: str, ours: str, dim: int, hidden: int) -> Iterator[KeyMap]:
    yield from _linear(f"{official}.fc1", f"{ours}.fc1", hidden, dim)
    yield from _linear(f"{official}.fc2", f"{ours}.fc2", dim, hidden)


def _encoder_layout(dim: int, depth: int, patch: int, grid: int) -> Iterator[KeyMap]:
    """Vendored DINOv2 names (`encoder.` prefix) -> timm `vit_*_patch14_reg4_dinov2` names."""
    yield KeyMap("encoder.cls_token", "cls_token", (1, 1, dim))
    yield KeyMap("encoder.pos_embed", "pos_embed", (1, 1 + grid * grid, dim))
    yield KeyMap("encoder.register_tokens", "reg_token", (1, NUM_REGISTERS, dim))
    yield KeyMap("encoder.mask_token", None, (1, dim))
    yield KeyMap(
        "encoder.patch_embed.proj.weight", "patch_embed.proj.weight", (dim, 3, patch, patch)
    )
    yield KeyMap("encoder.patch_embed.proj.bias", "patch_embed.proj.bias", (dim,))
    hidden = OFFICIAL_MLP_RATIO * dim
    for i in range(depth):
        src, dst = f"encoder.blocks.{i}", f"blocks.{i}"
        yield from _norm(f"{src}.norm1", f"{dst}.norm1", dim)
        yield from _linear(f"{src}.attn.qkv", f"{dst}.attn.qkv", 3 * dim, dim)
        yield from _linear(f"{src}.attn.proj", f"{dst}.attn.proj", dim, dim)
        yield KeyMap(f"{src}.ls1.gamma", f"{dst}.ls1.gamma", (dim,))
        yield from _norm(f"{src}.norm2", f"{dst}.norm2", dim)
        yield from _mlp(f"{src}.mlp", f"{dst}.mlp", dim, hidden)
        yield KeyMap(f"{src}.ls2.gamma", f"{dst}.ls2.gamma", (dim,))
    yield from _norm("encoder.norm", "norm", dim)


def _attention_block(official: str, ours: str, dim: int, hidden: int) -> Iterator[KeyMap]:
    """Pre-LN block with separate q / fused kv projections (extractor and decoder alike)."""
    yield from _norm(f"{official}.norm1", f"{ours}.norm1", dim)
    yield from _linear(f"{official}.attn.q", f"{ours}.attn.q", dim, dim)
    yield from _linear(f"{official}.attn.kv", f"{ours}.attn.kv", 2 * dim, dim)
    yield from _linear(f"{official}.attn.proj", f"{ours}.attn.proj", dim, dim)
    yield from _norm(f"{official}.norm2", f"{ours}.norm2", dim)
    yield from _mlp(f"{official}.mlp", f"{ours}.mlp", dim, hidden)


def _trainable_layout(
    dim: int,
    heads: int,
    num_inps: int,
    extractor_depth: int,
    decoder_depth: int,
    mlp_ratio: float,
) -> Iterator[KeyMap]:
    """Official trainable names -> `INPFormer.trainable_state_dict()` names."""
    hidden = int(dim * mlp_ratio)
    yield KeyMap("prototype_token", "extractor.queries", (num_inps, dim))
    for i in range(extractor_depth):
        yield from _attention_block(f"aggregation.{i}", f"extractor.blocks.{i}", dim, hidden)
    yield from _mlp("bottleneck.0", "bottleneck", dim, hidden)
    for i in range(decoder_depth):
        yield from _attention_block(f"decoder.{i}", f"decoder.blocks.{i}", dim, hidden)
        yield KeyMap(
            f"decoder.{i}.attn.learn_scale", f"decoder.blocks.{i}.attn.scale", (heads, 1, 1)
        )


def official_layout(
    variant: str,
    num_inps: int,
    *,
    extractor_depth: int = 1,
    decoder_depth: int = 8,
    mlp_ratio: float = 4,
    pretrain_img_size: int = 518,
) -> tuple[list[KeyMap], list[KeyMap]]:
    """(encoder, trainable) key maps of an official checkpoint for encoder `variant`.

    The defaults are the official architecture (configs/model/inpformer.yaml); the encoder's
    position table covers `pretrain_img_size` (DINOv2's 518 px: 37 x 37 patches).
    """
    spec = ENCODERS[variant]
    grid = pretrain_img_size // PATCH_SIZE
    encoder = list(_encoder_layout(spec.embed_dim, spec.depth, PATCH_SIZE, grid))
    trainable = list(
        _trainable_layout(
            spec.embed_dim,
            spec.num_heads,
            num_inps,
            extractor_depth,
            decoder_depth,
            mlp_ratio,
        )
    )
    return encoder, trainable


def _listed(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _identify_model(state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse, by name, checkpoints of other models before looking at shapes."""
    if "prototype_token" in state_dict or any(k.startswith("aggregation.") for k in state_dict):
        return
    has = {
        prefix
        for prefix in ("encoder.", "bottleneck.", "decoder.")
        if any(k.startswith(prefix) for k in state_dict)
    }
    if has == {"encoder.", "bottleneck.", "decoder."}:
        what = "a Dinomaly (ViTill) checkpoint: encoder, bottleneck and decoder but no INPs"
    elif "extractor.queries" in state_dict:
        what = "already a filterformer checkpoint (extractor.queries): it needs no conversion"
    elif "mask_token" in state_dict or "blocks.0.attn.qkv.weight" in state_dict:
        what = "a bare DINOv2 encoder: use it as encoder.weights, not with ff-convert"
    else:
        what = "not an INP-Former checkpoint"
    raise CheckpointError(
        f"{source} is {what}; it lacks 'prototype_token' and 'aggregation.*'. ff-convert "
        "inp-former reads the model.pth that the official INP-Former scripts save."
    )


def _check_variant(state_dict: Mapping[str, torch.Tensor], variant: str, source: str) -> None:
    """Refuse a checkpoint whose encoder width or depth belongs to another variant."""
    shape = vit_shape(state_dict, prefix="encoder.")
    if shape is None:
        raise CheckpointError(
            f"{source} has no 'encoder.patch_embed.proj.weight': no encoder to convert"
        )
    spec = ENCODERS[variant]
    if shape == (spec.embed_dim, spec.depth):
        return
    found = variant_of(shape)
    raise CheckpointError(
        f"{source} was trained with {found or 'an unknown encoder'} (embed dim {shape[0]}, "
        f"{shape[1]} blocks), not {variant} (embed dim {spec.embed_dim}, {spec.depth} blocks). "
        f"Pass --encoder {found or '<the matching variant>'}."
    )


def _check_keys(state_dict: Mapping[str, torch.Tensor], layout: list[KeyMap], source: str) -> None:
    """Exact match of names and shapes; every difference is named."""
    expected = {entry.official: entry.shape for entry in layout}
    missing = [name for name in expected if name not in state_dict]
    unexpected = [name for name in state_dict if name not in expected]
    reshaped = [
        f"{name} {tuple(state_dict[name].shape)} (expected {shape})"
        for name, shape in expected.items()
        if name in state_dict and tuple(state_dict[name].shape) != shape
    ]
    problems = [
        f"{label}: {_listed(names)}"
        for label, names in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", reshaped),
        )
        if names
    ]
    if problems:
        raise CheckpointError(
            f"{source} does not match the official INP-Former layout ({'; '.join(problems)}). "
            "Check --encoder and the model settings (decoder depth, extractor depth, MLP ratio)."
        )


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    variant: str,
    *,
    extractor_depth: int = 1,
    decoder_depth: int = 8,
    mlp_ratio: float = 4,
    pretrain_img_size: int = 518,
    source: str = "checkpoint",
) -> ConvertedWeights:
    """Map an official INP-Former state dict to timm encoder weights and our trainable weights.

    The number of INPs is read from `prototype_token`. Raises CheckpointError (naming `source`)
    for another model, another encoder variant, or any missing, extra or mis-shaped tensor.
    """
    _identify_model(state_dict, source)
    _check_variant(state_dict, variant, source)
    queries = state_dict.get("prototype_token")
    num_inps = int(queries.shape[0]) if queries is not None and queries.ndim == 2 else 0
    encoder_map, trainable_map = official_layout(
        variant,
        num_inps,
        extractor_depth=extractor_depth,
        decoder_depth=decoder_depth,
        mlp_ratio=mlp_ratio,
        pretrain_img_size=pretrain_img_size,
    )
    _check_keys(state_dict, encoder_map + trainable_map, source)
    encoder = {e.ours: state_dict[e.official] for e in encoder_map if e.ours is not None}
    positions = encoder["pos_embed"]
    encoder["cls_token"] = encoder["cls_token"] + positions[:, :1]
    encoder["pos_embed"] = positions[:, 1:]
    trainable = {e.ours: state_dict[e.official] for e in trainable_map}
    return ConvertedWeights(
        encoder={k: v.detach().contiguous() for k, v in encoder.items()},
        trainable={k: v.detach().contiguous() for k, v in trainable.items()},
        num_inps=num_inps,
    )
