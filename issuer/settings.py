"""Settings: one frozen, typed object built by :func:`load_settings`.

Precedence is environment (``ISSUER_<SETTING>``) > TOML file (``ISSUER_CONFIG``, else
``config/issuer.toml`` when present) > the defaults below, which ``config/issuer.toml``
mirrors (a test keeps the two equal). Every problem is collected and reported at once,
each naming its setting, so an operator fixes a broken deployment in one round.
Secrets come only from the environment or a file the environment names, never from TOML.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from issuer.errors import ConfigError
from issuer.sensitive import KEK_GENERATE_HINT, Secret, parse_kek, redact_url, secret_problem

ENV_PREFIX = "ISSUER_"
DEFAULT_CONFIG_PATH = Path("config/issuer.toml")
SIGNING_ALGS = ("HS256", "RS256", "ES256", "EdDSA")
# Settings with a fixed set of spellings: a value matching one of them ignoring case is
# taken in that spelling (``rs256`` → ``RS256``); anything else is refused by _validate.
CHOICES: dict[str, tuple[str, ...]] = {
    "signing_alg": SIGNING_ALGS,
    "log_format": ("text", "json"),
    "log_level": ("debug", "info", "warning", "error"),
    "key_store": ("directory", "database"),
}
# Longer values are cut when an error message echoes them.
_ECHO_MAX = 80
SECRET_SETTINGS = (
    "secret_key",
    "secret_key_file",
    "key_encryption_key",
    "key_encryption_key_file",
    "key_encryption_key_old",
    "key_encryption_key_old_file",
)
LOOPBACK_HOSTS = ("localhost",)
RATE_LIMIT_SCHEMES = ("memory", "redis", "rediss", "redis+unix")
# The path of an issuer URL (every endpoint is served under it): plain segments only.
_ISSUER_PATH = re.compile(r"(/(?!\.{1,2}(?:/|$))[A-Za-z0-9._~-]+)+")


@dataclass(frozen=True)
class Settings:
    """Every setting of the issuer. Field names are the TOML keys; ``ISSUER_<NAME>`` overrides."""

    url: str = "http://127.0.0.1:8000"
    audience: str = "issuer-api"
    database_url: str = "sqlite:///var/issuer.db"
    keys_dir: Path = Path("keys")
    key_store: str = "directory"
    signing_alg: str = "HS256"
    access_token_ttl: int = 1800
    refresh_token_ttl: int = 604800
    session_max_lifetime: int = 2592000
    refresh_retry_window: int = 0
    password_reset_ttl: int = 1800
    password_reset_failures_per_address: str = "10/minute"  # noqa: S105 - a rate
    bcrypt_rounds: int = 12
    leeway: int = 30
    scopes: tuple[str, ...] = ("openid", "profile", "read", "write")
    default_scope: str = "openid profile"
    user_store: str = ""
    allow_insecure_http: bool = False
    log_level: str = "info"
    log_format: str = "text"
    # keystore.material.DEFAULT_RSA_BITS; existing keys keep whatever size they were made with.
    rsa_key_size: int = 2048
    jwks_max_age: int = 300
    key_reload_interval: float = 1.0
    db_pool_size: int = 5
    db_connect_timeout: int = 5
    db_pool_timeout: int = 10
    db_statement_timeout: int = 30
    purge_interval: int = 3600
    login_failures_per_user_address: str = "5/minute"
    login_failures_per_address: str = "30/minute"
    login_failures_per_user: str = "100/hour"
    known_address_days: int = 30
    rate_limit_storage: str = "memory://"
    rate_limit_key_prefix: str = "issuer"
    trusted_proxies: tuple[str, ...] = ()
    metrics_networks: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    http_max_header_bytes: int = 16384
    http_max_headers: int = 100
    http_request_timeout: float = 10.0
    http_keep_alive_timeout: int = 5
    http_limit_concurrency: int = 256
    shutdown_timeout: int = 30
    secret_key: Secret | None = field(default=None, repr=False)
    # The database key store's key-encryption key (and, while a KEK change rolls out, the
    # previous one): base64 or hex of 32 bytes, checked by sensitive.parse_kek.
    key_encryption_key: Secret | None = field(default=None, repr=False)
    key_encryption_key_old: Secret | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        # The generated repr would show a database password; the secret is a Secret already.
        shown = []
        for f in dataclasses.fields(self):
            if not f.repr:
                continue
            value = getattr(self, f.name)
            if f.name in ("database_url", "rate_limit_storage"):
                value = redact_url(value)
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def refresh_lifetime_bound(self) -> int:
        """Seconds after which every token signed now has expired (plus leeway)."""
        return max(self.access_token_ttl, self.refresh_token_ttl) + self.leeway


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_DEFAULTS = Settings()


def load_settings(
    environ: Mapping[str, str] | None = None, path: str | Path | None = None
) -> Settings:
    """Build :class:`Settings` from defaults, a TOML file and the environment.

    Raises :class:`ConfigError` listing every invalid or missing setting.
    """
    env = os.environ if environ is None else environ
    problems: list[str] = []
    values: dict[str, Any] = {}

    # Where each value came from, so that an error names the place to fix it.
    sources: dict[str, str] = {}
    config_path = Path(path) if path is not None else _config_path(env)
    if config_path is not None:
        from_file = _read_toml(config_path, problems)
        values.update(from_file)
        sources.update(dict.fromkeys(from_file, str(config_path)))

    for name in _FIELDS:
        if name in SECRET_SETTINGS:
            continue
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = raw
            sources[name] = ENV_PREFIX + name.upper()

    settings_kwargs: dict[str, Any] = {}
    for name, raw in values.items():
        if name not in _FIELDS or name in SECRET_SETTINGS:
            continue
        try:
            settings_kwargs[name] = _canonical(name, _coerce(name, raw))
        except ValueError as exc:
            problems.append(_with_source(f"{name}: {exc}", None, sources))

    secret = _read_secret(env, problems)
    if secret is not None:
        settings_kwargs["secret_key"] = Secret(secret)
    for name in ("key_encryption_key", "key_encryption_key_old"):
        kek = _read_kek(env, name, problems)
        if kek is not None:
            settings_kwargs[name] = Secret(kek)

    settings = dataclasses.replace(_DEFAULTS, **settings_kwargs)
    # A KEK refused as malformed is not also reported missing.
    kek_refused = any(p.startswith("key_encryption_key") for p in problems)
    problems.extend(
        _with_source(p, settings, sources)
        for p in _validate(settings)
        if not (kek_refused and p.startswith("key_encryption_key:"))
    )
    if problems:
        raise ConfigError(problems)
    return settings


def _canonical(name: str, value: Any) -> Any:
    """``value`` in the spelling of the one choice it matches ignoring case, else unchanged."""
    if name not in CHOICES or not isinstance(value, str):
        return value
    matches = [c for c in CHOICES[name] if c.casefold() == value.strip().casefold()]
    return matches[0] if len(matches) == 1 else value


def _with_source(problem: str, settings: Settings | None, sources: Mapping[str, str]) -> str:
    """``problem`` ("<setting>: <what is wrong>") with the value given and where it came from.

    The value is echoed only when the message does not already show it; secrets never
    reach this function, and URLs are shown with their password redacted.
    """
    name = problem.partition(":")[0]
    if name not in _FIELDS or name in SECRET_SETTINGS:
        return problem
    where = f"from {sources[name]}" if name in sources else "the default"
    if settings is None or ", got " in problem:
        return f"{problem} ({where})"
    return f"{problem}, got {_echo(name, getattr(settings, name))} ({where})"


def _echo(name: str, value: Any) -> str:
    """A setting's value as an error message may show it: quoted, redacted, bounded."""
    if name in ("url", "database_url", "rate_limit_storage"):
        value = redact_url(value)
    elif isinstance(value, tuple):
        value = " ".join(value)
    shown = repr(value if isinstance(value, (int, float)) else str(value))
    return shown if len(shown) <= _ECHO_MAX else shown[: _ECHO_MAX - 1] + "…"


