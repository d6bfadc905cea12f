"""One rule for who may have tokens (``issuer.models.may_hold_tokens``), asked by every path.

The behaviour of each path with a disabled or removed user is tested where the path is
(test_oauth_server, test_http_endpoints, test_dependencies, test_sessions); this file
pins the rule and that no path writes its own copy of it.
"""

from __future__ import annotations

import ast
from pathlib import Path

from issuer.models import Role, User, may_hold_tokens

PACKAGE = Path(__file__).resolve().parent.parent / "issuer"
# Where reading ``is_active`` is not deciding who may have tokens: the record itself, the
# stores that persist it, and the CLI's listing.
NOT_THE_RULE = {"models.py", "cli.py"}


def test_only_existing_enabled_users_may_hold_tokens() -> None:
    alice = User(id="u1", username="alice", role=Role.VIEWER)
    assert may_hold_tokens(alice)
    assert not may_hold_tokens(User(id="u2", username="bob", role=Role.VIEWER, is_active=False))
    assert not may_hold_tokens(None)


def test_no_path_writes_its_own_copy_of_the_rule() -> None:
    """``user.is_active`` is read only by the rule (and by stores and listings)."""
    readers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "store" or str(relative) in NOT_THE_RULE:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            is_read = isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load)
            if is_read and node.attr == "is_active":
                readers.append(f"{relative}:{node.lineno}")
    assert readers == []
