"""Parity of the multi-class setting with the INP-Former code (INP_Former_Multi_Class.py).

- Evaluation: one converted multi-class checkpoint, evaluated by ff-eval, gives per category
  the seven metrics of the official per-category evaluation of that model (its transform,
  ``cal_anomaly_maps``, 256 px Gaussian map, GT at 0.5, top-1 % score), and their
  unweighted mean; the same as converting it once per category.
- Training: ff-train setting=multi_class on two categories equals, step for step, the
  official loop written out here (the categories' training images concatenated, shuffled,
  StableAdamW, WarmCosineScheduler, soft-mining hook + 0.2 x the INP coherence loss, global
  gradient-norm clip 0.1) run on the same concatenated data order.
"""

from __future__ import annotations

import csv
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from safetensors.torch import load_file
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from conftest import make_mvtec_ad_tree
from filterformer.cli.convert import main as convert_main
from filterformer.cli.eval import main as eval_main
from filterformer.cli.train import main as train_main
from filterformer.data.mvtec_ad import MVTecAD
from filterformer.evaluation.protocol import METRICS, InpFormerMetrics
from filterformer.runs.run import build_from_config, build_geometry, load_runs
from filterformer.training.optim import StableAdamW
from test_convert import official_evaluation_map, official_input, official_mask, official_state_dict

pytestmark = pytest.mark.slow

ITEMS = ["carpet", "grid"]


@pytest.fixture
def two_categories(tmp_path: Path) -> Path:
    """An MVTec AD root with two generated categories (different images)."""
    root = tmp_path / "mvtec_ad"
    for seed, category in enumerate(ITEMS):
        make_mvtec_ad_tree(root, category, seed=seed)
    return root


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    """INP-Former code's f1_score_max: max 2PR / (P + R + 1e-7) without the last point."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    return float((2 * precision * recall / (precision + recall + 1e-7))[:-1].max())


def official_category(model: torch.nn.Module, root: Path, category: str) -> dict[str, float]:
    """The official evaluation_batch of one category, written out (exact metrics by sklearn,
    the 200-bin ADEval ones by InpFormerMetrics, tested against threshold sweeps elsewhere)."""
    samples = MVTecAD(root, category, "test")
    inputs = torch.stack([official_input(s.load_image()) for s in samples])
    with torch.no_grad():
        maps = official_evaluation_map(model.anomaly_maps(inputs)["inp"]).numpy()
    gts = np.stack([official_mask(s.load_mask()) for s in samples])
    labels = np.array([s.label for s in samples])
    flat = maps.reshape(len(maps), -1)
    scores = np.sort(flat, axis=1)[:, ::-1][:, : int(flat.shape[1] * 0.01)].mean(axis=1)
    binned = InpFormerMetrics()
    for amap, gt, score, label in zip(maps, gts, scores, labels, strict=True):
        binned.update(amap, gt, float(score), int(label), category)
    row = binned.row(category)
    row["image_auroc"] = roc_auc_score(labels, scores)
    row["image_ap"] = average_precision_score(labels, scores)
    row["image_f1_max"] = f1_max(labels, scores)
    row["pixel_f1_max"] = f1_max(gts.ravel(), maps.ravel())
    return row


def test_one_multi_class_checkpoint_evaluates_as_the_official_script(
    two_categories: Path, tmp_path: Path, capsys
):
    generator = torch.Generator().manual_seed(0)
    weights = official_state_dict("tiny_random", lambda s: torch.randn(s, generator=generator))
    torch.save(weights, tmp_path / "model.pth")
    convert = ["inp-former", str(tmp_path / "model.pth"), "--encoder", "tiny_random"]
    run_dir = tmp_path / "multi"
    multi = ["--setting", "multi_class", "--categories", *ITEMS, "--out", str(run_dir)]
    assert convert_main([*convert, *multi]) == 0
    assert len(list(run_dir.glob("*.safetensors"))) == 1  # one copy of the encoder
    assert eval_main(["--run", str(run_dir), "--data-root", str(two_categories)]) == 0
    document = json.loads((tmp_path / "multi_eval" / "test" / "metrics.json").read_text())
    rows = document["categories"]
    assert list(rows) == ITEMS
    model = load_runs(run_dir)[0].model
    for category in ITEMS:
        official = official_category(model, two_categories, category)
        for key, _ in METRICS:
            assert rows[category][key] == pytest.approx(official[key], abs=1e-4), (category, key)
    for key, _ in METRICS:  # the official "Mean" line: unweighted over the categories
        assert document["mean"][key] == pytest.approx(np.mean([rows[c][key] for c in ITEMS]))
    for category in ITEMS:  # the per-category conversion reports the same row
        single = tmp_path / category
        assert convert_main([*convert, "--category", category, "--out", str(single)]) == 0
        assert eval_main(["--run", str(single), "--data-root", str(two_categories)]) == 0
        path = tmp_path / f"{category}_eval" / "test" / "metrics.json"
        row = json.loads(path.read_text())["categories"][category]
        for key, _ in METRICS:
            assert row[key] == pytest.approx(rows[category][key], abs=1e-9), (category, key)
    capsys.readouterr()


def official_soft_mining(
    a: list[torch.Tensor], b: list[torch.Tensor], y: float = 3
) -> torch.Tensor:
    """utils.global_cosine_hm_adaptive: global cosine loss, gradient of b scaled by a hook."""
    loss = 0
    for a_, b_ in zip(a, b, strict=True):
        a_ = a_.detach()
        with torch.no_grad():
            point_dist = 1 - F.cosine_similarity(a_, b_).unsqueeze(1)
        factor = (point_dist / point_dist.mean()) ** y
        loss += torch.mean(
            1 - F.cosine_similarity(a_.reshape(len(a_), -1), b_.reshape(len(b_), -1))
        )
        b_.register_hook(partial(lambda grad, factor: grad * factor.expand_as(grad), factor=factor))
    return loss / len(a)


def official_gather_loss(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """uad.INP_Former.gather_loss: mean over tokens of the distance to the nearest INP."""
    distribution = 1.0 - F.cosine_similarity(query.unsqueeze(2), keys.unsqueeze(1), dim=-1)
    return distribution.min(dim=2).values.mean()


def warm_cosine(base: float, final: float, total: int, warmup: int) -> np.ndarray:
    """utils.WarmCosineScheduler's schedule."""
    iters = np.arange(total - warmup)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))
    return np.concatenate((np.linspace(0, base, warmup), cosine))


