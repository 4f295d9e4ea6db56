"""Numerical parity of our INP-Former with the official code, through ff-convert.

    python scripts/parity_inpformer.py /path/to/INP-Former [--encoder dinov2_vits14_reg]
        [--images 2] [--seed 0] [--work /tmp/inpformer_parity]

The argument is a local checkout of luow23/INP-Former (never part of this repository). The
script builds the official `INP_Former` exactly as its single-class script does (vendored
DINOv2 with img_size 518, 4 registers, no antialias, offset 0.1; one Aggregation_Block; an
Mlp bottleneck; 8 Prototype_Blocks; LayerNorm eps 1e-8), with random weights because no
trained checkpoint is available offline: every tensor is redrawn from a seeded generator
(LayerScale gammas in [0.1, 1] instead of DINOv2's 1e-8 init, so the encoder is not the
identity). It saves `model.pth`, converts it with `ff-convert inp-former` into a run folder,
loads that with `load_run`, and feeds both models the same images, printing max |difference| of

- the encoder taps (official blocks 2..9 or 4..18 without cls/registers vs DinoEncoder),
- the 392 x 392 anomaly maps (official `cal_anomaly_maps` vs `INPFormer.anomaly_maps`),
- the INP-Former evaluation maps (256 x 256, Gaussian 5 x 5 sigma 4, zero padding) and the
  top-1 % scores: official post-processing of the official map vs ff-eval's inpformer
  protocol (`PROTOCOL_SMOOTHING`, the run's image score) on our map,
- the network inputs of the official torchvision pipeline (PIL resize 448, crop 392) and of
  the run's InputGeometry (`pil_bilinear` in parity mode),
- end to end: each model on its own pipeline from the same uint8 image to the 256 x 256
  evaluation map and the image score (official: torchvision transform, model,
  `cal_anomaly_maps`, official post-processing; ours: the run's geometry, model, fusion,
  smoothing and image score).

Environment: XFORMERS_DISABLED=1 (the vendored DINOv2 then uses plain PyTorch attention).
The official `utils.py` imports packages that only its metrics and augmentation use
(`adeval`, `pandas`, `kornia`); when they are missing they are replaced by empty modules in
`sys.modules`. Nothing is installed and nothing of the official code is copied.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import types
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from filterformer.cli.convert import main as ff_convert
from filterformer.evaluation.image_metrics import TOP_FRACTION
from filterformer.evaluation.protocol import image_score
from filterformer.inference.predict import smooth_maps
from filterformer.inference.protocol_maps import PROTOCOL_SMOOTHING
from filterformer.models.encoder import ENCODERS
from filterformer.models.fusion import fuse_maps
from filterformer.runs.run import Run, load_run

OFFICIAL_ARCH = {
    "dinov2_vits14_reg": "small",
    "dinov2_vitb14_reg": "base",
    "dinov2_vitl14_reg": "large",
}
UNUSED_OFFICIAL_IMPORTS = ("adeval", "pandas", "kornia")
RESIZE, CROP, EVAL_SIZE = 448, 392, 256  # INP-Former protocol (the INP-Former code's evaluation)


def import_official(repo: Path) -> types.SimpleNamespace:
    """Import the official model, DINOv2, evaluation helpers and transforms from `repo`."""
    os.environ["XFORMERS_DISABLED"] = "1"
    for name in UNUSED_OFFICIAL_IMPORTS:
        if importlib.util.find_spec(name) is None:
            stub = types.ModuleType(name)
            stub.EvalAccumulatorCuda = None  # the one name `from adeval import ...` needs
            sys.modules[name] = stub
    sys.path.insert(0, str(repo))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return types.SimpleNamespace(
            dinov2=importlib.import_module("dinov2.models.vision_transformer"),
            uad=importlib.import_module("models.uad"),
            layers=importlib.import_module("models.vision_transformer"),
            utils=importlib.import_module("utils"),
            dataset=importlib.import_module("dataset"),
        )


def build_official(off: types.SimpleNamespace, variant: str, num_inps: int) -> torch.nn.Module:
    """The official INP_Former for `variant`, wired as INP_Former_Single_Class.py wires it."""
    spec = ENCODERS[variant]
    encoder = off.dinov2.__dict__[f"vit_{OFFICIAL_ARCH[variant]}"](
        patch_size=14,
        img_size=518,
        block_chunks=0,
        init_values=1e-8,
        num_register_tokens=4,
        interpolate_antialias=False,
        interpolate_offset=0.1,
    )
    dim, heads = spec.embed_dim, spec.num_heads
    norm = partial(torch.nn.LayerNorm, eps=1e-8)
    block_args = dict(dim=dim, num_heads=heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=norm)
    prototypes = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(num_inps, dim))])
    model = off.uad.INP_Former(
        encoder=encoder,
        bottleneck=torch.nn.ModuleList([off.layers.Mlp(dim, dim * 4, dim, drop=0.0)]),
        aggregation=torch.nn.ModuleList([off.layers.Aggregation_Block(**block_args)]),
        decoder=torch.nn.ModuleList([off.layers.Prototype_Block(**block_args) for _ in range(8)]),
        target_layers=list(spec.taps),
        remove_class_token=True,
        fuse_layer_encoder=[[0, 1, 2, 3], [4, 5, 6, 7]],
        fuse_layer_decoder=[[0, 1, 2, 3], [4, 5, 6, 7]],
        prototype_token=prototypes,
    )
    return model.eval()


@torch.no_grad()
def randomize(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Redraw every tensor so that no mapping error can hide behind a constant init."""
    for name, tensor in model.state_dict().items():
        if name.endswith("gamma"):
            value = 0.1 + 0.9 * torch.rand(tensor.shape, generator=generator)
        elif name.endswith("learn_scale"):
            value = 0.5 + torch.rand(tensor.shape, generator=generator)
        elif "norm" in name and name.endswith("weight"):
            value = 1 + 0.1 * torch.randn(tensor.shape, generator=generator)
        elif tensor.ndim == 2 and name.endswith("weight"):
            value = torch.randn(tensor.shape, generator=generator) / tensor.shape[1] ** 0.5
        else:
            value = 0.02 * torch.randn(tensor.shape, generator=generator)
        tensor.copy_(value)


