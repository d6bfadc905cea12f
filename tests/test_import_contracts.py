"""The import contracts in pyproject.toml still catch what they claim.

Each case copies the package into a temp directory, adds one forbidden import, and runs
``lint-imports`` on the copy: the named contract must break, naming the import. Without
this, a contract that stopped matching anything (a renamed module, a typo) would stay
green for ever.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

LAYERS = "Layers: each imports only from the layers below it"
KEYSTORE = "Key store: one job per module, reading and rotation apart"
CORE = "The core imports no web framework, protocol library, ORM or server"
OAUTH = "The protocol core (issuer.oauth) imports no web framework, ORM or server, even indirectly"
AUTHLIB = "Only issuer.oauth imports authlib"
STARLETTE = "Only the HTTP edges import starlette: issuer.http, issuer.app and the API integrations"
SQL = "Only issuer.store imports sqlalchemy and alembic"
CONCRETE_STORE = "Only the composition root names a concrete store"
UVICORN = "Only issuer serve imports uvicorn: issuer.cli, issuer.http.protocol, issuer.http.serving"
BCRYPT = "Only issuer.passwords imports bcrypt"
EVERY_CONTRACT = (
    LAYERS,
    KEYSTORE,
    CORE,
    OAUTH,
    AUTHLIB,
    STARLETTE,
    SQL,
    CONCRETE_STORE,
    UVICORN,
    BCRYPT,
)


def package_copy(tmp_path: Path) -> Path:
    """The package and its pyproject.toml, copied to ``tmp_path``."""
    shutil.copytree(
        REPO_ROOT / "issuer", tmp_path / "issuer", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def lint_imports(root: Path) -> tuple[int, dict[str, str], str]:
    """Run lint-imports on the copy in ``root``: exit status, each contract's verdict, output."""
    env = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "250", "NO_COLOR": "1"}
    done = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    verdicts = {}
    for line in done.stdout.splitlines():
        for name in EVERY_CONTRACT:
            if line.startswith(name + " "):
                verdicts[name] = line.removeprefix(name + " ").split()[0]
    return done.returncode, verdicts, done.stdout + done.stderr


def test_every_contract_is_kept_by_the_package_as_it_is(tmp_path):
    status, verdicts, output = lint_imports(package_copy(tmp_path))
    assert status == 0, output
    assert verdicts == dict.fromkeys(EVERY_CONTRACT, "KEPT"), output


@pytest.mark.parametrize(
    ("module", "line", "broken", "illegal"),
    [
        # The issue's own example: these kept every contract green before.
        (
            "oauth/requests.py",
            "import starlette",
            {OAUTH, STARLETTE},
            "issuer.oauth.requests -> starlette",
        ),
        (
            "oauth/requests.py",
            "import sqlalchemy",
            {OAUTH, SQL},
            "issuer.oauth.requests -> sqlalchemy",
        ),
        ("oauth/grants.py", "import uvicorn", {OAUTH, UVICORN}, "issuer.oauth.grants -> uvicorn"),
        (
            "oauth/server.py",
            "import issuer.store.sql",
            {OAUTH, CONCRETE_STORE},
            "issuer.oauth.server -> issuer.store.sql",
        ),
        ("tokens.py", "import authlib", {CORE, AUTHLIB}, "issuer.tokens -> authlib"),
        ("store/memory.py", "import authlib", {AUTHLIB}, "issuer.store.memory -> authlib"),
        ("models.py", "import bcrypt", {BCRYPT}, "issuer.models -> bcrypt"),
        ("sensitive.py", "import issuer.settings", {LAYERS}, "issuer.sensitive -> issuer.settings"),
        ("passwords.py", "import issuer.tokens", {LAYERS}, "issuer.passwords -> issuer.tokens"),
        (
            "keystore/material.py",
            "import issuer.keystore.manifest",
            {KEYSTORE},
            "issuer.keystore.material -> issuer.keystore.manifest",
        ),
        (
            "keystore/reader.py",
            "import issuer.keystore.rotation",
            {KEYSTORE},
            "issuer.keystore.reader -> issuer.keystore.rotation",
        ),
        # A module nobody listed yet is covered too.
        ("brand_new.py", "import starlette", {STARLETTE}, "issuer.brand_new -> starlette"),
        ("brand_new.py", "import sqlalchemy", {SQL}, "issuer.brand_new -> sqlalchemy"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(tmp_path, module, line, broken, illegal):
    root = package_copy(tmp_path)
    path = root / "issuer" / module
    source = path.read_text(encoding="utf-8") if path.exists() else ""
    path.write_text(source + f"\n{line}  # added by the test\n", encoding="utf-8")

    status, verdicts, output = lint_imports(root)

    assert status != 0, output
    assert {name for name, verdict in verdicts.items() if verdict == "BROKEN"} == broken, output
    assert illegal in output
