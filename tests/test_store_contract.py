"""One contract for every store: memory (the reference), SQLite and PostgreSQL.

A store is correct when this suite passes on it (see ``issuer.store.base``). The
PostgreSQL run skips locally, and fails in CI, when the server is unreachable.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from issuer.errors import DuplicateError, NotFoundError
from issuer.models import (
    AuthMethod,
    Client,
    RefreshRecord,
    Role,
    Session,
    User,
    UserChange,
    hash_client_secret,
)
from issuer.store.base import Store, UserAdmin, UserStore
from issuer.store.memory import MemoryStore
from issuer.store.sql import SqlStore, make_engine
from tests.conftest import migrated_store

HASH = "$2b$04$" + "a" * 53
OTHER_HASH = "$2b$04$" + "b" * 53
NOW = 1_800_000_000


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    """The same store contract, once per implementation."""
    if request.param == "memory":
        yield MemoryStore()
        return
    url_fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    sql_store = migrated_store(request.getfixturevalue(url_fixture))
    yield sql_store
    sql_store.engine.dispose()


def confidential(client_id: str = "webapp", **changes: Any) -> Client:
    fields: dict[str, Any] = {
        "client_id": client_id,
        "auth_method": AuthMethod.CLIENT_SECRET_BASIC,
        "grant_types": ("password", "refresh_token"),
        "scopes": ("read", "write"),
        "secret_hash": hash_client_secret("s3cret-for-" + client_id),
        "name": "Web app",
        "created_at": NOW,
    }
    fields.update(changes)
    return Client(**fields)


def record(family: str = "fam-1", client_id: str = "webapp", **changes: Any) -> RefreshRecord:
    fields: dict[str, Any] = {
        "jti": uuid.uuid4().hex,
        "family_id": family,
        "user_id": "user-1",
        "client_id": client_id,
        "scope": "read write",
        "issued_at": NOW,
        "expires_at": NOW + 604_800,
    }
    fields.update(changes)
    return RefreshRecord(**fields)


# -- users ---------------------------------------------------------------------


def test_added_user_is_found_by_username_and_by_id(store: Store) -> None:
    before = int(time.time())
    added = store.add_user("alice", HASH, Role.ENGINEER)

    by_name = store.get_by_username("alice")
    by_id = store.get_by_id(added.id)

    assert by_name == by_id == added
    assert added.username == "alice"
    assert added.role is Role.ENGINEER
    assert added.password_hash == HASH
    assert added.is_active is True
    assert isinstance(added.created_at, int) and isinstance(added.updated_at, int)
    assert before <= added.created_at == added.updated_at <= int(time.time())


def test_each_user_gets_a_distinct_id(store: Store) -> None:
    ids = {store.add_user(name, HASH, Role.VIEWER).id for name in ("a", "b", "c")}

    assert len(ids) == 3


def test_a_taken_username_is_refused_and_changes_nothing(store: Store) -> None:
    first = store.add_user("alice", HASH, Role.ENGINEER)

    with pytest.raises(DuplicateError):
        store.add_user("alice", OTHER_HASH, Role.ADMIN)

    assert store.list_users() == [first]


def test_username_lookup_matches_the_canonical_form_only(store: Store) -> None:
    alice = store.add_user("alice", HASH, Role.ENGINEER)

    for variant in ("Alice", "ALICE", "\uff41\uff4c\uff49\uff43\uff45", "ALİCE".replace("İ", "I")):
        assert store.get_by_username(variant) == alice, variant
    for near_miss in ("alice ", " alice", "alic", "alice2", "al%", "al_ce", ""):
        assert store.get_by_username(near_miss) is None, near_miss


def test_a_username_taken_in_another_case_or_unicode_form_is_refused(store: Store) -> None:
    first = store.add_user("alice", HASH, Role.ENGINEER)

    for variant in ("ALICE", "Alice", "\uff41\uff4c\uff49\uff43\uff45"):
        with pytest.raises(DuplicateError):
            store.add_user(variant, OTHER_HASH, Role.ADMIN)

    assert store.list_users() == [first]


def test_a_user_keeps_the_spelling_it_was_added_with(store: Store) -> None:
    added = store.add_user("Alice", HASH, Role.ENGINEER)

    assert store.get_by_username("alice") == added
    assert added.username == "Alice"


def test_unknown_user_is_none(store: Store) -> None:
    assert store.get_by_username("nobody") is None
    assert store.get_by_id(str(uuid.uuid4())) is None


def test_users_are_listed_in_username_order(store: Store) -> None:
    for name in ("carol", "alice", "Bob", "bobby", "_ops", "dave"):
        store.add_user(name, HASH, Role.VIEWER)

    names = [u.username for u in store.list_users()]

    assert names == sorted(["carol", "alice", "Bob", "bobby", "_ops", "dave"])


def test_an_empty_store_lists_no_users(store: Store) -> None:
    assert list(store.list_users()) == []


def test_disabling_and_enabling_a_user_is_visible_to_lookups(store: Store) -> None:
    added = store.add_user("alice", HASH, Role.ENGINEER)

    disabled = store.set_active("alice", False)

    assert disabled.is_active is False
    assert store.get_by_username("alice") == disabled
    assert store.get_by_id(added.id) == disabled
    assert disabled.id == added.id and disabled.password_hash == HASH
    assert disabled.updated_at >= added.updated_at

    enabled = store.set_active("alice", True)

    assert enabled.is_active is True
    assert store.get_by_id(added.id) == enabled


def test_setting_a_password_hash_replaces_only_that_users_hash(store: Store) -> None:
    alice = store.add_user("alice", HASH, Role.ENGINEER)
    bob = store.add_user("bob", HASH, Role.VIEWER)

    changed = store.set_password_hash("alice", OTHER_HASH)

    assert changed.password_hash == OTHER_HASH
    assert changed.id == alice.id and changed.role is Role.ENGINEER and changed.is_active
    assert store.get_by_username("alice") == changed
    assert store.get_by_id(bob.id) == bob


def test_changing_an_unknown_user_raises_not_found(store: Store) -> None:
    store.add_user("alice", HASH, Role.ENGINEER)

    with pytest.raises(NotFoundError):
        store.set_active("nobody", False)
    with pytest.raises(NotFoundError):
        store.set_password_hash("nobody", OTHER_HASH)
    with pytest.raises(NotFoundError):
        store.set_active("alice2", False)

    assert store.get_by_username("alice").is_active is True  # type: ignore[union-attr]


# -- clients -------------------------------------------------------------------


def test_a_confidential_client_round_trips(store: Store) -> None:
    client = confidential()

    assert store.add_client(client) == client
    found = store.get_client("webapp")

    assert found == client
    assert found is not None
    assert found.grant_types == ("password", "refresh_token")
    assert found.scopes == ("read", "write")
    assert isinstance(found.created_at, int)
    assert found.check_secret("s3cret-for-webapp")
    assert not found.check_secret("wrong")


def test_a_public_client_round_trips_without_a_secret(store: Store) -> None:
    client = Client(
        client_id="spa",
        auth_method=AuthMethod.NONE,
        grant_types=("refresh_token",),
        scopes=(),
        secret_hash=None,
        created_at=NOW,
    )
    store.add_client(client)

    found = store.get_client("spa")

    assert found == client
    assert found is not None
    assert found.secret_hash is None and found.is_public
    assert found.scopes == () and found.grant_types == ("refresh_token",) and found.name == ""


def test_a_resource_server_keeps_its_introspection_permission(store: Store) -> None:
    store.add_client(confidential())
    store.add_client(
        Client(
            client_id="api",
            auth_method=AuthMethod.CLIENT_SECRET_BASIC,
            grant_types=(),
            secret_hash="0" * 64,
            created_at=NOW,
            may_introspect=True,
        )
    )

    api, webapp = store.get_client("api"), store.get_client("webapp")

    assert api is not None and api.may_introspect is True and api.grant_types == ()
    assert webapp is not None and webapp.may_introspect is False


def test_the_introspection_permission_can_be_granted_and_withdrawn(store: Store) -> None:
    store.add_client(confidential())

    granted = store.set_client_introspection("webapp", True)

    assert granted.may_introspect is True
    assert store.get_client("webapp") == granted
    assert store.set_client_introspection("webapp", False) == confidential()
    with pytest.raises(NotFoundError):
        store.set_client_introspection("nobody", True)


def test_a_taken_client_id_is_refused_and_changes_nothing(store: Store) -> None:
    store.add_client(confidential())

    with pytest.raises(DuplicateError):
        store.add_client(confidential(name="Impostor", auth_method=AuthMethod.CLIENT_SECRET_POST))

    assert store.list_clients() == [confidential()]


def test_unknown_client_is_none(store: Store) -> None:
    assert store.get_client("nobody") is None


def test_clients_are_listed_in_id_order(store: Store) -> None:
    for client_id in ("web", "cli", "Android", "api"):
        store.add_client(confidential(client_id))

    assert [c.client_id for c in store.list_clients()] == ["Android", "api", "cli", "web"]


def test_removing_a_client_forgets_it(store: Store) -> None:
    store.add_client(confidential("web"))
    store.add_client(confidential("cli"))

    store.remove_client("web")

    assert store.get_client("web") is None
    assert [c.client_id for c in store.list_clients()] == ["cli"]


def test_removing_an_unknown_client_raises_not_found(store: Store) -> None:
    store.add_client(confidential("web"))

    with pytest.raises(NotFoundError):
        store.remove_client("nobody")
    store.remove_client("web")
    with pytest.raises(NotFoundError):
        store.remove_client("web")


def test_removing_a_client_revokes_its_refresh_tokens_only(store: Store) -> None:
    store.add_client(confidential("web"))
    store.add_client(confidential("cli"))
    web_tokens = [record("fam-w1", "web"), record("fam-w2", "web")]
    cli_token = record("fam-c", "cli")
    for r in [*web_tokens, cli_token]:
        store.create(r)

    before = int(time.time())
    ended = store.remove_client("web")

    assert ended == ["fam-w1", "fam-w2"]
    for r in web_tokens:
        revoked = store.get(r.jti)
        assert revoked is not None and revoked.revoked_at is not None
        assert revoked.revoked_at >= before
        assert not revoked.is_usable
    assert store.get(cli_token.jti) == cli_token


# -- refresh-token records -----------------------------------------------------


def test_a_created_refresh_record_round_trips(store: Store) -> None:
    new = record()

    store.create(new)
    found = store.get(new.jti)

    assert found == new
    assert found is not None and found.is_usable
    assert found.spent_at is None and found.revoked_at is None
    assert isinstance(found.issued_at, int) and isinstance(found.expires_at, int)


def test_a_recorded_jti_cannot_be_recorded_again(store: Store) -> None:
    first = record()
    store.create(first)

    with pytest.raises(DuplicateError):
        store.create(record(jti=first.jti, family="fam-other", user_id="someone-else"))

    assert store.get(first.jti) == first


def test_unknown_refresh_record_is_none(store: Store) -> None:
    assert store.get("no-such-jti") is None


def test_rotation_spends_the_old_record_and_records_the_new_one(store: Store) -> None:
    old = record()
    store.create(old)
    new = record(issued_at=NOW + 60, expires_at=NOW + 60 + 604_800)

    assert store.rotate(old.jti, new, NOW + 60) is True

    spent = store.get(old.jti)
    assert spent is not None
    assert spent.spent_at == NOW + 60 and spent.revoked_at is None and not spent.is_usable
    assert spent.successor_jti == new.jti
    assert store.get(new.jti) == new


def test_a_spent_record_cannot_be_rotated_again(store: Store) -> None:
    old = record()
    store.create(old)
    first, second = record(), record()
    assert store.rotate(old.jti, first, NOW + 1)

    assert store.rotate(old.jti, second, NOW + 2) is False

    assert store.get(second.jti) is None
    assert store.get(old.jti).spent_at == NOW + 1  # type: ignore[union-attr]
    assert store.get(first.jti) == first


def test_a_revoked_record_cannot_be_rotated(store: Store) -> None:
    old = record()
    store.create(old)
    store.revoke_family(old.family_id, NOW + 1)
    new = record()

    assert store.rotate(old.jti, new, NOW + 2) is False

    assert store.get(new.jti) is None
    assert store.get(old.jti).spent_at is None  # type: ignore[union-attr]


def test_an_unknown_record_cannot_be_rotated(store: Store) -> None:
    new = record()

    assert store.rotate("no-such-jti", new, NOW) is False

    assert store.get(new.jti) is None


def test_rotating_into_a_recorded_jti_fails_and_leaves_the_old_record_usable(
    store: Store,
) -> None:
    old, existing = record(), record(family="fam-other")
    store.create(old)
    store.create(existing)

    with pytest.raises(DuplicateError):
        store.rotate(old.jti, record(jti=existing.jti), NOW + 1)

    assert store.get(old.jti) == old
    assert store.get(existing.jti) == existing


def test_revoking_a_family_marks_every_record_of_it_and_no_other(store: Store) -> None:
    first, other = record("fam-1"), record("fam-2")
    store.create(first)
    store.create(other)
    second, third = record("fam-1"), record("fam-1")
    assert store.rotate(first.jti, second, NOW + 1)
    assert store.rotate(second.jti, third, NOW + 2)

    assert store.revoke_family("fam-1", NOW + 3) == 3

    for jti, spent_at in ((first.jti, NOW + 1), (second.jti, NOW + 2), (third.jti, None)):
        revoked = store.get(jti)
        assert revoked is not None
        assert revoked.revoked_at == NOW + 3 and revoked.spent_at == spent_at
    assert store.get(other.jti) == other


def test_revoking_a_family_again_changes_nothing(store: Store) -> None:
    store.create(first := record("fam-1"))
    assert store.revoke_family("fam-1", NOW + 1) == 1

    assert store.revoke_family("fam-1", NOW + 2) == 0
    assert store.revoke_family("no-such-family", NOW + 2) == 0

    assert store.get(first.jti).revoked_at == NOW + 1  # type: ignore[union-attr]


# -- access-token deny list ----------------------------------------------------


def test_a_denied_jti_is_denied_and_others_are_not(store: Store) -> None:
    store.deny("jti-1", NOW + 60)

    assert store.is_denied("jti-1") is True
    assert store.is_denied("jti-2") is False


def test_denying_twice_is_fine_and_keeps_the_later_expiry(store: Store) -> None:
    store.deny("jti-1", NOW + 60)
    store.deny("jti-1", NOW + 600)
    store.deny("jti-1", NOW + 30)

    assert store.is_denied("jti-1") is True
    assert store.purge_expired(NOW + 300) == 0
    assert store.is_denied("jti-1") is True


def test_purging_removes_only_expired_entries(store: Store) -> None:
    store.deny("past", NOW - 1)
    store.deny("long-past", NOW - 3600)
    store.deny("now", NOW)
    store.deny("future", NOW + 60)

    assert store.purge_expired(NOW) == 2

    assert not store.is_denied("past") and not store.is_denied("long-past")
    assert store.is_denied("now") and store.is_denied("future")
    assert store.purge_expired(NOW) == 0


def test_purging_refresh_records_forgets_only_tokens_expired_before_the_cutoff(
    store: Store,
) -> None:
    store.create(record(jti="old", expires_at=NOW - 10))
    store.create(record(jti="edge", expires_at=NOW))
    store.create(record(jti="live", expires_at=NOW + 3600))

    assert store.purge_expired_refresh(NOW) == 1

    assert store.get("old") is None
    assert store.get("edge") is not None and store.get("live") is not None
    assert store.purge_expired_refresh(NOW) == 0


# -- health --------------------------------------------------------------------


def test_a_working_store_answers_ping(store: Store) -> None:
    assert store.ping() is True


def test_an_unreachable_database_fails_ping_without_raising(tmp_path: Any) -> None:
    store = SqlStore(make_engine(f"sqlite:///{tmp_path / 'missing' / 'dir' / 'issuer.db'}"))

    assert store.ping() is False


def test_every_store_satisfies_the_user_store_protocol(store: Store) -> None:
    assert isinstance(store, UserStore) and isinstance(store, UserAdmin)
    assert isinstance(store.add_user("alice", HASH, Role.ADMIN), User)


# -- sessions ------------------------------------------------------------------


def test_a_record_knows_when_its_session_started(store: Store) -> None:
    first = record(issued_at=NOW)
    store.create(first)
    later = record(issued_at=NOW + 500, session_started_at=NOW)
    assert store.rotate(first.jti, later, NOW + 500)

    assert store.get(first.jti).session_started_at == NOW  # type: ignore[union-attr]
    assert store.get(later.jti).session_started_at == NOW  # type: ignore[union-attr]


def test_a_session_is_live_until_revoked_and_ended_once_revoked(store: Store) -> None:
    first = record("fam-1")
    store.create(first)
    store.create(record("fam-2"))
    assert store.rotate(first.jti, record("fam-1", issued_at=NOW + 1), NOW + 1)

    assert store.session_revoked("fam-1") is False
    store.revoke_family("fam-1", NOW + 2)

    assert store.session_revoked("fam-1") is True
    assert store.session_revoked("fam-2") is False


def test_a_session_with_no_record_left_counts_as_ended(store: Store) -> None:
    assert store.session_revoked("no-such-family") is True


def test_ending_a_users_sessions_revokes_only_theirs(store: Store) -> None:
    store.create(record("fam-a1", user_id="alice"))
    store.create(record("fam-a2", user_id="alice"))
    store.create(record("fam-b", user_id="bob"))

    assert store.end_user_sessions("alice", NOW + 1) == ["fam-a1", "fam-a2"]

    assert store.session_revoked("fam-a1") and store.session_revoked("fam-a2")
    assert not store.session_revoked("fam-b")
    assert store.end_user_sessions("alice", NOW + 2) == []


def test_live_sessions_are_listed_oldest_first_without_ended_ones(store: Store) -> None:
    first = record("fam-old", user_id="alice", issued_at=NOW, expires_at=NOW + 1000)
    store.create(first)
    rotated = record(
        "fam-old",
        user_id="alice",
        issued_at=NOW + 100,
        expires_at=NOW + 1100,
        session_started_at=NOW,
    )
    assert store.rotate(first.jti, rotated, NOW + 100)
    store.create(
        record("fam-new", "cli", user_id="alice", issued_at=NOW + 50, expires_at=NOW + 900)
    )
    store.create(record("fam-revoked", user_id="alice", issued_at=NOW + 10))
    store.revoke_family("fam-revoked", NOW + 20)
    store.create(record("fam-idle", user_id="alice", issued_at=NOW - 2000, expires_at=NOW + 60))
    store.create(record("fam-bob", user_id="bob"))

    listed = store.list_sessions("alice", NOW + 120)

    assert listed == [
        Session("fam-old", "alice", "webapp", NOW, NOW + 100, NOW + 1100),
        Session("fam-new", "alice", "cli", NOW + 50, NOW + 50, NOW + 900),
    ]
    assert store.list_sessions("nobody", NOW) == []


@pytest.mark.parametrize(
    ("change", "check"),
    [
        (UserChange(password_hash=OTHER_HASH), lambda u: u.password_hash == OTHER_HASH),
        (UserChange(is_active=False), lambda u: u.is_active is False),
        (UserChange(role=Role.ADMIN), lambda u: u.role is Role.ADMIN),
    ],
    ids=["password", "disable", "role"],
)
def test_a_security_event_changes_the_user_and_ends_all_their_sessions(
    store: Store, change: UserChange, check: Any
) -> None:
    alice = store.add_user("alice", HASH, Role.ENGINEER)
    bob = store.add_user("bob", HASH, Role.ENGINEER)
    store.create(record("fam-a", user_id=alice.id))
    store.create(record("fam-b", user_id=bob.id))

    changed, ended = store.change_user("ALICE", change, NOW + 1)

    assert changed.id == alice.id and check(changed) and check(store.get_by_id(alice.id))
    assert ended == ["fam-a"]
    assert store.session_revoked("fam-a") and not store.session_revoked("fam-b")
    assert store.get_by_id(bob.id) == bob


def test_removing_a_user_forgets_them_and_ends_their_sessions(store: Store) -> None:
    alice = store.add_user("alice", HASH, Role.ENGINEER)
    store.create(record("fam-a", user_id=alice.id))
    store.save_reset(alice.id, "h" * 64, NOW + 60, NOW)

    removed, ended = store.change_user("alice", UserChange(remove=True), NOW + 1)

    assert removed == alice and ended == ["fam-a"]
    assert store.get_by_id(alice.id) is None and store.get_by_username("alice") is None
    assert store.reset_owner("h" * 64, NOW) is None
    assert store.add_user("alice", HASH, Role.VIEWER).id != alice.id


def test_a_security_event_on_an_unknown_user_raises_and_ends_nothing(store: Store) -> None:
    store.create(record("fam-x", user_id="someone"))

    for change in (UserChange(is_active=False), UserChange(remove=True)):
        with pytest.raises(NotFoundError):
            store.change_user("nobody", change, NOW)

    assert not store.session_revoked("fam-x")


def test_a_password_hash_is_upgraded_only_if_unchanged_meanwhile(store: Store) -> None:
    alice = store.add_user("alice", HASH, Role.ENGINEER)

    assert store.upgrade_password_hash(alice.id, OTHER_HASH, "$2b$12$" + "c" * 53) is False
    assert store.upgrade_password_hash(alice.id, HASH, OTHER_HASH) is True
    assert store.get_by_id(alice.id).password_hash == OTHER_HASH  # type: ignore[union-attr]
    assert store.upgrade_password_hash("nobody", HASH, OTHER_HASH) is False


# -- password resets -----------------------------------------------------------


def test_a_pending_reset_names_its_user_until_it_expires(store: Store) -> None:
    alice = store.add_user("alice", HASH, Role.ENGINEER)
    store.save_reset(alice.id, "a" * 64, NOW + 60, NOW)

    assert store.reset_owner("a" * 64, NOW + 60) == alice.id
    assert store.reset_owner("a" * 64, NOW + 61) is None
    assert store.reset_owner("b" * 64, NOW) is None


def test_a_new_reset_replaces_the_older_one(store: Store) -> None:
    alice = store.add_user("alice", HASH, Role.ENGINEER)
    store.save_reset(alice.id, "a" * 64, NOW + 60, NOW)
    store.save_reset(alice.id, "b" * 64, NOW + 60, NOW + 1)

    assert store.reset_owner("a" * 64, NOW + 1) is None
    assert store.reset_owner("b" * 64, NOW + 1) == alice.id


def test_redeeming_a_reset_sets_the_password_ends_sessions_and_spends_it(store: Store) -> None:
    alice = store.add_user("alice", HASH, Role.ENGINEER)
    bob = store.add_user("bob", HASH, Role.ENGINEER)
    store.create(record("fam-a", user_id=alice.id))
    store.create(record("fam-b", user_id=bob.id))
    store.save_reset(alice.id, "a" * 64, NOW + 60, NOW)

    redeemed = store.redeem_reset("a" * 64, OTHER_HASH, NOW + 10)

    assert redeemed is not None
    user, ended = redeemed
    assert user.id == alice.id and user.password_hash == OTHER_HASH
    assert ended == ["fam-a"] and not store.session_revoked("fam-b")
    assert store.redeem_reset("a" * 64, HASH, NOW + 11) is None
    assert store.get_by_id(alice.id).password_hash == OTHER_HASH  # type: ignore[union-attr]


def test_an_expired_or_unknown_reset_redeems_nothing(store: Store) -> None:
    alice = store.add_user("alice", HASH, Role.ENGINEER)
    store.create(record("fam-a", user_id=alice.id))
    store.save_reset(alice.id, "a" * 64, NOW + 60, NOW)

    assert store.redeem_reset("a" * 64, OTHER_HASH, NOW + 61) is None
    assert store.redeem_reset("c" * 64, OTHER_HASH, NOW) is None

    assert store.get_by_id(alice.id) == alice
    assert not store.session_revoked("fam-a")


def test_every_change_moves_updated_at_forward_and_a_rehash_does_not(store: Store) -> None:
    added = store.add_user("alice", HASH, Role.ENGINEER)

    first = store.set_active("alice", False)
    second = store.set_active("alice", True)
    assert added.updated_at < first.updated_at < second.updated_at

    assert store.upgrade_password_hash(added.id, HASH, OTHER_HASH)
    assert store.get_by_id(added.id).updated_at == second.updated_at  # type: ignore[union-attr]


def test_a_session_starts_for_the_user_as_the_login_read_it(store: Store) -> None:
    alice = store.add_user("alice", HASH, Role.ENGINEER)
    first = record("fam-1", user_id=alice.id)

    assert store.start_session(first, alice) is True

    assert store.get(first.jti) == first
    with pytest.raises(DuplicateError):
        store.start_session(record("fam-2", user_id=alice.id, jti=first.jti), alice)


@pytest.mark.parametrize(
    "change",
    [
        UserChange(password_hash=OTHER_HASH),
        UserChange(role=Role.ADMIN),
        UserChange(is_active=False),
        UserChange(remove=True),
    ],
    ids=["password", "role", "disable", "remove"],
)
def test_a_session_does_not_start_for_a_user_changed_since_the_login_read_it(
    store: Store, change: UserChange
) -> None:
    alice = store.add_user("alice", HASH, Role.ENGINEER)
    store.change_user("alice", change, NOW)
    late = record("fam-late", user_id=alice.id)

    assert store.start_session(late, alice) is False

    assert store.get(late.jti) is None


def test_a_rehash_does_not_stop_a_concurrent_login(store: Store) -> None:
    alice = store.add_user("alice", HASH, Role.ENGINEER)
    assert store.upgrade_password_hash(alice.id, HASH, OTHER_HASH)

    assert store.start_session(record("fam-1", user_id=alice.id), alice) is True
