"""OAuth 2.0 client credentials (RFC 6749 §4.4): ``POST /api/v1/oauth/token`` issues
short-lived bearer tokens with scopes, and admins manage the clients under
``/api/v1/oauth/clients``.

Token responses and errors follow RFC 6749 §5 (``{"error": "invalid_client",
"error_description": ...}``), not the API's error shape, so standard OAuth libraries
understand them; ``error_description`` is English, as §5.2 limits it to ASCII.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime, timedelta
from typing import Annotated, Any
from urllib.parse import unquote_plus

from fastapi import APIRouter, Form, Path, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from mailer.accounts.models import OAuthClient
from mailer.accounts.service import (
    OAuthError,
    audit,
    create_oauth_client,
    issue_access_token,
    list_oauth_clients,
    revoke_oauth_client,
)
from mailer.api.deps import Admin, SessionDep
from mailer.core.config import Settings

router = APIRouter(prefix="/api/v1", tags=["oauth"])

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class TokenOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "access_token": "mat_MXwxNzY0NTQ0MDAwfHJlYWQgc2VuZA.x3Zb...",
                "token_type": "Bearer",
                "expires_in": 3600,
                "scope": "read send",
            }
        }
    )
    access_token: str
    token_type: str = "Bearer"  # noqa: S105 (the RFC's word, not a secret)
    expires_in: int = Field(description="Seconds the token is valid.")
    scope: str = Field(description="The scopes granted, space-separated.")


class OAuthErrorOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": "invalid_client",
                    "error_description": "unknown client, wrong secret or revoked client",
                }
            ]
        }
    )
    error: str = Field(
        description="invalid_request, invalid_client, invalid_grant, invalid_scope or "
        "unsupported_grant_type (RFC 6749 §5.2)."
    )
    error_description: str


class OAuthClientIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {"name": "ERP Compras", "role": "manager", "scopes": ["send", "read"]}
        }
    )
    name: str = Field(min_length=1, max_length=200, description="The application's name.")
    role: str = Field("manager", description="admin, manager, editor or viewer.")
    scopes: list[str] | None = Field(
        None,
        description="What its tokens may ask for: read, edit, send, admin, email:send, "
        "sms:send (none: everything the role allows).",
    )
    rate_per_second: float | None = Field(
        None, ge=0, description="Its own rate limit (0: none; absent: the install's)."
    )
    burst: int | None = Field(None, ge=1, le=2**31 - 1, description="Its own burst.")


CLIENT_EXAMPLE: dict[str, Any] = {
    "client_id": "mc_3f9a1c0b7d2e4a61",
    "name": "ERP Compras",
    "role": "manager",
    "scopes": ["read", "send"],
    "rate_per_second": None,
    "burst": None,
    "created_at": "2026-03-02T14:05:00Z",
    "last_used_at": "2026-03-09T08:12:44Z",
    "revoked_at": None,
}


class OAuthClientOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [CLIENT_EXAMPLE]})
    client_id: str
    name: str
    role: str
    scopes: list[str]
    rate_per_second: float | None
    burst: int | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class OAuthClientSecretOut(OAuthClientOut):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **CLIENT_EXAMPLE,
                    "last_used_at": None,
                    "client_secret": "mcs_V2hhdCBhIHNlY3JldCEgTm90IHJlYWxseS4uLg",
                }
            ]
        }
    )
    client_secret: str = Field(description="Shown this once; only its hash is kept.")


def _out(client: OAuthClient) -> dict[str, Any]:
    return {
        "client_id": client.client_id,
        "name": client.name,
        "role": client.role,
        "scopes": client.scopes.split(),
        "rate_per_second": client.rate_per_second,
        "burst": client.burst,
        "created_at": client.created_at,
        "last_used_at": client.last_used_at,
        "revoked_at": client.revoked_at,
    }


def _oauth_error(exc: OAuthError) -> JSONResponse:
    headers = dict(NO_STORE)
    if exc.code == "invalid_client":
        headers["WWW-Authenticate"] = 'Basic realm="mailer"'
    return JSONResponse(
        {"error": exc.code, "error_description": exc.message},
        status_code=401 if exc.code == "invalid_client" else 400,
        headers=headers,
    )


def client_credentials(
    authorization: str | None, client_id: str | None, client_secret: str | None
) -> tuple[str, str]:
    """The client's id and secret, from HTTP Basic (RFC 6749 §2.3.1: form-encoded, then
    base64) or from the body; one way only."""
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() == "basic":
        if client_secret:
            raise OAuthError(
                "invalid_request", "authenticate either with HTTP Basic or in the body, not both"
            )
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise OAuthError("invalid_client", "malformed HTTP Basic credentials") from None
        user, colon, password = decoded.partition(":")
        if not colon or not user:
            raise OAuthError("invalid_client", "malformed HTTP Basic credentials")
        return unquote_plus(user), unquote_plus(password)
    if not client_id or not client_secret:
        raise OAuthError(
            "invalid_client",
            "client authentication needed: HTTP Basic, or client_id and client_secret",
        )
    return client_id, client_secret


@router.post(
    "/oauth/token",
    response_model=TokenOut,
    responses={400: {"model": OAuthErrorOut}, 401: {"model": OAuthErrorOut}},
    summary="Get an access token (OAuth 2.0 client credentials)",
    openapi_extra={
        "requestBody": {
            "content": {
                "application/x-www-form-urlencoded": {
                    "example": {"grant_type": "client_credentials", "scope": "send read"}
                }
            }
        }
    },
)
def post_token(
    request: Request,
    session: SessionDep,
    grant_type: Annotated[str | None, Form(description="client_credentials")] = None,
    scope: Annotated[str | None, Form(description="Space-separated; absent: all.")] = None,
    client_id: Annotated[str | None, Form(max_length=200)] = None,
    client_secret: Annotated[str | None, Form(max_length=200)] = None,
) -> Response:
    """Form-encoded (``application/x-www-form-urlencoded``), the client authenticated with
    HTTP Basic or ``client_id`` and ``client_secret`` in the body.  The token goes in
    ``Authorization: Bearer mat_...`` like an API key, until it expires (``expires_in``).

    ``curl -u "$CLIENT_ID:$CLIENT_SECRET" -d grant_type=client_credentials -d "scope=send
    read" https://.../api/v1/oauth/token``
    """
    settings: Settings = request.app.state.settings
    given_id = client_id
    try:
        if not grant_type:
            raise OAuthError("invalid_request", "grant_type is missing")
        if grant_type != "client_credentials":
            raise OAuthError(
                "unsupported_grant_type", "only grant_type=client_credentials is supported"
            )
        given_id, secret = client_credentials(
            request.headers.get("authorization"), client_id, client_secret
        )
        token = issue_access_token(
            session,
            given_id,
            secret,
            scope,
            secret_key=settings.secret_key,
            lifetime=timedelta(seconds=settings.api.token_seconds),
        )
    except OAuthError as exc:
        audit(
            session,
            None,
            "oauth.token_failed",
            f"oauthclient:{(given_id or '')[:40]}",
            ip=request.client.host if request.client else None,
            error=exc.code,
        )
        return _oauth_error(exc)
    audit(
        session,
        token.principal,
        "oauth.token",
        f"oauthclient:{given_id}",
        ip=request.client.host if request.client else None,
        scopes=" ".join(sorted(token.scopes)),
    )
    return JSONResponse(
        TokenOut(
            access_token=token.token,
            expires_in=token.expires_in,
            scope=" ".join(sorted(token.scopes)),
        ).model_dump(),
        headers=NO_STORE,
    )


@router.get("/oauth/clients", response_model=list[OAuthClientOut], summary="OAuth clients")
def get_clients(session: SessionDep, principal: Admin) -> list[OAuthClientOut]:
    """The account's OAuth clients, revoked ones included (their secrets are never shown
    again)."""
    return [
        OAuthClientOut(**_out(client))
        for client in list_oauth_clients(session, principal.account_id)
    ]


@router.post(
    "/oauth/clients",
    response_model=OAuthClientSecretOut,
    status_code=status.HTTP_201_CREATED,
    summary="Create an OAuth client",
)
def post_client(body: OAuthClientIn, session: SessionDep, principal: Admin) -> OAuthClientSecretOut:
    """A client for one application, with a role and the scopes its tokens may ask for.
    The answer carries its ``client_secret``, shown this once."""
    client, secret = create_oauth_client(
        session,
        principal.account_id,
        body.name,
        body.role,
        scopes=body.scopes,
        created_by=principal.user_id,
        rate_per_second=body.rate_per_second,
        burst=body.burst,
    )
    audit(
        session,
        principal,
        "oauth_client.create",
        f"oauthclient:{client.client_id}",
        name=client.name,
        role=client.role,
        scopes=client.scopes,
    )
    session.commit()
    return OAuthClientSecretOut(**_out(client), client_secret=secret)


@router.delete(
    "/oauth/clients/{client_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke an OAuth client",
)
def delete_client(
    client_id: Annotated[str, Path(max_length=40)], session: SessionDep, principal: Admin
) -> Response:
    """Revoke the client: it gets no new tokens, and the ones it holds stop working at
    once."""
    client = revoke_oauth_client(session, principal.account_id, client_id)
    audit(session, principal, "oauth_client.revoke", f"oauthclient:{client.client_id}")
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
