"""Sources a reader can follow: configs and docs cite papers or our own pages, not files a user
of the library does not have (the project's internal notes)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNREACHABLE = re.compile(
    r"shared/"  # the project's shared folder of notes
    r"|FILTERFORMER\.md|_spec\.md"  # its design note and reference notes
    r"|\bspec\b\W{0,2}§"  # "spec §1.1", "spec (§2)": sections of a reference note
    r"|\bseeds?[ -]?0\d\d\b|\bseed (?:papers?|reports?)\b|\bseed \d+ §",  # "seed 001 §3"
    re.IGNORECASE,
)
CHECKED = [
    "configs/**/*.yaml",
    "docs/**/*.md",
    "README.md",
    "weights/README.md",
    "src/**/*.py",
    "scripts/**/*.py",
]


@pytest.mark.parametrize(
    "line",
    [
        "# see shared/reference/inp_former_spec.md",
        "lr: 1.0e-3  # seed 000: 'decays from 0.001'",
        "closing: 15  # seed-001 applies closing",
        "fill_holes: true  # seed 1 §3.1.1",
        '"""One LayerNorm for both (spec §2)."""',
        "no softmax (INP-Former spec (§4.2))",
        "as the seed papers say",
    ],
)
def test_citations_of_internal_notes_are_recognised(line):
    assert UNREACHABLE.search(line)


@pytest.mark.parametrize(
    "line",
    [
        "fit_seed: 66  # CPR code: seed 66 (k-means)",
        "over seeds 1 and 2, in percent",
        "[--images 2] [--seed 0]",
        "(Luo et al., INP-Former, the INP Coherence Loss)",
        "# ISVL hybrid §3.2.1: can, fabric, rice",
        "spec = ENCODERS[variant]",
    ],
)
def test_random_seeds_and_paper_sections_are_not_mistaken_for_them(line):
    assert not UNREACHABLE.search(line)


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
