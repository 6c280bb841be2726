"""The console's page and assets: served at / and /console/ without credentials, under
a CSP of their own (same-origin scripts, styles and connections; nothing inline),
while the API keeps its `default-src 'none'`. Admins find users by name."""

from __future__ import annotations

from tests.e2e.conftest import SettingsFactory
from tests.support import LiveServer, new_user


def test_the_console_is_served_at_the_root_under_its_own_csp(
    make_settings: SettingsFactory,
) -> None:
    with LiveServer(make_settings()) as server, server.client(key=None) as anonymous:
        page = anonymous.get("/")
        script = anonymous.get("/console/js/app.js")
        vendored = anonymous.get("/console/vendor/purify.es.js")
        missing = anonymous.get("/console/js/nothing.js")
        api = anonymous.get("/v1/conversations")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/console/js/app.js">' in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert script.headers["content-security-policy"] == csp
    assert vendored.status_code == 200 and "DOMPurify" in vendored.text
    assert missing.status_code == 404
    assert api.status_code == 401
    assert api.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"


def test_admins_find_a_user_by_name(make_settings: SettingsFactory) -> None:
    with LiveServer(make_settings()) as server, server.client() as admin:
        someone = new_user(server, admin, "someone", ["analyst"])
        found = admin.get("/v1/admin/users", params={"username": "someone"})
        unknown = admin.get("/v1/admin/users", params={"username": "nobody"})
        refused = someone.get("/v1/admin/users", params={"username": "someone"})
        someone.close()
    assert found.status_code == 200
    assert found.json()["username"] == "someone" and found.json()["roles"] == ["analyst"]
    assert unknown.status_code == 404
    assert refused.status_code == 403
