"""FADeR: the ranking loss (eq. 3), the soft mask (eq. 4), FADeR on EAR, and starting from an
EAR run."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from filterformer.errors import CheckpointError, ConfigError
from filterformer.models import build_encoder, build_model, family
from filterformer.models.ear import EAR
from filterformer.models.ear.grid import patch_tokens
from filterformer.models.fader import FADeR
from filterformer.models.fader import model as fader_model
from filterformer.models.fader.parts import attenuation_mask, ranking_loss, scale_to
from filterformer.runs.files import sign_run
from filterformer.runs.run import build_from_config, create_run, load_run
from filterformer.training.checkpoint import save_checkpoint
from filterformer.training.optim import build_optimizer, optimizer_parameters
from filterformer.training.schedule import WarmupCosine

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = {"widths": (4, 8, 8, 16, 16), "mosaic_scale": 4, "unet_output": "sigmoid"}
"""Untrained: a clamped output in eval mode is mostly 0 or 1 and would hide wiring faults."""


# ------------------------------------------------------------------ ranking loss (eq. 3)


def _loss_and_grad(predicted, target, margin=1.0):
    predicted = torch.tensor(predicted, requires_grad=True)
    target = torch.tensor(target, requires_grad=True)
    loss = ranking_loss(predicted, target, margin)
    loss.backward()
    assert target.grad is None or not target.grad.any()  # the target is not differentiated
    return loss.item(), predicted.grad


@pytest.mark.parametrize(
    ("predicted", "target", "margin", "loss", "grad"),
    [
        # right order, difference beyond the margin: both ordered pairs give 0
        ([[2.0, 0.5]], [[1.0, 0.0]], 1.0, 0.0, [[0.0, 0.0]]),
        # right order within the margin: max(0, -(0.2 - 0) + 1) = 0.8 for (0, 1) and (1, 0)
        ([[0.2, 0.0]], [[1.0, 0.0]], 1.0, 0.8, [[-1.0, 1.0]]),
        # wrong order: -(+1)(0 - 1) + 1 = 2
        ([[0.0, 1.0]], [[1.0, 0.0]], 1.0, 2.0, [[-1.0, 1.0]]),
        # a smaller margin: max(0, -(0.2) + 0.5) = 0.3
        ([[0.2, 0.0]], [[1.0, 0.0]], 0.5, 0.3, [[-1.0, 1.0]]),
        # a tie counts as -1 in both orders: (0, 1): 0.3 + 1, (1, 0): -0.3 + 1; gradients cancel
        ([[0.3, 0.0]], [[0.5, 0.5]], 1.0, 1.0, [[0.0, 0.0]]),
    ],
)
def test_ranking_loss_matches_eq3_by_hand(predicted, target, margin, loss, grad) -> None:
    got_loss, got_grad = _loss_and_grad(predicted, target, margin)
    assert got_loss == pytest.approx(loss)
    torch.testing.assert_close(got_grad, torch.tensor(grad))


def test_ranking_loss_pairs_tokens_of_the_same_image_only() -> None:
    # image 0 is ordered right by 1 = margin (loss 0); image 1 wrong (2 per ordered pair);
    # pairs across images would add other terms
    loss, grad = _loss_and_grad([[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]])
    assert loss == pytest.approx((0 + 0 + 2 + 2) / 4)
    torch.testing.assert_close(grad, torch.tensor([[0.0, 0.0], [0.5, -0.5]]))


def test_ranking_loss_of_three_tokens_averages_six_ordered_pairs() -> None:
    # targets order 2 > 1 > 0; predictions 0, 0, 0: every ordered pair costs the margin
    loss, grad = _loss_and_grad([[0.0, 0.0, 0.0]], [[0.0, 1.0, 2.0]])
    assert loss == pytest.approx(1.0)
    # descent lowers the token with the lowest target, raises the highest: 4 pairs each / 6
    torch.testing.assert_close(grad, torch.tensor([[4 / 6, 0.0, -4 / 6]]))


# ------------------------------------------------------------------ mask (eq. 4)


def test_soft_mask_is_the_flipped_min_max_per_image() -> None:
    predicted = torch.tensor([[1.0, 3.0, 2.0, 5.0], [-4.0, -4.0, 0.0, -2.0]])
    mask = attenuation_mask(predicted)
    torch.testing.assert_close(mask, torch.tensor([[1.0, 0.5, 0.75, 0.0], [1.0, 1.0, 0.0, 0.5]]))
    assert torch.equal(mask.amin(1), torch.zeros(2)) and torch.equal(mask.amax(1), torch.ones(2))


def test_mask_strength_hard_variant_and_flat_predictions() -> None:
    predicted = torch.randn(3, 10)
    assert torch.equal(attenuation_mask(predicted, strength=0.0), torch.ones(3, 10))
    half = attenuation_mask(predicted, strength=0.5)
    assert torch.allclose(half.amin(1), torch.full((3,), 0.5)) and (half <= 1).all()
    hard = attenuation_mask(torch.tensor([[0.0, 0.4, 0.6, 1.0]]), kind="hard", threshold=0.5)
    assert hard.tolist() == [[1.0, 1.0, 0.0, 0.0]]
    flat = attenuation_mask(torch.full((1, 5), 2.5))  # nothing stands out: keep everything
    assert torch.equal(flat, torch.ones(1, 5))
    with pytest.raises(ConfigError, match="mask 'binary'"):
        attenuation_mask(predicted, kind="binary")


def test_mask_is_scaled_onto_every_skip_shape() -> None:
    mask = attenuation_mask(torch.randn(2, 12)).reshape(2, 1, 3, 4)
    sizes = [(12, 16), (6, 8), (3, 4), (1, 2)]
    nearest = scale_to(mask, sizes, "nearest")
    assert [tuple(m.shape) for m in nearest] == [(2, 1, *s) for s in sizes]
    torch.testing.assert_close(nearest[0][..., ::4, ::4], mask)  # blocks of 4 x 4
    assert torch.equal(nearest[2], mask)
    for level in nearest[:3]:
        assert torch.equal(level.amin(dim=(1, 2, 3)), torch.zeros(2))
        assert torch.equal(level.amax(dim=(1, 2, 3)), torch.ones(2))
    bilinear = scale_to(mask, sizes, "bilinear")[0]
    assert bilinear.min() >= 0 and bilinear.max() <= 1
    assert len(bilinear.unique()) > len(mask.unique())  # smoothed borders
    with pytest.raises(ConfigError, match="scaling 'bicubic'"):
        scale_to(mask, sizes, "bicubic")


def _one_patch_defect() -> torch.Tensor:
    """An 8 x 8 patch mask keeping everything but the patch at row 3, column 5 (odd both)."""
    mask = torch.ones(1, 1, 8, 8)
    mask[..., 3, 5] = 0.0
    return mask


COARSER = [(4, 4), (2, 2), (1, 1)]


def test_a_one_patch_defect_on_an_odd_row_is_attenuated_at_every_level() -> None:
    """A skip coarser than the patch grid keeps the most attenuated patch of each cell."""
    mask = _one_patch_defect()
    levels = scale_to(mask, [(16, 16), (8, 8), *COARSER], "nearest", "min")
    for level in levels:
        size = level.shape[-1]
        row, col = 3 * size // 8, 5 * size // 8  # the cell that covers the patch
        zeros = max(size // 8, 1) ** 2  # the patch's pixels, or the one cell covering it
        assert level[0, 0, row, col] == 0.0 and level.sum() == level.numel() - zeros
    assert torch.equal(levels[0][..., 6:8, 10:12], torch.zeros(1, 1, 2, 2))  # finer: nearest


def test_the_mean_shrink_and_the_interpolation_it_replaces() -> None:
    mask = _one_patch_defect()
    mean = scale_to(mask, COARSER, "nearest", "mean")
    # the covering cell averages 4, 16 and 64 patches, one of them 0
    assert [level.min().item() for level in mean] == [0.75, 1 - 1 / 16, 1 - 1 / 64]
    assert mean[0][0, 0, 1, 2] == 0.75  # the cell of rows 2-3, columns 4-5
    # nearest resizing keeps rows and columns 0, 2, 4, 6 at half size: the defect is lost
    interpolated = scale_to(mask, COARSER, "nearest", "interpolate")
    assert all(torch.equal(level, torch.ones_like(level)) for level in interpolated)
    with pytest.raises(ConfigError, match="shrink 'max'"):
        scale_to(mask, COARSER, "nearest", "max")


# ------------------------------------------------------------------ FADeR on EAR


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return build_encoder("tiny_random_vits8")


def _pair(encoder, **fader_args) -> tuple[EAR, FADeR]:
    torch.manual_seed(1)
    ear = EAR(encoder, **TINY)
    fader = FADeR(encoder, **TINY, **fader_args)
    fader.load_state_dict(ear.state_dict(), strict=False)
    return ear.eval(), fader.eval()


def test_strength_zero_is_ear_exactly(encoder) -> None:
    ear, fader = _pair(encoder, strength=0.0)
    images = torch.randn(2, 3, 40, 52)
    assert torch.equal(fader.anomaly_maps(images)["msgms"], ear.anomaly_maps(images)["msgms"])
    _, attenuated = _pair(encoder, strength=1.0)
    assert not torch.equal(
        attenuated.anomaly_maps(images)["msgms"], ear.anomaly_maps(images)["msgms"]
    )


def test_predicted_masks_land_on_every_skip(encoder) -> None:
    _, fader = _pair(encoder)
    views = fader.views(torch.randn(2, 3, 40, 52))
    predicted, masks = fader.predict(views.obfuscated)
    height, width = views.obfuscated.shape[-2:]
    assert predicted.shape == (2, (height // 4) * (width // 4))
    assert [tuple(m.shape[-2:]) for m in masks] == fader.unet.skip_sizes(height, width)
    for mask in masks[:2]:  # levels at or above the 4-pixel patch grid keep its extremes
        assert torch.equal(mask.amin(dim=(1, 2, 3)), torch.zeros(2))
        assert torch.equal(mask.amax(dim=(1, 2, 3)), torch.ones(2))


@pytest.mark.parametrize("shrink", ["min", "mean"])
def test_skips_coarser_than_the_patch_grid_pool_the_patches(encoder, shrink) -> None:
    """The strided U-Net's deepest skip (H / 16) is coarser than the 4-pixel patch grid."""
    torch.manual_seed(1)
    fader = FADeR(encoder, **TINY, unet_layout="strided", shrink=shrink).eval()
    views = fader.views(torch.randn(2, 3, 64, 64))
    predicted, masks = fader.predict(views.obfuscated)
    grid = attenuation_mask(predicted).reshape(2, 1, 16, 16)
    assert [tuple(m.shape[-2:]) for m in masks] == [(32, 32), (16, 16), (8, 8), (4, 4)]
    assert torch.equal(masks[1], grid)
    for level, kernel in ((2, 2), (3, 4)):
        pooled = F.avg_pool2d(grid, kernel) if shrink == "mean" else -F.max_pool2d(-grid, kernel)
        torch.testing.assert_close(masks[level], pooled)


