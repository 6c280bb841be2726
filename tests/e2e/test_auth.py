"""Identity and access: users, logins, keys, roles, and every route's guard."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.backends import BACKENDS
from tests.servers import NatsNames, delete_stream
from tests.support import (
    LiveServer,
    create_conversation,
    new_user,
    post_message,
    scripted_model,
    settings_for,
    unique,
    wait_for_run_end,
)
from threadlog.infra.settings import Settings

PASSWORD = "correct horse battery"
THREADLOG = str(Path(sys.executable).parent / "threadlog")
PUBLIC_ROUTES = {
    ("GET", "/health"),
    ("GET", "/health/ready"),
    ("POST", "/v1/users/register"),
    ("POST", "/v1/users/login"),
}


class Site:
    """A live server, its admin client and helpers to make users."""

    def __init__(self, server: LiveServer, settings: Settings) -> None:
        self.server = server
        self.settings = settings
        self.admin = server.client()

    def user(self, username: str, roles: list[str] | None = None) -> httpx.Client:
        """A new user (roles default to `user`) and a client holding a key of theirs."""
        return new_user(self.server, self.admin, username, roles or ["user"])

    def anonymous(self) -> httpx.Client:
        return self.server.client(key=None)


@pytest.fixture(scope="module", params=BACKENDS)
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, nats_url: str
) -> Iterator[Site]:
    database_url = (
        request.getfixturevalue("session_database_url") if request.param == "postgres" else None
    )
    names = NatsNames.new()
    settings = settings_for(
        Path(tmp_path_factory.mktemp("auth")),
        database_url=database_url,
        nats_url=nats_url,
        names=names,
        jwt_secret="test-secret-" + "x" * 32,
    )
    with LiveServer(settings, scripted_model(["ok"], delay=0.05)) as server:
        yield Site(server, settings)
    delete_stream(nats_url, names.stream)


def assert_unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, (response.request.url, response.text)
    assert response.headers["www-authenticate"].startswith('Bearer realm="threadlog"')
    assert response.json()["error"] == "unauthorized"


def test_a_request_without_credentials_is_401_with_a_challenge(site: Site) -> None:
    with site.anonymous() as client:
        assert_unauthorized(client.get("/v1/conversations"))


def test_registering_logging_in_and_using_the_token(site: Site) -> None:
    username = unique("alice")
    with site.anonymous() as client:
        registered = client.post(
            "/v1/users/register", json={"username": username, "password": PASSWORD}
        )
        assert registered.status_code == 201, registered.text
        assert registered.json()["roles"] == ["user"]
        login = client.post("/v1/users/login", json={"username": username, "password": PASSWORD})
        assert login.status_code == 200, login.text
        token = login.json()["access_token"]
        me = client.get("/v1/users/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200, me.text
    assert me.json()["username"] == username and me.json()["authenticated_with"] == "jwt"


def test_a_wrong_password_and_an_unknown_user_get_the_same_401(site: Site) -> None:
    username = unique("bob")
    with site.anonymous() as client:
        client.post("/v1/users/register", json={"username": username, "password": PASSWORD})
        wrong = client.post("/v1/users/login", json={"username": username, "password": "nope"})
        unknown = client.post(
            "/v1/users/login", json={"username": unique("nobody"), "password": PASSWORD}
        )
    assert_unauthorized(wrong)
    assert_unauthorized(unknown)
    assert wrong.json()["message"] == unknown.json()["message"]


def test_a_taken_username_is_409_and_a_short_password_is_400(site: Site) -> None:
    username = unique("carol")
    with site.anonymous() as client:
        first = client.post("/v1/users/register", json={"username": username, "password": PASSWORD})
        again = client.post(
            "/v1/users/register", json={"username": username.upper(), "password": PASSWORD}
        )
        short = client.post(
            "/v1/users/register", json={"username": unique("dave"), "password": "short"}
        )
    assert first.status_code == 201
    assert again.status_code == 409 and again.json()["error"] == "username_taken"
    assert short.status_code == 400 and short.json()["details"]["field"] == "password"


def test_a_key_is_shown_once_works_and_stops_working_when_revoked(site: Site) -> None:
    with site.user(unique("erin")) as client:
        issued = client.post("/v1/keys", json={"name": "laptop"})
        assert issued.status_code == 201, issued.text
        key = issued.json()
        assert key["key"].startswith(key["prefix"]) and len(key["prefix"]) < len(key["key"])
        with site.server.client(key=key["key"]) as with_key:
            assert with_key.get("/v1/users/me").status_code == 200
            revoked = client.delete(f"/v1/keys/{key['id']}")
            assert revoked.status_code == 200 and revoked.json()["revoked"] is True
            assert_unauthorized(with_key.get("/v1/users/me"))


def test_someone_elses_key_cannot_be_revoked_and_looks_unknown(site: Site) -> None:
    with site.user(unique("frank")) as frank, site.user(unique("grace")) as grace:
        key = frank.post("/v1/keys", json={}).json()
        answer = grace.delete(f"/v1/keys/{key['id']}")
    assert answer.status_code == 404


def forged(settings: Settings, **claims: Any) -> str:
    base = {
        "sub": "00000000-0000-0000-0000-000000000000",
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "exp": int(time.time()) + 60,
    }
    assert settings.jwt_secret is not None
    return jwt.encode({**base, **claims}, settings.jwt_secret, algorithm="HS256")


def unsigned(settings: Settings, **claims: Any) -> str:
    """A token with `alg: none` and no signature, as an attacker would send it."""

    def part(value: dict[str, Any]) -> str:
        raw = json.dumps(value).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    body = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "exp": int(time.time()) + 60,
        **claims,
    }
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(body)}."


def admin_token(site: Site) -> dict[str, Any]:
    me = site.admin.get("/v1/users/me").json()
    return {"sub": me["id"]}


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda s, c: "not.a.jwt", id="malformed"),
        pytest.param(lambda s, c: forged(s, exp=int(time.time()) - 60, **c), id="expired"),
        pytest.param(lambda s, c: forged(s, nbf=int(time.time()) + 600, **c), id="not-yet-valid"),
        pytest.param(lambda s, c: forged(s, aud="someone-else", **c), id="wrong-audience"),
        pytest.param(lambda s, c: forged(s, iss="someone-else", **c), id="wrong-issuer"),
        pytest.param(
            lambda s, c: jwt.encode(
                {
                    "sub": c["sub"],
                    "iss": s.jwt_issuer,
                    "aud": s.jwt_audience,
                    "exp": int(time.time()) + 60,
                },
                "a-different-secret-of-enough-length-123",
                algorithm="HS256",
            ),
            id="wrong-signature",
        ),
        pytest.param(lambda s, c: unsigned(s, **c), id="alg-none"),
    ],
)
def test_bad_tokens_are_401(site: Site, make_token: Any) -> None:
    token = make_token(site.settings, admin_token(site))
    with site.anonymous() as client:
        answer = client.get("/v1/users/me", headers={"Authorization": f"Bearer {token}"})
    assert_unauthorized(answer)
    assert 'error="invalid_token"' in answer.headers["www-authenticate"]


def test_a_valid_forged_claim_set_for_a_real_user_is_accepted(site: Site) -> None:
    """The control for the test above: the same construction, correctly signed, works."""
    token = forged(site.settings, **admin_token(site))
    with site.anonymous() as client:
        answer = client.get("/v1/users/me", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text


def test_admin_routes_are_403_for_users(site: Site) -> None:
    with site.user(unique("heidi")) as client:
        answer = client.post("/v1/admin/users", json={"username": unique("x")})
    assert answer.status_code == 403 and answer.json()["error"] == "forbidden"


def test_unknown_roles_are_400(site: Site) -> None:
    answer = site.admin.post(
        "/v1/admin/users", json={"username": unique("ivan"), "roles": ["superuser"]}
    )
    assert answer.status_code == 400 and "superuser" in answer.json()["message"]


def test_each_user_sees_only_their_own_conversations(site: Site) -> None:
    with site.user(unique("judy")) as judy, site.user(unique("mallory")) as mallory:
        mine = create_conversation(judy, title="judy's")
        created = mallory.post("/v1/conversations", json={"title": "mallory's"}).json()
        theirs = created["id"]
        # min_position: the list reflects both creations (read-your-writes).
        at = created["global_position"]
        listed = judy.get("/v1/conversations", params={"min_position": at}).json()["items"]
        assert [c["id"] for c in listed] == [mine]
        assert judy.get(f"/v1/conversations/{theirs}").status_code == 404


def test_an_auditor_reads_any_conversations_events_but_has_no_list_of_them(site: Site) -> None:
    with site.user(unique("owner")) as owner, site.user(unique("audit"), ["auditor"]) as auditor:
        conversation = create_conversation(owner)
        post_message(owner, conversation, "hi")
        wait_for_run_end(owner, conversation)
        events = auditor.get(
            f"/v1/conversations/{conversation}/events", headers={"accept": "application/json"}
        )
        verified = auditor.get(f"/v1/audit/conversations/{conversation}/verify")
        listing = auditor.get("/v1/conversations")
    assert events.status_code == 200 and events.json()["items"][0]["type"] == "ConversationStarted"
    assert verified.status_code == 200 and verified.json()["intact"] is True
    assert listing.status_code == 403


# --- every route, walked from the OpenAPI schema -----------------------------------------


def _fill(path: str, ids: dict[str, str]) -> str:
    for name, value in ids.items():
        path = path.replace("{" + name + "}", value)
    return path


def _body(method: str, path: str, thread_id: str | None = None) -> dict[str, Any] | None:
    bodies = {
        ("POST", "/v1/conversations"): {"title": "walk"},
        ("PATCH", "/v1/conversations/{conversation_id}"): {"title": "walked"},
        ("POST", "/v1/conversations/{conversation_id}/messages"): {"content": "hi"},
        ("POST", "/v1/keys"): {"name": "walk"},
        ("POST", "/v1/admin/users"): {"username": unique("walk")},
        ("POST", "/v1/admin/users/{user_id}/keys"): {},
        ("POST", "/v1/users/register"): {"username": unique("walk"), "password": PASSWORD},
        ("POST", "/v1/users/login"): {"username": "admin", "password": "x"},
        ("POST", "/v1/agents"): {"name": "walker"},
        ("PATCH", "/v1/agents/{agent_id}"): {"description": "walked"},
        ("POST", "/v1/agents/{agent_id}/try"): {"content": "hi"},
        ("POST", "/v1/ag-ui"): ag_ui_input(thread_id),
    }
    return bodies.get((method, path))


def ag_ui_input(thread_id: str | None) -> dict[str, Any]:
    """AG-UI's RunAgentInput for `POST /v1/ag-ui` (a new thread when None)."""
    return {
        "threadId": thread_id or str(uuid.uuid4()),
        "runId": unique("run"),
        "messages": [{"id": unique("message"), "role": "user", "content": "hi"}],
    }


