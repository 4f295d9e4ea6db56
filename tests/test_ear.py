"""EAR: attention mask, mosaic, SSIM / MSGMS, the paper's U-Net, and the model interface."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from filterformer.errors import ConfigError
from filterformer.models import ENCODERS, build_encoder, build_model
from filterformer.models.ear import EAR
from filterformer.models.ear.attention import attention_mask, cls_attention, suspect_mask, top_mass
from filterformer.models.ear.grid import mosaic, obfuscate, pad_to_multiple, patch_tokens
from filterformer.models.ear.similarity import gradient_magnitude, msgms_map, ssim_map
from filterformer.models.ear.unet import (
    UNET_LAYOUTS,
    StridedUNet,
    UNet,
    build_unet,
    to_unit_range,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY_WIDTHS = (4, 8, 8, 16, 16)


@pytest.fixture(scope="module", params=["tiny_random", "tiny_random_vits8"])
def encoder(request):
    """Both prefix layouts: DINOv2 (cls + 4 registers, patch 14) and DINO (cls, patch 8)."""
    torch.manual_seed(0)
    return build_encoder(request.param)


@pytest.fixture(scope="module")
def ear() -> EAR:
    torch.manual_seed(0)
    return EAR(build_encoder("tiny_random_vits8"), widths=TINY_WIDTHS, mosaic_scale=4).eval()


# ------------------------------------------------------------------ mosaic and patches


def test_mosaic_is_the_identity_outside_the_mask_and_block_constant_inside() -> None:
    images = torch.rand(2, 3, 16, 24)
    mask = torch.zeros(2, 1, 16, 24)
    mask[0, :, 4:12, 8:16] = 1  # two whole 4 x 4 blocks high, two wide
    mask[1, :, 3:6, 5:7] = 1  # cuts through blocks
    out = obfuscate(images, mask, 4)
    outside = ~mask.bool().expand_as(images)
    assert torch.equal(out[outside], images[outside])
    blocks = out[0, :, 4:12, 8:16].unfold(1, 4, 4).unfold(2, 4, 4)  # 3 x 2 x 2 x 4 x 4
    assert torch.equal(blocks, blocks[..., :1, :1].expand_as(blocks))
    means = images[0, :, 4:12, 8:16].unfold(1, 4, 4).unfold(2, 4, 4).mean(dim=(-1, -2))
    torch.testing.assert_close(blocks[..., 0, 0], means)
    # a masked pixel of a block that the mask cuts gets the mean of the whole block
    torch.testing.assert_close(out[1, :, 3, 5], images[1, :, 0:4, 4:8].mean(dim=(-1, -2)))


def test_mosaic_refuses_a_size_that_is_not_a_multiple() -> None:
    with pytest.raises(ValueError, match="10 x 12 is not a multiple of the mosaic scale 4"):
        mosaic(torch.rand(1, 3, 10, 12), 4)


def test_padding_repeats_the_border_or_fills_a_value() -> None:
    images = torch.rand(1, 3, 10, 13)
    padded = pad_to_multiple(images, 8)
    assert padded.shape == (1, 3, 16, 16) and torch.equal(padded[..., :10, :13], images)
    assert torch.equal(padded[..., 15, 15], images[..., 9, 12])
    assert torch.equal(
        pad_to_multiple(images[:, :1], 8, value=0.0)[..., 10:, :], torch.zeros(1, 1, 6, 16)
    )
    assert pad_to_multiple(padded, 8) is padded


def test_patch_tokens_are_row_major_patches() -> None:
    images = torch.arange(2 * 3 * 8 * 12, dtype=torch.float32).reshape(2, 3, 8, 12)
    tokens = patch_tokens(images, 4)
    assert tokens.shape == (2, 6, 48)
    torch.testing.assert_close(tokens[1, 4], images[1, :, 4:8, 4:8].reshape(-1))


# ------------------------------------------------------------------ similarities


def test_msgms_of_an_image_with_itself_is_exactly_zero() -> None:
    images = torch.rand(2, 3, 40, 56)
    assert torch.equal(msgms_map(images, images), torch.zeros(2, 40, 56))


def test_msgms_grows_with_a_local_gradient_change() -> None:
    images = torch.rand(1, 3, 64, 64) * 0.2 + 0.4
    values = []
    for amplitude in (0.05, 0.2, 0.5):
        changed = images.clone()
        changed[..., 28:36, 28:36] += amplitude
        amap = msgms_map(changed, images)[0]
        values.append(amap[26:38, 26:38].max().item())
        assert amap[:12, :12].max() < 1e-6  # far from the change: unchanged gradients, no score
    assert values[0] < values[1] < values[2] <= 1.0


def test_msgms_ignores_a_global_brightness_offset() -> None:
    images = torch.rand(1, 3, 32, 32) * 0.5
    assert msgms_map(images + 0.3, images).abs().max() < 1e-5


def test_ssim_equals_scikit_image_gaussian_ssim_away_from_the_border() -> None:
    from skimage.metrics import structural_similarity

    torch.manual_seed(0)
    x = torch.rand(1, 1, 40, 48, dtype=torch.float64)
    y = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    _, reference = structural_similarity(
        y[0, 0].numpy(),
        x[0, 0].numpy(),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        full=True,
    )
    ours = ssim_map(y, x)[0, 0].numpy()
    np.testing.assert_allclose(ours[5:-5, 5:-5], reference[5:-5, 5:-5], atol=1e-6)


def test_prewitt_gradient_of_a_ramp_is_twice_its_slope_in_either_direction() -> None:
    ramp = torch.arange(20.0).view(1, 1, 1, 20).expand(1, 1, 20, 20) * 0.01
    for image in (ramp, ramp.transpose(-1, -2)):
        magnitude = gradient_magnitude(image)[0, 0, 1:-1, 1:-1]
        torch.testing.assert_close(magnitude, torch.full((18, 18), 0.02))


def test_ssim_is_one_for_identical_images_and_lower_for_noise() -> None:
    images = torch.rand(2, 3, 32, 40)
    torch.testing.assert_close(ssim_map(images, images), torch.ones(2, 3, 32, 40))
    noisy = (images + 0.3 * torch.randn_like(images)).clamp(0, 1)
    assert ssim_map(noisy, images).mean() < 0.8


# ------------------------------------------------------------------ attention mask


def test_top_mass_keeps_the_fewest_cells_holding_the_mass() -> None:
    attention = torch.tensor([0.1, 0.5, 0.1, 0.3]).reshape(1, 1, 2, 2)
    keep = lambda mass: top_mass(attention, mass).flatten().tolist()  # noqa: E731
    assert keep(0.6) == [False, True, False, True]  # 0.5 taken < 0.6: take 0.3 too
    assert keep(0.5) == [False, True, False, False]  # 0.5 reached with the first cell
    assert keep(0.0) == [False] * 4
    assert keep(1.0) == [True] * 4
    scaled = top_mass(attention * 7, 0.6)  # the rule reads shares, not raw weights
    assert torch.equal(scaled, top_mass(attention, 0.6))


def test_head_rules_union_or_mean() -> None:
    attention = torch.zeros(1, 2, 1, 4)
    attention[0, 0, 0] = torch.tensor([0.7, 0.1, 0.1, 0.1])
    attention[0, 1, 0] = torch.tensor([0.1, 0.1, 0.1, 0.7])
    union = attention_mask(attention, 0.5, "union")
    assert union.shape == (1, 1, 1, 4) and union.flatten().tolist() == [True, False, False, True]
    mean = attention_mask(attention, 0.3, "mean")  # mean head: 0.4, 0.1, 0.1, 0.4
    assert mean.flatten().tolist() == [True, False, False, False]
    with pytest.raises(ConfigError, match="attention_heads 'max'"):
        attention_mask(attention, 0.5, "max")


def test_cls_attention_is_the_last_blocks_softmax_row_of_the_cls_query(encoder) -> None:
    """Against the attention matrix timm itself computes (non-fused path, captured)."""
    images = torch.randn(2, 3, 4 * encoder.patch_size, 5 * encoder.patch_size)
    last = encoder.vit.blocks[-1].attn
    captured = []
    handle = last.attn_drop.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0]))
    fused, last.fused_attn = last.fused_attn, False
    try:
        with torch.no_grad():
            encoder(images)
    finally:
        last.fused_attn = fused
        handle.remove()
    reference = captured[0][:, :, 0, encoder.num_prefix_tokens :].reshape(2, -1, 4, 5)
    ours = cls_attention(encoder, images)
    assert ours.shape == (2, encoder.num_heads, 4, 5)
    torch.testing.assert_close(ours, reference)
    assert (ours.flatten(2).sum(-1) <= 1 + 1e-6).all()


def test_suspect_mask_covers_whole_patches_at_any_input_size(encoder) -> None:
    patch = encoder.patch_size
    images = torch.randn(2, 3, 3 * patch + 5, 4 * patch - 3)
    mask = suspect_mask(encoder, images, mass=0.6)
    assert mask.shape == (2, 1, *images.shape[-2:])
    assert set(mask.unique().tolist()) <= {0.0, 1.0} and 0 < mask.mean() < 1
    cells = mask[..., : 3 * patch, : 3 * patch].unfold(2, patch, patch).unfold(3, patch, patch)
    assert torch.equal(cells, cells[..., :1, :1].expand_as(cells))
    assert torch.equal(mask, suspect_mask(encoder, images, mass=0.6))  # deterministic


# ------------------------------------------------------------------ U-Net


def _conv_layers(module: torch.nn.Module) -> list[tuple[int, int, int, int]]:
    """(in, out, kernel, stride) of every convolution, in module order."""
    return [
        (m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0])
        for m in module.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]


def test_template_unet_has_the_riad_template_layers() -> None:
    """RIAD-PyTorch's aesc_l2.py with filters [3, 64, 128, 256, 512]: per level conv, conv,
    conv stride 2 (the deepest: conv, conv); per decoder level up + conv, conv on the
    concatenation, conv; a 3 x 3 output conv. Every conv is followed by BatchNorm and
    LeakyReLU except the output conv."""
    unet = UNet((64, 128, 256, 512))
    encoder = [
        *[(3, 64, 3, 1), (64, 64, 3, 1), (64, 64, 3, 2)],
        *[(64, 128, 3, 1), (128, 128, 3, 1), (128, 128, 3, 2)],
        *[(128, 256, 3, 1), (256, 256, 3, 1), (256, 256, 3, 2)],
        *[(256, 512, 3, 1), (512, 512, 3, 1)],
    ]
    assert _conv_layers(unet.encoder) == encoder
    decoder = {  # level: up conv, conv on [up, skip], conv
        0: [(128, 64, 3, 1), (128, 64, 3, 1), (64, 64, 3, 1)],
        1: [(256, 128, 3, 1), (256, 128, 3, 1), (128, 128, 3, 1)],
        2: [(512, 256, 3, 1), (512, 256, 3, 1), (256, 256, 3, 1)],
    }
    assert {d: _conv_layers(level) for d, level in enumerate(unet.decoder)} == decoder
    assert _conv_layers(unet.head) == [(64, 3, 3, 1)] and unet.head.bias is not None
    assert all(isinstance(m.up[0], torch.nn.Upsample) for m in unet.decoder)
    bn = [m for m in unet.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bn) == len(encoder) + 9  # all but the output conv


def test_template_unet_takes_each_skip_before_the_stride() -> None:
    torch.manual_seed(0)
    unet = UNet(TINY_WIDTHS).eval()
    images = torch.rand(2, 3, 32, 48)
    skips = []
    for level in unet.encoder:
        level.features.register_forward_hook(lambda _m, _i, out: skips.append(out))
    out = unet(images)
    assert out.shape == images.shape and 0 <= out.min() and out.max() <= 1
    sizes = [tuple(s.shape[-2:]) for s in skips]
    assert sizes == [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]  # the first at full size
    assert unet.skip_sizes(32, 48) == sizes[:-1] and unet.multiple == 16  # no skip: deepest
    masks = [torch.rand(2, 1, h, w) for h, w in unet.skip_sizes(32, 48)]
    fused = {}
    for level, block in enumerate(unet.decoder):
        block.fuse.register_forward_pre_hook(
            lambda _m, inputs, level=level: fused.__setitem__(level, inputs[0])
        )
    skips.clear()
    unet(images, masks)
    for level, mask in enumerate(masks):  # FADeR eq. 4 on concat(up, skip * mask)
        width = unet.widths[level]
        torch.testing.assert_close(fused[level][:, width:], skips[level] * mask)
    assert torch.equal(unet(images, [torch.ones_like(m) for m in masks]), unet(images))


def test_strided_unet_levels_skip_shapes_and_output_range() -> None:
    torch.manual_seed(0)
    unet = StridedUNet(TINY_WIDTHS).eval()
    images = torch.rand(2, 3, 64, 96)
    seen = []
    for block in unet.encoder:
        block.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape[-2:])))
    out = unet(images)
    assert out.shape == images.shape and 0 < out.min() and out.max() < 1
    assert seen == [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]  # stride 2 in every block
    assert unet.skip_sizes(64, 96) == seen[:-1]  # no skip at the deepest level
    assert unet.multiple == 32
    layers = [m for m in unet.encoder[0] if isinstance(m, torch.nn.Sequential)]
    assert len(layers) == 3 and [m[0].stride for m in layers] == [(1, 1), (1, 1), (2, 2)]
    assert all(
        isinstance(m[1], torch.nn.BatchNorm2d) and isinstance(m[2], torch.nn.LeakyReLU)
        for m in layers
    )


def test_strided_unet_skip_masks_multiply_the_skips_before_the_concatenation() -> None:
    """FADeR eq. 4: decoder block d reads concat(decoder d+1, encoder d * mask_d), d < D."""
    torch.manual_seed(0)
    unet = StridedUNet(TINY_WIDTHS).eval()
    images = torch.rand(1, 3, 32, 32)
    masks = [torch.rand(1, 1, h, w) for h, w in unet.skip_sizes(32, 32)]
    encoded, decoder_inputs = [], {}
    for block in unet.encoder:
        block.register_forward_hook(lambda _m, _i, out: encoded.append(out))
    for level, block in enumerate(unet.decoder):
        block.register_forward_pre_hook(
            lambda _m, inputs, level=level: decoder_inputs.__setitem__(level, inputs[0])
        )
    unet(images, masks)
    for level, mask in enumerate(masks):
        width = unet.widths[level]
        torch.testing.assert_close(decoder_inputs[level][:, width:], encoded[level] * mask)
    assert decoder_inputs[len(masks)].shape == encoded[-1].shape  # the deepest: no skip
    ones = [torch.ones_like(m) for m in masks]
    assert torch.equal(unet(images, ones), unet(images))


def test_unet_refuses_fewer_than_two_levels_and_unknown_layouts() -> None:
    for layout in UNET_LAYOUTS:
        with pytest.raises(ConfigError, match="model.widths"):
            build_unet(layout, (8,))
    with pytest.raises(ConfigError, match="model.unet_layout 'flat'"):
        build_unet("flat", TINY_WIDTHS)
    with pytest.raises(ConfigError, match="model.unet_output 'tanh'"):
        build_unet("template", TINY_WIDTHS, "tanh")


def test_unet_outputs_clamp_or_sigmoid_into_the_unit_range() -> None:
    logits = torch.tensor([-2.0, 0.25, 3.0])
    assert to_unit_range(logits, "clamp").tolist() == [0.0, 0.25, 1.0]  # RIAD-PyTorch
    torch.testing.assert_close(to_unit_range(logits, "sigmoid"), torch.sigmoid(logits))


# ------------------------------------------------------------------ the model


def test_ear_losses_and_maps_at_an_odd_input_size(ear: EAR) -> None:
    images = torch.randn(2, 3, 44, 70)
    losses = ear(images)
    assert set(losses) == {"loss", "mse", "ssim", "msgms"}
    torch.testing.assert_close(losses["loss"], losses["mse"] + losses["ssim"] + losses["msgms"])
    maps = ear.anomaly_maps(images)
    assert set(maps) == set(ear.fusion_modes) == {"msgms"}
    assert maps["msgms"].shape == (2, 44, 70) and maps["msgms"].min() >= 0


@pytest.mark.parametrize(("layout", "multiple"), [("template", 16), ("strided", 32)])
def test_ear_pads_to_what_its_unet_layout_needs(layout, multiple) -> None:
    torch.manual_seed(0)
    model = EAR(build_encoder("tiny_random_vits8"), widths=TINY_WIDTHS, unet_layout=layout)
    assert model.multiple == multiple  # lcm(2^(D-1) or 2^D, m = 8)
    assert model.eval().anomaly_maps(torch.randn(1, 3, 20, 28))["msgms"].shape == (1, 20, 28)


def test_ear_obfuscates_only_inside_the_attention_mask(ear: EAR) -> None:
    images = torch.randn(1, 3, 48, 64)
    views = ear.views(images)
    clean = images * ear.std + ear.mean
    torch.testing.assert_close(views.crop(views.clean), clean)
    mask = suspect_mask(ear.encoder, images, ear.attention_mass).bool().expand_as(clean)
    assert torch.equal(views.crop(views.obfuscated)[~mask], views.crop(views.clean)[~mask])
    assert not torch.equal(views.crop(views.obfuscated)[mask], views.crop(views.clean)[mask])


def test_ear_trains_only_the_unet_and_checkpoints_no_encoder(ear: EAR) -> None:
    params = ear.trainable_parameters()
    assert {id(p) for p in params} == {id(p) for p in ear.unet.parameters()}
    assert ear.parameter_groups() == {"unet": params} and ear.lr_scales() == {}
    state = ear.trainable_state_dict()
    assert state and not any(k.startswith("encoder.") for k in state)
    assert any(k.endswith("running_mean") for k in state)  # BatchNorm statistics travel too


@pytest.mark.slow
def test_a_few_steps_lower_the_reconstruction_loss() -> None:
    torch.manual_seed(0)
    model = EAR(build_encoder("tiny_random_vits8"), widths=TINY_WIDTHS, mosaic_scale=4)
    images = F.interpolate(torch.randn(4, 3, 4, 4), size=(32, 32), mode="bilinear") * 0.5
    optimiser = torch.optim.Adam(model.trainable_parameters(), lr=1e-2)
    first = model(images)["loss"].item()
    for _ in range(15):
        optimiser.zero_grad()
        model(images)["loss"].backward()
        optimiser.step()
    assert model(images)["loss"].item() < 0.7 * first


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attention_heads": "max"}, "attention_heads 'max'"),
        ({"attention_mass": 1.5}, "attention_mass=1.5"),
        ({"mosaic_scale": 0}, "mosaic_scale=0"),
        ({"unet_layout": "flat"}, "model.unet_layout 'flat'"),
        ({"hidden": 8}, r"unknown setting\(s\) \['hidden'\] for model 'ear'"),
    ],
)
def test_bad_ear_settings_are_named(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model("ear", build_encoder("tiny_random_vits8"), **kwargs)


def _compose(*overrides: str):
    with initialize_config_dir(str(CONFIGS), version_base=None):
        return compose("train", overrides=list(overrides))


def test_ear_config_and_paper_preset_build() -> None:
    cfg = _compose("preset=ear_paper")
    model_args = OmegaConf.to_container(cfg.model, resolve=True)
    assert model_args.pop("name") == "ear" and cfg.encoder.variant == "dino_vits8"
    assert len(model_args["widths"]) == 5  # FADeR §4.1: D = 5
    assert model_args["unet_layout"] == "template"  # RIAD-PyTorch's skips, before the stride
    assert cfg.eval.image_score == "max"  # RIAD-PyTorch: the map's maximum
    assert cfg.train.optimizer.schedule == "fixed"
    with torch.device("meta"):
        model = build_model("ear", build_encoder("dino_vits8"), **model_args)
    assert model.unet.levels == 5 and model.encoder.patch_size == 8
    assert model.unet.skip_sizes(256, 256)[0] == (256, 256)  # a full-resolution skip


@pytest.mark.parametrize("preset", ["ear_paper", "fader_paper"])
def test_the_mosaic_scale_is_the_category_configs(preset) -> None:
    """FADeR §4.1: EAR's m* per product; every category config carries one."""
    for category in ("can", "vial", "carpet", "synthetic", "custom"):
        cfg = _compose(f"preset={preset}", f"category={category}")
        assert cfg.model.mosaic_scale == cfg.category.ear.mosaic_scale
    cfg = _compose(f"preset={preset}", "category=can", "category.ear.mosaic_scale=16")
    assert cfg.model.mosaic_scale == 16
    assert _compose(f"preset={preset}", "model.mosaic_scale=4").model.mosaic_scale == 4


def test_dino_layout_weights_file_loads_into_the_vits8_architecture(tmp_path: Path) -> None:
    """DINO's released .pth uses timm's key names (cls_token, pos_embed with the cls row)."""
    source = timm.create_model(
        ENCODERS["tiny_random_vits8"].arch, embed_dim=64, depth=3, num_heads=2, num_classes=0
    )
    state = {k: v.clone() for k, v in source.state_dict().items()}
    assert state["pos_embed"].shape == (1, 1 + 28 * 28, 64)
    path = tmp_path / "dino_tiny.pth"
    torch.save(state, path)
    loaded = build_encoder("tiny_random_vits8", weights=str(path), pretrain_img_size=224)
    loaded = loaded.vit.state_dict()
    assert loaded and all(torch.equal(tensor, state[key]) for key, tensor in loaded.items())


def test_ear_refuses_to_train_on_cached_encoder_taps(ear: EAR) -> None:
    with pytest.raises(ConfigError, match="train.feature_cache.enabled=false"):
        ear.features_from_taps([torch.zeros(1, 20, 64)], (4, 5))
