"""A suite served without torch: one export per category (suite.json), one submission.

``ff-export --runs SUITE --out DEPLOY`` writes ``DEPLOY/<category>/`` (an export folder each)
and ``DEPLOY/suite.json``; :class:`Suite` opens them one category at a time and writes the
MVTec AD 2 submission of both private splits, checked against the upload rules, as
``ff-predict --export DEPLOY --submission NAME`` does.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from filterformer.errors import DeployError
from filterformer.runtime.deployment import Deployment
from filterformer.runtime.manifest import SUITE_FILE, read_suite
from filterformer.runtime.outputs import write_submission
from filterformer.submission import OFFICIAL_COUNTS


class Suite:
    """The exports listed in ``folder``/suite.json; ``options`` go to each :class:`Deployment`."""

    def __init__(self, folder: str | Path, backend: str = "onnxruntime", **options: Any) -> None:
        self.folder = Path(folder)
        manifest = read_suite(self.folder)
        if manifest is None:
            raise DeployError(
                f"{self.folder}: no {SUITE_FILE}; export a suite there with "
                f"ff-export --runs SUITE_DIR --out {self.folder}."
            )
        self.categories: dict[str, str] = dict(manifest["categories"])
        self.backend, self.options = backend, options

    def deployment(self, category: str) -> Deployment:
        """The export of ``category``, loaded."""
        if category not in self.categories:
            raise DeployError(
                f"{self.folder}: no export for category {category!r} (it has "
                f"{', '.join(self.categories)})."
            )
        folder = self.folder / self.categories[category]
        return Deployment(folder, self.backend, **self.options)

    def __iter__(self) -> Iterator[Deployment]:
        """Each category's deployment, loaded only when the previous one is done."""
        for category in self.categories:
            yield self.deployment(category)

    def write_submission(
        self,
        out: Path,
        *,
        data_root: Path | None = None,
        counts: Mapping[str, int] = OFFICIAL_COUNTS,
        pack: bool = True,
        progress: bool = True,
    ) -> Path | None:
        """Both private splits of every category under ``out``, checked, then packed."""
        return write_submission(
            self, out, data_root=data_root, counts=counts, pack=pack, progress=progress
        )
