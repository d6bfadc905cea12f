"""Settings: env > TOML > defaults, every problem named at once, secrets only from the env."""

from __future__ import annotations

import dataclasses
import secrets
from pathlib import Path

import pytest

from issuer.errors import ConfigError
from issuer.sensitive import Secret
from issuer.settings import LIMIT_SETTINGS, SECRET_SETTINGS, Settings, limit_problem, load_settings

REPO_ROOT = Path(__file__).resolve().parent.parent
EMPTY_TOML = Path(__file__).parent / "empty.toml"
GOOD_SECRET = secrets.token_urlsafe(48)


def load(env: dict[str, str] | None = None, toml: str | None = None, tmp_path: Path | None = None):
    """Settings from ``env`` and, if given, a TOML text written to a temporary file."""
    path: Path = EMPTY_TOML
    if toml is not None:
        assert tmp_path is not None
        path = tmp_path / "issuer.toml"
        path.write_text(toml, encoding="utf-8")
    return load_settings(env or {}, path=path)


def problems_of(env: dict[str, str] | None = None, toml: str | None = None, tmp_path=None):
    with pytest.raises(ConfigError) as caught:
        load(env, toml, tmp_path)
    error = caught.value
    # The message an operator reads lists exactly the collected problems.
    for problem in error.problems:
        assert problem in str(error)
    return error.problems


def named(problems: list[str], setting: str) -> bool:
    return any(p.startswith(setting + ":") for p in problems)


# -- sources and precedence ----------------------------------------------------


def test_defaults_apply_when_file_and_environment_are_empty():
    settings = load()
    assert settings == Settings()
    assert settings.url == "http://127.0.0.1:8000"
    assert settings.signing_alg == "HS256"
    assert settings.access_token_ttl == 1800
    assert settings.refresh_token_ttl == 604800
    assert settings.bcrypt_rounds == 12
    assert settings.keys_dir == Path("keys")
    assert settings.secret_key is None


def test_toml_values_are_read_from_the_issuer_table(tmp_path):
    settings = load(
        toml="""
        [issuer]
        url = "https://id.example.com"
        audience = "orders-api"
        access_token_ttl = 600
        allow_insecure_http = true
        key_reload_interval = 2.5
        scopes = ["openid", "orders"]
        default_scope = "orders"
        keys_dir = "/srv/keys"
        """,
        tmp_path=tmp_path,
    )
    assert settings.url == "https://id.example.com"
    assert settings.audience == "orders-api"
    assert settings.access_token_ttl == 600
    assert settings.allow_insecure_http is True
    assert settings.key_reload_interval == 2.5
    assert settings.scopes == ("openid", "orders")
    assert settings.default_scope == "orders"
    assert settings.keys_dir == Path("/srv/keys")


def test_toml_without_an_issuer_table_is_read_from_the_top_level(tmp_path):
    settings = load(toml='audience = "flat"\nworkers = 3\n', tmp_path=tmp_path)
    assert (settings.audience, settings.workers) == ("flat", 3)


def test_environment_overrides_toml(tmp_path):
    settings = load(
        env={"ISSUER_AUDIENCE": "from-env", "ISSUER_ACCESS_TOKEN_TTL": "120"},
        toml='[issuer]\naudience = "from-toml"\naccess_token_ttl = 600\nworkers = 4\n',
        tmp_path=tmp_path,
    )
    assert settings.audience == "from-env"
    assert settings.access_token_ttl == 120
    assert settings.workers == 4  # untouched by the environment: the file's value


def test_issuer_config_names_the_file_to_read(tmp_path):
    path = tmp_path / "elsewhere.toml"
    path.write_text('[issuer]\naudience = "named-by-env"\n', encoding="utf-8")
    assert load_settings({"ISSUER_CONFIG": str(path)}).audience == "named-by-env"


def test_an_explicit_path_wins_over_issuer_config(tmp_path):
    named_file = tmp_path / "named.toml"
    named_file.write_text('audience = "from-ISSUER_CONFIG"\n', encoding="utf-8")
    explicit = tmp_path / "explicit.toml"
    explicit.write_text('audience = "from-path"\n', encoding="utf-8")
    settings = load_settings({"ISSUER_CONFIG": str(named_file)}, path=explicit)
    assert settings.audience == "from-path"


