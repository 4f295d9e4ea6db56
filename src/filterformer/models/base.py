"""What every model family shares: a frozen ``encoder`` and everything else trainable."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from filterformer.errors import CheckpointError


class FrozenEncoderModel(nn.Module):
    """A model whose ``encoder`` child is frozen (its weights come from their own file).

    Checkpoints hold :meth:`trainable_state_dict` only; training optimises
    :meth:`trainable_parameters`.
    """

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every parameter except the frozen encoder's."""
        return [p for name, p in self.named_parameters() if not name.startswith("encoder.")]

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
