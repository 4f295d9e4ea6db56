"""A run's manifest: its writer marks, writes and signs; a reader refuses any file that is
changed, missing, unsigned or was left half-written, and nothing outside the run is listed."""

from __future__ import annotations

import hashlib
import json

import pytest

from filterformer.errors import CheckpointError
from filterformer.manifest import MANIFEST_FILE, recover, signing, start, verify_run

NAMES = ["config.yaml", "fusion.json", "checkpoints/last.json"]


def written_run(tmp_path):
    """A run folder whose writer signed config.yaml and checkpoints/last.json."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    start(run)
    with signing(run, run / "config.yaml", run / "checkpoints" / "last.json"):
        (run / "config.yaml").write_text("seed: 1\n")
        (run / "checkpoints" / "last.json").write_text('{"step": 3}')
    return run


def test_the_writer_signs_each_file_with_its_sha256(tmp_path):
    run = written_run(tmp_path)
    manifest = json.loads((run / MANIFEST_FILE).read_text())
    assert manifest == {
        "format": 1,
        "files": {
            "config.yaml": hashlib.sha256(b"seed: 1\n").hexdigest(),
            "checkpoints/last.json": hashlib.sha256(b'{"step": 3}').hexdigest(),
        },
        "writing": [],
    }
    verify_run(run, NAMES)  # intact
    with signing(run, run / "config.yaml"):
        (run / "config.yaml").unlink()  # a file the writer removes is no longer listed
    assert "config.yaml" not in json.loads((run / MANIFEST_FILE).read_text())["files"]


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda run: (run / "config.yaml").write_text("seed: 2\n"), "config.yaml: was changed"),
        (lambda run: (run / "checkpoints/last.json").unlink(), "last.json: is missing"),
        (lambda run: (run / "fusion.json").write_text("{}"), "fusion.json: is not signed"),
        (lambda run: (run / MANIFEST_FILE).unlink(), "manifest.json: missing"),
        (lambda run: (run / MANIFEST_FILE).write_text("[]"), "not a run manifest"),
        (lambda run: (run / MANIFEST_FILE).write_text('{"form'), "not a readable run manifest"),
    ],
)
def test_a_reader_refuses_what_the_writer_did_not_sign(tmp_path, damage, words):
    run = written_run(tmp_path)
    damage(run)
    with pytest.raises(CheckpointError, match=words) as err:
        verify_run(run, NAMES, fix="Do this.")
    assert str(err.value).endswith("Do this.")


def test_a_file_left_half_written_is_refused_until_the_writer_resumes(tmp_path):
    """Killed between writing config.yaml and signing it: a reader refuses it (and says to
    resume); the resuming writer signs what it finds."""
    run = written_run(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with signing(run, run / "config.yaml"):
            (run / "config.yaml").write_text("seed: 2\n")
            raise KeyboardInterrupt  # the kill
    with pytest.raises(CheckpointError, match="was being written when the run.s writer stopped"):
        verify_run(run, NAMES)
    recover(run)
    verify_run(run, NAMES)


def test_a_file_marked_but_not_yet_replaced_still_verifies(tmp_path):
    """Killed after marking, before the new file is renamed into place: the old one is intact."""
    run = written_run(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with signing(run, run / "config.yaml"):
            raise KeyboardInterrupt
    verify_run(run, NAMES)


@pytest.mark.parametrize("name", ["../outside.json", "/etc/passwd", "a//b", "checkpoints/.."])
def test_a_manifest_cannot_name_files_outside_its_run(tmp_path, name):
    run = written_run(tmp_path)
    manifest = json.loads((run / MANIFEST_FILE).read_text())
    manifest["files"][name] = "0" * 64
    (run / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="not a run manifest"):
        verify_run(run, NAMES)
