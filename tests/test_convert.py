"""ff-convert inp-former: official INP-Former checkpoints -> our encoder and trainable weights.

The official naming below is written down from reading luow23/INP-Former (HEAD 17d2653):
`torch.save(model.state_dict())` of its `INP_Former` module, whose encoder is the vendored
DINOv2 `DinoVisionTransformer` (img_size 518, block_chunks 0, 4 registers) and whose trainable
parts are `bottleneck` (ModuleList of one Mlp), `aggregation` (ModuleList of one
Aggregation_Block), `decoder` (ModuleList of 8 Prototype_Blocks) and `prototype_token` (the
first element of a ParameterList, stored as a plain attribute, hence a top-level key).
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import save_file
from sklearn.metrics import roc_auc_score
from timm.models.vision_transformer import checkpoint_filter_fn

from filterformer.cli.convert import main as convert_main
from filterformer.cli.eval import main as eval_main
from filterformer.convert.inp_former import convert_state_dict, official_layout
from filterformer.data.mvtec_ad import MVTecAD
from filterformer.errors import CheckpointError
from filterformer.evaluation.protocol import METRICS, InpFormerMetrics
from filterformer.inference.predict import Smoothing
from filterformer.models import ENCODERS, build_model, weights_sha256
from filterformer.models.encoder import DinoEncoder
from filterformer.runs.run import load_run

Factory = Callable[[tuple[int, ...]], torch.Tensor]


def official_shapes(
    dim: int, depth: int, heads: int, num_inps: int = 6
) -> dict[str, tuple[int, ...]]:
    """Every key of an official `model.pth` with its shape (DINOv2 MLP ratio 4, 37 x 37 grid)."""
    shapes: dict[str, tuple[int, ...]] = {
        "encoder.cls_token": (1, 1, dim),
        "encoder.pos_embed": (1, 1 + 37 * 37, dim),
        "encoder.register_tokens": (1, 4, dim),
        "encoder.mask_token": (1, dim),
        "encoder.patch_embed.proj.weight": (dim, 3, 14, 14),
        "encoder.patch_embed.proj.bias": (dim,),
        "encoder.norm.weight": (dim,),
        "encoder.norm.bias": (dim,),
        "prototype_token": (num_inps, dim),
        "bottleneck.0.fc1.weight": (4 * dim, dim),
        "bottleneck.0.fc1.bias": (4 * dim,),
        "bottleneck.0.fc2.weight": (dim, 4 * dim),
        "bottleneck.0.fc2.bias": (dim,),
    }
    mlp = {
        "mlp.fc1.weight": (4 * dim, dim),
        "mlp.fc1.bias": (4 * dim,),
        "mlp.fc2.weight": (dim, 4 * dim),
        "mlp.fc2.bias": (dim,),
    }
    norms = {f"norm{i}.{p}": (dim,) for i in (1, 2) for p in ("weight", "bias")}
    proj = {"attn.proj.weight": (dim, dim), "attn.proj.bias": (dim,)}
    for i in range(depth):
        block = {
            **norms,
            **proj,
            **mlp,
            "attn.qkv.weight": (3 * dim, dim),
            "attn.qkv.bias": (3 * dim,),
            "ls1.gamma": (dim,),
            "ls2.gamma": (dim,),
        }
        shapes |= {f"encoder.blocks.{i}.{k}": v for k, v in block.items()}
    cross = {
        **norms,
        **proj,
        **mlp,
        "attn.q.weight": (dim, dim),
        "attn.q.bias": (dim,),
        "attn.kv.weight": (2 * dim, dim),
        "attn.kv.bias": (2 * dim,),
    }
    shapes |= {f"aggregation.0.{k}": v for k, v in cross.items()}
    for i in range(8):
        shapes |= {f"decoder.{i}.{k}": v for k, v in cross.items()}
        shapes[f"decoder.{i}.attn.learn_scale"] = (heads, 1, 1)
    return shapes


def official_state_dict(variant: str, make: Factory, num_inps: int = 6) -> dict[str, torch.Tensor]:
    spec = ENCODERS[variant]
    return {
        k: make(s)
        for k, s in official_shapes(spec.embed_dim, spec.depth, spec.num_heads, num_inps).items()
    }


def meta(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.empty(shape, device="meta")


@pytest.fixture
def tiny_official() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return official_state_dict(
        "tiny_random", lambda s: torch.randn(s, generator=generator), num_inps=5
    )


@pytest.mark.parametrize(
    "variant", ["dinov2_vits14_reg", "dinov2_vitb14_reg", "dinov2_vitl14_reg", "tiny_random"]
)
def test_layout_is_the_official_naming(variant: str) -> None:
    spec = ENCODERS[variant]
    encoder, trainable = official_layout(variant, num_inps=6)
    layout = {entry.official: entry.shape for entry in encoder + trainable}
    assert layout == official_shapes(spec.embed_dim, spec.depth, spec.num_heads)


@pytest.mark.parametrize("variant", ["dinov2_vits14_reg", "dinov2_vitb14_reg", "dinov2_vitl14_reg"])
def test_real_variant_maps_onto_timm_names_and_shapes(variant: str) -> None:
    spec = ENCODERS[variant]
    converted = convert_state_dict(official_state_dict(variant, meta), variant)
    with torch.device("meta"):
        vit = timm.create_model(
            spec.arch,
            embed_dim=spec.embed_dim,
            depth=spec.depth,
            num_heads=spec.num_heads,
            img_size=518,
            num_classes=0,
        )
    timm_shapes = {k: v.shape for k, v in vit.state_dict().items()}
    assert {k: v.shape for k, v in converted.encoder.items()} == timm_shapes
    assert converted.num_inps == 6


def test_encoder_mapping_agrees_with_timm_meta_checkpoint_filter(tiny_official) -> None:
    """Stripping `encoder.` gives a Meta DINOv2 checkpoint; timm's own filter must agree with us."""
    converted = convert_state_dict(tiny_official, "tiny_random")
    meta_names = {
        k.removeprefix("encoder."): v for k, v in tiny_official.items() if k.startswith("encoder.")
    }
    vit = timm.create_model(
        ENCODERS["tiny_random"].arch,
        embed_dim=64,
        depth=10,
        num_heads=2,
        img_size=518,
        num_classes=0,
    )
    reference = checkpoint_filter_fn(meta_names, vit)
    assert converted.encoder.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(converted.encoder[name], tensor), name