# Routes outside the OpenAPI document that the walk covers too: A2A's agent cards and
# JSON-RPC endpoint (the agent card describes them; docs/a2a.md).
UNDOCUMENTED_ROUTES = [
    ("GET", "/.well-known/agent-card.json"),
    ("GET", "/a2a/{agent}/.well-known/agent-card.json"),
    ("POST", "/a2a/{agent}"),
]


def _operations(site: Site) -> list[tuple[str, str]]:
    schema = site.admin.get("/schema/openapi.json").json()
    return sorted(
        (method.upper(), path)
        for path, item in schema["paths"].items()
        for method in item
        if method in {"get", "post", "patch", "put", "delete"}
    )


def test_every_route_needs_credentials_except_the_public_ones(site: Site) -> None:
    operations = _operations(site)
    assert len(operations) >= 15
    operations += UNDOCUMENTED_ROUTES
    ids = {
        "agent": "assistant",
        "conversation_id": "00000000-0000-4000-8000-000000000001",
        "run_id": "r1",
        "key_id": "00000000-0000-4000-8000-000000000002",
        "user_id": "00000000-0000-4000-8000-000000000003",
        "agent_id": "00000000-0000-4000-8000-000000000004",
    }
    with site.user(unique("revoked")) as owner:
        issued = owner.post("/v1/keys", json={}).json()
        assert owner.delete(f"/v1/keys/{issued['id']}").status_code == 200
    with (
        site.anonymous() as anonymous,
        site.server.client(key=issued["key"]) as revoked,
        site.server.client(key="tlk_never-issued") as unknown,
    ):
        for method, path in operations:
            if (method, path) in PUBLIC_ROUTES:
                continue
            url = _fill(path, ids)
            for client in (anonymous, revoked, unknown):
                assert_unauthorized(client.request(method, url, json=_body(method, path)))


