"""Every command's --help: printed without importing torch; ff-train's says what it does."""

from __future__ import annotations

import subprocess
import sys

import pytest

from filterformer.cli.train import help_text
from filterformer.runs.compose import config_dir, config_groups

HELP_WITHOUT_TORCH = """
import sys
module, *argv = sys.argv[1:]
sys.argv = ["prog", *argv]
main = __import__(f"filterformer.cli.{module}", fromlist=["main"]).main
try:
    main()
except SystemExit as exit_info:
    assert not exit_info.code, f"exit code {exit_info.code}"
imported = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
assert not imported, f"--help imported {imported[:3]}"
"""


def group_listing(text: str) -> list[str]:
    """The lines of the help's config-group section."""
    return text.split("config groups")[1].split("common settings")[0].splitlines()[1:]


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--help"],
        ["train", "preset=demo", "-h"],
        ["eval", "--help"],
        ["predict", "--help"],
        ["demo", "--help"],
        ["convert", "--help"],
        ["convert", "inp-former", "--help"],
        ["export", "--help"],
    ],
)
def test_help_never_imports_torch(argv):
    done = subprocess.run(
        [sys.executable, "-c", HELP_WITHOUT_TORCH, *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout


def test_train_help_lists_every_group_with_its_choices_and_six_examples():
    folder = config_dir()
    text = help_text(folder)
    groups = config_groups(folder)
    assert {"preset", "model", "encoder", "data", "category"} <= set(groups)
    listing = group_listing(text)
    for group, choices in groups.items():
        line = next(ln for ln in listing if ln.split()[:1] == [group])
        assert all(choice in line for choice in choices), (group, line)
    assert "filterformer_paper*" in text and "vial*" in text  # train.yaml's defaults
    examples = text.split("examples:")[1]
    assert sum(ln.strip().startswith("ff-train ") for ln in examples.splitlines()) == 6
    assert "--hydra-help" in text and "-m, --multirun" in text


def test_a_new_config_file_shows_up_in_the_help(tmp_path):
    folder = tmp_path / "configs"
    (folder / "category").mkdir(parents=True)
    (folder / "hydra" / "launcher").mkdir(parents=True)
    (folder / "hydra" / "launcher" / "slurm.yaml").write_text("{}")
    (folder / "category" / "bottles.yaml").write_text("name: bottles\n")
    (folder / "train.yaml").write_text("defaults:\n  - category: bottles\n")
    listing = group_listing(help_text(folder))
    assert listing[0].split() == ["category", "bottles*"]
    assert not any("hydra" in line or "launcher" in line for line in listing)


def test_train_help_describes_every_registered_model_family():
    """From the registered families and each one's configs/model file, not a list in the help."""
    from filterformer.models.registry import families

    section = help_text(config_dir()).split("models (model=NAME):")[1].split("common settings")[0]
    described = {line.split()[0]: line for line in section.splitlines() if line.startswith("  ")}
    built_in = [n for n, f in families().items() if type(f).__module__.startswith("filterformer.")]
    assert len(built_in) >= 5  # (a test may register a toy family of its own: not listed)
    for name in built_in:
        assert name in described and len(described[name].split()) > 4, name