def _config_path(env: Mapping[str, str]) -> Path | None:
    named = env.get(ENV_PREFIX + "CONFIG")
    if named:
        return Path(named)
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


def _read_toml(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        problems.append(f"ISSUER_CONFIG: no such file {path}")
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        problems.append(f"ISSUER_CONFIG: cannot read {path}: {exc}")
        return {}
    except UnicodeDecodeError:
        problems.append(f"ISSUER_CONFIG: cannot read {path}: not UTF-8 text")
        return {}
    section = data.get("issuer", data)
    if not isinstance(section, dict):
        problems.append(f"ISSUER_CONFIG: [issuer] in {path} must be a table")
        return {}
    if section is not data:
        # Keys outside [issuer] would otherwise be ignored without a word.
        problems.extend(
            f"{key}: unknown setting outside [issuer] in {path}" for key in data if key != "issuer"
        )
    for key in section:
        if key in SECRET_SETTINGS:
            problems.append(
                f"{key}: secrets are never read from a config file; "
                "set ISSUER_SECRET_KEY or ISSUER_SECRET_KEY_FILE"
            )
        elif key not in _FIELDS:
            problems.append(f"{key}: unknown setting in {path}")
    return {k: v for k, v in section.items() if k in _FIELDS and k not in SECRET_SETTINGS}


def _coerce(name: str, raw: Any) -> Any:  # noqa: PLR0911, PLR0912 - one branch per type
    """Turn a TOML value or an environment string into the field's type."""
    kind = type(getattr(_DEFAULTS, name))
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {raw!r}")
    if kind is int:
        if isinstance(raw, bool):
            raise ValueError(f"expected a whole number, got {raw!r}")
        try:
            return int(str(raw).strip())
        except ValueError:
            raise ValueError(f"expected a whole number, got {raw!r}") from None
    if kind is float:
        try:
            value = float(str(raw).strip())
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {raw!r}")
        return value
    if kind is tuple:
        items = raw if isinstance(raw, list) else str(raw).replace(",", " ").split()
        if not all(isinstance(i, str) for i in items):
            raise ValueError("expected a list of strings")
        return tuple(items)
    if kind is Path or isinstance(getattr(_DEFAULTS, name), Path):
        if not isinstance(raw, str) or not raw:
            raise ValueError("expected a path")
        return Path(raw)
    if not isinstance(raw, str):
        raise ValueError(f"expected a string, got {raw!r}")
    return raw


def _read_secret(env: Mapping[str, str], problems: list[str]) -> str | None:
    inline = env.get(ENV_PREFIX + "SECRET_KEY")
    file_name = env.get(ENV_PREFIX + "SECRET_KEY_FILE")
    if inline and file_name:
        problems.append("secret_key: set ISSUER_SECRET_KEY or ISSUER_SECRET_KEY_FILE, not both")
        return None
    if file_name:
        try:
            secret = Path(file_name).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"secret_key_file: cannot read {file_name}: {exc.__class__.__name__}")
            return None
        source = "ISSUER_SECRET_KEY_FILE"
    elif inline is not None:
        secret = inline
        source = "ISSUER_SECRET_KEY"
    else:
        return None
    problem = secret_problem(secret)
    if problem:
        problems.append(f"secret_key: {source} {problem}")
        return None
    return secret