def test_every_conversation_route_is_404_to_a_user_who_does_not_own_it(site: Site) -> None:
    with site.user(unique("owner")) as owner, site.user(unique("stranger")) as stranger:
        conversation = create_conversation(owner)
        accepted = post_message(owner, conversation, "hi")
        scoped = [
            (m, p) for m, p in _operations(site) if "{conversation_id}" in p or "{run_id}" in p
        ]
        assert len(scoped) >= 8
        ids = {"conversation_id": conversation, "run_id": accepted["run_id"]}
        for method, path in scoped:
            answer = stranger.request(method, _fill(path, ids), json=_body(method, path))
            assert answer.status_code == 404, (method, path, answer.text)
        # The AG-UI route names its thread in the body.
        answer = stranger.post("/v1/ag-ui", json=_body("POST", "/v1/ag-ui", conversation))
        assert answer.status_code == 404, answer.text
        wait_for_run_end(owner, conversation)


def test_every_conversation_route_answers_its_owner(site: Site) -> None:
    with site.user(unique("owner")) as owner:
        conversation = create_conversation(owner)
        scoped = [(m, p) for m, p in _operations(site) if "{conversation_id}" in p]
        for method, path in scoped:
            if method == "DELETE":
                continue  # archiving ends the walk: done last
            url = _fill(path, {"conversation_id": conversation})
            headers = {"accept": "application/json"}
            answer = owner.request(method, url, json=_body(method, path), headers=headers)
            assert answer.status_code < 400, (method, path, answer.text)
            if method == "POST" and path.endswith("/messages"):
                wait_for_run_end(owner, conversation)
        answer = owner.post("/v1/ag-ui", json=_body("POST", "/v1/ag-ui", conversation))
        assert answer.status_code == 200, answer.text
        assert '"RUN_FINISHED"' in answer.text
        archived = owner.patch(f"/v1/conversations/{conversation}", json={"archived": True})
        assert archived.status_code == 200


