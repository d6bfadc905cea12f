"""``GET /metrics``: the counters an operator alerts on, correct across uvicorn workers.

Why: there was no ``/metrics`` (404), so a password-spraying wave, a refresh-reuse alarm
or a rotation that never happened stayed invisible. The in-process tests play each flow
and read the exposition; the live test serves with two workers and shows that the
counts of requests served by both add up in ``/metrics``, whichever worker answers.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from issuer.app import create_app
from issuer.compose import Components, build_components
from issuer.http.metrics import KeyCollector, Metrics
from issuer.keystore import MANIFEST_NAME, DirectoryKeyStore
from tests.conftest import PASSWORD, add_client, add_user, free_port, login, migrate_database
from tests.keystore_support import clock, es256, manager  # noqa: F401 - fixtures

WRONG = "Wr0ng-but-Secret!"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by name and sorted labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


def test_flows_show_up_in_the_counters(client: TestClient, components: Components) -> None:
    add_user(components.store, "alice")
    secret = add_client(components.store, "webapp")
    assert secret is not None
    web = ("webapp", secret)
    first = login(client, web).json()
    assert login(client, web, password=WRONG).status_code == 400
    refresh = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
    assert client.post("/oauth/token", data=refresh, auth=web).status_code == 200
    assert client.post("/oauth/token", data=refresh, auth=web).status_code == 400  # reuse
    assert client.post("/oauth/token", data={"grant_type": "password"}, auth=("x", "y"))
    assert client.post("/oauth/token", data={"grant_type": "magic"}, auth=web)
    client.get("/no/such/path")

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.headers["cache-control"] == "no-store"
    text = response.text
    token = "issuer_token_requests_total"
    assert value(text, token, grant_type="password", outcome="success") == 1
    assert value(text, token, grant_type="password", outcome="invalid_grant") == 1
    assert value(text, token, grant_type="refresh_token", outcome="success") == 1
    assert value(text, token, grant_type="refresh_token", outcome="invalid_grant") == 1
    assert value(text, token, grant_type="password", outcome="invalid_client") == 1
    assert value(text, token, grant_type="other", outcome="unsupported_grant_type") == 1
    assert value(text, "issuer_logins_total", outcome="success") == 1
    assert value(text, "issuer_logins_total", outcome="failure") == 1
    assert value(text, "issuer_bcrypt_checks_total") == 2
    assert value(text, "issuer_refresh_reuse_detections_total") == 1
    assert value(text, "issuer_sessions_ended_total", cause="refresh.reuse_detected") == 1
    assert value(text, "issuer_audit_events_total", event="token.refreshed") == 1
    latency = "issuer_http_request_duration_seconds_count"
    assert value(text, latency, endpoint="/oauth/token") == 6
    assert value(text, latency, endpoint="other") == 1
    # The signing key: its id and age; HS256 keys from `issuer init` have a next key.
    signing = components.keys.current().signing
    assert signing is not None
    assert value(text, "issuer_signing_key_info", kid=signing.kid, alg="HS256") == 1
    assert value(text, "issuer_signing_key_age_seconds", kid=signing.kid) >= 0
    assert "issuer_next_key_may_sign_in_seconds" in text
    # Counts, never identities: no username, client id, token or secret appears.
    for leaked in ("alice", "webapp", secret, first["refresh_token"], PASSWORD, WRONG):
        assert leaked not in text


def test_throttled_logins_are_counted_by_budget(
    make_settings: Any, migrated_sqlite_template: Path
) -> None:
    settings = make_settings(login_failures_per_user_address="1/minute")
    migrate_database(settings.database_url, migrated_sqlite_template)
    parts = build_components(settings)
    try:
        add_user(parts.store, "alice")
        secret = add_client(parts.store, "webapp")
        assert secret is not None
        with TestClient(create_app(components=parts)) as client:
            assert login(client, ("webapp", secret), password=WRONG).status_code == 400
            assert login(client, ("webapp", secret), password=WRONG).status_code == 429
            text = client.get("/metrics").text
    finally:
        parts.close()
    assert value(text, "issuer_login_throttled_total", budget="user-address") == 1
    token = "issuer_token_requests_total"
    assert value(text, token, grant_type="password", outcome="throttled") == 1
    assert value(text, "issuer_bcrypt_checks_total") == 1  # the refused attempt ran none


def test_a_database_outage_is_counted(make_settings: Any) -> None:
    # Nothing listens there: the PostgreSQL of this issuer is unreachable.
    settings = make_settings(database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/test")
    parts = build_components(settings)
    try:
        with TestClient(create_app(components=parts), raise_server_exceptions=False) as client:
            assert login(client, ("webapp", "secret")).status_code == 503
            text = client.get("/metrics").text
    finally:
        parts.close()
    assert value(text, "issuer_database_errors_total") == 1
    token = "issuer_token_requests_total"
    assert value(text, token, grant_type="password", outcome="temporarily_unavailable") == 0


@pytest.mark.e2e
def test_two_workers_add_up_in_metrics(live_server_factory: Any, tmp_path: Path) -> None:
    """Requests on fresh connections until both workers have served some; every scrape,
    whichever worker answers it, counts them all; the per-run directory goes at exit."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    server = live_server_factory(workers=2)
    server.env["TMPDIR"] = str(tmpdir)
    server.start()
    try:
        (metrics_dir,) = tmpdir.glob("issuer-metrics-*")
        made = 0
        while made < 1000 and sum(map(bool, served_by(metrics_dir, tmp_path).values())) < 2:
            with httpx.Client() as fresh:  # a new connection: either worker may take it
                assert fresh.get(server.url + "/healthz").status_code == 200
            made += 1
        per_worker = served_by(metrics_dir, tmp_path)
        assert len(per_worker) == 2 and all(per_worker.values()), per_worker
        totals = set()
        for _ in range(10):
            with httpx.Client() as fresh:
                text = fresh.get(server.url + "/metrics").text
            totals.add(
                value(text, "issuer_http_request_duration_seconds_count", endpoint="/healthz")
            )
        # Every scrape, whichever worker answered it, shows the sum of both workers' counts
        # (the start-up probes hit /healthz too, hence at least the requests made here).
        assert totals == {sum(served_by(metrics_dir, tmp_path).values())}
        assert totals.pop() >= made
    finally:
        server.stop()
    deadline = time.monotonic() + 30
    while metrics_dir.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not metrics_dir.exists()


