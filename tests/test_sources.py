"""Sources a reader can follow: configs and docs cite papers or our own pages, not files a user
of the library does not have (the project's internal notes)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNREACHABLE = re.compile(r"shared/|seeds?[ -]00\d|FILTERFORMER\.md|_spec\.md", re.IGNORECASE)
CHECKED = ["configs/**/*.yaml", "docs/*.md", "README.md", "weights/README.md", "src/**/*.py"]


@pytest.mark.parametrize("pattern", CHECKED)
def test_no_citation_of_documents_users_do_not_have(pattern):
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted(ROOT.glob(pattern))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if UNREACHABLE.search(line)
    ]
    assert not offenders, "cite the paper or a page of docs/ instead:\n" + "\n".join(offenders)


def test_every_cited_docs_page_exists():
    cited = {
        match
        for pattern in CHECKED
        for path in ROOT.glob(pattern)
        for match in re.findall(r"docs/([\w-]+\.md)", path.read_text())
    }
    assert cited and all((ROOT / "docs" / name).is_file() for name in cited), cited
