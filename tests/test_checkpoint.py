"""Checkpoints round-trip trainable weights, metadata and training state, and refuse misfits."""

import json

import pytest
import torch

from filterformer.errors import CheckpointError
from filterformer.training.checkpoint import checkpoint_files, load_checkpoint, save_checkpoint

IDENTITY = {"model": "filterformer", "encoder": "tiny_random", "encoder_weights": "abc123"}


class Toy(torch.nn.Module):
    """A frozen 'encoder' and a trainable head, like the real models."""

    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.encoder = torch.nn.Linear(2, 2).requires_grad_(False)
        self.head = torch.nn.Linear(2, width)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("encoder.")}


def save(path, net, step=7, training_state=None, **identity):
    meta = {**IDENTITY, **identity, "step": step, "epoch": 1, "config": {"seed": 1}}
    save_checkpoint(path, net, meta=meta, training_state=training_state)


def test_round_trip_restores_trainable_weights_metadata_and_state(tmp_path):
    torch.manual_seed(0)
    src, dst = Toy(), Toy()
    state = {"optimizer": {"lr": 0.5}, "rng": torch.get_rng_state()}
    save(tmp_path / "last", src, training_state=state)

    weights, meta_file, state_file = checkpoint_files(tmp_path / "last")
    assert {p.name for p in tmp_path.iterdir()} == {weights.name, meta_file.name, state_file.name}
    meta = json.loads(meta_file.read_text())
    assert meta["shapes"] == {"head.weight": [3, 2], "head.bias": [3]}
    assert meta["encoder_weights"] == "abc123" and meta["config"] == {"seed": 1}

    encoder_before = dst.encoder.weight.clone()
    loaded = load_checkpoint(weights, dst, expected=IDENTITY, with_training_state=True)
    assert torch.equal(dst.head.weight, src.head.weight)
    assert torch.equal(dst.encoder.weight, encoder_before)  # the encoder is not in checkpoints
    assert loaded.meta["step"] == 7
    assert loaded.training_state["optimizer"] == {"lr": 0.5}
    assert torch.equal(loaded.training_state["rng"], state["rng"])


@pytest.mark.parametrize(
    ("identity", "message"),
    [
        ({"encoder": "dinov2_vitb14_reg"}, "encoder: checkpoint has 'dinov2_vitb14_reg'"),
        ({"encoder_weights": "fff"}, "encoder_weights: checkpoint has 'fff'"),
        ({"model": "inpformer"}, "model: checkpoint has 'inpformer'"),
    ],
)
def test_refuses_other_model_encoder_or_weights(tmp_path, identity, message):
    save(tmp_path / "last", Toy(), **identity)
    model = Toy()
    before = model.head.weight.clone()
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path / "last", model, expected=IDENTITY)
    assert torch.equal(model.head.weight, before)


def test_refuses_other_shapes_naming_the_tensor(tmp_path):
    save(tmp_path / "last", Toy(width=3))
    with pytest.raises(CheckpointError, match=r"head.weight: \(3, 2\) vs model \(4, 2\)"):
        load_checkpoint(tmp_path / "last", Toy(width=4), expected=IDENTITY)


def test_missing_checkpoint_and_missing_training_state(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope", Toy(), expected=IDENTITY)
    save(tmp_path / "best_inp", Toy())
    with pytest.raises(CheckpointError, match="no training state"):
        load_checkpoint(tmp_path / "best_inp", Toy(), expected=IDENTITY, with_training_state=True)


def test_detects_a_save_interrupted_between_files(tmp_path):
    model = Toy()
    save(tmp_path / "last", model, step=7, training_state={"x": 1})
    weights, meta_file, _ = checkpoint_files(tmp_path / "last")
    old_meta = meta_file.read_bytes()
    save(tmp_path / "last", model, step=8, training_state={"x": 2})
    meta_file.write_bytes(old_meta)  # killed after the weights, before the JSON
    with pytest.raises(CheckpointError, match="interrupted"):
        load_checkpoint(weights, Toy(), expected=IDENTITY)
