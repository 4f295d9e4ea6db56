"""CPR's local retrieval heads: the only trained part, one per backbone scale.

Per scale: 1x1 conv -> BatchNorm -> ReLU -> Inception -> 1x1 conv to ``out_dim`` channels
(Li et al., "Target before Shooting", IEEE TIP 2024; layer
sizes as in the official code: 192 -> Inception 256 -> 384). The outputs are raw, as the
official code's: the model normalises them into unit descriptors for scoring, and its loss
reads them raw (cosines normalise by themselves).
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 1) -> nn.Sequential:
    """Conv without bias, BatchNorm (eps 1e-3) and ReLU: every conv inside the Inception block."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels, eps=1e-3),
        nn.ReLU(inplace=True),
    )


class Inception(nn.Module):
    """Four parallel branches of out/4 channels each, concatenated.

    (i) 1x1; (ii) 1x1 to in/4, then 3x3; (iii) 1x1; (iv) 3x3 average pool (stride 1, padding
    not counted), then 1x1.
    """

    def __init__(self, in_channels: int = 192, out_channels: int = 256) -> None:
        super().__init__()
        if out_channels % 4 or in_channels % 4:
            raise ValueError(
                f"Inception channels {in_channels} -> {out_channels}: use multiples of 4"
            )
        branch = out_channels // 4
        self.branches = nn.ModuleList(
            [
                conv_bn_relu(in_channels, branch),
                nn.Sequential(
                    conv_bn_relu(in_channels, in_channels // 4),
                    conv_bn_relu(in_channels // 4, branch, 3),
                ),
                conv_bn_relu(in_channels, branch),
                nn.Sequential(
                    nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
                    conv_bn_relu(in_channels, branch),
                ),
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)


class RetrievalHead(nn.Module):
    """in_channels -> inner (1x1, BN, ReLU) -> Inception(inner -> inception) -> 1x1 to out_dim."""

    def __init__(
        self, in_channels: int, out_dim: int = 384, inner: int = 192, inception: int = 256
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, inner, 1),
            nn.BatchNorm2d(inner),
            nn.ReLU(inplace=True),
            Inception(inner, inception),
            nn.Conv2d(inception, out_dim, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """B x C x h x w backbone features -> B x out_dim x h x w raw outputs."""
        return self.layers(features)