def test_without_issuer_config_the_working_directory_default_file_is_read(tmp_path, monkeypatch):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "issuer.toml").write_text('audience = "cwd-default"\n', "utf-8")
    monkeypatch.chdir(tmp_path)
    assert load_settings({}).audience == "cwd-default"


def test_without_any_file_the_builtin_defaults_apply(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_settings({}) == Settings()


def test_repo_config_file_equals_the_builtin_defaults():
    """config/issuer.toml documents the defaults; it may not drift from the dataclass."""
    from_file = load_settings({}, path=REPO_ROOT / "config" / "issuer.toml")
    assert from_file == Settings()
    # Every setting is spelled out in the file (the secrets never are).
    text = (REPO_ROOT / "config" / "issuer.toml").read_text(encoding="utf-8")
    for f in dataclasses.fields(Settings):
        if f.name not in SECRET_SETTINGS:
            assert f"\n{f.name} = " in text, f"{f.name} is not documented in config/issuer.toml"


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        load().url = "https://other.example"  # type: ignore[misc]


# -- the config file itself ----------------------------------------------------


def test_a_missing_config_file_is_named(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load_settings({"ISSUER_CONFIG": str(missing)})
    problems = caught.value.problems
    assert len(problems) == 1
    assert "ISSUER_CONFIG" in problems[0] and str(missing) in problems[0]


def test_an_unreadable_config_file_is_named(tmp_path):
    directory = tmp_path / "a-directory.toml"
    directory.mkdir()
    with pytest.raises(ConfigError) as caught:
        load_settings({}, path=directory)
    assert "ISSUER_CONFIG" in str(caught.value) and str(directory) in str(caught.value)


def test_a_config_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('audience = "caf\u00e9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        load_settings({}, path=path)
    assert str(path) in str(caught.value) and "UTF-8" in str(caught.value)


def test_malformed_toml_is_named(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[issuer\naudience = \n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings({}, path=path)
    assert "ISSUER_CONFIG" in str(caught.value) and str(path) in str(caught.value)


def test_an_issuer_entry_that_is_not_a_table_is_named(tmp_path):
    problems = problems_of(toml='issuer = "oops"\n', tmp_path=tmp_path)
    assert any("[issuer]" in p and "table" in p for p in problems)


def test_unknown_keys_in_toml_are_named(tmp_path):
    problems = problems_of(toml='[issuer]\naudiance = "typo"\nworkers = 2\n', tmp_path=tmp_path)
    assert problems == [f"audiance: unknown setting in {tmp_path / 'issuer.toml'}"]


def test_keys_outside_the_issuer_table_are_named(tmp_path):
    problems = problems_of(toml='audience = "lost"\n[issuer]\nworkers = 2\n', tmp_path=tmp_path)
    assert named(problems, "audience")


def test_unknown_issuer_variables_in_the_environment_are_ignored():
    """ISSUER_CONFIG, ISSUER_SECRET_KEY_FILE and friends are not settings; none is an error."""
    assert load({"ISSUER_SOMETHING_ELSE": "x"}) == Settings()


# -- every problem, named, at once ---------------------------------------------


def test_every_invalid_setting_is_named_in_one_error(tmp_path):
    problems = problems_of(
        env={
            "ISSUER_URL": "ftp://id.example.com",
            "ISSUER_SIGNING_ALG": "HS512",
            "ISSUER_ACCESS_TOKEN_TTL": "ten",
            "ISSUER_REFRESH_TOKEN_TTL": "1",
            "ISSUER_BCRYPT_ROUNDS": "3",
            "ISSUER_ALLOW_INSECURE_HTTP": "maybe",
            "ISSUER_KEY_RELOAD_INTERVAL": "soon",
            "ISSUER_LOG_FORMAT": "xml",
            "ISSUER_SECRET_KEY": "short",
        },
        toml='[issuer]\nworkers = "many"\nnot_a_setting = 1\nsecret_key = "x"\n',
        tmp_path=tmp_path,
    )
    for setting in (
        "url",
        "signing_alg",
        "access_token_ttl",
        "refresh_token_ttl",
        "bcrypt_rounds",
        "allow_insecure_http",
        "key_reload_interval",
        "log_format",
        "workers",
        "not_a_setting",
        "secret_key",
    ):
        assert named(problems, setting), f"{setting} not named in {problems}"


@pytest.mark.parametrize(
    ("setting", "raw", "expected"),
    [
        ("allow_insecure_http", "maybe", "true or false"),
        ("allow_insecure_http", "2", "true or false"),
        ("access_token_ttl", "30m", "whole number"),
        ("access_token_ttl", "1800.5", "whole number"),
        ("bcrypt_rounds", "", "whole number"),
        ("key_reload_interval", "fast", "number"),
        ("key_reload_interval", "nan", "finite"),
        ("key_reload_interval", "inf", "finite"),
    ],
)
def test_environment_values_of_the_wrong_type_are_named(setting, raw, expected):
    problems = problems_of({"ISSUER_" + setting.upper(): raw})
    assert len(problems) == 1
    assert named(problems, setting) and expected in problems[0]


@pytest.mark.parametrize(
    ("line", "setting"),
    [
        ("allow_insecure_http = 1.5", "allow_insecure_http"),
        ("access_token_ttl = true", "access_token_ttl"),
        ("access_token_ttl = 1800.5", "access_token_ttl"),
        ("key_reload_interval = true", "key_reload_interval"),
        ("scopes = [1, 2]", "scopes"),
        ('scopes = [["openid"]]', "scopes"),
        ("url = 8000", "url"),
        ("audience = []", "audience"),
        ("keys_dir = 7", "keys_dir"),
        ('keys_dir = ""', "keys_dir"),
    ],
)
def test_toml_values_of_the_wrong_type_are_named(tmp_path, line, setting):
    problems = problems_of(toml=f"[issuer]\n{line}\n", tmp_path=tmp_path)
    assert len(problems) == 1 and named(problems, setting), problems


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("Yes", True), ("1", True), ("on", True), ("false", False), ("0", False)],
)
def test_booleans_from_the_environment_accept_the_usual_spellings(raw, expected):
    assert load({"ISSUER_ALLOW_INSECURE_HTTP": raw}).allow_insecure_http is expected


def test_lists_from_the_environment_split_on_spaces_and_commas():
    settings = load({"ISSUER_SCOPES": "openid, profile read,write", "ISSUER_DEFAULT_SCOPE": "read"})
    assert settings.scopes == ("openid", "profile", "read", "write")


def test_numbers_from_the_environment_are_coerced():
    settings = load({"ISSUER_PORT": " 9000 ", "ISSUER_KEY_RELOAD_INTERVAL": "0.25"})
    assert settings.port == 9000 and settings.key_reload_interval == 0.25


def test_an_empty_scope_list_is_refused():
    problems = problems_of({"ISSUER_SCOPES": " "})
    assert named(problems, "scopes")


def test_a_default_scope_outside_the_scopes_is_refused():
    problems = problems_of({"ISSUER_DEFAULT_SCOPE": "openid admin"})
    assert problems == [
        "default_scope: not in scopes: admin, got 'openid admin' (from ISSUER_DEFAULT_SCOPE)"
    ]


# -- url -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://id.example.com",
        "https://id.example.com:8443/tenant",
        "https://id.example.com/a.b/c_d~e-f",
        "http://127.0.0.1:8000",
        "http://localhost:8000",
        "http://127.0.0.2",
        "http://[::1]:8000",
    ],
)
def test_https_and_loopback_http_issuer_urls_are_accepted(url):
    assert load({"ISSUER_URL": url}).url == url


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://id.example.com", "loopback"),
        ("http://10.0.0.5:8000", "loopback"),
        ("https://id.example.com/", "'/'"),
        ("http://127.0.0.1:8000/", "'/'"),
        ("https://id.example.com?tenant=a", "query"),
        ("https://id.example.com?", "query"),
        ("https://id.example.com#top", "fragment"),
        ("https://user:pw@id.example.com", "password"),
        ("https://id.example.com:99999", "port"),
        ("ftp://id.example.com", "http(s)"),
        ("id.example.com", "http(s)"),
        ("https://", "http(s)"),
        ("", "http(s)"),
        ("https://id.example.com/a//b", "path"),
        ("https://id.example.com/a/../b", "path"),
        ("https://id.example.com/.", "path"),
        ("https://id.example.com/t%2Fx", "path"),
        ("https://id.example.com/t x", "path"),
    ],
)
def test_bad_issuer_urls_are_refused_with_the_reason(url, says):
    problems = problems_of({"ISSUER_URL": url})
    assert len(problems) == 1 and named(problems, "url") and says in problems[0], problems
    assert "pw" not in problems[0]


