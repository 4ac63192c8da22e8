"""A generic HTTP SMS provider (an aggregator's REST API) as an ``SmsGateway``.

Configured, not coded, per provider (``SmsGatewaySettings.http_*``):

- the request: URL, method, auth (bearer token, basic, or a header), extra headers, and a
  template of fields sent as JSON, a form or a query string, whose strings hold
  placeholders (``{to}``, ``{to_digits}``, ``{sender}``, ``{text}``, ``{ref}``, ``{parts}``,
  ``{validity_seconds}``; a string that is only ``{ref}``, ``{parts}`` or
  ``{validity_seconds}`` becomes a number);
- the answer: a dotted path to the message id in the JSON body (``messages.0.id``); the
  statuses that mean "later" (``http_deferred_statuses``, 429 and 5xx by default; other
  non-2xx are rejections); regular expressions on the body for providers that answer 200
  with an error;
- the status webhook: :meth:`HttpGateway.parse_status` turns the provider's callback (JSON,
  form or query string) into receipts through field paths and a state map.

One request per message: the provider splits long texts itself, so a result has one
provider id per message (``parts`` is still the count the provider will bill).  Network
errors are retried ``max_retries`` times, then the message is deferred.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final
from urllib.parse import parse_qsl

import httpx2 as httpx

from mailer.core.config import SmsGatewaySettings
from mailer.core.errors import ValidationFailed
from mailer.sms.encoding import analyse
from mailer.sms.pacing import TokenBucket
from mailer.sms.types import (
    FINAL_STATES,
    OnInbound,
    OnReceipt,
    Receipt,
    ReceiptState,
    SmsGatewayError,
    SmsOutbound,
    SubmitResult,
    normalise_provider_id,
)

__all__ = ["HttpGateway", "InvalidStatus", "lookup", "render_template"]

log = logging.getLogger(__name__)

_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_NUMERIC: Final = frozenset({"ref", "parts", "validity_seconds"})
_SNIPPET: Final = 300


class InvalidStatus(ValidationFailed):
    """A status webhook body that cannot be read."""

    code = "sms_status_invalid"


def lookup(data: Any, path: str) -> Any:
    """The value at dotted *path* (``a.b.0.c``: keys of objects, indexes of lists), or None."""
    if not path:
        return data
    current = data
    for step in path.split("."):
        if isinstance(current, Mapping):
            current = current.get(step)
        elif isinstance(current, list) and step.lstrip("-").isdigit():
            index = int(step)
            current = current[index] if -len(current) <= index < len(current) else None
        else:
            return None
        if current is None:
            return None
    return current


def render_template(template: Any, values: Mapping[str, Any]) -> Any:
    """*template* with ``{name}`` placeholders filled from *values* (unknown names kept)."""
    if isinstance(template, str):
        whole = _PLACEHOLDER.fullmatch(template)
        if whole and whole.group(1) in _NUMERIC and whole.group(1) in values:
            return values[whole.group(1)]

        def fill(match: re.Match[str]) -> str:
            name = match.group(1)
            return str(values[name]) if name in values else match.group(0)

        return _PLACEHOLDER.sub(fill, template)
    if isinstance(template, Mapping):
        return {key: render_template(value, values) for key, value in template.items()}
    if isinstance(template, list):
        return [render_template(value, values) for value in template]
    return template


def _flat(fields: Any) -> dict[str, str]:
    """Form and query fields: one level of strings (nested values as JSON)."""
    if not isinstance(fields, Mapping):
        return {}
    return {
        str(key): value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        for key, value in fields.items()
        if value is not None
    }


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _status_time(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, int | float) or (isinstance(value, str) and value.isdigit()):
        seconds = float(value)
        if seconds > 1e11:  # milliseconds
            seconds /= 1000
        return datetime.fromtimestamp(seconds, UTC)
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class HttpGateway:
    """An SMS provider reached over HTTP; see the module."""

    kind = "http"

    def __init__(
        self,
        settings: SmsGatewaySettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = settings.name
        self.settings = settings
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._on_receipt: OnReceipt | None = None
        self._on_inbound: OnInbound | None = None
        self._window = asyncio.Semaphore(settings.window)
        self._bucket = TokenBucket(settings.rate_per_second)
        self._rejected_body = (
            re.compile(settings.http_rejected_body) if settings.http_rejected_body else None
        )
        self._deferred_body = (
            re.compile(settings.http_deferred_body) if settings.http_deferred_body else None
        )
        self._state_map: dict[str, ReceiptState] = {
            key.strip().lower(): value for key, value in settings.http_status_map.items()
        }

    # --- life cycle -----------------------------------------------------------------------

    async def start(self, on_receipt: OnReceipt, on_inbound: OnInbound) -> None:
        if self._client is not None:
            raise SmsGatewayError("SMS gateway {name} is already started", name=self.name)
        self._on_receipt = on_receipt
        self._on_inbound = on_inbound
        settings = self.settings
        headers = dict(settings.http_headers)
        auth: httpx.BasicAuth | None = None
        token = settings.http_token.get_secret_value()
        if settings.http_auth == "bearer":
            headers["Authorization"] = f"Bearer {token}"
        elif settings.http_auth == "header":
            headers[settings.http_header_name or "X-Api-Key"] = token
        elif settings.http_auth == "basic":
            auth = httpx.BasicAuth(settings.http_username, token)
        self._client = httpx.AsyncClient(
            headers=headers,
            auth=auth,
            timeout=settings.response_timeout_seconds,
            limits=httpx.Limits(
                max_connections=settings.window, max_keepalive_connections=settings.window
            ),
            transport=self._transport,
        )

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "started": self._client is not None}

    # --- submitting -----------------------------------------------------------------------

    async def submit(
        self, messages: Sequence[SmsOutbound], *, timeout: float | None = None
    ) -> list[SubmitResult]:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        results: list[SubmitResult | None] = [None] * len(messages)
        next_index = 0

        async def worker() -> None:
            nonlocal next_index
            while next_index < len(messages):
                index = next_index
                next_index += 1
                results[index] = await self._submit_one(messages[index], deadline)

        await asyncio.gather(*(worker() for _ in range(min(len(messages), self.settings.window))))
        return [result for result in results if result is not None]

    def request_fields(self, message: SmsOutbound) -> Any:
        """The rendered template for *message* (what is sent, before encoding)."""
        to = message.to.strip()
        values = {
            "to": to,
            "to_digits": to.lstrip("+"),
            "sender": message.sender or self.settings.default_sender,
            "text": message.text,
            "ref": message.ref,
            "parts": analyse(message.text).parts,
            "validity_seconds": message.validity_seconds or self.settings.validity_seconds or "",
        }
        return render_template(self.settings.http_template, values)

    async def _submit_one(self, message: SmsOutbound, deadline: float | None) -> SubmitResult:
        loop = asyncio.get_running_loop()
        settings = self.settings
        parts = analyse(message.text).parts if message.text else 1
        client = self._client
        if client is None:
            return SubmitResult(
                ref=message.ref, status="deferred", text="gateway not started", retry_after=1.0
            )
        if not message.text:
            return SubmitResult(ref=message.ref, status="rejected", text="empty message")
        fields = self.request_fields(message)
        kwargs: dict[str, Any] = {}
        if settings.http_body == "json":
            kwargs["json"] = fields
        elif settings.http_body == "form":
            kwargs["data"] = _flat(fields)
        else:
            kwargs["params"] = _flat(fields)
        failures = 0
        while True:
            if deadline is not None and loop.time() >= deadline:
                return SubmitResult(
                    ref=message.ref,
                    status="deferred",
                    text="not sent within the time given",
                    retry_after=1.0,
                    parts=parts,
                )
            async with self._window:
                await self._bucket.take()
                try:
                    response = await client.request(
                        settings.http_method, settings.http_url, **kwargs
                    )
                except httpx.HTTPError as error:
                    failures += 1
                    if failures > settings.max_retries:
                        return SubmitResult(
                            ref=message.ref,
                            status="deferred",
                            text=f"{type(error).__name__}: {error}",
                            retry_after=settings.reconnect_min_seconds,
                            parts=parts,
                        )
                    await asyncio.sleep(settings.reconnect_min_seconds * failures)
                    continue
            return self._result(message.ref, response, parts)

    def _result(self, ref: int, response: httpx.Response, parts: int) -> SubmitResult:
        status = response.status_code
        body = response.text
        snippet = body[:_SNIPPET]
        if self._rejected_body is not None and self._rejected_body.search(body):
            return SubmitResult(ref=ref, status="rejected", code=status, text=snippet, parts=parts)
        if (self._deferred_body is not None and self._deferred_body.search(body)) or (
            status in self.settings.http_deferred_statuses
        ):
            retry = _retry_after(response)
            if status == 429 and retry:
                self._bucket.pause(retry)
            return SubmitResult(
                ref=ref,
                status="deferred",
                code=status,
                text=snippet,
                retry_after=retry if retry is not None else self.settings.reconnect_min_seconds,
                parts=parts,
            )
        if not 200 <= status < 300:
            return SubmitResult(ref=ref, status="rejected", code=status, text=snippet, parts=parts)
        try:
            data = response.json()
        except ValueError:
            data = None
        provider_id = lookup(data, self.settings.http_id_path)
        if provider_id is None or provider_id == "":
            log.warning(
                "SMS gateway %s: no message id at %r in the answer: %s",
                self.name,
                self.settings.http_id_path,
                snippet,
            )
            return SubmitResult(
                ref=ref,
                status="submitted",
                code=status,
                text=f"no message id in the answer: {snippet}",
                parts=parts,
            )
        return SubmitResult(
            ref=ref,
            status="submitted",
            provider_ids=(normalise_provider_id(str(provider_id)),),
            code=status,
            parts=parts,
        )

    # --- status webhooks ------------------------------------------------------------------

    def parse_status(
        self, body: bytes, content_type: str, query: Mapping[str, str]
    ) -> list[Receipt]:
        """The receipts in one status callback of the provider: a JSON object or list (or a
        list at ``http_status_items_path``), a form, or only the query string (query fields
        are merged under the body's).  Items without an id are skipped (and logged).
        Raises :class:`InvalidStatus` when the body cannot be read."""
        settings = self.settings
        media = content_type.split(";", 1)[0].strip().lower()
        text = body.decode("utf-8", errors="replace").strip()
        data: Any
        if "json" in media or (not media and text[:1] in "[{" and text):
            try:
                data = json.loads(text) if text else {}
            except ValueError as error:
                raise InvalidStatus(
                    "the status body is not JSON: {error}", error=str(error)
                ) from None
        elif text:
            data = dict(parse_qsl(text, keep_blank_values=True))
        else:
            data = {}
        if isinstance(data, dict) and query:
            data = {**dict(query), **data}
        items = lookup(data, settings.http_status_items_path)
        if isinstance(items, Mapping):
            items = [items]
        if not isinstance(items, list):
            raise InvalidStatus(
                "no status at {path!r} in the body", path=settings.http_status_items_path
            )
        receipts = []
        for item in items:
            provider_id = lookup(item, settings.http_status_id_path)
            if provider_id is None or provider_id == "":
                log.warning("SMS gateway %s: a status without an id: %r", self.name, item)
                continue
            raw_state = str(lookup(item, settings.http_status_state_path) or "").strip()
            state = self._state_map.get(raw_state.lower(), "unknown")
            error_code = (
                lookup(item, settings.http_status_error_path)
                if settings.http_status_error_path
                else None
            )
            done = (
                lookup(item, settings.http_status_done_path)
                if settings.http_status_done_path
                else None
            )
            receipts.append(
                Receipt(
                    provider_id=normalise_provider_id(str(provider_id)),
                    state=state,
                    final=state in FINAL_STATES,
                    error="" if error_code is None else str(error_code),
                    text=json.dumps(item, ensure_ascii=False, default=str)[:1000],
                    gateway=self.name,
                    done_at=_status_time(done),
                )
            )
        return receipts

    async def handle_status(
        self, body: bytes, content_type: str, query: Mapping[str, str]
    ) -> list[Receipt]:
        """:meth:`parse_status`, then each receipt to the ``on_receipt`` callback."""
        receipts = self.parse_status(body, content_type, query)
        if self._on_receipt is not None:
            for receipt in receipts:
                await self._on_receipt(receipt)
        return receipts
