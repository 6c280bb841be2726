"""Users, logins and API keys; the admins' user management."""

import asyncio
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.di import NamedDependency
from litestar.exceptions import PermissionDeniedException
from litestar.params import FromPath, JSONBody, QueryParameter

from threadlog.domain.identity import KeyNotFound, User, UserNotFound
from threadlog.domain.identity_service import Actor, IssuedKey
from threadlog.http.auth import ADMIN, ANYONE, PUBLIC, identity, unauthenticated
from threadlog.http.context import request_id_of
from threadlog.http.errors import BadRequest
from threadlog.http.schemas import NOT_BLANK
from threadlog.infra.runtime import Runtime

# Not only white space (the domain refuses a blank name).
Username = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=NOT_BLANK)]
# At least THREADLOG_MIN_PASSWORD_LENGTH characters: the OpenAPI schema states the
# configured minimum (http/contract.py).
Password = Annotated[str, msgspec.Meta(max_length=1024)]
KeyName = Annotated[str, msgspec.Meta(max_length=100)]
Role = Literal["user", "auditor", "analyst", "admin"]


class Registration(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    username: Username
    password: Password


class Login(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    username: Username
    password: Password


class NewUser(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    username: Username
    roles: list[Role] = msgspec.field(default_factory=lambda: ["user"])
    password: Password | None = None


class NewKey(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: KeyName = "api key"


class UserOut(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    username: str
    roles: list[str]


class Me(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    username: str
    roles: list[str]
    authenticated_with: str


class TokenOut(msgspec.Struct, frozen=True, kw_only=True):
    access_token: str
    token_type: str
    expires_in: int


class KeyOut(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    key: str
    prefix: str
    name: str
    user_id: str


class KeyRevoked(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    prefix: str
    revoked: bool


def user_out(user: User) -> UserOut:
    return UserOut(id=str(user.id), username=user.username, roles=list(user.roles))


def key_out(issued: IssuedKey) -> KeyOut:
    return KeyOut(
        id=str(issued.key_id),
        key=issued.key,
        prefix=issued.prefix,
        name=issued.name,
        user_id=str(issued.user_id),
    )


def actor_of(request: Request[Any, Any, Any]) -> Actor:
    caller = request.scope.get("user")
    name = f"user:{caller.user_id}" if caller is not None else "anonymous"
    return Actor(actor=name, correlation_id=request_id_of(request) or "")


def _check_password(runtime: Runtime, password: str) -> None:
    minimum = runtime.settings.min_password_length
    if len(password) < minimum:
        raise BadRequest(
            f"password must be at least {minimum} characters", extra={"field": "password"}
        )


class UserController(Controller):
    path = "/v1/users"
    tags = ["users"]

    @post("/register", status_code=201, opt=PUBLIC, summary="Register a user (role `user`)")
    async def register(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        data: JSONBody[Registration],
    ) -> UserOut:
        if not runtime.settings.open_registration:
            raise PermissionDeniedException(detail="registration is closed; ask an admin")
        _check_password(runtime, data.password)
        password_hash = await asyncio.to_thread(runtime.passwords.hash, data.password)
        user = await asyncio.to_thread(
            runtime.identities.register,
            username=data.username,
            password_hash=password_hash,
            roles=["user"],
            by=actor_of(request),
        )
        return user_out(user)

    @post("/login", status_code=200, opt=PUBLIC, summary="Exchange a password for a JWT")
    async def login(self, runtime: NamedDependency[Runtime], data: JSONBody[Login]) -> TokenOut:
        user = await asyncio.to_thread(runtime.identities.find_user, data.username)
        password_hash = user.password_hash if user else None
        valid = await asyncio.to_thread(runtime.passwords.verify, password_hash, data.password)
        if user is None or not valid:
            raise unauthenticated("unknown username or wrong password")
        token = runtime.tokens.issue(user)
        return TokenOut(
            access_token=token,
            token_type="bearer",  # noqa: S106 (the OAuth token type, not a secret)
            expires_in=runtime.tokens.ttl_seconds,
        )

    @get("/me", guards=ANYONE, summary="Who you are authenticated as")
    async def me(self, request: Request[Any, Any, Any]) -> Me:
        caller = identity(request)
        return Me(
            id=caller.user_id,
            username=caller.username,
            roles=sorted(caller.roles),
            authenticated_with=caller.via,
        )


class KeyController(Controller):
    path = "/v1/keys"
    tags = ["users"]

    @post("/", status_code=201, guards=ANYONE, summary="Issue an API key for yourself")
    async def issue(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        data: JSONBody[NewKey],
    ) -> KeyOut:
        caller = identity(request)
        issued = await asyncio.to_thread(
            runtime.identities.issue_key,
            UUID(caller.user_id),
            name=data.name,
            by=actor_of(request),
        )
        return key_out(issued)

    @delete("/{key_id:uuid}", status_code=200, guards=ANYONE, summary="Revoke an API key")
    async def revoke(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        key_id: FromPath[UUID],
    ) -> KeyRevoked:
        caller = identity(request)
        key = await asyncio.to_thread(runtime.identities.get_key, key_id)
        if str(key.user_id) != caller.user_id and not caller.has("admin"):
            raise KeyNotFound(f"no key {key_id}")
        revoked = await asyncio.to_thread(
            runtime.identities.revoke_key, key_id, by=actor_of(request)
        )
        return KeyRevoked(id=str(key_id), prefix=revoked.prefix, revoked=revoked.revoked)


class AdminController(Controller):
    path = "/v1/admin"
    tags = ["admin"]
    guards = ADMIN

    @post("/users", status_code=201, summary="Create a user with roles")
    async def create_user(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        data: JSONBody[NewUser],
    ) -> UserOut:
        password_hash = None
        if data.password is not None:
            _check_password(runtime, data.password)
            password_hash = await asyncio.to_thread(runtime.passwords.hash, data.password)
        user = await asyncio.to_thread(
            runtime.identities.register,
            username=data.username,
            password_hash=password_hash,
            roles=[str(role) for role in data.roles],
            by=actor_of(request),
        )
        return user_out(user)

    @get("/users", summary="Find a user by name (404 when there is none)")
    async def find_user(
        self,
        runtime: NamedDependency[Runtime],
        username: Annotated[str, QueryParameter(min_length=1, max_length=64)],
    ) -> UserOut:
        user = await asyncio.to_thread(runtime.identities.find_user, username)
        if user is None:
            raise UserNotFound(f"no user {username!r}")
        return user_out(user)

    @post("/users/{user_id:uuid}/keys", status_code=201, summary="Issue an API key for a user")
    async def issue_key(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        user_id: FromPath[UUID],
        data: JSONBody[NewKey],
    ) -> KeyOut:
        issued = await asyncio.to_thread(
            runtime.identities.issue_key,
            user_id,
            name=data.name,
            by=actor_of(request),
        )
        return key_out(issued)
