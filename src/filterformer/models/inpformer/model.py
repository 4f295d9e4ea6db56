"""INP-Former and Filter-Former: wiring, training losses, anomaly maps and map fusion.

Both models share one interface: `forward(images)` gives the training losses, `anomaly_maps`
the per-pixel maps at network input resolution, `trainable_state_dict` everything but the
frozen encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from filterformer.errors import ConfigError
from filterformer.models.base import FrozenEncoderModel
from filterformer.models.encoder import DinoEncoder
from filterformer.models.fusion import MAP_MODES
from filterformer.models.inpformer.attenuation import ATTENUATIONS, TokenAttenuator, token_residuals
from filterformer.models.inpformer.diff_predictor import DiffPredictor
from filterformer.models.inpformer.inp import Bottleneck, INPExtractor, INPGuidedDecoder
from filterformer.models.inpformer.losses import (
    COS_EPS,
    DIFF_LOSS_TYPES,
    coherence_loss,
    diff_loss,
    inp_distances,
    soft_mining_loss,
    unit_channels,
)


@dataclass
class INPFeatures:
    """What one forward pass computes; group maps are B x C x h x w."""

    enc_groups: list[torch.Tensor]  # E_g: encoder taps averaged per group
    dec_groups: list[torch.Tensor]  # D_g: reversed decoder outputs averaged per group
    inps: torch.Tensor  # P: B x M x C
    fused: torch.Tensor  # F: B x N x C, mean of all taps
    ranking: tuple[torch.Tensor, torch.Tensor] | None = None
    """With attenuation, in training: (predicted, measured) per-token residuals, B x N each."""


def group_maps(
    tokens: Sequence[torch.Tensor],
    groups: Sequence[Sequence[int]],
    grid: tuple[int, int],
) -> list[torch.Tensor]:
    """Average the B x N x C sequences of each group and reshape to B x C x h x w."""
    out = []
    for group in groups:
        mean = torch.stack([tokens[i] for i in group]).mean(dim=0)
        out.append(mean.transpose(1, 2).reshape(mean.shape[0], mean.shape[2], *grid))
    return out


def distance_map(
    enc_groups: Sequence[torch.Tensor],
    dec_groups: Sequence[torch.Tensor],
    size: tuple[int, int],
) -> torch.Tensor:
    """Mean over groups of 1 - cos over channels, each upsampled (align_corners) -> B x H x W."""
    maps = [
        F.interpolate(
            (1 - F.cosine_similarity(e, d, dim=1, eps=COS_EPS)).unsqueeze(1),
            size=size,
            mode="bilinear",
            align_corners=True,
        )
        for e, d in zip(enc_groups, dec_groups, strict=True)
    ]
    return torch.cat(maps, dim=1).mean(dim=1)


def _split_off(
    params: list[nn.Parameter], name: str, part: nn.Module
) -> dict[str, list[nn.Parameter]]:
    """{"inp_former": ``params`` without ``part``'s, ``name``: ``part``'s parameters}."""
    own = list(part.parameters())
    ids = {id(p) for p in own}
    return {"inp_former": [p for p in params if id(p) not in ids], name: own}


class INPFormer(FrozenEncoderModel):
    """INP-Former: frozen encoder, INP Extractor, Bottleneck, INP-guided decoder.

    Args:
        encoder: the frozen DinoEncoder (gives dim, heads and the taps).
        num_inps: number M of INPs.
        extractor_depth / decoder_depth: number of INP Extractor / decoder blocks.
        mlp_ratio: hidden width of every MLP, as a multiple of the embedding dim.
        ln_eps: eps of the LayerNorms of the extractor and decoder.
        coherence_weight: lambda_c of the coherence loss.
        mining_gamma: exponent of the soft-mining gradient weights.
        groups: indices into the taps (and into the reversed decoder outputs) averaged per group.
        attenuation: "none", or "fader": FADeR's attenuation of the fused tokens before the
            bottleneck (our extension, `TokenAttenuator`), with ``attenuation_hidden``,
            ``attenuation_strength``, ``attenuation_fill`` and ``attenuation_margin``.
    """

    fusion_modes: tuple[str, ...] = ("inp",)

    def __init__(
        self,
        encoder: DinoEncoder,
        num_inps: int = 6,
        extractor_depth: int = 1,
        decoder_depth: int = 8,
        mlp_ratio: float = 4,
        ln_eps: float = 1e-8,
        coherence_weight: float = 0.2,
        mining_gamma: float = 3.0,
        groups: Sequence[Sequence[int]] = ((0, 1, 2, 3), (4, 5, 6, 7)),
        attenuation: str = "none",
        attenuation_hidden: int = 256,
        attenuation_strength: float = 1.0,
        attenuation_fill: str = "inp",
        attenuation_margin: float = 1.0,
    ) -> None:
        super().__init__()
        if attenuation not in ATTENUATIONS:
            raise ConfigError(
                f"unknown model.attenuation {attenuation!r}; valid: {', '.join(ATTENUATIONS)}"
            )
        self.groups = tuple(tuple(g) for g in groups)
        limit = min(len(encoder.taps), decoder_depth)
        if not all(g and all(0 <= i < limit for i in g) for g in self.groups):
            raise ConfigError(
                f"model.groups {[list(g) for g in self.groups]} must be non-empty lists of indices "
                f"below {limit} ({len(encoder.taps)} encoder taps, decoder_depth {decoder_depth})"
            )
        self.coherence_weight = coherence_weight
        self.mining_gamma = mining_gamma
        self.encoder = encoder
        dim, heads = encoder.embed_dim, encoder.num_heads
        self.extractor = INPExtractor(dim, heads, num_inps, extractor_depth, mlp_ratio, ln_eps)
        self.bottleneck = Bottleneck(dim, mlp_ratio)
        self.decoder = INPGuidedDecoder(dim, heads, decoder_depth, mlp_ratio, ln_eps)
        self.attenuator = None
        if attenuation == "fader":
            self.attenuator = TokenAttenuator(
                dim, attenuation_hidden, attenuation_strength, attenuation_fill, attenuation_margin
            )

    def features(self, images: torch.Tensor) -> INPFeatures:
        """Run encoder, extractor, bottleneck and decoder on B x 3 x H x W images."""
        grid = self.encoder.grid_size(tuple(images.shape[-2:]))
        return self.features_from_taps(self.encoder(images), grid)

    def features_from_taps(self, taps: list[torch.Tensor], grid: tuple[int, int]) -> INPFeatures:
        """Everything after the frozen encoder: its taps (B x h*w x C each) -> features.

        Split from `features` so that callers may compute the taps once and reuse them
        (the encoder never changes during training).
        """
        fused = torch.stack(taps).mean(dim=0)
        inps = self.extractor(fused)
        enc_groups = group_maps(taps, self.groups, grid)
        if self.attenuator is None:
            return INPFeatures(enc_groups, self.decode(fused, inps, grid), inps, fused)
        attenuated, predicted = self.attenuator(fused, inps)
        ranking = None
        if self.training:  # the target: the residuals without attenuation
            with torch.no_grad():
                plain = self.decode(fused, inps, grid)
            ranking = (predicted, token_residuals(enc_groups, plain))
        return INPFeatures(enc_groups, self.decode(attenuated, inps, grid), inps, fused, ranking)

    def decode(
        self, tokens: torch.Tensor, inps: torch.Tensor, grid: tuple[int, int]
    ) -> list[torch.Tensor]:
        """Bottleneck and decoder -> the decoder groups D_g (last block first, as mirrored)."""
        decoded = self.decoder(self.bottleneck(tokens), inps)[::-1]
        return group_maps(decoded, self.groups, grid)

    def losses(self, feats: INPFeatures) -> dict[str, torch.Tensor]:
        """Training losses: "loss" = "sm" + coherence_weight * "coherence" (+ "rank" with
        attenuation: the ranking loss, which reaches the attenuator only)."""
        sm = soft_mining_loss(feats.enc_groups, feats.dec_groups, self.mining_gamma)
        coherence = coherence_loss(feats.fused, feats.inps)
        out = {"loss": sm + self.coherence_weight * coherence, "sm": sm, "coherence": coherence}
        if feats.ranking is not None:
            out["rank"] = self.attenuator.loss(*feats.ranking)
            out["loss"] = out["loss"] + out["rank"]
        return out

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.losses(self.features(images))

    def maps(self, feats: INPFeatures, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Anomaly maps B x H x W at `size` from computed features."""
        return {"inp": distance_map(feats.enc_groups, feats.dec_groups, size)}

    @torch.no_grad()
    def anomaly_maps(
        self, images: torch.Tensor, size: tuple[int, int] | None = None
    ) -> dict[str, torch.Tensor]:
        """Map name -> B x H x W anomaly map at the network input resolution, or at ``size``
        (upsampled from the token grid straight to it, as the ISVL hybrid code does)."""
        return self.maps(self.features(images), size or tuple(images.shape[-2:]))

    @torch.no_grad()
    def inp_distance_map(self, images: torch.Tensor) -> torch.Tensor:
        """B x H x W: each token's distance to the image's nearest INP, upsampled (align_corners).

        No decoder: the INP-Former code's zero-shot map (``evaluation_batch_vis_ZS`` reads
        the coherence loss's per-token distance), for categories the model never saw.
        """
        grid = self.encoder.grid_size(tuple(images.shape[-2:]))
        fused = torch.stack(self.encoder(images)).mean(dim=0)
        distances = inp_distances(fused, self.extractor(fused))
        maps = distances.reshape(len(images), 1, *grid)
        size = tuple(images.shape[-2:])
        return F.interpolate(maps, size=size, mode="bilinear", align_corners=True)[:, 0]

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by part; training clips each part's gradient norm on its own:
        INP-Former's modules, and the attenuator's MLP if any."""
        if self.attenuator is None:
            return {"inp_former": self.trainable_parameters()}
        return _split_off(self.trainable_parameters(), "attenuator", self.attenuator)


class FilterFormer(INPFormer):
    """INP-Former + Diff Predictor: filters the predicted normal residual out of the encoder.

    Our reading (docs/architecture.md, "Filter-Former: our reading"): the maps are cosine
    distances, so the residual lives between channel-wise unit tokens. The Diff Predictor
    learns R̂_g = P(E_g) ≈ n(E_g) - n(D_g) on normal images (`diff_loss`), and the filtered
    encoder Ê_g = n(E_g) - R̂_g is compared with D_g: a_filter = mean_g (1 - cos(Ê_g, D_g)).

    Args (besides INPFormer's, passed by keyword):
        diff_depth: number of Diff Predictor self-attention blocks.
        diff_weight: lambda_df of the diff loss.
        diff_loss_type: "mse" or "cosine" (see `diff_loss`).
    """

    fusion_modes = MAP_MODES

    def __init__(
        self,
        encoder: DinoEncoder,
        diff_depth: int = 2,
        diff_weight: float = 1.0,
        diff_loss_type: str = "mse",
        **inp_former_args: object,
    ) -> None:
        super().__init__(encoder, **inp_former_args)
        if diff_loss_type not in DIFF_LOSS_TYPES:
            raise ConfigError(
                f"unknown model.diff_loss_type {diff_loss_type!r}; "
                f"valid: {', '.join(DIFF_LOSS_TYPES)}"
            )
        self.diff_weight = diff_weight
        self.diff_loss_type = diff_loss_type
        mlp_ratio = inp_former_args.get("mlp_ratio", 4)
        self.diff_predictor = DiffPredictor(
            encoder.embed_dim, encoder.num_heads, diff_depth, mlp_ratio
        )

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """INP-Former's parts and the Diff Predictor apart: L_df reaches only the predictor, and
        clipping the two norms separately keeps it from scaling INP-Former's updates."""
        groups = super().parameter_groups()
        split = _split_off(groups.pop("inp_former"), "diff_predictor", self.diff_predictor)
        return {
            "inp_former": split["inp_former"],
            **groups,
            "diff_predictor": split["diff_predictor"],
        }

    def residuals(self, feats: INPFeatures) -> list[torch.Tensor]:
        """Predicted normal residuals R̂_g = P(E_g) ≈ n(E_g) - n(D_g), B x C x h x w each."""
        return [
            self.diff_predictor(e.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(e.shape)
            for e in feats.enc_groups
        ]

    def losses(self, feats: INPFeatures) -> dict[str, torch.Tensor]:
        """INP-Former's losses plus "df"; "loss" adds diff_weight * "df"."""
        out = super().losses(feats)
        out["df"] = diff_loss(
            self.residuals(feats), feats.enc_groups, feats.dec_groups, self.diff_loss_type
        )
        out["loss"] = out["loss"] + self.diff_weight * out["df"]
        return out

    def maps(self, feats: INPFeatures, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Maps "inp" and "filter" (filtered encoder Ê_g = n(E_g) - R̂_g against D_g).

        With a zero head (at init) Ê_g = n(E_g), which has the direction of E_g, so the two
        maps coincide.
        """
        out = super().maps(feats, size)
        residuals = self.residuals(feats)
        filtered = [unit_channels(e) - r for e, r in zip(feats.enc_groups, residuals, strict=True)]
        out["filter"] = distance_map(filtered, feats.dec_groups, size)
        return out