def _read_kek(env: Mapping[str, str], name: str, problems: list[str]) -> str | None:
    """A key-encryption key from ``ISSUER_<NAME>`` or the file ``ISSUER_<NAME>_FILE``."""
    variable = ENV_PREFIX + name.upper()
    inline = env.get(variable)
    file_name = env.get(variable + "_FILE")
    if inline and file_name:
        problems.append(f"{name}: set {variable} or {variable}_FILE, not both")
        return None
    if file_name:
        try:
            text = Path(file_name).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{name}_file: cannot read {file_name}: {exc.__class__.__name__}")
            return None
        source = variable + "_FILE"
    elif inline:
        text, source = inline, variable
    else:
        return None
    try:
        parse_kek(text)
    except ValueError as exc:
        problems.append(f"{name}: {source} {exc}")
        return None
    return text


def _key_store_problems(s: Settings) -> list[str]:
    if s.key_store not in CHOICES["key_store"]:
        return ["key_store: must be directory or database"]
    if s.key_store == "database" and s.key_encryption_key is None:
        return [
            "key_encryption_key: key_store = database needs ISSUER_KEY_ENCRYPTION_KEY or "
            f"ISSUER_KEY_ENCRYPTION_KEY_FILE (generate one: {KEK_GENERATE_HINT})"
        ]
    return []


def _validate(s: Settings) -> list[str]:
    problems: list[str] = _key_store_problems(s)
    problems.extend(_url_problems(s))
    if not s.audience.strip():
        problems.append("audience: must not be empty")
    if s.signing_alg not in SIGNING_ALGS:
        problems.append(f"signing_alg: must be one of {', '.join(SIGNING_ALGS)}")
    for name, low, high in (
        ("access_token_ttl", 60, 86400),
        ("refresh_token_ttl", 300, 365 * 86400),
        ("session_max_lifetime", 300, 365 * 86400),
        ("refresh_retry_window", 0, 300),
        ("password_reset_ttl", 60, 7 * 86400),
        ("bcrypt_rounds", 4, 31),
        ("leeway", 0, 300),
        ("jwks_max_age", 0, 86400),
        ("db_pool_size", 1, 100),
        ("db_connect_timeout", 1, 300),
        ("db_pool_timeout", 1, 300),
        ("db_statement_timeout", 0, 3600),
        ("purge_interval", 0, 7 * 86400),
        ("port", 1, 65535),
        ("workers", 1, 64),
        ("known_address_days", 0, 365),
        ("http_max_header_bytes", 1024, 1024 * 1024),
        ("http_max_headers", 10, 1000),
        ("http_keep_alive_timeout", 1, 300),
        ("http_limit_concurrency", 1, 100_000),
        ("shutdown_timeout", 1, 600),
    ):
        value = getattr(s, name)
        if not low <= value <= high:
            problems.append(f"{name}: must be between {low} and {high}, got {value}")
    if s.rsa_key_size not in (2048, 3072, 4096):
        problems.append("rsa_key_size: must be 2048, 3072 or 4096")
    if not 0.0 <= s.key_reload_interval <= 60.0:
        problems.append("key_reload_interval: must be between 0 and 60 seconds")
    if s.log_format not in ("text", "json"):
        problems.append("log_format: must be text or json")
    if s.log_level.lower() not in ("debug", "info", "warning", "error"):
        problems.append("log_level: must be debug, info, warning or error")
    if not s.scopes:
        problems.append("scopes: at least one scope is required")
    unknown = set(s.default_scope.split()) - set(s.scopes)
    if unknown:
        problems.append(f"default_scope: not in scopes: {' '.join(sorted(unknown))}")
    if not (s.database_url.startswith(("sqlite", "postgresql"))):
        problems.append("database_url: must be a sqlite:/// or postgresql:// URL")
    if s.user_store and ":" not in s.user_store:
        problems.append("user_store: must be an import path like 'package.module:factory'")
    problems.extend(_rate_limit_problems(s))
    problems.extend(_http_problems(s))
    return problems