def test_fader_trains_the_mlp_and_the_decoder_at_a_tenth(encoder) -> None:
    _, fader = _pair(encoder)
    groups = fader.parameter_groups()
    assert set(groups) == {"predictor", "decoder"} and fader.lr_scales() == {"decoder": 0.1}
    assert sum(len(g) for g in groups.values()) == len(fader.trainable_parameters())
    assert not any(p.requires_grad for p in fader.unet.encoder.parameters())
    params = optimizer_parameters(fader)
    assert [g["lr_scale"] for g in params] == [1.0, 0.1]
    opt = build_optimizer(
        "adamw", params, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0, eps=1e-8, amsgrad=False
    )
    schedule = WarmupCosine(opt, base_lr=1e-3, final_lr=1e-4, total_iters=10, warmup_iters=2)
    for _ in range(5):
        opt.step()
        schedule.step()
        rates = [group["lr"] for group in opt.param_groups]
        assert rates[1] == pytest.approx(0.1 * rates[0]) and rates[0] > 0


def test_a_training_step_leaves_the_unet_encoder_untouched(encoder) -> None:
    _, fader = _pair(encoder)
    fader.train()
    assert not fader.unet.encoder.training and fader.unet.decoder.training
    before = {k: v.clone() for k, v in fader.unet.encoder.state_dict().items()}
    decoder_before = [p.clone() for p in fader.unet.decoder.parameters()]
    opt = torch.optim.Adam(fader.trainable_parameters(), lr=1e-2)
    losses = fader(torch.randn(2, 3, 32, 32))
    assert set(losses) == {"loss", "mse", "ssim", "msgms", "rank"}
    parts = losses["mse"] + losses["ssim"] + losses["msgms"] + losses["rank"]
    torch.testing.assert_close(losses["loss"], parts)
    losses["loss"].backward()
    opt.step()
    after = fader.unet.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics too
    assert any(
        not torch.equal(a, b)
        for a, b in zip(decoder_before, fader.unet.decoder.parameters(), strict=True)
    )


