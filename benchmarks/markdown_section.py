"""Replace one `## ` section of a Markdown file (BENCHMARKS.md), leaving the others alone."""

from __future__ import annotations

from pathlib import Path


def replace_section(path: Path, heading: str, body: str) -> None:
    """Put `body` (which starts with `heading`) where the section `heading` is, or at the end."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if heading in text:
        start = text.index(heading)
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + body.rstrip("\n") + "\n" + ("\n" + text[end + 1:] if end != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + body
    path.write_text(text)