def _http_problems(s: Settings) -> list[str]:
    if not 1.0 <= s.http_request_timeout <= 300.0:
        return ["http_request_timeout: must be between 1 and 300 seconds"]
    return []


LIMIT_SETTINGS = (
    "login_failures_per_user_address",
    "login_failures_per_address",
    "login_failures_per_user",
    "password_reset_failures_per_address",
)
_DEFAULT_LIMITS = {
    f.name: f.default for f in dataclasses.fields(Settings) if f.name in LIMIT_SETTINGS
}


def _rate_limit_problems(s: Settings) -> list[str]:
    problems: list[str] = []
    for name in LIMIT_SETTINGS:
        value = getattr(s, name)
        # The defaults are valid (tests/test_settings.py parses them): checking only what
        # was configured leaves the `limits` import to the commands that count failures.
        problem = None if value == _DEFAULT_LIMITS[name] else limit_problem(value)
        if problem:
            problems.append(f"{name}: {problem}")
    problems.extend(_rate_limit_storage_problems(s.rate_limit_storage))
    prefix = s.rate_limit_key_prefix
    if not prefix or not prefix.isascii() or any(c.isspace() or c in ":/*" for c in prefix):
        problems.append(
            "rate_limit_key_prefix: must be non-empty ASCII without spaces, ':', '/', '*'"
        )
    for name in ("trusted_proxies", "metrics_networks"):
        for cidr in getattr(s, name):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                problems.append(f"{name}: not an address or CIDR network: {cidr!r}")
    return problems


def limit_problem(text: str) -> str | None:
    """Why ``text`` is not one usable limit like ``"5/minute"``, or None when it is."""
    import limits  # noqa: PLC0415 - start-up time of every CLI command: see _rate_limit_problems

    try:
        items = limits.parse_many(text)
    except ValueError:
        items = []
    if len(items) != 1:
        return f"expected one limit like '5/minute' or '30 per hour', got {text!r}"
    if items[0].amount < 1:
        return f"the amount must be at least 1, got {text!r}"
    return None


def _rate_limit_storage_problems(url: str) -> list[str]:
    scheme = url.partition("://")[0]
    if "://" not in url or scheme not in RATE_LIMIT_SCHEMES:
        return [
            "rate_limit_storage: must be memory:// or a redis://host:port/db URL, "
            f"got {redact_url(url)!r}"
        ]
    if scheme == "memory" and url != "memory://":
        return ["rate_limit_storage: memory storage takes no address; use 'memory://'"]
    return []


def _url_problems(s: Settings) -> list[str]:  # noqa: PLR0911 - the first broken rule says it
    try:
        parts = urlsplit(s.url)
    except ValueError:
        return [f"url: not a URL: {s.url!r}"]
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return [f"url: must be an absolute http(s) URL, got {s.url!r}"]
    if "?" in s.url or "#" in s.url:
        return ["url: must not have a query or fragment (RFC 8414 §2)"]
    if "@" in parts.netloc:
        return ["url: must not contain a user name or password"]
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError:
        return [f"url: invalid port in {s.url!r}"]
    if s.url.endswith("/"):
        return ["url: must not end with '/' (it is compared exactly as the 'iss' claim)"]
    if parts.path and not _ISSUER_PATH.fullmatch(parts.path):
        return [
            "url: the path must be '/'-separated names of letters, digits and . _ ~ - "
            f"(no empty, '.' or '..' segment, no %-escapes), got {parts.path!r}"
        ]
    if parts.scheme == "http" and not is_loopback(parts.hostname) and not s.allow_insecure_http:
        return [
            "url: plain http is only allowed on a loopback host; use https, "
            "or set allow_insecure_http = true behind a TLS-terminating proxy"
        ]
    return []


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses, where plain http is acceptable."""
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
