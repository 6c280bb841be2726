"""Users, their roles and their API keys, event-sourced: their history is an audit trail.

A user's id is derived from the username (case-folded), so registering a taken name
collides in the store instead of needing a lookup table. An API key's id is derived
from the SHA-256 of the key, so any key, a generated one or the value an operator
bootstraps with, is found from itself; only that digest is stored.
"""

import hashlib
import secrets
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate

from threadlog.domain.errors import DomainError

ROLES = ("user", "auditor", "analyst", "admin")
_USERS = UUID("8a3c5e1e-7d1b-4b8e-9a47-0f7c2d6b1a01")
_KEYS = UUID("5f0e9b7a-3c2d-4e1f-8a6b-9d8c7b6a5f02")
KEY_PREFIX_LENGTH = 12


class UsernameTaken(DomainError):
    code = "username_taken"


class UserNotFound(DomainError):
    code = "user_not_found"


class KeyNotFound(DomainError):
    code = "key_not_found"


class InvalidUser(DomainError):
    code = "invalid_user"


def user_id_for(username: str) -> UUID:
    return uuid5(_USERS, username.casefold())


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_id_for(key: str) -> UUID:
    return uuid5(_KEYS, key_digest(key))


def new_key() -> str:
    """A fresh API key: a visible `tlk_` prefix and 256 random bits."""
    return "tlk_" + secrets.token_urlsafe(32)


def check_roles(roles: list[str]) -> list[str]:
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise InvalidUser(f"unknown roles {unknown}; roles are {', '.join(ROLES)}")
    return sorted(set(roles))


class IdentityEvent(Aggregate.Event):
    """Who changed an identity, and in which request."""

    actor: str
    correlation_id: str

    def apply(self, aggregate: Any) -> None:
        self.evolve(aggregate)

    def evolve(self, aggregate: Any) -> None:
        """Changes the aggregate's state."""


class UserRegistered(IdentityEvent, Aggregate.Created):
    username: str
    # argon2 hash; None for users who only ever use API keys.
    password_hash: str | None
    roles: list[str]


class RoleGranted(IdentityEvent):
    role: str

    def evolve(self, aggregate: Any) -> None:
        aggregate.roles = sorted({*aggregate.roles, self.role})


class RoleRevoked(IdentityEvent):
    role: str

    def evolve(self, aggregate: Any) -> None:
        aggregate.roles = [role for role in aggregate.roles if role != self.role]


class User(Aggregate):
    def __init__(self, username: str, password_hash: str | None, roles: list[str]) -> None:
        self.username = username
        self.password_hash = password_hash
        self.roles = roles

    @classmethod
    def register(
        cls,
        *,
        username: str,
        password_hash: str | None,
        roles: list[str],
        actor: str,
        correlation_id: str,
    ) -> "User":
        if not username.strip() or len(username) > 64:
            raise InvalidUser("username must be 1 to 64 characters, not only white space")
        return cls._create(
            UserRegistered,
            id=user_id_for(username),
            username=username,
            password_hash=password_hash,
            roles=check_roles(roles),
            actor=actor,
            correlation_id=correlation_id,
        )

    def grant(self, role: str, *, actor: str, correlation_id: str) -> None:
        check_roles([role])
        if role not in self.roles:
            self.trigger_event(RoleGranted, role=role, actor=actor, correlation_id=correlation_id)

    def revoke(self, role: str, *, actor: str, correlation_id: str) -> None:
        if role in self.roles:
            self.trigger_event(RoleRevoked, role=role, actor=actor, correlation_id=correlation_id)


class ApiKeyIssued(IdentityEvent, Aggregate.Created):
    user_id: UUID
    name: str
    # The first characters of the key, shown in listings so people can tell keys apart.
    prefix: str
    digest: str


class ApiKeyRevoked(IdentityEvent):
    def evolve(self, aggregate: Any) -> None:
        aggregate.revoked = True


class ApiKey(Aggregate):
    def __init__(self, user_id: UUID, name: str, prefix: str, digest: str) -> None:
        self.user_id = user_id
        self.name = name
        self.prefix = prefix
        self.digest = digest
        self.revoked = False

    @classmethod
    def issue(
        cls, *, user_id: UUID, key: str, name: str, actor: str, correlation_id: str
    ) -> "ApiKey":
        return cls._create(
            ApiKeyIssued,
            id=key_id_for(key),
            user_id=user_id,
            name=name,
            prefix=key[:KEY_PREFIX_LENGTH],
            digest=key_digest(key),
            actor=actor,
            correlation_id=correlation_id,
        )

    def matches(self, key: str) -> bool:
        return not self.revoked and secrets.compare_digest(self.digest, key_digest(key))

    def revoke(self, *, actor: str, correlation_id: str) -> None:
        if not self.revoked:
            self.trigger_event(ApiKeyRevoked, actor=actor, correlation_id=correlation_id)