def test_round_trip_gives_identical_tensors(tiny_official, tmp_path) -> None:
    converted = convert_state_dict(tiny_official, "tiny_random")
    weights = tmp_path / "encoder.safetensors"
    save_file(converted.encoder, str(weights))
    encoder = DinoEncoder("tiny_random", weights=weights, official_pos_interp=True)
    model = build_model("inpformer", encoder, num_inps=converted.num_inps)
    model.load_trainable_state_dict(converted.trainable)
    ours = model.state_dict()
    renamed = {
        "prototype_token": "extractor.queries",
        "encoder.register_tokens": "encoder.vit.reg_token",
        "bottleneck.0.fc1.weight": "bottleneck.fc1.weight",
        "aggregation.0.attn.kv.weight": "extractor.blocks.0.attn.kv.weight",
        "decoder.7.attn.learn_scale": "decoder.blocks.7.attn.scale",
        "decoder.0.mlp.fc2.bias": "decoder.blocks.0.mlp.fc2.bias",
        "encoder.blocks.9.ls2.gamma": "encoder.vit.blocks.9.ls2.gamma",
        "encoder.patch_embed.proj.weight": "encoder.vit.patch_embed.proj.weight",
    }
    for official, name in renamed.items():
        assert torch.equal(ours[name], tiny_official[official]), official
    pos = tiny_official["encoder.pos_embed"]
    assert torch.equal(ours["encoder.vit.pos_embed"], pos[:, 1:])
    assert torch.equal(
        ours["encoder.vit.cls_token"], tiny_official["encoder.cls_token"] + pos[:, :1]
    )
    assert len(converted.trainable) == len(model.trainable_state_dict())
    for name, tensor in model.trainable_state_dict().items():
        assert torch.equal(tensor, converted.trainable[name]), name


def test_another_variant_is_refused_by_name() -> None:
    small = official_state_dict("dinov2_vits14_reg", meta)
    with pytest.raises(
        CheckpointError,
        match="dinov2_vits14_reg.*not dinov2_vitb14_reg.*--encoder dinov2_vits14_reg",
    ):
        convert_state_dict(small, "dinov2_vitb14_reg", source="model.pth")