def test_multi_class_training_is_the_official_loop_step_for_step(
    two_categories: Path, tmp_path: Path
):
    run_dir = tmp_path / "run"
    overrides = [
        "preset=demo",
        "model=inpformer",
        "data=mvtec_ad",
        f"data.root={two_categories}",
        "setting=multi_class",
        f"setting.categories=[{','.join(ITEMS)}]",
        "input.resize=[56,56]",
        "train.augment=null",
        "train.epochs=2",
        "train.batch_size=4",
        "train.optimizer.warmup_iters=2",
        "eval.every=0",
        "progress=false",
        f"run_dir={run_dir}",
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["ff-train", *overrides])
        train_main()
    config = OmegaConf.load(run_dir / "config.yaml")
    with open(run_dir / "train_log.csv", newline="") as handle:
        ours = [float(row["loss"]) for row in csv.DictReader(handle)]

    # the official script on the same data: ConcatDataset of the categories' sorted images
    model, _ = build_from_config(config)  # the run's initial weights (seeded the same way)
    geometry = build_geometry(config)
    images = torch.stack(
        [
            geometry.to_tensor(s.load_image())
            for c in ITEMS
            for s in MVTecAD(two_categories, c, "train")
        ]
    )
    params = model.trainable_parameters()
    opt = config.train.optimizer
    optimizer = StableAdamW(
        params,
        lr=opt.lr,
        betas=tuple(opt.betas),
        weight_decay=opt.weight_decay,
        eps=opt.eps,
        amsgrad=opt.amsgrad,
        clip_threshold=opt.clip_threshold,
    )
    steps_per_epoch = len(images) // 4  # drop_last
    schedule = warm_cosine(opt.lr, opt.final_lr, 2 * steps_per_epoch, opt.warmup_iters)
    official, step = [], 0
    model.train()
    for epoch in range(2):  # the loader's order: a seeded permutation per epoch
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(1 + epoch))
        for batch in order[: steps_per_epoch * 4].reshape(steps_per_epoch, 4):
            for group in optimizer.param_groups:
                group["lr"] = float(schedule[step])
            feats = model.features(images[batch])
            loss = official_soft_mining(feats.enc_groups, feats.dec_groups)
            loss = loss + 0.2 * official_gather_loss(feats.fused, feats.inps)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, max_norm=0.1)
            optimizer.step()
            official.append(loss.item())
            step += 1
    assert len(ours) == len(official) == 2 * steps_per_epoch == 6
    np.testing.assert_allclose(ours, official, rtol=1e-5)
    checkpoint = next((run_dir / "checkpoints").glob("last.*.safetensors"))
    trained = load_file(str(checkpoint))
    for name, value in model.trainable_state_dict().items():
        torch.testing.assert_close(trained[name], value, atol=1e-6, rtol=1e-5, msg=name)