def random_images(count: int, generator: np.random.Generator) -> list[np.ndarray]:
    """Smooth random RGB images (upsampled noise plus fine noise), 600 x 520, uint8."""
    images = []
    for _ in range(count):
        coarse = Image.fromarray(generator.integers(0, 256, (12, 10, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((520, 600), Image.BICUBIC), dtype=np.float32)
        noisy = smooth + generator.normal(0, 8, smooth.shape)
        images.append(np.clip(noisy, 0, 255).astype(np.uint8))
    return images


@torch.no_grad()
def official_taps(model: torch.nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """The official encoder loop of INP_Former.forward, taps without cls and registers."""
    x = model.encoder.prepare_tokens(images)
    taps = []
    for index, block in enumerate(model.encoder.blocks[: model.target_layers[-1] + 1]):
        x = block(x)
        if index in model.target_layers:
            taps.append(x[:, 1 + model.encoder.num_register_tokens :])
    return taps


def evaluation_map(
    off: types.SimpleNamespace, maps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Official evaluation_batch post-processing of B x 1 x H x W maps: 256 map, top-1 % score."""
    small = F.interpolate(maps, size=EVAL_SIZE, mode="bilinear", align_corners=False)
    smooth = off.utils.get_gaussian_kernel(kernel_size=5, sigma=4)(small)
    flat = smooth.flatten(1)
    top = torch.sort(flat, dim=1, descending=True)[0][:, : int(flat.shape[1] * TOP_FRACTION)]
    return smooth, top.mean(dim=1)


@torch.no_grad()
def our_evaluation_map(run: Run, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ff-eval's inpformer protocol on network inputs: fused map, 256 map, run's image score."""
    fused = fuse_maps(run.model.anomaly_maps(inputs), run.mode, run.map_stats).float()
    smooth = smooth_maps(fused, PROTOCOL_SMOOTHING)
    return smooth.unsqueeze(1), torch.tensor(
        [image_score(m.numpy(), run.image_score) for m in smooth]
    )


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("official_repo", type=Path, help="local checkout of luow23/INP-Former")
    parser.add_argument("--encoder", default="dinov2_vits14_reg", choices=sorted(OFFICIAL_ARCH))
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--num-inps", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/inpformer_parity"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_grad_enabled(False)
    off = import_official(args.official_repo.resolve())
    generator = torch.Generator().manual_seed(args.seed)
    official = build_official(off, args.encoder, args.num_inps)
    randomize(official, generator)
    args.work.mkdir(parents=True, exist_ok=True)
    checkpoint = args.work / "model.pth"
    torch.save(official.state_dict(), checkpoint)
    run_dir = args.work / f"run_{args.encoder}"
    convert_args = [
        "inp-former",
        str(checkpoint),
        "--encoder",
        args.encoder,
        "--out",
        str(run_dir),
        "--category",
        "parity",
        "--force",
    ]
    if ff_convert(convert_args) != 0:
        sys.exit("ff-convert refused the official checkpoint (message above)")
    run = load_run(run_dir)

    images = random_images(args.images, np.random.default_rng(args.seed))
    official_transform, _ = off.dataset.get_data_transforms(RESIZE, CROP)
    inputs = torch.stack([official_transform(Image.fromarray(im)) for im in images])
    ours_inputs = torch.stack([run.geometry.to_tensor(im) for im in images])

    reference_taps = official_taps(official, inputs)
    taps_diff = max(
        max_diff(a, b) for a, b in zip(reference_taps, run.model.encoder(inputs), strict=True)
    )
    taps_scale = max(float(t.abs().max()) for t in reference_taps)
    en, de, _ = official(inputs)
    official_map, _ = off.utils.cal_anomaly_maps(en, de, CROP)
    ours_map = run.model.anomaly_maps(inputs)["inp"].unsqueeze(1)
    official_eval, official_score = evaluation_map(off, official_map)
    ours_eval, ours_score = our_evaluation_map(run, inputs)
    own_pipeline_map = run.model.anomaly_maps(ours_inputs)["inp"].unsqueeze(1)
    end_to_end_eval, end_to_end_score = our_evaluation_map(run, ours_inputs)

    print(f"encoder {args.encoder}, {args.images} images {tuple(inputs.shape)}, seed {args.seed}")
    print(f"official map range [{official_map.min():.4f}, {official_map.max():.4f}]")
    print(f"max |diff| encoder taps                 {taps_diff:.3e} (max |tap| {taps_scale:.2f})")
    print(f"max |diff| 392 maps (same input)        {max_diff(official_map, ours_map):.3e}")
    print(f"max |diff| 256 eval maps (same input)   {max_diff(official_eval, ours_eval):.3e}")
    print(f"max |diff| image scores (same input)    {max_diff(official_score, ours_score):.3e}")
    print(f"ours: {run.geometry}, {run.smoothing}, image score {run.image_score}")
    print(f"max |diff| network inputs               {max_diff(inputs, ours_inputs):.3e}")
    print(f"max |diff| 392 maps (own pipelines)     {max_diff(official_map, own_pipeline_map):.3e}")
    end_to_end = max_diff(official_eval, end_to_end_eval)
    end_to_end_scores = max_diff(official_score, end_to_end_score)
    print(f"max |diff| 256 eval maps (end to end)   {end_to_end:.3e}")
    print(f"max |diff| image scores (end to end)    {end_to_end_scores:.3e}")


if __name__ == "__main__":
    main()
