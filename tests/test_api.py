"""The Python API: the README's example as written, a model family added from tests/ only,
and the rule that reading a run never writes it (ff-eval, ff-predict, ff-export)."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.config_store import ConfigStore
from torch import nn

import filterformer as ff
from filterformer.cli.eval import main as eval_cli
from filterformer.cli.export import main as export_cli
from filterformer.cli.predict import main as predict_cli
from filterformer.errors import CheckpointError, ConfigError
from filterformer.evaluation.thresholds import read_thresholds, write_thresholds
from filterformer.models.base import FrozenEncoderModel
from filterformer.models.family import ModelFamily, register_family
from filterformer.ranges import integer
from filterformer.runs.files import sign_run

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


class ToyModel(FrozenEncoderModel):
    """A per-pixel squared distance to a learned colour: the smallest model the loop trains."""

    fusion_modes = ("toy",)

    def __init__(self, encoder: nn.Module, power: int = 2) -> None:
        super().__init__()
        self.encoder = encoder.requires_grad_(False)
        self.power = power
        self.colour = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def anomaly_maps(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"toy": (images - self.colour).abs().pow(self.power).mean(dim=1)}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        loss = self.anomaly_maps(images)["toy"].mean()
        return {"loss": loss, "toy": loss.detach()}


@register_family
class ToyFamily(ModelFamily):
    """Registered here, in tests/: no library file names it."""

    name = "toy"
    model = ToyModel
    setting_ranges = {"model.power": integer(1, 4)}


ConfigStore.instance().store(group="model", name="toy", node={"name": "toy", "power": 2})


def _tree_hash(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_the_readme_api_example_runs_as_written(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    monkeypatch.chdir(tmp_path)
    # the demo preset, shortened (one epoch on a few 84 x 105 images, read at 56 x 70): the
    # example's own overrides stay as written
    short = [
        "train.epochs=1",
        "progress=false",
        "data.image_size=[84,105]",
        "input.resize=[56,70]",
        "data.counts={train: 4, validation: 2, test_public_good: 1, test_public_bad: 1, "
        "test_private: 1, test_private_mixed: 1}",
    ]
    code = code.replace('"preset=demo",', f'"preset=demo", {", ".join(map(repr, short))},', 1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    metrics, results = namespace["metrics"], namespace["results"]
    assert set(metrics.categories) == {"synthetic"}
    assert 0 <= metrics.mean["seg_f1"] <= 1 and 0 <= metrics.mean["image_auroc"] <= 1
    assert results[0].anomaly_map.shape == (84, 105)  # the image's own size, not the input's
    assert (tmp_path / "deploy" / "model.onnx").is_file()
    assert (tmp_path / "deploy" / "export.json").is_file()


def test_a_family_added_from_tests_trains_evaluates_and_predicts(tmp_path, tiny_demo_overrides):
    overrides = [*tiny_demo_overrides, "model=toy", f"run_dir={tmp_path / 'toy'}"]
    run = ff.train(*overrides)
    assert run.config.model.name == "toy"
    assert [c.mode for c in run.outcome.calibrations if c.threshold] == ["toy"]
    metrics = run.evaluate(split="test_public")
    assert 0 <= metrics.categories["synthetic"]["image_auroc"] <= 1
    image = next((tmp_path / "toy" / "data" / "synthetic" / "test_public").rglob("*.png"))
    (result,) = run.predict([image])
    assert result.anomaly_map.shape == (56, 70) and np.isfinite(result.score)
    with pytest.raises(ConfigError, match=r"model.power=9 \(allowed: an integer in \[1, 4\]\)"):
        ff.train(*overrides, "model.power=9")


@pytest.fixture
def calibrated_run(tiny_demo_run, tmp_path) -> Path:
    """This test's own copy of the tiny demo run (ff.train calibrates at the end of training)."""
    return Path(shutil.copytree(tiny_demo_run, tmp_path / "runs" / "demo"))


def test_reading_a_calibrated_run_leaves_it_byte_identical(
    calibrated_run, tiny_demo_export, tmp_path, monkeypatch
):
    # ff-export's trace copies the export of this run state (the trace writes only its --out)
    def copy_export(graph, example, path, *, dynamic_size=False):
        shutil.copy(tiny_demo_export[0], path)

    monkeypatch.setattr("filterformer.export.exporter.export_graph", copy_export)
    before = _tree_hash(calibrated_run)
    assert "thresholds.json" in before
    quiet = ["--no-progress"]
    assert eval_cli(["--run", str(calibrated_run), *quiet]) == 0
    out = tmp_path / "maps"
    assert predict_cli(["--run", str(calibrated_run), "--out", str(out), *quiet]) == 0
    good = calibrated_run / "data" / "synthetic" / "test_public" / "good"
    own = ["--images", str(good), "--out", str(tmp_path / "own")]
    assert predict_cli(["--run", str(calibrated_run), *own, *quiet]) == 0
    assert export_cli(["--run", str(calibrated_run), *quiet]) == 0
    run = ff.load_run(calibrated_run)
    run.evaluate()
    run.predict([next((calibrated_run / "data").rglob("*.png"))])
    assert _tree_hash(calibrated_run) == before


def test_every_fusion_mode_is_calibrated_on_its_own_checkpoint(calibrated_run):
    for mode in ("inp", "filter", "mean", "max", "product"):
        threshold = read_thresholds(calibrated_run / "thresholds.json", mode)["synthetic"]
        assert threshold.rule == "mean_std" and len(threshold.checkpoint) == 64
        low, high = threshold.map_range
        assert low < high


def test_a_threshold_calibrated_on_another_checkpoint_is_refused(calibrated_run):
    stale = read_thresholds(calibrated_run / "thresholds.json", "filter")["synthetic"]
    write_thresholds(
        calibrated_run / "thresholds.json",
        {"synthetic": replace(stale, checkpoint="0" * 64)},
        "filter",
    )
    sign_run(calibrated_run)  # stale, though signed: refused all the same
    with pytest.raises(CheckpointError, match="calibrated on another checkpoint.*--calibrate"):
        ff.load_run(calibrated_run).evaluate()
    ff.load_run(calibrated_run).calibrate()  # the explicit writer mends it
    assert ff.load_run(calibrated_run).evaluate().categories["synthetic"]["num_images"] == 2


def test_a_run_being_written_is_not_read(calibrated_run, capsys):
    hold = (
        "import sys, time; from filterformer.lock import lock_run; "
        f"lock_run({str(calibrated_run)!r}); print('locked', flush=True); time.sleep(60)"
    )
    writer = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "locked"
        code = eval_cli(["--run", str(calibrated_run)])  # this process reads, the writer holds
    finally:
        writer.kill()
        writer.wait()
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is writing this run" in err


def test_no_family_is_named_in_the_layers_that_serve_every_family():
    names = r"\b(CPR|EAR|FADeR|INPFormer|FilterFormer|model\.name ?== ?\"|\"(cpr|ear|fader)\")"
    found = []
    for part in ("cli", "training", "inference", "runs"):
        for file in (ROOT / "src" / "filterformer" / part).rglob("*.py"):
            for number, line in enumerate(file.read_text().splitlines(), 1):
                if re.search(names, line):
                    found.append(f"{file.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)
