"""EAR's single deterministic mask: where a frozen ViT's [CLS] attention points.

The ImageNet-pretrained DINO ViT attends to what stands out from its surroundings, so its
[CLS] attention marks suspected defects without any training (FADeR §2.1, §4.2, Fig. 1 and 6).
Per head, the mask keeps the fewest patches that hold ``mass`` of that head's attention; the
heads are then combined by union, or their mean map is thresholded the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from filterformer.errors import ConfigError
from filterformer.models.ear.grid import pad_to_multiple
from filterformer.models.encoder import DinoEncoder

HEAD_RULES = ("union", "mean")


@torch.no_grad()
def cls_attention(encoder: DinoEncoder, images: torch.Tensor) -> torch.Tensor:
    """Attention of the [CLS] query on the patch tokens in the encoder's last kept block.

    Normalised B x 3 x H x W images (multiples of the patch) -> B x heads x h x w, each
    head's softmax weights on the patches (prefix tokens left out, so a row sums to <= 1).
    """
    grid = encoder.grid_size(tuple(images.shape[-2:]))
    vit = encoder.vit
    tokens = vit.norm_pre(vit.patch_drop(encoder._tokens(images)))
    *body, last = vit.blocks
    for block in body:
        tokens = block(tokens)
    attn = last.attn
    x = last.norm1(tokens)
    batch, length, _ = x.shape
    qkv = attn.qkv(x).reshape(batch, length, 3, attn.num_heads, attn.head_dim)
    q, k = attn.q_norm(qkv[:, :1, 0].transpose(1, 2)), attn.k_norm(qkv[:, :, 1].transpose(1, 2))
    weights = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # B x heads x 1 x L
    patches = weights[:, :, 0, encoder.num_prefix_tokens :]
    return patches.reshape(batch, attn.num_heads, *grid)


def top_mass(attention: torch.Tensor, mass: float) -> torch.Tensor:
    """True on the fewest cells of each ... x h x w map that hold ``mass`` of its total.

    Cells are taken in decreasing order until the mass already taken reaches ``mass``
    (DINO's attention-visualisation rule), so ``mass`` 0 keeps nothing and 1 keeps every cell
    with nonzero weight.
    """
    flat = attention.flatten(-2)
    flat = flat / flat.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(flat.dtype).tiny)
    values, order = flat.sort(dim=-1, descending=True)
    taken_before = values.cumsum(dim=-1) - values
    keep = (taken_before < mass) & (values > 0)
    return torch.zeros_like(keep).scatter(-1, order, keep).view(attention.shape)


def attention_mask(attention: torch.Tensor, mass: float, heads: str = "union") -> torch.Tensor:
    """B x heads x h x w attention -> B x 1 x h x w bool mask of suspected defects."""
    if heads == "union":
        return top_mass(attention, mass).any(dim=1, keepdim=True)
    if heads == "mean":
        return top_mass(attention.mean(dim=1, keepdim=True), mass)
    raise ConfigError(f"unknown model.attention_heads {heads!r}; valid: {', '.join(HEAD_RULES)}")


def suspect_mask(
    encoder: DinoEncoder, images: torch.Tensor, mass: float, heads: str = "union"
) -> torch.Tensor:
    """B x 1 x H x W float {0, 1} pixel mask of normalised images of any size.

    The images are padded (border repeated) to a multiple of the patch for the ViT; each
    patch's decision covers its pixels (nearest upsampling), cropped back to H x W.
    """
    height, width = images.shape[-2:]
    patch = encoder.patch_size
    grid_mask = attention_mask(cls_attention(encoder, pad_to_multiple(images, patch)), mass, heads)
    pixels = F.interpolate(grid_mask.float(), scale_factor=patch, mode="nearest")
    return pixels[..., :height, :width]
