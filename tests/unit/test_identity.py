"""Users, roles and API keys on their own (the identity domain)."""

import pytest

from threadlog.domain.identity import (
    ApiKey,
    ApiKeyIssued,
    ApiKeyRevoked,
    InvalidUser,
    RoleGranted,
    RoleRevoked,
    User,
    UserRegistered,
    key_digest,
    key_id_for,
    new_key,
    user_id_for,
)

BY = {"actor": "user:admin", "correlation_id": "req-1"}


def registered(roles: list[str] | None = None) -> User:
    return User.register(username="Alice", password_hash="h", roles=roles or ["user"], **BY)


def test_a_users_id_follows_from_the_username_whatever_its_case() -> None:
    assert registered().id == user_id_for("alice") == user_id_for("ALICE")


def test_registering_records_who_did_it() -> None:
    [event] = registered().collect_events()
    assert isinstance(event, UserRegistered)
    assert (event.username, event.roles, event.actor, event.correlation_id) == (
        "Alice",
        ["user"],
        "user:admin",
        "req-1",
    )


@pytest.mark.parametrize("username", ["", "   ", "x" * 65])
def test_a_blank_or_overlong_username_is_invalid(username: str) -> None:
    with pytest.raises(InvalidUser):
        User.register(username=username, password_hash=None, roles=["user"], **BY)


def test_unknown_roles_are_invalid() -> None:
    with pytest.raises(InvalidUser, match="root"):
        registered(["user", "root"])


def test_granting_and_revoking_roles_records_only_changes() -> None:
    user = registered()
    user.collect_events()
    user.grant("auditor", **BY)
    user.grant("auditor", **BY)
    user.revoke("user", **BY)
    user.revoke("admin", **BY)
    events = user.collect_events()
    assert [type(e) for e in events] == [RoleGranted, RoleRevoked]
    assert user.roles == ["auditor"]


def test_a_key_is_found_from_itself_and_only_its_digest_is_kept() -> None:
    value = new_key()
    key = ApiKey.issue(user_id=user_id_for("alice"), key=value, name="laptop", **BY)
    [event] = key.collect_events()
    assert isinstance(event, ApiKeyIssued)
    assert key.id == key_id_for(value)
    assert event.digest == key_digest(value) and value not in repr(event.__dict__)
    assert value.startswith(key.prefix) and len(key.prefix) < len(value)
    assert key.matches(value) and not key.matches(value + "x")


def test_a_revoked_key_no_longer_matches_and_revokes_once() -> None:
    value = new_key()
    key = ApiKey.issue(user_id=user_id_for("alice"), key=value, name="k", **BY)
    key.collect_events()
    key.revoke(**BY)
    key.revoke(**BY)
    assert [type(e) for e in key.collect_events()] == [ApiKeyRevoked]
    assert not key.matches(value)


def test_new_keys_are_unique_and_long() -> None:
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100 and all(len(k) >= 40 for k in keys)
