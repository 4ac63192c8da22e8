"""The portal page "Integraciones": an administrator's view of the credentials other
applications use against ``/api/v1``, namely the account's API keys and OAuth clients (client
credentials).  It lists them, creates one (its secret shown on that answer only, never
stored) and revokes one, through the same ``mailer.accounts.service`` functions as
``mailer apikey ...`` and the API's ``/keys`` and ``/oauth/clients``, audited the same way.

What does not live here: verifying keys and issuing tokens (``accounts.service``), the
API's own routes (``mailer.api.account``, ``mailer.api.oauth``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Form, Path, Request
from fastapi.responses import HTMLResponse, Response
from sqlmodel import Session

from mailer.accounts.models import ApiKey, OAuthClient
from mailer.accounts.roles import ROLE_LABELS_ES
from mailer.accounts.scopes import Scope
from mailer.accounts.service import (
    API_KEY_PREFIX,
    Principal,
    audit,
    create_api_key,
    create_oauth_client,
    get_account,
    list_api_keys,
    list_oauth_clients,
    revoke_api_key,
    revoke_oauth_client,
)
from mailer.core.errors import Conflict, MailerError
from mailer.core.types import Role
from mailer.web.auth import Admin, CsrfChecked, Id, SessionDep
from mailer.web.pages import client_ip, flash, redirect, render, tr

router = APIRouter(include_in_schema=False)

PAGE = "/integrations"
# The answer showing a secret must stay out of caches and of the next page's Referer.
SECRET_PAGE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
ROLES = [(role.value, ROLE_LABELS_ES[role]) for role in Role]
SCOPE_LABELS_ES = {
    Scope.READ.value: "Leer",
    Scope.EDIT.value: "Editar",
    Scope.SEND.value: "Enviar (correo y SMS)",
    Scope.ADMIN.value: "Administrar",
    Scope.EMAIL_SEND.value: "Enviar correo",
    Scope.SMS_SEND.value: "Enviar SMS",
}
Name = Annotated[str, Form(max_length=200)]
RoleField = Annotated[str, Form(max_length=16)]
Scopes = Annotated[list[str] | None, Form(max_length=len(Scope))]
ClientId = Annotated[str, Path(max_length=40)]


def _context() -> dict[str, Any]:
    return {
        "nav": "integrations",
        "roles": ROLES,
        "role_labels": {role.value: label for role, label in ROLE_LABELS_ES.items()},
        "scope_labels": SCOPE_LABELS_ES,
        "key_prefix": API_KEY_PREFIX,
    }


def _status(exc: MailerError) -> int:
    return 409 if isinstance(exc, Conflict) else 422


@router.get(PAGE)
def integrations_page(request: Request, session: SessionDep, principal: Admin) -> HTMLResponse:
    return _integrations_page(request, session, principal)


def _integrations_page(
    request: Request,
    session: Session,
    principal: Principal,
    *,
    key_error: str = "",
    key_form: Mapping[str, Any] | None = None,
    client_error: str = "",
    client_form: Mapping[str, Any] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    return render(
        request,
        "admin/integrations.html",
        status_code=status_code,
        account=get_account(session, principal.account_id),
        keys=list_api_keys(session, principal.account_id),
        clients=list_oauth_clients(session, principal.account_id),
        key_error=key_error,
        key_form=key_form or {"role": Role.MANAGER.value, "scopes": []},
        client_error=client_error,
        client_form=client_form or {"role": Role.MANAGER.value, "scopes": []},
        **_context(),
    )


def _secret_page(request: Request, **context: Any) -> HTMLResponse:
    response = render(request, "admin/integration_created.html", **context, **_context())
    response.headers.update(SECRET_PAGE)
    return response


# -- API keys --------------------------------------------------------------------------


@router.post(f"{PAGE}/keys", dependencies=[CsrfChecked])
def keys_create(
    request: Request,
    session: SessionDep,
    principal: Admin,
    name: Name = "",
    role: RoleField = Role.MANAGER.value,
    scopes: Scopes = None,
) -> Response:
    form = {"name": name, "role": role, "scopes": scopes or []}
    try:
        key, plaintext = create_api_key(
            session,
            principal.account_id,
            name,
            role,
            created_by=principal.user_id,
            scopes=scopes or None,
        )
    except MailerError as exc:
        session.rollback()
        return _integrations_page(
            request, session, principal, key_error=tr(exc), key_form=form, status_code=_status(exc)
        )
    audit(
        session,
        principal,
        "apikey.create",
        f"apikey:{key.id}",
        ip=client_ip(request),
        name=key.name,
        role=key.role,
        scopes=key.scopes,
    )
    session.commit()
    return _secret_page(request, kind="key", key=_key_view(key), secret=plaintext)


def _key_view(key: ApiKey) -> dict[str, Any]:
    return {"name": key.name, "role": key.role, "scopes": key.scopes.split()}


@router.post(f"{PAGE}/keys/{{key_id}}/revoke", dependencies=[CsrfChecked])
def keys_revoke(request: Request, key_id: Id, session: SessionDep, principal: Admin) -> Response:
    return _revoke(
        request,
        session,
        principal,
        lambda: revoke_api_key(session, principal.account_id, key_id),
        "apikey.revoke",
        lambda key: f"apikey:{key.id}",
        "Se revocó la clave «{name}»: ya no se acepta.",
    )


def _revoke(
    request: Request,
    session: Session,
    principal: Principal,
    revoke: Callable[[], Any],
    action: str,
    target: Callable[[Any], str],
    done: str,
) -> Response:
    """Revoke a key or a client, audit it and say so; a refusal is flashed."""
    try:
        revoked = revoke()
    except MailerError as exc:
        session.rollback()
        flash(request, tr(exc), "error")
        return redirect(PAGE)
    audit(session, principal, action, target(revoked), ip=client_ip(request), name=revoked.name)
    session.commit()
    flash(request, done.format(name=revoked.name))
    return redirect(PAGE)


# -- OAuth clients ---------------------------------------------------------------------


@router.post(f"{PAGE}/clients", dependencies=[CsrfChecked])
def clients_create(
    request: Request,
    session: SessionDep,
    principal: Admin,
    name: Name = "",
    role: RoleField = Role.MANAGER.value,
    scopes: Scopes = None,
) -> Response:
    form = {"name": name, "role": role, "scopes": scopes or []}
    try:
        client, secret = create_oauth_client(
            session,
            principal.account_id,
            name,
            role,
            scopes=scopes or None,
            created_by=principal.user_id,
        )
    except MailerError as exc:
        session.rollback()
        return _integrations_page(
            request,
            session,
            principal,
            client_error=tr(exc),
            client_form=form,
            status_code=_status(exc),
        )
    audit(
        session,
        principal,
        "oauth_client.create",
        f"oauthclient:{client.client_id}",
        ip=client_ip(request),
        name=client.name,
        role=client.role,
        scopes=client.scopes,
    )
    session.commit()
    return _secret_page(request, kind="client", client=_client_view(client), secret=secret)


def _client_view(client: OAuthClient) -> dict[str, Any]:
    return {
        "name": client.name,
        "role": client.role,
        "scopes": client.scopes.split(),
        "client_id": client.client_id,
    }


@router.post(f"{PAGE}/clients/{{client_id}}/revoke", dependencies=[CsrfChecked])
def clients_revoke(
    request: Request, client_id: ClientId, session: SessionDep, principal: Admin
) -> Response:
    return _revoke(
        request,
        session,
        principal,
        lambda: revoke_oauth_client(session, principal.account_id, client_id),
        "oauth_client.revoke",
        lambda client: f"oauthclient:{client.client_id}",
        "Se revocó el cliente OAuth «{name}»: sus tokens dejan de valer.",
    )