def test_every_agent_route_is_404_to_a_user_who_cannot_see_the_agent(site: Site) -> None:
    with site.user(unique("owner")) as owner, site.user(unique("stranger")) as stranger:
        agent = owner.post("/v1/agents", json={"name": "private"}).json()
        scoped = [(m, p) for m, p in _operations(site) if "{agent_id}" in p]
        assert len(scoped) >= 8
        for method, path in scoped:
            url = _fill(path, {"agent_id": agent["id"]})
            answer = stranger.request(method, url, json=_body(method, path))
            assert answer.status_code == 404, (method, path, answer.text)


def test_every_agent_route_answers_its_owner(site: Site) -> None:
    with site.user(unique("owner")) as owner:
        agent = owner.post("/v1/agents", json={"name": "mine"}).json()
        scoped = [(m, p) for m, p in _operations(site) if "{agent_id}" in p]
        for method, path in scoped:
            if method == "DELETE":
                continue  # retiring ends the walk: done last
            url = _fill(path, {"agent_id": agent["id"]})
            answer = owner.request(method, url, json=_body(method, path))
            assert answer.status_code < 400, (method, path, answer.text)
            if path.endswith("/try"):
                wait_for_run_end(owner, answer.json()["conversation_id"])
        retired = owner.delete(f"/v1/agents/{agent['id']}")
        assert retired.status_code == 200 and retired.json()["retired"] is True


