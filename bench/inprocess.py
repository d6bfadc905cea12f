"""In-process figures: the bcrypt ceiling, and ``verify_token`` beside joserfc's own
decode + claims validation and PyJWT's decode (timeit-style: loops for a fixed time)."""

from __future__ import annotations

import base64
import secrets
import statistics
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import jwt as pyjwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from joserfc import jwt as jose_jwt
from joserfc.jwt import JWTClaimsRegistry

from issuer import tokens
from issuer.compose import build_key_manager, build_key_store
from issuer.settings import load_settings

BCRYPT_COST = 12
BATCH = 20  # calls between clock reads


def ops_per_second(fn: Callable[[], object], seconds: float, runs: int) -> float:
    """Median over ``runs`` of calls per second of ``fn`` looped for ``seconds``."""
    rates = []
    for _ in range(runs):
        calls = 0
        began = time.perf_counter()
        deadline = began + seconds
        while True:
            for _ in range(BATCH):
                fn()
            calls += BATCH
            now = time.perf_counter()
            if now >= deadline:
                break
        rates.append(calls / (now - began))
    return statistics.median(rates)


def interleaved_rates(
    fns: dict[str, Callable[[], object]], seconds: float, rounds: int
) -> dict[str, float]:
    """Calls per second of each of ``fns``, measured in alternating short slices
    (``rounds`` each, ``seconds`` in all per function): load that comes and goes on
    a shared machine then hits every function alike. Medians of the slices."""
    slices: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            slices[name].append(ops_per_second(fn, seconds / rounds, 1))
    return {name: statistics.median(rates) for name, rates in slices.items()}


@dataclass(frozen=True)
class BcryptCeiling:
    threads: int
    checks_per_s: float  # with one thread per core, all busy
    check_ms: float  # one check alone (the floor of a login's latency)


def bcrypt_ceiling(seconds: float, runs: int, threads: int) -> BcryptCeiling:
    """bcrypt cost-12 checks/s with ``threads`` threads (bcrypt releases the GIL)."""
    password = b"Bench-password-1!"
    hashed = bcrypt.hashpw(password, bcrypt.gensalt(BCRYPT_COST))
    singles = []
    for _ in range(3):
        began = time.perf_counter()
        bcrypt.checkpw(password, hashed)
        singles.append(time.perf_counter() - began)

    def loop(deadline: float, counter: list[int], lock: threading.Lock) -> None:
        while time.perf_counter() < deadline:
            bcrypt.checkpw(password, hashed)
            with lock:
                counter[0] += 1

    rates = []
    for _ in range(runs):
        counter, lock = [0], threading.Lock()
        began = time.perf_counter()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for _ in range(threads):
                pool.submit(loop, began + seconds, counter, lock)
        rates.append(counter[0] / (time.perf_counter() - began))
    return BcryptCeiling(threads, statistics.median(rates), statistics.median(singles) * 1000)


@dataclass(frozen=True)
class VerifyFigures:
    alg: str
    issuer_per_s: float  # issuer.tokens.verify_token (no revocation lookup)
    joserfc_per_s: float  # joserfc jwt.decode + JWTClaimsRegistry.validate
    pyjwt_per_s: float  # jwt.decode with audience, issuer and required claims


def verify_figures(alg: str, seconds: float, runs: int, workdir: Path) -> VerifyFigures:
    """The three verifiers on the same token and key, built as ``issuer`` builds them
    (``seconds`` of calls each, interleaved)."""
    # The keys stay in ``workdir`` while measuring: the key store re-reads them.
    workdir.mkdir(parents=True)
    config = workdir / "issuer.toml"
    config.write_text("[issuer]\n")
    env = {
        "ISSUER_CONFIG": str(config),
        "ISSUER_KEYS_DIR": str(workdir / "keys"),
        "ISSUER_SIGNING_ALG": alg,
    }
    if alg == "HS256":
        env["ISSUER_SECRET_KEY"] = secrets.token_urlsafe(48)
    settings = load_settings(env)
    if alg != "HS256":
        build_key_manager(settings).ensure()
    keys = build_key_store(settings)
    service = tokens.TokenService(keys, issuer=settings.url, audience=settings.audience)
    token, _ = service.create_access_token(
        {"sub": "u-1", "username": "bench", "role": "engineer", "scope": "openid profile"}
    )
    signing = keys.current().signing
    assert signing is not None
    key: Any = signing.key
    tokens.configure(service)  # this process is the benchmark's own: nothing else uses it

    claims_registry = JWTClaimsRegistry(
        iss={"essential": True, "value": settings.url},
        aud={"essential": True, "value": settings.audience},
        sub={"essential": True},
        exp={"essential": True},
        iat={"essential": True},
        jti={"essential": True},
    )

    def joserfc_verify() -> None:
        claims_registry.validate(jose_jwt.decode(token, key, algorithms=[alg]).claims)

    if alg == "HS256":
        pyjwt_key: Any = base64.urlsafe_b64decode(key.as_dict()["k"] + "==")
    else:
        pyjwt_key = load_pem_public_key(key.as_pem(private=False))

    def pyjwt_verify() -> None:
        pyjwt.decode(
            token,
            pyjwt_key,
            algorithms=[alg],
            audience=settings.audience,
            issuer=settings.url,
            options={"require": ["exp", "iat", "sub", "jti", "iss", "aud"]},
        )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc warns on every "EdDSA" (see DESIGN traps)
        rates = interleaved_rates(
            {
                "issuer": lambda: tokens.verify_token(token),
                "joserfc": joserfc_verify,
                "pyjwt": pyjwt_verify,
            },
            seconds,
            rounds=max(runs, 5),
        )
    return VerifyFigures(alg, rates["issuer"], rates["joserfc"], rates["pyjwt"])
