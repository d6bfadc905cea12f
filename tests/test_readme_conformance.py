"""The README's conformance table names real tests: a renamed or deleted test fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.readme import readme_section

ROOT = Path(__file__).parent.parent
REFERENCE = re.compile(r"`(test_[a-z0-9_]+\.py)::(test_[a-z0-9_]+)`")


def functions_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


def test_every_test_the_conformance_table_names_exists() -> None:
    references = REFERENCE.findall(readme_section("Conformance"))
    assert len(references) >= 40
    missing = [
        f"{file}::{name}"
        for file, name in references
        if not (ROOT / "tests" / file).is_file() or name not in functions_in(ROOT / "tests" / file)
    ]
    assert missing == []