def test_a_dinomaly_checkpoint_is_refused_by_name(tiny_official) -> None:
    dinomaly = {
        k: v
        for k, v in tiny_official.items()
        if k != "prototype_token" and not k.startswith("aggregation.")
    }
    with pytest.raises(CheckpointError, match=r"model\.pth is a Dinomaly"):
        convert_state_dict(dinomaly, "tiny_random", source="model.pth")


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (
            lambda sd: sd.update({"decoder.8.norm1.weight": torch.ones(64)}),
            "unexpected: decoder.8.norm1.weight",
        ),
        (lambda sd: sd.pop("decoder.3.attn.learn_scale"), "missing: decoder.3.attn.learn_scale"),
        (lambda sd: sd.pop("encoder.mask_token"), "missing: encoder.mask_token"),
        (
            lambda sd: sd.update({"bottleneck.0.fc2.bias": torch.ones(65)}),
            r"wrong shape: bottleneck.0.fc2.bias \(65,\) \(expected \(64,\)\)",
        ),
    ],
)
def test_strict_every_difference_is_named(tiny_official, edit, named: str) -> None:
    edit(tiny_official)
    with pytest.raises(CheckpointError, match=named):
        convert_state_dict(tiny_official, "tiny_random")


@pytest.mark.slow
def test_ff_convert_writes_a_parity_run_that_load_run_uses(tiny_official, tmp_path, capsys) -> None:
    checkpoint = tmp_path / "model.pth"
    torch.save(tiny_official, checkpoint)
    run_dir = tmp_path / "run"
    argv = [
        "inp-former",
        str(checkpoint),
        "--encoder",
        "tiny_random",
        "--category",
        "bottle",
        "--out",
        str(run_dir),
    ]
    assert convert_main(argv) == 0
    run = load_run(run_dir)
    config = run.config
    assert config.model.name == "inpformer" and config.model.num_inps == 5
    assert config.encoder.official_pos_interp is True
    assert (list(config.input.resize), list(config.input.crop)) == ([448, 448], [392, 392])
    assert run.tiling is None and run.mode == "inp" and run.category == "bottle"
    assert json.loads((run_dir / "versions.json").read_text())["encoder_weights"] == weights_sha256(
        run_dir / "encoder.safetensors"
    )
    ours = run.model.state_dict()
    assert torch.equal(ours["extractor.queries"], tiny_official["prototype_token"])
    assert torch.equal(
        ours["encoder.vit.blocks.4.attn.qkv.weight"],
        tiny_official["encoder.blocks.4.attn.qkv.weight"],
    )
    assert run.model.anomaly_maps(torch.randn(1, 3, 392, 392))["inp"].shape == (1, 392, 392)
    # the official evaluation protocol (the INP-Former code's evaluation)
    assert run.geometry.interpolation == "pil_bilinear"
    assert run.smoothing == Smoothing(sigma=4.0, kernel_size=5, padding="zero", size=(256, 256))
    assert run.image_score == "top1"
    # an existing run is never overwritten silently
    assert convert_main(argv) == 2
    assert "already holds a run" in capsys.readouterr().err
    # the encoder file is named relative to the run folder, so the folder can be moved
    assert OmegaConf.load(run_dir / "config.yaml").encoder.weights == "encoder.safetensors"
    moved = shutil.move(run_dir, tmp_path / "moved")
    again = load_run(moved)
    assert again.config.encoder.weights == str(tmp_path / "moved" / "encoder.safetensors")
    assert torch.equal(again.model.state_dict()["extractor.queries"], ours["extractor.queries"])


def test_ff_convert_names_the_bad_file(tmp_path, capsys) -> None:
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"not a checkpoint")
    argv = [
        "inp-former",
        str(checkpoint),
        "--encoder",
        "tiny_random",
        "--category",
        "x",
        "--out",
        str(tmp_path / "run"),
    ]
    assert convert_main(argv) == 2
    assert f"{checkpoint}: not a readable PyTorch state dict" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def official_input(image: np.ndarray) -> torch.Tensor:
    """The INP-Former code's image transform: PIL bilinear 448, ToTensor, crop 392, normalise."""
    resized = Image.fromarray(image).resize((448, 448), Image.BILINEAR)
    tensor = torch.from_numpy(np.asarray(resized, np.float32) / 255.0).permute(2, 0, 1)
    tensor = tensor[:, 28:420, 28:420]
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return (tensor - mean[:, None, None]) / std[:, None, None]


def official_evaluation_map(amap: torch.Tensor) -> torch.Tensor:
    """The code's evaluation map: bilinear to 256, 5 x 5 Gaussian (sigma 4) as one 2-D conv."""
    small = F.interpolate(amap[:, None], size=256, mode="bilinear", align_corners=False)
    offsets = torch.arange(5, dtype=torch.float32) - 2
    grid = torch.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * 4.0**2))
    return F.conv2d(small, (grid / grid.sum())[None, None], padding=2)[:, 0]