def test_plain_http_on_a_public_host_is_allowed_only_when_asked():
    env = {"ISSUER_URL": "http://id.example.com"}
    assert named(problems_of(env), "url")
    settings = load({**env, "ISSUER_ALLOW_INSECURE_HTTP": "true"})
    assert settings.url == "http://id.example.com"


# -- choices and ranges ----------------------------------------------------------


@pytest.mark.parametrize("alg", ["HS256", "RS256", "ES256", "EdDSA"])
def test_supported_signing_algorithms_are_accepted(alg):
    assert load({"ISSUER_SIGNING_ALG": alg}).signing_alg == alg


@pytest.mark.parametrize(
    ("given", "canonical"),
    [("rs256", "RS256"), ("hs256", "HS256"), ("Es256", "ES256"), ("eddsa", "EdDSA")],
)
def test_a_signing_algorithm_in_another_case_is_taken_in_its_canonical_spelling(
    given, canonical, tmp_path
):
    assert load({"ISSUER_SIGNING_ALG": given}).signing_alg == canonical
    from_file = load(toml=f'[issuer]\nsigning_alg = "{given}"\n', tmp_path=tmp_path)
    assert from_file.signing_alg == canonical


def test_log_format_and_level_are_case_insensitive():
    settings = load({"ISSUER_LOG_FORMAT": "JSON", "ISSUER_LOG_LEVEL": "Debug"})
    assert (settings.log_format, settings.log_level) == ("json", "debug")


