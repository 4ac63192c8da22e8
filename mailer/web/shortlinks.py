"""The short links of SMS (``/s/<code>``): a signed code names the message and the link;
the URL comes from the message's row, so the redirect goes only where the SMS pointed.
Clicks are recorded like e-mail clicks (the same buffer, the same machine rules)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response

from mailer.campaigns.sms import link_target
from mailer.core.tokens import BadToken
from mailer.storage.db import session_scope
from mailer.tracking.ingest import CLICK, Hit
from mailer.tracking.urls import read_sms_link_code
from mailer.web.tracking import hit_buffer

router = APIRouter(include_in_schema=False)

_NO_STORE = {"cache-control": "no-store, private", "x-robots-tag": "noindex, nofollow"}


@router.api_route("/s/{code}", methods=["GET", "HEAD"])
def short_link(request: Request, code: str) -> Response:
    settings = request.app.state.settings
    try:
        message_id, index = read_sms_link_code(settings.secret_key, code)
    except BadToken:
        return PlainTextResponse("Enlace no válido.\n", status_code=404, headers=_NO_STORE)
    with session_scope(settings) as session:
        found = link_target(session, message_id, index)
    if found is None:
        return PlainTextResponse("Enlace no válido.\n", status_code=404, headers=_NO_STORE)
    _row, url = found
    client = request.client
    hit_buffer(request.app).add(
        Hit(
            CLICK,
            message_id,
            time.time(),
            request.method,
            request.headers.get("user-agent", ""),
            client.host if client else "",
            index,
            url,
        )
    )
    return RedirectResponse(url, status_code=302, headers=_NO_STORE)
