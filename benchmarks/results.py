"""Writing one benchmark's table into its own section of benchmarks/RESULTS.md (others kept)."""

from __future__ import annotations

import re
from pathlib import Path

HEADER = "# Benchmark results\n\nEvery table is written by the script named in its command line; rerun it to update.\n"


def write_section(path: Path, key: str, title: str, body: str) -> None:
    text = path.read_text() if path.exists() else HEADER
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    section = f"{begin}\n## {title}\n\n{body}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