@pytest.mark.parametrize("alg", ["none", "HS512", "PS256", "Ed25519", ""])
def test_other_signing_algorithms_are_refused_echoing_the_value_and_its_variable(alg):
    problems = problems_of({"ISSUER_SIGNING_ALG": alg})
    assert problems == [
        "signing_alg: must be one of HS256, RS256, ES256, EdDSA, "
        f"got {alg!r} (from ISSUER_SIGNING_ALG)"
    ]


def test_a_refused_value_from_the_config_file_names_the_file(tmp_path):
    problems = problems_of(toml='[issuer]\nsigning_alg = "RS257"\n', tmp_path=tmp_path)
    assert problems == [
        "signing_alg: must be one of HS256, RS256, ES256, EdDSA, "
        f"got 'RS257' (from {tmp_path / 'issuer.toml'})"
    ]


def test_a_refused_default_says_it_is_the_default():
    problems = problems_of({"ISSUER_SCOPES": "read write"})
    assert problems == [
        "default_scope: not in scopes: openid profile, got 'openid profile' (the default)"
    ]


def test_an_echoed_url_never_shows_its_password():
    problems = problems_of({"ISSUER_DATABASE_URL": "mysql://admin:hunter2@db/issuer"})
    assert problems == [
        "database_url: must be a sqlite:/// or postgresql:// URL, "
        "got 'mysql://admin:***@db/issuer' (from ISSUER_DATABASE_URL)"
    ]


@pytest.mark.parametrize(
    ("setting", "low", "high"),
    [
        ("access_token_ttl", 60, 86400),
        ("refresh_token_ttl", 300, 365 * 86400),
        ("bcrypt_rounds", 4, 31),
        ("leeway", 0, 300),
        ("port", 1, 65535),
        ("workers", 1, 64),
    ],
)
def test_numeric_ranges_accept_their_bounds_and_refuse_beyond(setting, low, high):
    var = "ISSUER_" + setting.upper()
    assert getattr(load({var: str(low)}), setting) == low
    assert getattr(load({var: str(high)}), setting) == high
    for outside in (low - 1, high + 1):
        problems = problems_of({var: str(outside)})
        assert problems == [
            f"{setting}: must be between {low} and {high}, got {outside} (from {var})"
        ]


def test_other_enumerated_settings_are_checked():
    problems = problems_of(
        {
            "ISSUER_RSA_KEY_SIZE": "1024",
            "ISSUER_LOG_LEVEL": "verbose",
            "ISSUER_LOG_FORMAT": "xml",
            "ISSUER_DATABASE_URL": "mysql://db/issuer",
            "ISSUER_USER_STORE": "no_colon_here",
            "ISSUER_AUDIENCE": "  ",
            "ISSUER_KEY_RELOAD_INTERVAL": "61",
        }
    )
    for setting in (
        "rsa_key_size",
        "log_level",
        "log_format",
        "database_url",
        "user_store",
        "audience",
        "key_reload_interval",
    ):
        assert named(problems, setting), f"{setting} not named in {problems}"


# -- secrets -----------------------------------------------------------------------