def official_mask(mask: np.ndarray) -> np.ndarray:
    """The code's GT: PIL bilinear 448 on the 0/255 mask, crop 392, nearest 256, > 0.5."""
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((448, 448), Image.BILINEAR)
    tensor = torch.from_numpy(np.asarray(resized, np.float32) / 255.0)[28:420, 28:420]
    return (F.interpolate(tensor[None, None], size=256, mode="nearest")[0, 0] > 0.5).numpy()


@pytest.mark.slow
def test_converted_checkpoint_evaluates_with_the_inpformer_protocol(
    tiny_official, mvtec_ad_root, tmp_path, capsys
) -> None:
    """ff-convert then ff-eval --split test: the metrics of the 256 px maps made by hand."""
    torch.save(tiny_official, tmp_path / "model.pth")
    run_dir = tmp_path / "run"
    convert = ["inp-former", str(tmp_path / "model.pth"), "--encoder", "tiny_random"]
    assert convert_main([*convert, "--category", "carpet", "--out", str(run_dir)]) == 0
    code = eval_main(
        ["--run", str(run_dir), "--data-root", str(mvtec_ad_root), "--split", "test"]
        + ["--no-progress"]
    )
    assert code == 0
    table = capsys.readouterr().out
    assert "split: test, protocol: inpformer" in table
    headers = "I-AUROC I-AP I-F1max P-AUROC P-AP P-F1max AU-PRO@0.3".split()
    assert " ".join(f"{h} [%]" for h in headers) in " ".join(table.split())
    document = json.loads(
        (run_dir.with_name(run_dir.name + "_eval") / "test" / "metrics.json").read_text()
    )
    assert (document["protocol"], document["image_score"]) == ("inpformer", "top1")
    row = document["categories"]["carpet"]
    with open(
        run_dir.with_name(run_dir.name + "_eval") / "test" / "scores.csv", newline=""
    ) as handle:
        scores = list(csv.DictReader(handle))

    run = load_run(run_dir)
    assert (run.config.data.kind, run.protocol, run.image_score) == (
        "mvtec_ad",
        "inpformer",
        "top1",
    )
    samples = MVTecAD(mvtec_ad_root, "carpet", "test")
    inputs = torch.stack([official_input(s.load_image()) for s in samples])
    with torch.no_grad():
        maps = official_evaluation_map(run.model.anomaly_maps(inputs)["inp"]).numpy()
    gts = np.stack([official_mask(s.load_mask()) for s in samples])
    labels = [s.label for s in samples]
    top = [float(np.sort(m.ravel())[::-1][: int(m.size * 0.01)].mean()) for m in maps]
    assert [r["image"] for r in scores] == [f"{s.relpath}.png" for s in samples]
    assert [int(r["label"]) for r in scores] == labels == [1, 1, 0, 0, 1]
    np.testing.assert_allclose([float(r["score"]) for r in scores], top, rtol=1e-5)
    by_hand = InpFormerMetrics()
    for amap, gt, score, label in zip(maps, gts, top, labels, strict=True):
        by_hand.update(amap, gt, score, label, "by hand")
    expected = by_hand.row("carpet")
    assert expected["image_auroc"] == pytest.approx(roc_auc_score(labels, top))
    for key, _ in METRICS:
        assert row[key] == pytest.approx(expected[key], abs=1e-5), key


@pytest.mark.slow
def test_ff_convert_data_names_the_benchmark(tiny_official, tmp_path) -> None:
    torch.save(tiny_official, tmp_path / "model.pth")
    argv = ["inp-former", str(tmp_path / "model.pth"), "--encoder", "tiny_random"]
    visa = ["--category", "candle", "--data", "visa", "--out", str(tmp_path / "visa")]
    assert convert_main([*argv, *visa]) == 0
    config = OmegaConf.load(tmp_path / "visa" / "config.yaml")
    assert (config.data.kind, config.category.name, config.eval.protocol) == (
        "visa",
        "candle",
        "inpformer",
    )
    own = [*argv, "--category", "bolts", "--data", "mvtec_ad2", "--out", str(tmp_path / "ad2")]
    assert convert_main(own) == 0  # a category without a config of its own keeps its name
    config = OmegaConf.load(tmp_path / "ad2" / "config.yaml")
    assert (config.data.kind, config.category.name) == ("mvtec_ad2", "bolts")
