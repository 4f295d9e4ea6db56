"""EAR, Excision And Recovery: reconstruction by inpainting behind one deterministic mask.

Per image: the frozen ViT's [CLS] attention marks suspected defects (``attention.py``), those
regions are replaced by their mosaic (``grid.obfuscate``), and the U-Net (``unet.py``)
reconstructs the clean image. Training minimises MSE + SSIM + MSGMS losses on normal images;
the anomaly map is the MSGMS dissimilarity of the input and its reconstruction (FADeR §2.1,
§4.1, Fig. 2 (b); EAR is FADeR's reference [35]).

The model takes the normalised network input like every model here and works on the image in
[0, 1] (the ImageNet normalisation undone); any H x W works: the image is padded (border
repeated) to a multiple of the mosaic scale and of what the U-Net needs, and cropped back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from filterformer.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from filterformer.errors import ConfigError
from filterformer.models.base import FrozenEncoderModel
from filterformer.models.ear.attention import HEAD_RULES, suspect_mask
from filterformer.models.ear.grid import common_multiple, obfuscate, pad_to_multiple
from filterformer.models.ear.similarity import msgms_map, ssim_map
from filterformer.models.ear.unet import build_unet
from filterformer.models.encoder import DinoEncoder


@dataclass
class Views:
    """One batch as the U-Net sees it, padded: B x 3 x H' x W' images in [0, 1]."""

    clean: torch.Tensor  # the input image I
    obfuscated: torch.Tensor  # I': the mosaic inside the suspect mask
    size: tuple[int, int]  # H x W of the network input, before padding

    def crop(self, images: torch.Tensor) -> torch.Tensor:
        """The H x W top-left part of a padded tensor."""
        return images[..., : self.size[0], : self.size[1]]


class EAR(FrozenEncoderModel):
    """Attention mask + mosaic + U-Net reconstruction; map "msgms".

    Args:
        encoder: the frozen ViT whose last kept block's [CLS] attention gives the mask.
        widths: U-Net channels per level (D = len(widths) levels).
        unet_layout: "template" (skips before each level's stride, the EAR author's RIAD
            re-implementation) or "strided" (skips after it); ``unet.py``.
        unet_output: the template's "clamp" into [0, 1], or a "sigmoid".
        mosaic_scale: m, the mosaic block side in pixels.
        attention_mass: per head, the share of attention mass the mask covers.
        attention_heads: "union" of the per-head masks, or the rule on the "mean" head.
        ssim_window / ssim_sigma: the Gaussian window of the SSIM loss.
        msgms_scales / gms_c: scales and stabilising constant of MSGMS (loss and map).
    """

    fusion_modes = ("msgms",)

    def __init__(
        self,
        encoder: DinoEncoder,
        widths: Sequence[int] = (32, 64, 128, 256, 512),
        unet_layout: str = "template",
        unet_output: str = "clamp",
        mosaic_scale: int = 8,
        attention_mass: float = 0.6,
        attention_heads: str = "union",
        ssim_window: int = 11,
        ssim_sigma: float = 1.5,
        msgms_scales: int = 4,
        gms_c: float = 0.0026,
    ) -> None:
        super().__init__()
        if mosaic_scale < 1 or not 0.0 <= attention_mass <= 1.0:
            raise ConfigError(
                f"model.mosaic_scale={mosaic_scale} must be >= 1 and model.attention_mass="
                f"{attention_mass} within [0, 1]"
            )
        if attention_heads not in HEAD_RULES:
            raise ConfigError(
                f"unknown model.attention_heads {attention_heads!r}; valid: {', '.join(HEAD_RULES)}"
            )
        self.encoder = encoder
        self.unet = build_unet(unet_layout, widths, unet_output)
        self.mosaic_scale = int(mosaic_scale)
        self.attention_mass = float(attention_mass)
        self.attention_heads = attention_heads
        self.ssim_window, self.ssim_sigma = int(ssim_window), float(ssim_sigma)
        self.msgms_scales, self.gms_c = int(msgms_scales), float(gms_c)
        self.multiple = common_multiple(self.unet.multiple, self.mosaic_scale)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def views(self, images: torch.Tensor) -> Views:
        """Normalised B x 3 x H x W network inputs -> the clean and obfuscated images, padded."""
        mask = suspect_mask(self.encoder, images, self.attention_mass, self.attention_heads)
        clean = pad_to_multiple(images * self.std + self.mean, self.multiple)
        mask = pad_to_multiple(mask, self.multiple, value=0.0)
        obfuscated = obfuscate(clean, mask, self.mosaic_scale)
        return Views(clean, obfuscated, (images.shape[-2], images.shape[-1]))

    def reconstruction_losses(self, output: torch.Tensor, target: torch.Tensor) -> dict:
        """MSE + SSIM (1 - mean SSIM) + MSGMS (mean map) between B x 3 x H x W images."""
        mse = F.mse_loss(output, target)
        ssim = 1 - ssim_map(output, target, self.ssim_window, self.ssim_sigma).mean()
        msgms = self.msgms(output, target).mean()
        return {"loss": mse + ssim + msgms, "mse": mse, "ssim": ssim, "msgms": msgms}

    def msgms(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The MSGMS dissimilarity map B x H x W with this model's settings."""
        return msgms_map(output, target, self.msgms_scales, self.gms_c)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training losses of a batch of normal images."""
        views = self.views(images)
        output = self.unet(views.obfuscated)
        return self.reconstruction_losses(views.crop(output), views.crop(views.clean))

    @torch.no_grad()
    def anomaly_maps(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"msgms": B x H x W} at the network input resolution."""
        views = self.views(images)
        output = self.unet(views.obfuscated)
        return {"msgms": self.msgms(views.crop(output), views.crop(views.clean))}

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """One part: the U-Net."""
        return {"unet": self.trainable_parameters()}
