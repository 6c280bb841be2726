"""The identity application service: users, roles and API keys.

Passwords arrive hashed (hashing is an adapter's job); keys are generated here and
returned once, only their digest is stored.
"""

from dataclasses import dataclass
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import IntegrityError

from threadlog.domain.identity import (
    ApiKey,
    KeyNotFound,
    User,
    UsernameTaken,
    UserNotFound,
    key_id_for,
    new_key,
    user_id_for,
)


@dataclass(frozen=True, kw_only=True)
class Actor:
    """Who makes a change to an identity, and in which request."""

    actor: str
    correlation_id: str


@dataclass(frozen=True, kw_only=True)
class IssuedKey:
    """A new key: the only moment its full value is known."""

    key_id: UUID
    key: str
    prefix: str
    user_id: UUID
    name: str


class IdentityService(Application[UUID]):
    name = "identity"

    def register(
        self, *, username: str, password_hash: str | None, roles: list[str], by: Actor
    ) -> User:
        user = User.register(
            username=username,
            password_hash=password_hash,
            roles=roles,
            actor=by.actor,
            correlation_id=by.correlation_id,
        )
        try:
            self.save(user)
        except IntegrityError:
            raise UsernameTaken(f"the username {username!r} is taken") from None
        return user

    def get_user(self, user_id: UUID) -> User:
        try:
            user: User = self.repository.get(user_id)
        except AggregateNotFoundError:
            raise UserNotFound(f"no user {user_id}") from None
        return user

    def find_user(self, username: str) -> User | None:
        try:
            return self.get_user(user_id_for(username))
        except UserNotFound:
            return None

    def set_roles(self, user_id: UUID, roles: list[str], *, by: Actor) -> User:
        user = self.get_user(user_id)
        for role in roles:
            user.grant(role, actor=by.actor, correlation_id=by.correlation_id)
        for role in list(user.roles):
            if role not in roles:
                user.revoke(role, actor=by.actor, correlation_id=by.correlation_id)
        self.save(user)
        return user

    def issue_key(
        self, user_id: UUID, *, name: str, by: Actor, key: str | None = None
    ) -> IssuedKey:
        """A new key for a user; `key` fixes its value (bootstrapping), else it is random."""
        self.get_user(user_id)
        value = key or new_key()
        issued = ApiKey.issue(
            user_id=user_id, key=value, name=name, actor=by.actor, correlation_id=by.correlation_id
        )
        self.save(issued)
        return IssuedKey(
            key_id=issued.id, key=value, prefix=issued.prefix, user_id=user_id, name=name
        )

    def get_key(self, key_id: UUID) -> ApiKey:
        try:
            key: ApiKey = self.repository.get(key_id)
        except AggregateNotFoundError:
            raise KeyNotFound(f"no key {key_id}") from None
        return key

    def has_key(self, key: str) -> bool:
        try:
            self.get_key(key_id_for(key))
        except KeyNotFound:
            return False
        return True

    def revoke_key(self, key_id: UUID, *, by: Actor) -> ApiKey:
        key = self.get_key(key_id)
        key.revoke(actor=by.actor, correlation_id=by.correlation_id)
        self.save(key)
        return key

    def authenticate_key(self, key: str) -> User | None:
        """The user a presented key belongs to; None for an unknown or revoked key."""
        try:
            stored = self.get_key(key_id_for(key))
        except KeyNotFound:
            return None
        if not stored.matches(key):
            return None
        return self.get_user(stored.user_id)