def test_a_secret_key_in_toml_is_refused_and_says_where_secrets_go(tmp_path):
    problems = problems_of(toml=f'[issuer]\nsecret_key = "{GOOD_SECRET}"\n', tmp_path=tmp_path)
    assert len(problems) == 1 and named(problems, "secret_key")
    assert "ISSUER_SECRET_KEY" in problems[0]
    assert GOOD_SECRET not in problems[0]


def test_a_secret_key_file_in_toml_is_refused(tmp_path):
    problems = problems_of(toml='secret_key_file = "/run/secret"\n', tmp_path=tmp_path)
    assert named(problems, "secret_key_file")


def test_the_secret_comes_from_issuer_secret_key():
    settings = load({"ISSUER_SECRET_KEY": GOOD_SECRET})
    assert isinstance(settings.secret_key, Secret)
    assert settings.secret_key.reveal() == GOOD_SECRET


def test_the_secret_comes_from_the_file_issuer_secret_key_file_names(tmp_path):
    path = tmp_path / "secret"
    path.write_text(GOOD_SECRET + "\n", encoding="utf-8")
    settings = load({"ISSUER_SECRET_KEY_FILE": str(path)})
    assert settings.secret_key is not None
    assert settings.secret_key.reveal() == GOOD_SECRET  # trailing newline stripped


def test_setting_both_secret_sources_is_refused(tmp_path):
    path = tmp_path / "secret"
    path.write_text(GOOD_SECRET, encoding="utf-8")
    problems = problems_of({"ISSUER_SECRET_KEY": GOOD_SECRET, "ISSUER_SECRET_KEY_FILE": str(path)})
    assert len(problems) == 1 and named(problems, "secret_key") and "not both" in problems[0]


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_an_unreadable_secret_file_is_named(tmp_path, kind):
    path = tmp_path / "secret"
    if kind == "directory":
        path.mkdir()
    problems = problems_of({"ISSUER_SECRET_KEY_FILE": str(path)})
    assert len(problems) == 1 and named(problems, "secret_key_file") and str(path) in problems[0]


def test_a_secret_under_32_bytes_is_refused():
    short = secrets.token_urlsafe(32)[:31]
    problems = problems_of({"ISSUER_SECRET_KEY": short})
    assert len(problems) == 1 and named(problems, "secret_key") and "31 bytes" in problems[0]
    assert short not in problems[0]
    # The README says python3; so does the hint (python may be missing or Python 2).
    assert 'python3 -c "import secrets; print(secrets.token_urlsafe(48))"' in problems[0]


def test_a_weak_secret_from_the_file_is_refused_too(tmp_path):
    path = tmp_path / "secret"
    path.write_text("a" * 40, encoding="utf-8")
    problems = problems_of({"ISSUER_SECRET_KEY_FILE": str(path)})
    assert named(problems, "secret_key") and "ISSUER_SECRET_KEY_FILE" in problems[0]


def test_the_secret_never_shows_in_repr_or_str():
    settings = load({"ISSUER_SECRET_KEY": GOOD_SECRET})
    assert GOOD_SECRET not in repr(settings)
    assert GOOD_SECRET not in str(settings)
    assert GOOD_SECRET not in str(settings.secret_key)
    assert GOOD_SECRET not in repr(settings.secret_key)
    assert GOOD_SECRET not in f"{settings.secret_key}"


def test_repr_hides_the_database_password():
    settings = load({"ISSUER_DATABASE_URL": "postgresql://app:hunter2-pw@db.internal/issuer"})
    assert "hunter2-pw" not in repr(settings)
    assert "postgresql://app:***@db.internal/issuer" in repr(settings)
    assert settings.database_url.endswith("app:hunter2-pw@db.internal/issuer")  # value intact


def test_the_environment_is_read_when_none_is_given(monkeypatch, tmp_path):
    monkeypatch.setenv("ISSUER_AUDIENCE", "from-os-environ")
    monkeypatch.setenv("ISSUER_CONFIG", str(EMPTY_TOML))
    assert load_settings().audience == "from-os-environ"


def test_the_default_login_and_reset_limits_are_valid_limit_strings() -> None:
    """load_settings checks only configured limits (sparing every CLI command the `limits`
    import); this is what makes skipping the defaults safe."""
    defaults = Settings()
    assert [limit_problem(getattr(defaults, name)) for name in LIMIT_SETTINGS] == [None] * 4
