"""docs/architecture.md links each stage of the step to its code by line: every such link
must still land on the line that defines (or names) what its text names."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
LINK = re.compile(r"\[`([\w.]+)`\]\((\.\./[\w/.]+\.py)#L(\d+)\)")


def test_architecture_line_links_point_at_what_they_name() -> None:
    text = (DOCS / "architecture.md").read_text()
    links = LINK.findall(text)
    assert len(links) >= 20  # the step walk and the settings table
    wrong = []
    for name, target, line in links:
        source = (DOCS / target).resolve().read_text().splitlines()
        leaf = name.split(".")[-1]
        if not re.search(rf"\b(def|class) {re.escape(leaf)}\b", source[int(line) - 1]):
            wrong.append(f"{name} -> {target}#L{line}: {source[int(line) - 1].strip()!r}")
    assert wrong == [], "\n".join(wrong)
