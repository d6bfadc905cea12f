"""The JWKS answered on the event loop from prepared bytes: the key store (which may
re-read ``keys/`` and parse PEMs) is asked in a worker thread, and only when the last
answer is older than ``min(key_reload_interval, 50 ms)``. The clock is injected."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from issuer.compose import build_key_manager
from issuer.errors import KeyStoreError
from issuer.http.published import (
    MAX_RECHECK_SECONDS,
    STALE_GRACE_SECONDS,
    PublishedJwks,
    etag_matches,
)
from issuer.keystore import DirectoryKeyStore, KeySet, KeyStore
from issuer.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingKeys:
    """A key store that records how often, and on which threads, it was asked."""

    def __init__(self, keys: KeyStore) -> None:
        self.keys = keys
        self.threads: list[int] = []

    def current(self) -> KeySet:
        self.threads.append(threading.get_ident())
        return self.keys.current()


def es256_keys(make_settings) -> tuple[Settings, DirectoryKeyStore]:
    """ES256 keys in a tmp keys/ and a store that re-reads them at every call."""
    settings = make_settings(signing_alg="ES256", secret_key=None, key_reload_interval=0)
    build_key_manager(settings).ensure()
    return settings, DirectoryKeyStore(Path(settings.keys_dir), "ES256", reload_interval=0)


def test_within_recheck_the_answer_comes_from_prepared_bytes_without_asking(
    make_settings,
) -> None:
    _, store = es256_keys(make_settings)
    keys, clock = CountingKeys(store), Clock()
    published = PublishedJwks(keys, max_age=300, key_reload_interval=1.0, clock=clock)

    async def scenario() -> None:
        first = await published.document()
        for _ in range(100):
            assert await published.document() is first
        assert len(keys.threads) == 1
        # The one question ran in a worker thread, never on the event loop's thread.
        assert keys.threads[0] != threading.get_ident()
        clock.now += MAX_RECHECK_SECONDS + 0.001  # due again: asks, same key set, same document
        assert await published.document() is first
        assert len(keys.threads) == 2

    asyncio.run(scenario())


def test_a_rotation_is_published_at_the_next_recheck(make_settings) -> None:
    settings, store = es256_keys(make_settings)
    clock = Clock()
    published = PublishedJwks(store, max_age=300, key_reload_interval=1.0, clock=clock)

    async def scenario() -> None:
        before = await published.document()
        build_key_manager(settings).rotate(force=True)
        assert await published.document() is before  # within the recheck interval
        clock.now += MAX_RECHECK_SECONDS + 0.001
        after = await published.document()
        assert after.etag != before.etag
        assert after.body == store.current().jwks_bytes
        assert after.headers == {"Cache-Control": "public, max-age=300", "ETag": after.etag}

    asyncio.run(scenario())


def test_with_reload_interval_zero_every_request_asks(make_settings) -> None:
    settings, store = es256_keys(make_settings)
    keys = CountingKeys(store)
    published = PublishedJwks(keys, max_age=300, key_reload_interval=0, clock=Clock())

    async def scenario() -> None:
        before = await published.document()
        build_key_manager(settings).rotate(force=True)
        assert (await published.document()).etag != before.etag
        assert len(keys.threads) == 2

    asyncio.run(scenario())


def test_an_older_answer_arriving_late_never_replaces_a_newer_one(make_settings) -> None:
    """Two requests find the answer due; the first one's key store call returns last."""
    settings, store = es256_keys(make_settings)
    old_set = store.current()
    build_key_manager(settings).rotate(force=True)
    new_set = store.current()
    assert new_set.etag != old_set.etag
    release_first = threading.Event()

    class Racing:
        calls = 0

        def current(self) -> KeySet:
            Racing.calls += 1
            if Racing.calls == 1:  # asked first, answers last, with what it read then
                assert release_first.wait(10)
                return old_set
            return new_set

    clock = Clock()
    published = PublishedJwks(Racing(), max_age=300, key_reload_interval=1.0, clock=clock)

    async def scenario() -> None:
        first = asyncio.create_task(published.document())
        while Racing.calls == 0:
            await asyncio.sleep(0.001)
        clock.now += 0.001
        second = await published.document()
        release_first.set()
        assert second.etag == new_set.etag
        assert (await first).etag == new_set.etag
        assert (await published.document()).etag == new_set.etag

    asyncio.run(scenario())


def test_etag_matching_follows_if_none_match() -> None:
    assert etag_matches('"a"', '"a"')
    assert etag_matches('W/"a"', '"a"')
    assert etag_matches('"b", "a"', '"a"')
    assert etag_matches("*", '"a"')
    assert not etag_matches('"b"', '"a"')
    assert not etag_matches(None, '"a"')
    assert not etag_matches("", '"a"')


def test_the_edge_answers_a_due_document_while_one_check_runs_behind_it(make_settings) -> None:
    """``fresh()`` never waits: a due check runs once, in the background, and publishes."""
    settings, store = es256_keys(make_settings)
    keys, clock = CountingKeys(store), Clock()
    published = PublishedJwks(keys, max_age=300, key_reload_interval=1.0, clock=clock)

    async def scenario() -> None:
        assert published.fresh() is None  # nothing prepared yet: the caller awaits document()
        before = await published.document()
        assert published.fresh() is before
        build_key_manager(settings).rotate(force=True)
        clock.now += MAX_RECHECK_SECONDS + 0.001  # due, within the grace
        for _ in range(50):  # answered at once, from the old bytes; one check scheduled
            assert published.fresh() is before
        await asyncio.sleep(0)
        for _ in range(200):
            if len(keys.threads) == 2 and published.fresh() is not before:
                break
            await asyncio.sleep(0.01)
        assert len(keys.threads) == 2  # one check for all those requests
        after = published.fresh()
        assert after is not None and after.etag != before.etag
        assert after.body == store.current().jwks_bytes

    asyncio.run(scenario())


def test_past_the_grace_or_after_a_failed_check_the_edge_waits(make_settings) -> None:
    _, store = es256_keys(make_settings)
    clock = Clock()

    class Failing:
        def __init__(self) -> None:
            self.fail = False

        def current(self) -> KeySet:
            if self.fail:
                raise KeyStoreError("keys/ unreadable")
            return store.current()

    keys = Failing()
    published = PublishedJwks(keys, max_age=300, key_reload_interval=1.0, clock=clock)

    async def scenario() -> None:
        await published.document()
        clock.now += MAX_RECHECK_SECONDS + STALE_GRACE_SECONDS + 0.001  # too stale
        assert published.fresh() is None
        await published.document()
        keys.fail = True
        clock.now += MAX_RECHECK_SECONDS + 0.001
        assert published.fresh() is not None  # the check starts, and fails
        for _ in range(200):
            if published.fresh() is None:
                break
            await asyncio.sleep(0.01)
        assert published.fresh() is None  # the app's path answers (and reports) it
        keys.fail = False
        await published.document()
        assert published.fresh() is not None

    asyncio.run(scenario())


def test_with_reload_interval_zero_the_edge_never_answers_alone(make_settings) -> None:
    _, store = es256_keys(make_settings)
    published = PublishedJwks(store, max_age=300, key_reload_interval=0, clock=Clock())

    async def scenario() -> None:
        await published.document()
        assert published.fresh() is None

    asyncio.run(scenario())
