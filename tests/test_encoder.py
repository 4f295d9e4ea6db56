"""DinoEncoder: taps, shapes, frozen-ness, position interpolation, weights files, configs."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import save_file

from filterformer.errors import CheckpointError, ConfigError
from filterformer.models import ENCODERS, DinoEncoder, build_encoder, weights_sha256
from filterformer.models.encoder import official_pos_embed

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def encoder() -> DinoEncoder:
    torch.manual_seed(0)
    return DinoEncoder("tiny_random")


@pytest.mark.parametrize(("hw", "grid"), [((112, 140), (8, 10)), ((98, 98), (7, 7))])
def test_taps_are_patch_tokens_of_the_grid(encoder: DinoEncoder, hw, grid) -> None:
    images = torch.randn(2, 3, *hw)
    taps = encoder(images)
    assert encoder.grid_size(hw) == grid
    assert len(taps) == len(encoder.taps) == 8
    assert all(t.shape == (2, grid[0] * grid[1], 64) for t in taps)
    assert (encoder.embed_dim, encoder.num_heads, encoder.patch_size) == (64, 2, 14)
    assert encoder.num_prefix_tokens == 5  # cls + 4 registers


def test_random_tiny_blocks_change_the_tokens(encoder: DinoEncoder) -> None:
    """LayerScale 1 and Xavier init: each tapped block moves the tokens (1e-5 would not)."""
    taps = encoder(torch.randn(2, 3, 56, 70))
    similarity = [F.cosine_similarity(taps[0], t, dim=-1).mean().item() for t in taps[1:]]
    assert all(s < 0.99 for s in similarity)
    assert similarity == sorted(similarity, reverse=True)  # drifting further with depth


def test_taps_equal_timm_intermediates_without_final_norm(encoder: DinoEncoder) -> None:
    images = torch.randn(1, 3, 112, 140)
    reference = encoder.vit.forward_intermediates(
        images,
        indices=list(encoder.taps),
        norm=False,
        output_fmt="NLC",
        intermediates_only=True,
    )
    for ours, theirs in zip(encoder(images), reference, strict=True):
        torch.testing.assert_close(ours, theirs)


def test_encoder_is_frozen_and_stays_in_eval(encoder: DinoEncoder) -> None:
    images = torch.randn(1, 3, 56, 70, requires_grad=True)
    assert not any(p.requires_grad for p in encoder.parameters())
    assert not any(t.requires_grad for t in encoder(images))
    encoder.train()
    assert not encoder.vit.training
    encoder.eval()


def test_only_blocks_up_to_the_last_tap_run() -> None:
    encoder = DinoEncoder("tiny_random", taps=(1, 3, 4))
    calls = [0] * len(encoder.vit.blocks)
    for index, block in enumerate(encoder.vit.blocks):
        block.register_forward_hook(lambda *_, i=index: calls.__setitem__(i, calls[i] + 1))
    taps = encoder(torch.randn(1, 3, 28, 42))
    assert len(taps) == 3
    assert calls == [1] * 5  # blocks 0..4 of 10, each once; 5..9 are pruned


def test_input_not_a_multiple_of_the_patch_is_refused(encoder: DinoEncoder) -> None:
    with pytest.raises(ConfigError, match="113 x 140 is not a multiple of the patch size 14"):
        encoder(torch.randn(1, 3, 113, 140))


@pytest.mark.parametrize("taps", [(), (3, 2), (2, 10)])
def test_bad_taps_are_refused(taps) -> None:
    with pytest.raises(ConfigError, match="taps"):
        DinoEncoder("tiny_random", taps=taps)


def test_official_pos_interp_is_identity_at_the_pretrained_grid() -> None:
    timm_interp = DinoEncoder("tiny_random", pretrain_img_size=70)  # stored table 5 x 5
    official = DinoEncoder("tiny_random", pretrain_img_size=70, official_pos_interp=True)
    official.load_state_dict(timm_interp.state_dict())
    images = torch.randn(1, 3, 70, 70)
    for a, b in zip(official(images), timm_interp(images), strict=True):
        torch.testing.assert_close(a, b)
    other = torch.randn(1, 3, 112, 140)
    assert [t.shape for t in official(other)] == [t.shape for t in timm_interp(other)]


def test_official_pos_embed_keeps_rows_and_columns_apart() -> None:
    rows = torch.arange(37.0).repeat_interleave(37)  # value = row index, constant along columns
    table = rows.reshape(1, 37 * 37, 1).repeat(1, 1, 3)
    out = official_pos_embed(table, (37, 37), (8, 10)).reshape(8, 10, 3)
    assert torch.allclose(out, out[:, :1])  # still constant along the 10 columns
    assert (out[1:, 0, 0] > out[:-1, 0, 0]).all()  # and increasing down the 8 rows


@pytest.mark.parametrize("layout", ["timm.safetensors", "meta.pth"])
def test_weights_file_round_trip(tmp_path: Path, layout: str, write_meta_weights) -> None:
    spec = ENCODERS["tiny_random"]
    source = timm.create_model(
        spec.arch,
        embed_dim=64,
        depth=10,
        num_heads=2,
        img_size=518,
        dynamic_img_size=True,
        num_classes=0,
    )
    state_dict = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / f"tiny_{layout}"
    if layout == "meta.pth":
        write_meta_weights(state_dict, path)
    else:
        save_file(state_dict, str(path))
    loaded = DinoEncoder("tiny_random", weights=path)
    images = torch.randn(1, 3, 56, 70)
    reference = source.forward_intermediates(
        images,
        indices=list(spec.taps),
        norm=False,
        output_fmt="NLC",
        intermediates_only=True,
    )
    for a, b in zip(loaded(images), reference, strict=True):
        torch.testing.assert_close(a, b)
    assert weights_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_of_another_variant_are_refused_by_name(tmp_path: Path, suffix: str) -> None:
    fake = {"patch_embed.proj.weight": torch.zeros(1024, 3, 14, 14)}
    fake |= {f"blocks.{i}.norm1.weight": torch.ones(1024) for i in range(24)}
    path = tmp_path / f"x{suffix}"
    torch.save(fake, path) if suffix == ".pth" else save_file(fake, str(path))
    message = (
        f"{path} looks like dinov2_vitl14_reg (embed dim 1024, 24 blocks), "
        "but the config asks for dinov2_vitb14_reg"
    )
    with pytest.raises(CheckpointError, match=re.escape(message)):
        DinoEncoder("dinov2_vitb14_reg", weights=path)


def test_missing_weights_give_one_clear_message(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        DinoEncoder("tiny_random", weights=tmp_path / "nope.pth")
    with pytest.raises(
        CheckpointError, match=r"dinov2_vitb14_reg4_pretrain\.pth.*weights/README\.md"
    ):
        DinoEncoder("dinov2_vitb14_reg", pretrained=True)
    with pytest.raises(ConfigError, match="no pretrained weights"):
        DinoEncoder("tiny_random", pretrained=True)


def test_unknown_variant_lists_the_valid_ones() -> None:
    with pytest.raises(
        ConfigError, match="dinov2_vits14_reg, dinov2_vitb14_reg, dinov2_vitl14_reg, tiny_random"
    ):
        build_encoder("dinov2_vitg14_reg")


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_encoder_configs_build(name: str) -> None:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = OmegaConf.to_container(compose(config_name=f"encoder/{name}"))["encoder"]
    assert cfg["variant"] == name
    assert tuple(cfg["taps"]) == ENCODERS[name].taps
    cfg["pretrained"] = False  # no weights here
    with torch.device("meta"):
        encoder = build_encoder(**cfg)
    assert (encoder.embed_dim, encoder.num_heads) == (
        ENCODERS[name].embed_dim,
        ENCODERS[name].num_heads,
    )


def test_self_attention_uses_torch_sdpa(encoder: DinoEncoder) -> None:
    """Encoder and Diff Predictor attention go through F.scaled_dot_product_attention (flash /
    memory-efficient kernels on GPU): no xformers needed."""
    from filterformer.models import build_model

    predictor = build_model("filterformer", encoder, diff_depth=2).diff_predictor
    blocks = [*encoder.vit.blocks, *predictor.blocks]
    assert blocks and all(block.attn.fused_attn for block in blocks)


def test_missing_weights_offer_the_download_only_when_the_hub_is_reachable(monkeypatch):
    from filterformer.models import encoder

    monkeypatch.setattr(encoder, "hub_reachable", lambda: False)
    with pytest.raises(CheckpointError) as offline:
        encoder.check_weights_source("dinov2_vits14_reg", None, True, False)
    assert "allow_download" not in str(offline.value) and "not reachable" in str(offline.value)
    with pytest.raises(CheckpointError, match=r"not reachable from here \(checked once\)"):
        encoder.check_weights_source("dinov2_vits14_reg", None, True, True)  # no retries
    monkeypatch.setattr(encoder, "hub_reachable", lambda: True)
    with pytest.raises(CheckpointError, match="or set encoder.allow_download=true"):
        encoder.check_weights_source("dinov2_vits14_reg", None, True, False)


def test_hf_hub_offline_counts_as_unreachable_without_trying(monkeypatch):
    from filterformer.models import encoder

    def no_network(*args, **kwargs):
        raise AssertionError("the network was tried")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(encoder.socket, "create_connection", no_network)
    encoder.hub_reachable.cache_clear()
    try:
        assert encoder.hub_reachable() is False
    finally:
        encoder.hub_reachable.cache_clear()