# ------------------------------------------------------------------ wiring (§3.1-§3.2, eq. 1-4)


def _patch_errors(image: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Eq. 1 per 4 x 4 patch: the mean squared difference, B x N."""
    return (patch_tokens(image, 4) - patch_tokens(reconstruction, 4)).pow(2).mean(-1)


@pytest.fixture(scope="module")
def trained_ear(encoder) -> EAR:
    """EAR after a few steps on smooth images, so its reconstruction follows its input (an
    untrained U-Net returns nearly the same image for any input, which hides wiring faults)."""
    torch.manual_seed(2)
    ear = EAR(encoder, **TINY)
    images = torch.nn.functional.interpolate(torch.randn(4, 3, 8, 8), size=(32, 32)) * 0.5
    optimiser = torch.optim.Adam(ear.trainable_parameters(), lr=1e-2)
    for _ in range(30):
        optimiser.zero_grad()
        ear(images)["loss"].backward()
        optimiser.step()
    return ear.eval()


def _fader_on(ear: EAR) -> FADeR:
    fader = FADeR(ear.encoder, **TINY)
    fader.load_state_dict(ear.state_dict(), strict=False)
    return fader


def _spy_step(fader: FADeR, images: torch.Tensor, monkeypatch) -> dict[str, torch.Tensor]:
    """One training forward; what the MLP read, the ranking target, and the output."""
    seen: dict[str, torch.Tensor] = {}
    fader.predictor.register_forward_pre_hook(lambda _m, args: seen.setdefault("read", args[0]))
    fader.unet.head.register_forward_hook(lambda _m, _i, out: seen.__setitem__("head", out))

    def ranking(predicted, target, margin):
        seen["target"] = target
        return ranking_loss(predicted, target, margin)

    monkeypatch.setattr(fader_model, "ranking_loss", ranking)
    fader.train()(images)
    return seen


def test_the_ranking_target_is_the_error_of_ears_plain_reconstruction(
    trained_ear, monkeypatch
) -> None:
    """Eq. 1: I against EAR's reconstruction of I' without attenuation, BatchNorm in
    inference mode, from the weights before the step; neither I' nor the attenuated output."""
    fader = _fader_on(trained_ear)
    images = torch.randn(2, 3, 32, 32)
    reference = copy.deepcopy(fader).eval()
    views = reference.views(images)
    with torch.no_grad():
        plain = reference.unet(views.obfuscated)
        attenuated = reference.attenuated(views)[0]
    seen = _spy_step(fader, images, monkeypatch)
    expected = _patch_errors(views.clean, plain)
    torch.testing.assert_close(seen["target"], expected)
    for wrong in (views.obfuscated, attenuated, torch.sigmoid(seen["head"])):
        assert (_patch_errors(views.clean, wrong) - expected).abs().max() > 1e-3


def test_the_mlp_reads_the_obfuscated_image(trained_ear, monkeypatch) -> None:
    """§3.1, Fig. 3-4: the patches of I', in training and at inference, never of I."""
    fader = _fader_on(trained_ear)
    images = torch.randn(2, 3, 32, 32)
    views = fader.views(images)
    obfuscated, clean = patch_tokens(views.obfuscated, 4), patch_tokens(views.clean, 4)
    assert not torch.equal(obfuscated, clean)  # the attention mask hides something
    seen = _spy_step(fader, images, monkeypatch)
    assert torch.equal(seen["read"], obfuscated)
    read = []
    fader.predictor.register_forward_pre_hook(lambda _m, args: read.append(args[0]))
    fader.eval().anomaly_maps(images)
    assert len(read) == 1 and torch.equal(read[0], obfuscated)


def test_the_mlp_can_read_the_reconstruction_instead(encoder) -> None:
    _, fader = _pair(encoder, predictor_input="reconstruction")
    images = torch.randn(1, 3, 32, 36)
    assert fader.anomaly_maps(images)["msgms"].shape == (1, 32, 36)
    assert torch.isfinite(fader.train()(images)["loss"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strength": 1.5}, "strength 1.5 must lie in"),
        ({"mask": "binary"}, "mask 'binary'"),
        ({"scaling": "bicubic"}, "scaling 'bicubic'"),
        ({"predictor_input": "clean"}, "predictor_input 'clean'"),
    ],
)
def test_bad_fader_settings_are_named(encoder, kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model("fader", encoder, **TINY, **kwargs)


# ------------------------------------------------------------------ starting from an EAR run


def _compose(*overrides: str):
    with initialize_config_dir(str(CONFIGS), version_base=None):
        return compose("train", overrides=list(overrides))


def _tiny_run(run_dir: Path, model: str, *extra: str) -> Path:
    """A run folder with a randomly initialised model (no training needed here)."""
    config = _compose(
        f"model={model}",
        "encoder=tiny_random_vits8",
        "data=synthetic",
        "category=synthetic",
        "~preset",
        f"run_dir={run_dir}",
        "+input.resize=[32,40]",
        "model.widths=[4,8,8,16,16]",
        "model.mosaic_scale=4",
        *extra,
    )
    model_, identity = build_from_config(config)
    create_run(run_dir, config, identity["encoder_weights"])
    save_checkpoint(run_dir / "checkpoints" / "last", model_, meta={**identity, "step": 0})
    sign_run(run_dir)  # as its writer does
    return run_dir


@pytest.fixture(scope="module")
def ear_run(tmp_path_factory) -> Path:
    return _tiny_run(tmp_path_factory.mktemp("ear") / "A", "ear")


def test_fader_starts_from_the_ear_runs_weights(ear_run, tmp_path) -> None:
    fader_dir = _tiny_run(tmp_path / "B", "fader", f"model.ear_run={ear_run}")
    ear = load_run(ear_run).model
    fader = load_run(fader_dir).model
    assert isinstance(fader, FADeR)
    ear_state = ear.trainable_state_dict()
    fader_state = fader.trainable_state_dict()
    assert set(fader_state) - set(ear_state) == {
        k for k in fader_state if k.startswith("predictor.")
    }
    assert all(torch.equal(v, fader_state[k]) for k, v in ear_state.items())


def test_a_fader_run_loads_without_its_ear_run(ear_run, tmp_path) -> None:
    copy = tmp_path / "A_copy"
    shutil.copytree(ear_run, copy)
    fader_dir = _tiny_run(tmp_path / "B", "fader", f"model.ear_run={copy}")
    shutil.rmtree(copy)
    assert isinstance(load_run(fader_dir).model, FADeR)


def test_bad_ear_runs_are_refused_with_the_fix(ear_run, tmp_path) -> None:
    with pytest.raises(ConfigError, match="set model.ear_run=<its run folder>"):
        _tiny_run(tmp_path / "B1", "fader")
    with pytest.raises(ConfigError, match="not a run folder"):
        _tiny_run(tmp_path / "B2", "fader", f"model.ear_run={tmp_path / 'nowhere'}")
    with pytest.raises(ConfigError, match="add model.mosaic_scale=4"):
        _tiny_run(tmp_path / "B3", "fader", f"model.ear_run={ear_run}", "model.mosaic_scale=8")
    with pytest.raises(CheckpointError, match="encoder_weights: checkpoint has 'random:seed=1'"):
        _tiny_run(tmp_path / "B4", "fader", f"model.ear_run={ear_run}", "seed=2")
    inp_run = tmp_path / "inp"
    config = _compose("model=inpformer", "encoder=tiny_random", "~preset", f"run_dir={inp_run}")
    create_run(inp_run, config, "random:seed=1")
    with pytest.raises(
        ConfigError, match="holds model inpformer; model=fader needs a run of model ear"
    ):
        _tiny_run(tmp_path / "B5", "fader", f"model.ear_run={inp_run}")


def test_fader_config_and_paper_preset_compose() -> None:
    cfg = _compose("preset=fader_paper", "model.ear_run=runs/A")
    assert (cfg.model.name, cfg.model.ear_run, cfg.encoder.variant) == (
        "fader",
        "runs/A",
        "dino_vits8",
    )
    assert cfg.train.epochs == 100 and cfg.model.decoder_lr_scale == 0.1  # FADeR §4.1
    assert (cfg.model.mask, cfg.model.scaling) == ("soft", "nearest")  # FADeR Table 3
    ear = _compose("preset=ear_paper").model
    assert all(cfg.model[k] == v for k, v in ear.items() if k != "name")  # EAR's settings


def test_the_fader_demo_starts_from_the_ear_demos_run_with_its_settings() -> None:
    """ff-train preset=ear_demo, then preset=fader_demo: the FADeR run loads the EAR run."""
    ear, fader = _compose("preset=ear_demo"), _compose("preset=fader_demo")
    assert (ear.model.name, fader.model.name) == ("ear", "fader")
    assert fader.model.ear_run == ear.run_dir == "runs/ear_demo"
    assert all(fader.model[k] == v for k, v in ear.model.items() if k != "name")
    assert fader.encoder == ear.encoder and fader.input == ear.input
    assert all(fader.data[k] == ear.data[k] for k in ("kind", "seed", "image_size", "counts"))
    assert list(ear.model.widths) == [4, 8, 8, 16, 16]  # tiny: seconds on a CPU
    assert ear.encoder.variant == "tiny_random_vits8"


@pytest.mark.parametrize("preset", ["ear_paper", "fader_paper"])
def test_ear_and_fader_recipes_pass_the_up_front_checks(preset) -> None:
    from omegaconf import OmegaConf

    from filterformer.runs.checks import check_settings
    from filterformer.runs.train import _flatten

    settings = _flatten(OmegaConf.to_container(_compose(f"preset={preset}"), resolve=True))
    ranges = family(settings["model.name"]).setting_ranges
    check_settings(settings, family_ranges=ranges, patch_size=8)
    bad = {
        **settings,
        "model.attention_mass": 1.5,
        "model.mosaic_scale": 0,
        "model.unet_layout": "flat",
        "train.optimizer.schedule": "cosine",
    }
    named = [
        "model.attention_mass=1.5",
        "model.mosaic_scale=0",
        "model.unet_layout=flat",
        "train.optimizer.schedule=cosine",
    ]
    if preset == "fader_paper":
        bad |= {"model.strength": 2.0, "model.scaling": "bicubic", "model.shrink": "max"}
        named += ["model.strength=2.0", "model.shrink=max"]
    with pytest.raises(ConfigError) as error:
        check_settings(bad, family_ranges=ranges, patch_size=8)
    assert all(n in str(error.value) for n in named), str(error.value)


def test_attenuation_settings_are_checked_up_front() -> None:
    from filterformer.runs.checks import check_settings

    ranges = family("inpformer").setting_ranges
    with pytest.raises(ConfigError, match="model.attenuation=cpr .allowed: one of none, fader"):
        check_settings({"model.attenuation": "cpr"}, family_ranges=ranges)
