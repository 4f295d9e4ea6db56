"""FADeR on EAR (FADeR §3, Fig. 3-5): attenuate suspected defects on the U-Net's skips.

A two-layer MLP reads the image in patches of the mosaic scale m (§3.2: patch = m, so the
tokens line up with the mosaic hint) and predicts each patch's reconstruction error. Per
image, the predictions become a soft mask (1 - min-max normalised prediction), which is
resized onto every skip connection (a skip coarser than the patch grid keeps the most
attenuated patch of each cell) and multiplies the encoder features there (eq. 4): what
the mask missed cannot be copied through the skips, so the decoder inpaints it as normal.

Training (§3.2, §4.1, Fig. 4), on normal images, from a trained EAR: the target of patch i is
its squared error between the image I and EAR's reconstruction Î without attenuation (eq. 1);
the MLP learns their order with the ranking loss (eq. 3); at the same time the decoder is
fine-tuned on the reconstruction losses with the mask applied, at 0.1 x the learning rate.
The U-Net encoder stays as EAR trained it.
"""

from __future__ import annotations

import torch
from torch import nn

from filterformer.errors import ConfigError
from filterformer.models.ear.grid import patch_tokens
from filterformer.models.ear.model import EAR, Views
from filterformer.models.encoder import DinoEncoder
from filterformer.models.fader.parts import (
    ErrorPredictor,
    attenuation_mask,
    check_fader_settings,
    ranking_loss,
    scale_to,
)

PREDICTOR_INPUTS = ("obfuscated", "reconstruction")


class FADeR(EAR):
    """EAR with FADeR's soft mask on the skip connections; map "msgms".

    Args (besides EAR's, passed by keyword):
        hidden: width of the MLP's hidden layer.
        strength: alpha in M = 1 - alpha * minmax(prediction); 0 is EAR exactly.
        mask: "soft" (the paper's) or "hard" (mask 0 where the normalised prediction
            exceeds ``hard_threshold``).
        scaling: "nearest" (the paper's) or "bilinear" resizing of the mask onto the skips.
        shrink: onto a skip coarser than the patch grid: the "min" (most attenuated) or
            "mean" of the covered patches, or "interpolate" as ``scaling``
            (:func:`~filterformer.models.fader.scale_to`).
        margin: xi of the ranking loss.
        predictor_input: the MLP reads the patches of the "obfuscated" image I' (§3.1,
            Fig. 3-4), or those of EAR's "reconstruction" Î (eq. 2 as written; one more
            U-Net pass at inference).
        decoder_lr_scale: the decoder's learning rate as a multiple of the MLP's.
    """

    def __init__(
        self,
        encoder: DinoEncoder,
        hidden: int = 256,
        strength: float = 1.0,
        mask: str = "soft",
        hard_threshold: float = 0.5,
        scaling: str = "nearest",
        shrink: str = "min",
        margin: float = 1.0,
        predictor_input: str = "obfuscated",
        decoder_lr_scale: float = 0.1,
        **ear_args: object,
    ) -> None:
        super().__init__(encoder, **ear_args)
        check_fader_settings(strength, mask, scaling, shrink)
        if predictor_input not in PREDICTOR_INPUTS:
            raise ConfigError(
                f"unknown model.predictor_input {predictor_input!r}; "
                f"valid: {', '.join(PREDICTOR_INPUTS)}"
            )
        self.strength, self.mask, self.hard_threshold = float(strength), mask, hard_threshold
        self.scaling, self.shrink, self.margin = scaling, shrink, float(margin)
        self.predictor_input = predictor_input
        self.decoder_lr_scale = float(decoder_lr_scale)
        self.predictor = ErrorPredictor(3 * self.mosaic_scale**2, hidden)
        self.unet.encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> FADeR:
        """The U-Net encoder stays frozen, BatchNorm statistics included."""
        super().train(mode)
        self.unet.encoder.eval()
        return self

    def plain_reconstruction(self, views: Views) -> torch.Tensor:
        """EAR's reconstruction Î without attenuation, BatchNorm in inference mode (eq. 1)."""
        decoder_training = self.unet.decoder.training
        self.unet.decoder.eval()
        try:
            with torch.no_grad():
                return self.unet(views.obfuscated)
        finally:
            self.unet.decoder.train(decoder_training)

    def predict(self, image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Predicted patch errors (B x N) of a padded image, and the mask of every skip."""
        scale = self.mosaic_scale
        predicted = self.predictor(patch_tokens(image.detach(), scale))
        grid = (image.shape[-2] // scale, image.shape[-1] // scale)
        mask = attenuation_mask(predicted.detach(), self.strength, self.mask, self.hard_threshold)
        mask = mask.reshape(-1, 1, *grid)
        sizes = self.unet.skip_sizes(*image.shape[-2:])
        return predicted, scale_to(mask, sizes, self.scaling, self.shrink)

    def attenuated(
        self, views: Views, plain: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction with the masked skips, predicted patch errors B x N).

        ``plain``: EAR's reconstruction if already computed (needed for the "reconstruction"
        predictor input).
        """
        source = views.obfuscated
        if self.predictor_input == "reconstruction":
            source = self.plain_reconstruction(views) if plain is None else plain
        predicted, skip_masks = self.predict(source)
        return self.unet(views.obfuscated, skip_masks), predicted

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Reconstruction losses of the attenuated output + "rank" (eq. 3 against eq. 1)."""
        views = self.views(images)
        plain = self.plain_reconstruction(views)
        output, predicted = self.attenuated(views, plain)
        losses = self.reconstruction_losses(views.crop(output), views.crop(views.clean))
        scale = self.mosaic_scale
        target = (patch_tokens(views.clean, scale) - patch_tokens(plain, scale)).pow(2).mean(-1)
        losses["rank"] = ranking_loss(predicted, target, self.margin)
        losses["loss"] = losses["loss"] + losses["rank"]
        return losses

    @torch.no_grad()
    def anomaly_maps(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"msgms": B x H x W} of the attenuated reconstruction."""
        views = self.views(images)
        output = self.attenuated(views)[0]
        return {"msgms": self.msgms(views.crop(output), views.crop(views.clean))}

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The MLP, and the decoder (with the output head) that is fine-tuned."""
        decoder = [*self.unet.decoder.parameters(), *self.unet.head.parameters()]
        return {"predictor": list(self.predictor.parameters()), "decoder": decoder}

    def lr_scales(self) -> dict[str, float]:
        """The decoder trains at ``decoder_lr_scale`` x the learning rate (FADeR §4.1)."""
        return {"decoder": self.decoder_lr_scale}
