"""Regenerate docs/results.md: each bench/results/<bench>.md table goes into its "### <bench>" section.

A section keeps its own introduction (the paragraphs that say what the table measures, before the table's
caption line); from the caption line (the first line of the .md after its heading) to the end of the
section, the .md's text replaces what was there. A benchmark with no section yet gets one at the end.
Run after a benchmark writes new rows:

    python bench/results_doc.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def body(md: str) -> str:
    """The .md without its "# name" heading."""
    return re.sub(r"\A# [^\n]*\n+", "", md).strip("\n")


def replace_section(readme: str, name: str, table: str) -> str:
    """``readme`` (the results page) with the table part of section ``### name`` replaced by ``table``."""
    match = re.search(rf"^### {re.escape(name)}\n(.*?)(?=^##|\Z)", readme, flags=re.S | re.M)
    if match is None:
        raise SystemExit(f"docs/results.md has no '### {name}' section")
    section = match.group(1)
    caption = table.split("\n", 1)[0]
    # the caption starts with what the old one started with: its first five words
    stem = " ".join(caption.split()[:5])
    start = section.find(stem)
    new = (section[:start] if start >= 0 else section.rstrip("\n") + "\n\n") + table + "\n\n"  # no table yet: append
    return readme[: match.start(1)] + new + readme[match.end(1):]


def main() -> int:
    path = ROOT / "docs" / "results.md"
    doc = path.read_text()
    for md in sorted(RESULTS.glob("*.md")):
        if f"### {md.stem}\n" not in doc:
            doc = doc.rstrip("\n") + f"\n\n### {md.stem}\n\n{body(md.read_text())}\n"
        doc = replace_section(doc, md.stem, body(md.read_text()))
    path.write_text(doc.rstrip("\n") + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
