"""The role matrix over every portal page: each route of the portal (collected from the
app, tracking and API excluded) is declared below with the permission it needs, and every
role (and nobody logged in) is walked over all of them.  A role without the permission
must get 403; nobody logged in is sent to the login page; a role with it must not be
refused.  A new page without an entry here fails the first test."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from mailer.accounts.service import create_account, create_user
from mailer.asgi import create_app
from mailer.core.config import Settings
from mailer.storage.db import session_scope
from tests.helpers import World, build_world

PASSWORD = "una clave larga 123"

# (method, path, permission): "public" (no login), or read / edit / send / admin.
ROUTES: list[tuple[str, str, str]] = [
    # login, logout, choosing a password
    ("get", "/login", "public"),
    ("post", "/login", "public"),
    ("get", "/login/totp", "public"),
    ("post", "/login/totp", "public"),
    ("post", "/logout", "public"),
    ("get", "/set-password/{token}", "public"),
    ("post", "/set-password/{token}", "public"),
    # dashboard, lists, campaigns, captured mail
    ("get", "/", "read"),
    ("get", "/lists", "read"),
    ("post", "/lists", "edit"),
    ("get", "/lists/{list_id}", "read"),
    ("get", "/imports/{import_id}/errors.csv", "read"),
    ("get", "/campaigns/new", "edit"),
    ("post", "/campaigns/new", "edit"),
    ("get", "/campaigns/{campaign_id}", "read"),
    ("post", "/campaigns/{campaign_id}/schedule", "send"),
    ("post", "/campaigns/{campaign_id}/{action}", "send"),
    ("get", "/captured", "read"),
    ("get", "/captured/{captured_id}", "read"),
    ("get", "/captured/{captured_id}/html", "read"),
    # templates
    ("get", "/templates", "read"),
    ("get", "/library/{key}/preview", "read"),
    ("post", "/library/{key}/use", "edit"),
    ("get", "/library/{key}/thumbnail.png", "read"),
    ("get", "/templates/new", "edit"),
    ("post", "/templates/new", "edit"),
    ("post", "/templates/live-preview", "edit"),
    ("get", "/templates/{template_id}", "read"),
    ("post", "/templates/{template_id}", "edit"),
    ("post", "/templates/{template_id}/duplicate", "edit"),
    ("post", "/templates/{template_id}/restore/{version}", "edit"),
    ("get", "/templates/{template_id}/preview", "read"),
    ("get", "/templates/{template_id}/thumbnail.png", "read"),
    ("post", "/templates/{template_id}/test", "send"),
    # audience: imports, contacts, segments, cleaning, exports, suppressions
    ("post", "/lists/{list_id}/import", "edit"),
    ("post", "/lists/{list_id}/import/confirm", "edit"),
    ("get", "/imports/{import_id}", "read"),
    ("get", "/imports/{import_id}/progress", "read"),
    ("get", "/contacts", "read"),
    ("get", "/contacts/{contact_id}", "read"),
    ("post", "/contacts/{contact_id}", "edit"),
    ("post", "/contacts/{contact_id}/consents", "edit"),
    ("get", "/contacts/{contact_id}/export.json", "send"),
    ("get", "/contacts/{contact_id}/erase", "send"),
    ("post", "/contacts/{contact_id}/erase", "send"),
    ("get", "/segments", "read"),
    ("get", "/segments/new", "edit"),
    ("post", "/segments/new", "edit"),
    ("post", "/segments/count", "read"),
    ("get", "/segments/{segment_id}", "read"),
    ("post", "/segments/{segment_id}", "edit"),
    ("post", "/segments/{segment_id}/delete", "edit"),
    ("post", "/cleanings", "edit"),
    ("get", "/cleanings/{run_id}", "read"),
    ("get", "/cleanings/{run_id}/progress", "read"),
    ("post", "/cleanings/{run_id}/fixes", "edit"),
    ("get", "/lists/{list_id}/export.csv", "send"),
    ("get", "/lists/{list_id}/export.xlsx", "send"),
    ("get", "/segments/{segment_id}/export.csv", "send"),
    ("get", "/segments/{segment_id}/export.xlsx", "send"),
    ("get", "/suppressions", "read"),
    ("post", "/suppressions", "edit"),
    ("post", "/suppressions/remove", "send"),
    # SMS
    ("get", "/sms", "read"),
    ("get", "/sms/new", "edit"),
    ("post", "/sms/new", "edit"),
    ("post", "/sms/count", "edit"),
    ("get", "/sms/audience", "edit"),
    ("get", "/sms/campaigns/{campaign_id}", "read"),
    ("get", "/sms/campaigns/{campaign_id}/stats", "read"),
    ("get", "/sms/campaigns/{campaign_id}/edit", "edit"),
    ("post", "/sms/campaigns/{campaign_id}/edit", "edit"),
    ("post", "/sms/campaigns/{campaign_id}/schedule", "send"),
    ("post", "/sms/campaigns/{campaign_id}/{action}", "send"),
    ("get", "/sms/replies", "read"),
    # webhooks
    ("get", "/webhooks", "admin"),
    ("post", "/webhooks", "admin"),
    ("get", "/webhooks/{webhook_id}", "admin"),
    ("post", "/webhooks/{webhook_id}", "admin"),
    ("post", "/webhooks/{webhook_id}/rotate", "admin"),
    ("post", "/webhooks/{webhook_id}/{action}", "admin"),
    ("post", "/webhooks/{webhook_id}/deliveries/{delivery_id}/replay", "admin"),
    # tenancy: account, sub-accounts, users, audit, own security
    ("get", "/account", "read"),
    ("get", "/subaccounts", "admin"),
    ("post", "/subaccounts", "admin"),
    ("get", "/subaccounts/{sub_id}", "admin"),
    ("post", "/subaccounts/{sub_id}/transfer", "admin"),
    ("post", "/subaccounts/{sub_id}/switch", "admin"),
    ("post", "/subaccounts/leave", "read"),
    ("get", "/users", "admin"),
    ("post", "/users", "admin"),
    ("post", "/users/{user_id}/role", "admin"),
    ("post", "/users/{user_id}/{action}", "admin"),
    ("get", "/audit", "admin"),
    ("get", "/audit.csv", "admin"),
    # integrations: API keys and OAuth clients
    ("get", "/integrations", "admin"),
    ("post", "/integrations/keys", "admin"),
    ("post", "/integrations/keys/{key_id}/revoke", "admin"),
    ("post", "/integrations/clients", "admin"),
    ("post", "/integrations/clients/{client_id}/revoke", "admin"),
    ("get", "/security", "read"),
    ("post", "/security/totp/start", "read"),
    ("post", "/security/totp/cancel", "read"),
    ("post", "/security/totp/confirm", "read"),
    ("post", "/security/totp/disable", "read"),
    ("post", "/security/recovery-codes", "read"),
]
GRANTED = {
    "viewer": {"read"},
    "editor": {"read", "edit"},
    "manager": {"read", "edit", "send"},
    "admin": {"read", "edit", "send", "admin"},
}
# Not portal pages: the API (its own matrix in tests/integration/api), tracking hits and
# short links (public by design, signed tokens), health and metrics.
NOT_PORTAL = ("mailer.api", "mailer.asgi", "mailer.web.tracking", "mailer.web.shortlinks")
# Run last: they change the session they are walked with (acting in a sub-account).
LAST = {("post", "/subaccounts/{sub_id}/switch"), ("post", "/subaccounts/leave")}


def portal_routes(routes: list[Any]) -> Iterator[APIRoute]:
    for route in routes:
        if hasattr(route, "original_router"):  # an included router, kept apart by FastAPI
            yield from portal_routes(route.original_router.routes)
        elif isinstance(route, APIRoute) and not route.endpoint.__module__.startswith(NOT_PORTAL):
            yield route


@pytest.fixture
def world(sqlite_settings: Settings, tmp_path: Path) -> dict[str, Any]:
    built: World = build_world(sqlite_settings, tmp_path, 2)
    with session_scope() as session:
        for role in ("viewer", "editor", "manager"):
            create_user(session, built.account_id, f"{role}@example.pe", PASSWORD, role)
        victim = create_user(session, built.account_id, "otro@example.pe", PASSWORD, "viewer")
        sub = create_account(session, "Subcuenta", parent_id=built.account_id)
        return {
            "world": built,
            "values": {
                "list_id": built.list_id,
                "template_id": built.template_id,
                "campaign_id": built.campaign_id,
                "import_id": 1,
                "captured_id": 1,
                "contact_id": 1,
                "segment_id": 1,
                "run_id": 1,
                "webhook_id": 1,
                "delivery_id": 1,
                "key": "comunicado",
                "version": 1,
                "sub_id": sub.id,
                "user_id": victim.id,
                "token": "x.y",
                "key_id": 1,
                "client_id": "mc_0000000000000000",
            },
        }


@pytest.fixture
def app(sqlite_settings: Settings, world: dict[str, Any]) -> Any:
    return create_app(sqlite_settings)


ACTIONS = {"/campaigns/": "pause", "/sms/": "pause", "/webhooks/": "disable", "/users/": "activate"}


def fill(path: str, values: dict[str, Any]) -> str:
    action = next((a for prefix, a in ACTIONS.items() if path.startswith(prefix)), "x")
    return path.format(**values, action=action)


def csrf(client: TestClient, path: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).text)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def logged_in(app: Any, role: str, world: World) -> tuple[TestClient, str]:
    client = TestClient(app, follow_redirects=False)
    email, password = (
        (world.admin_email, world.admin_password)
        if role == "admin"
        else (f"{role}@example.pe", PASSWORD)
    )
    response = client.post(
        "/login", data={"email": email, "password": password, "csrf_token": csrf(client, "/login")}
    )
    assert response.status_code == 303 and response.headers["location"] == "/"
    return client, csrf(client, "/account")


def walk(
    client: TestClient, token: str, values: dict[str, Any], *, anonymous: bool = False
) -> Iterator[tuple[str, str, str, Any]]:
    last = [r for r in ROUTES if (r[0], r[1]) in LAST]
    for method, template, needs in [r for r in ROUTES if r not in last] + last:
        if needs == "public":
            continue
        if anonymous and method == "post":
            # A refused page clears the session, its CSRF token with it: take a new one,
            # so the form passes the CSRF check and meets the login check.
            token = csrf(client, "/login")
        data = {"csrf_token": token} if method == "post" else None
        yield method, template, needs, client.request(method, fill(template, values), data=data)


def test_every_portal_route_is_in_the_matrix(app: Any) -> None:
    collected = {
        (method.lower(), route.path)
        for route in portal_routes(app.routes)
        for method in route.methods - {"HEAD"}
    }
    declared = [(method, path) for method, path, _ in ROUTES]
    assert len(declared) == len(set(declared)), "a route is declared twice"
    assert set(declared) - collected == set(), "declared routes that do not exist"
    assert collected - set(declared) == set(), "portal routes missing from the matrix"
    assert {needs for _, _, needs in ROUTES} <= {"public", "read", "edit", "send", "admin"}


@pytest.mark.parametrize("role", ["viewer", "editor", "manager", "admin"])
def test_role_matrix_on_every_portal_route(app: Any, world: dict[str, Any], role: str) -> None:
    client, token = logged_in(app, role, world["world"])
    failures = []
    for method, template, needs, response in walk(client, token, world["values"]):
        status = response.status_code
        if needs not in GRANTED[role]:
            if status != 403:
                failures.append(f"{method.upper()} {template}: {status}, expected 403")
        elif status == 403 or status >= 500 or response.headers.get("location") == "/login":
            failures.append(f"{method.upper()} {template}: {status} for a permitted role")
    assert failures == [], f"{role}:\n" + "\n".join(failures)


def test_nobody_logged_in_is_sent_to_the_login_page(app: Any, world: dict[str, Any]) -> None:
    client = TestClient(app, follow_redirects=False)
    token = csrf(client, "/login")
    failures = [
        f"{method.upper()} {template}: {response.status_code}"
        for method, template, _needs, response in walk(
            client, token, world["values"], anonymous=True
        )
        if response.status_code != 303 or response.headers["location"] != "/login"
    ]
    assert failures == []
    # The public pages answer without a server error.
    for method, template, needs in ROUTES:
        if needs == "public" and template != "/logout":
            response = client.request(
                method, fill(template, world["values"]), data={"csrf_token": token}
            )
            assert response.status_code < 500, (method, template)
