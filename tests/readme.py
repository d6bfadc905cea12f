"""The README's code blocks, for tests that run the documentation as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"
_HEADING = re.compile(r"^(#+) (.+)$")


def code_blocks(section: str, language: str = "python") -> list[str]:
    """The ``language`` fenced blocks under the README heading ``section`` (any level),
    up to the next heading of the same or a higher level, in order."""
    blocks: list[str] = []
    level: int | None = None
    fence: list[str] | None = None
    in_other_fence = False
    for line in README.read_text(encoding="utf-8").splitlines(keepends=True):
        if fence is not None:
            if line.startswith("```"):
                blocks.append("".join(fence))
                fence = None
            else:
                fence.append(line)
            continue
        if line.startswith("```"):
            if in_other_fence or level is None or line.strip() != "```" + language:
                in_other_fence = not in_other_fence
            else:
                fence = []
            continue
        heading = None if in_other_fence else _HEADING.match(line.rstrip("\n"))
        if heading is None:
            continue
        depth = len(heading.group(1))
        if level is not None and depth <= level:
            break
        if level is None and heading.group(2) == section:
            level = depth
    assert level is not None, f"README has no section {section!r}"
    return blocks


def readme_section(heading: str) -> str:
    """The README's text from the ``## heading`` line to the next ``## `` heading."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]