def run_cli(settings: Settings, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "THREADLOG_DATA_DIR": str(settings.data_dir)}
    if settings.database_url:
        env["THREADLOG_DATABASE_URL"] = settings.database_url
    return subprocess.run(
        [THREADLOG, *args], env=env, input=stdin, capture_output=True, text=True, timeout=60
    )


def test_the_cli_creates_a_user_with_roles_and_issues_a_key_that_works(site: Site) -> None:
    username = unique("cli")
    created = run_cli(
        site.settings,
        "users",
        "create",
        username,
        "--role",
        "auditor",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert created.returncode == 0, created.stderr
    issued = run_cli(site.settings, "keys", "issue", username)
    assert issued.returncode == 0, issued.stderr
    with site.server.client(key=issued.stdout.strip()) as client:
        me = client.get("/v1/users/me")
        login = client.post("/v1/users/login", json={"username": username, "password": PASSWORD})
    assert me.status_code == 200, me.text
    assert me.json()["roles"] == ["auditor"] and me.json()["username"] == username
    assert login.status_code == 200, login.text


# --- other ways in: a trusted gateway, RS256 tokens, a token in the query string ----------


def rsa_pair() -> tuple[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def test_a_trusted_gateway_may_name_the_user_and_an_untrusted_one_may_not(
    make_settings: Any,
) -> None:
    trusted = make_settings(trusted_gateway=True)
    with LiveServer(trusted) as server, server.client() as admin:
        me = admin.get("/v1/users/me").json()
        with server.client(key=None, **{"X-User-ID": me["id"]}) as gateway:
            answer = gateway.get("/v1/users/me")
    assert answer.status_code == 200 and answer.json()["authenticated_with"] == "gateway"
    untrusted = make_settings(trusted_gateway=True, trusted_proxies="10.9.8.7")
    with LiveServer(untrusted) as server, server.client(key=None) as client:
        refused = client.get("/v1/users/me", headers={"X-User-ID": me["id"]})
    assert_unauthorized(refused)


def test_rs256_tokens_log_in_and_an_hs256_token_signed_with_the_public_key_is_refused(
    make_settings: Any,
) -> None:
    private, public = rsa_pair()
    settings = make_settings(jwt_algorithm="RS256", jwt_public_key=public, jwt_private_key=private)
    username = unique("rsa")
    with LiveServer(settings) as server, server.client(key=None) as client:
        client.post("/v1/users/register", json={"username": username, "password": PASSWORD})
        token = client.post(
            "/v1/users/login", json={"username": username, "password": PASSWORD}
        ).json()["access_token"]
        assert jwt.get_unverified_header(token)["alg"] == "RS256"
        me = client.get("/v1/users/me", headers={"Authorization": f"Bearer {token}"})
        claims = jwt.decode(token, options={"verify_signature": False})
        confused = base64_hs256(claims, public)
        refused = client.get("/v1/users/me", headers={"Authorization": f"Bearer {confused}"})
    assert me.status_code == 200, me.text
    assert_unauthorized(refused)


def base64_hs256(claims: dict[str, Any], secret: str) -> str:
    """An HS256 token keyed with `secret`, built by hand (PyJWT refuses PEM keys as HMAC
    secrets, which is the attack this stands for)."""
    import hashlib
    import hmac

    def part(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    header = part(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = part(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{part(signature)}"


def test_an_event_stream_accepts_a_token_in_the_query_string(site: Site) -> None:
    """Browsers' EventSource cannot set headers."""
    username = unique("browser")
    with site.anonymous() as client:
        client.post("/v1/users/register", json={"username": username, "password": PASSWORD})
        token = client.post(
            "/v1/users/login", json={"username": username, "password": PASSWORD}
        ).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        created = client.post("/v1/conversations", json={}, headers=headers).json()
        page = client.get(
            f"/v1/conversations/{created['id']}/events",
            params={"access_token": token},
            headers={"accept": "application/json"},
        )
    assert page.status_code == 200, page.text
    assert page.json()["items"][0]["type"] == "ConversationStarted"