@pytest.mark.e2e
def test_one_worker_counts_in_memory_and_shows_them(live_server_factory: Any) -> None:
    server = live_server_factory().start()
    try:
        assert httpx.get(server.url + "/healthz").status_code == 200
        text = httpx.get(server.url + "/metrics").text
    finally:
        server.stop()
    assert value(text, "issuer_http_request_duration_seconds_count", endpoint="/healthz") >= 1


def served_by(metrics_dir: Path, scratch: Path) -> dict[str, float]:
    """/healthz requests per worker pid, each worker's files read alone."""
    counts = {}
    for path in metrics_dir.glob("histogram_*.db"):
        pid = path.stem.removeprefix("histogram_")
        alone = scratch / f"worker-{pid}"
        alone.mkdir(exist_ok=True)
        shutil.copyfile(path, alone / path.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))
        text = generate_latest(registry).decode()
        counts[pid] = value(text, "issuer_http_request_duration_seconds_count", endpoint="/healthz")
    return counts


def test_key_reloads_and_failed_reloads_are_counted(
    manager: Any,  # noqa: F811 - the fixture imported above
    clock: Any,  # noqa: F811
    es256: Any,  # noqa: F811
) -> None:
    manager.ensure()
    keys = DirectoryKeyStore(es256.keys_dir, "ES256", reload_interval=0, clock=clock)
    metrics = Metrics()
    keys.on_reload = metrics.on_key_reload
    keys.current()
    clock.advance(manager.lead_time("ES256"))
    manager.rotate()
    keys.current()
    saved = (es256.keys_dir / MANIFEST_NAME).read_bytes()
    (es256.keys_dir / MANIFEST_NAME).write_bytes(saved[: len(saved) // 2])
    keys.current()
    text = generate_latest(metrics.registry).decode()
    assert value(text, "issuer_key_reloads_total", result="reloaded") == 1
    assert value(text, "issuer_key_reloads_total", result="failed") == 1


def test_metrics_networks_limits_who_may_read_metrics(
    make_settings: Any, migrated_sqlite_template: Path
) -> None:
    settings = make_settings(metrics_networks=("10.0.0.0/8",), trusted_proxies=("127.0.0.1",))
    migrate_database(settings.database_url, migrated_sqlite_template)
    parts = build_components(settings)
    try:
        app = create_app(components=parts)
        with TestClient(app, client=("127.0.0.1", 5000)) as client:
            outsider = client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
            assert outsider.status_code == 403
            assert outsider.json()["error"] == "access_denied"
            assert "issuer_" not in outsider.text
            inside = client.get("/metrics", headers={"X-Forwarded-For": "10.1.2.3"})
            assert inside.status_code == 200 and "issuer_logins_total" in inside.text
        with TestClient(app, client=("192.0.2.1", 5000)) as client:  # not a trusted proxy
            forged = client.get("/metrics", headers={"X-Forwarded-For": "10.1.2.3"})
            assert forged.status_code == 403
    finally:
        parts.close()


def test_a_broken_manifest_leaves_out_the_key_gauges_but_metrics_still_answer(
    manager: Any,  # noqa: F811 - the fixture imported above
    clock: Any,  # noqa: F811
    es256: Any,  # noqa: F811
) -> None:
    manager.ensure()
    keys = DirectoryKeyStore(es256.keys_dir, "ES256", reload_interval=0, clock=clock)
    collector = KeyCollector(keys, manager.records, manager.lead_time, clock=clock)
    metrics = Metrics([collector])
    assert "issuer_signing_key_age_seconds{" in generate_latest(metrics.registry).decode()
    (es256.keys_dir / MANIFEST_NAME).write_text("{not json")
    text = generate_latest(metrics.registry).decode()
    assert "issuer_signing_key_age_seconds{" not in text
    assert "issuer_logins_total" in text and "issuer_signing_key_info{" in text
