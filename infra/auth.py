"""Authentication adapters: passwords (argon2), JWTs (PyJWT), API keys, a trusted gateway.

`Authenticator.authenticate` turns a request's headers into an `Identity` or raises
`Unauthenticated` with a message safe to show. Roles are read from the identity store
on every request, so a revoked role or key takes effect at once.
"""

import secrets
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import jwt
import structlog
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from eventsourcing.sqlite import SQLiteApplicationRecorder
from eventsourcing.utils import get_topic

from threadlog.domain.identity import User, UsernameTaken, UserNotFound, user_id_for
from threadlog.domain.identity_service import Actor, IdentityService, IssuedKey
from threadlog.infra.settings import Settings, SettingsError
from threadlog.infra.store.eventstore import reconnect_promptly, store_environment

log = structlog.get_logger(__name__)

ADMIN_USERNAME = "admin"
_LEEWAY_SECONDS = 5


class Unauthenticated(Exception):
    """No usable credentials; the message says what was wrong, never how to get in."""


@dataclass(frozen=True, kw_only=True)
class Identity:
    user_id: str
    username: str
    roles: frozenset[str]
    # How the caller proved it: "key", "jwt" or "gateway".
    via: str

    def has(self, role: str) -> bool:
        return role in self.roles


def identity_of(user: User, via: str) -> Identity:
    return Identity(
        user_id=str(user.id), username=user.username, roles=frozenset(user.roles), via=via
    )


def open_identities(settings: Settings) -> IdentityService:
    """The identity store: its own tables next to the events (its own file on SQLite)."""
    env = store_environment(settings)
    # Identity reads are one small row each: a small pool next to the event store's.
    env.update(POSTGRES_POOL_SIZE="2", POSTGRES_MAX_OVERFLOW="4")
    if settings.database_url is None:
        env.update(
            SQLITE_DBNAME=str(settings.identity_sqlite_path),
            APPLICATION_RECORDER_TOPIC=get_topic(SQLiteApplicationRecorder),
        )
    identities = IdentityService(env)
    reconnect_promptly(identities.recorder)
    return identities


class Passwords:
    def __init__(self) -> None:
        self._hasher = PasswordHasher()
        # Verified against when the user does not exist, so both paths take as long.
        self._decoy = self._hasher.hash(secrets.token_hex(16))

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, password_hash: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash or self._decoy, password) and (
                password_hash is not None
            )
        except (VerificationError, InvalidHashError):
            return False


def _read_key(value: str) -> str:
    """A PEM given inline or as a path to a file."""
    if "-----BEGIN" in value:
        return value
    try:
        return Path(value).read_text()
    except OSError as error:
        raise SettingsError(f"cannot read the JWT key file {value!r}: {error}") from None


def _hs256_secret(settings: Settings) -> str:
    if settings.jwt_secret:
        return settings.jwt_secret
    # Embedded mode: one secret per data dir. Several API processes must share
    # THREADLOG_JWT_SECRET instead.
    path = settings.data_dir / "jwt_secret"
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(48))
    return path.read_text().strip()


class Tokens:
    """Issues and verifies the service's JWTs."""

    def __init__(self, settings: Settings) -> None:
        self._algorithm = settings.jwt_algorithm
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self.ttl_seconds = settings.jwt_ttl_seconds
        if self._algorithm == "HS256":
            self._signing: str | None = _hs256_secret(settings)
            self._verifying = self._signing
        else:
            assert settings.jwt_public_key is not None
            self._verifying = _read_key(settings.jwt_public_key)
            self._signing = (
                _read_key(settings.jwt_private_key) if settings.jwt_private_key else None
            )

    @property
    def can_issue(self) -> bool:
        return self._signing is not None

    def issue(self, user: User) -> str:
        if self._signing is None:
            raise SettingsError("no JWT private key: this server cannot log people in")
        now = int(time.time())
        claims = {
            "sub": str(user.id),
            "name": user.username,
            "roles": list(user.roles),
            "iss": self._issuer,
            "aud": self._audience,
            "iat": now,
            "nbf": now,
            "exp": now + self.ttl_seconds,
        }
        return jwt.encode(claims, self._signing, algorithm=self._algorithm)

    def verify(self, token: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._verifying,
                algorithms=[self._algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=_LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("the token is not valid yet") from None
        except jwt.InvalidTokenError as error:
            raise Unauthenticated(f"the token is invalid: {error}") from None
        return claims


class Authenticator:
    def __init__(self, identities: IdentityService, tokens: Tokens, settings: Settings) -> None:
        self._identities = identities
        self._tokens = tokens
        self._gateway = settings.trusted_gateway
        self._proxies = {p.strip() for p in settings.trusted_proxies.split(",") if p.strip()}

    def authenticate(
        self, headers: Mapping[str, str], query_token: str | None, client_host: str | None
    ) -> Identity:
        """Blocking (it reads the identity store): call it off the event loop."""
        authorization = headers.get("authorization")
        if authorization is not None:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("the Authorization header must be `Bearer <token>`")
            return self._from_token(token.strip())
        key = headers.get("x-api-key")
        if key is not None:
            user = self._identities.authenticate_key(key.strip())
            if user is None:
                raise Unauthenticated("the API key is unknown or revoked")
            return identity_of(user, "key")
        if self._gateway and headers.get("x-user-id"):
            return self._from_gateway(headers["x-user-id"], client_host)
        if query_token:
            return self._from_token(query_token)
        raise Unauthenticated("send `Authorization: Bearer <token>` or `X-API-Key: <key>`")

    def _from_token(self, token: str) -> Identity:
        claims = self._tokens.verify(token)
        try:
            user = self._identities.get_user(UUID(str(claims["sub"])))
        except (ValueError, UserNotFound):
            raise Unauthenticated("the token's subject is not a user of this service") from None
        return identity_of(user, "jwt")

    def _from_gateway(self, user_id: str, client_host: str | None) -> Identity:
        if client_host not in self._proxies:
            raise Unauthenticated("X-User-ID is only accepted from the trusted gateway")
        try:
            user = self._identities.get_user(UUID(user_id))
        except (ValueError, UserNotFound):
            raise Unauthenticated("X-User-ID is not a user of this service") from None
        return identity_of(user, "gateway")


BOOTSTRAP = Actor(actor="system", correlation_id="bootstrap")


def ensure_admin(identities: IdentityService, settings: Settings) -> IssuedKey | None:
    """Makes sure an admin can get in; returns a key created now (shown once), if any."""
    admin = identities.find_user(ADMIN_USERNAME)
    created = False
    if admin is None:
        try:
            admin = identities.register(
                username=ADMIN_USERNAME, password_hash=None, roles=["admin", "user"], by=BOOTSTRAP
            )
            created = True
        except UsernameTaken:  # another process started at the same moment
            admin = identities.get_user(user_id_for(ADMIN_USERNAME))
    if settings.bootstrap_admin_key:
        if not identities.has_key(settings.bootstrap_admin_key):
            identities.issue_key(
                admin.id, name="bootstrap", by=BOOTSTRAP, key=settings.bootstrap_admin_key
            )
        return None
    if created:
        return identities.issue_key(admin.id, name="first start", by=BOOTSTRAP)
    return None


def announce_admin_key(issued: IssuedKey) -> None:
    """Printed once to the terminal, never logged: whoever started the server gets it."""
    sys.stderr.write(
        "\nthreadlog: created the admin user and its API key (shown only now):\n"
        f"    X-API-Key: {issued.key}\n\n"
    )
    sys.stderr.flush()
    log.info("auth.admin_key_created", prefix=issued.prefix, key_id=str(issued.key_id))
