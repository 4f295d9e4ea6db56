"""What every model on a frozen encoder shares: which parameters train and what checkpoints hold.

The frozen encoder (``self.encoder``) is rebuilt from its own weights file, so checkpoints hold
everything else; parameters with ``requires_grad`` off (a frozen part of the model itself)
stay in the checkpoint but are never given to the optimiser.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from filterformer.errors import CheckpointError, ConfigError


class FrozenEncoderModel(nn.Module):
    """Base of the models: ``forward(images)`` -> losses, ``anomaly_maps(images)`` -> maps.

    Subclasses set ``fusion_modes`` (the map names ``anomaly_maps`` returns, plus any fusion
    of them) and ``parameter_groups``.
    """

    fusion_modes: tuple[str, ...] = ()

    def features_from_taps(self, taps: list[torch.Tensor], grid: tuple[int, int]) -> object:
        """Training on cached encoder taps (``train.feature_cache``): only models that read
        nothing but the taps can; the others refuse here, at their first step."""
        raise ConfigError(
            f"model {type(self).__name__} reads the images themselves, not only the encoder's "
            "taps, so it cannot train on cached taps; set train.feature_cache.enabled=false."
        )

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every parameter that trains: not the frozen encoder's, not ``requires_grad=False``."""
        return [
            p
            for name, p in self.named_parameters()
            if not name.startswith("encoder.") and p.requires_grad
        ]

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by part; training clips each part's gradient norm on its own."""
        return {"model": self.trainable_parameters()}

    def lr_scales(self) -> dict[str, float]:
        """Learning-rate multiplier of a part of ``parameter_groups`` (1 for parts not named)."""
        return {}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict without the encoder (which is rebuilt from its own weights file)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("encoder.")}

    def load_trainable_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load a `trainable_state_dict`; keys must match exactly."""
        expected = set(self.trainable_state_dict())
        missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
        if missing or unexpected:
            raise CheckpointError(
                f"checkpoint does not fit {type(self).__name__}: missing {missing[:5]}, unexpected "
                f"{unexpected[:5]}; check that model.name and the model settings match the run"
            )
        self.load_state_dict(state_dict, strict=False)
