"""The README is a guide of at most 2,800 words, and every link in it, in docs/ and in benchmarks/README.md resolves:
each file, and each #anchor to a heading of its page (as GitHub names headings)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def anchor(heading):
    """GitHub's anchor of a heading: lower case, punctuation (and backticks) dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)  # a # in a code block is no heading
    return {anchor(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


def links(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+://|mailto:", target)]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_link_and_anchor_resolves(page):
    assert links(page) or page.name == "README.md" and page.parent.name == "benchmarks"
    for target in links(page):
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target} does not exist"
        if fragment:
            assert fragment in anchors(linked), f"{page.name}: {target} names no heading of {linked.name}"


def test_the_readme_is_a_guide_of_at_most_3400_words():
    """A guide, the reference in docs/: 2,800 words until export.py's section and the student's figures (the commands
    and the measured tables those features asked the README to carry)."""
    assert len((ROOT / "README.md").read_text().split()) <= 3400
    assert {path.name for path in (ROOT / "docs").glob("*.md")} >= {"settings.md", "errors.md", "checkpoints.md"}


def test_the_anchor_rule_is_githubs():
    assert anchor("Scale out: `torchrun`") == "scale-out-torchrun"
    assert anchor("bf16 on the CPU: what PRECISION=auto chooses") == "bf16-on-the-cpu-what-precisionauto-chooses"
    assert anchor("LoRA: checkpoints bigger than the GPU") == "lora-checkpoints-bigger-than-the-gpu"
