"""SECURITY.md's table of RFC 8725, RFC 9700 and RFC 9068 points names real tests: a renamed
or deleted test fails here (the README conformance table's check, reused)."""

from __future__ import annotations

from tests.test_readme_conformance import REFERENCE, ROOT, missing_tests


def test_every_test_security_md_names_exists() -> None:
    text = (ROOT / "SECURITY.md").read_text(encoding="utf-8")
    references = REFERENCE.findall(text)
    assert len(references) >= 30
    assert missing_tests(references) == []


def test_security_md_covers_each_bcp_and_says_how_to_report() -> None:
    text = (ROOT / "SECURITY.md").read_text(encoding="utf-8")
    for heading in ("## Reporting a vulnerability", "## Threat model"):
        assert heading in text
    for spec in ("RFC 8725", "RFC 9700", "RFC 9068"):
        rows = [line for line in text.splitlines() if line.startswith(f"| {spec}")]
        assert rows and all(REFERENCE.search(row) for row in rows), spec
