"""Every relative link in README.md and docs/*.md points at a file that exists and, when it names a
section (`file.md#section`), at a heading of that file (GitHub's anchor rules)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (hyphens kept), spaces -> hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)  # no headings inside code blocks
    return {anchor(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, flags=re.MULTILINE)}


def test_anchor_rules():
    assert anchor("RLAIF: an AI judge") == "rlaif-an-ai-judge"
    assert anchor("Serving a checkpoint: `lmforge.serve`") == "serving-a-checkpoint-lmforgeserve"
    assert anchor("Clipped policy loss (`policy_loss`)") == "clipped-policy-loss-policy_loss"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked here
            continue
        path, _, section = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})")
        elif section and dest.suffix == ".md" and section not in anchors(dest):
            broken.append(f"{target} (no heading #{section} in {dest.name})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"
