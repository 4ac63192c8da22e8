"""The OpenAPI document of ``/api/v1``, completed once when it is first built.

FastAPI writes the paths and schemas; :func:`document_api` adds what every operation has in
common and no route should have to repeat: the XML alternative of each JSON body (with the
JSON example rendered by :mod:`mailer.api.formats`), the examples of the models lifted to the
bodies that use them (a list answer gets a list of one), and the error answers with the
API's error shape (``{"error": {"code", "message", "field"}}``) in place of FastAPI's default
422 schema, and the optional ``Idempotency-Key`` header on the POST operations that honour
it.  The examples themselves are written on the models and routes; nothing here invents one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from mailer.api.formats import API_PREFIX, XML_MEDIA_TYPES, render_xml

REF = "#/components/schemas/"

# A POST route's ``openapi_extra`` key for "does not honour Idempotency-Key" (removed from
# the document); see IDEMPOTENCY_KEY.
NO_IDEMPOTENCY_KEY = "x-mailer-no-idempotency-key"

# Every authenticated POST claims the request's Idempotency-Key (``deps.allowed``, through
# ``mailer.api.idempotency``); an operation is authenticated when it declares the
# ``Authorization`` header of ``deps.api_principal``.
IDEMPOTENCY_KEY: dict[str, Any] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "A unique key (1 to 255 printable ASCII characters, e.g. a UUID) to "
    "retry this request safely: a retry with the same key by the same application, within "
    "24 hours, gets the first answer again (with `Idempotent-Replayed: true`) and does "
    "nothing twice.  The same key with another request: 422 `idempotency_key_reused`.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    "example": "5d0b1c1e-tramite-T-2026-118",
}


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable, machine-readable: see the integration guide.")
    message: str = Field(description="For people (Spanish unless Accept-Language asks for en).")
    field: str | None = Field(description="The offending field (dotted path), if there is one.")


class ErrorOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": {
                        "code": "validation_failed",
                        "message": "Field required",
                        "field": "text",
                    }
                }
            ]
        }
    )
    error: ErrorDetail


def _error(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


# Status -> (description, example, applies to the operation?(method, has JSON body)).
ERRORS: dict[int, tuple[str, dict[str, Any], Callable[[str, bool], bool]]] = {
    400: (
        "Bad request: an XML body that is not well-formed or has a DTD or entities "
        "(`malformed_xml`, `forbidden_xml`), or another refusal (`bad_token`...).",
        _error("malformed_xml", "the body is not well-formed XML: line 1, column 14"),
        lambda method, body: True,
    ),
    401: (
        "Missing, malformed, unknown or revoked credentials (`authentication_failed`).",
        _error("authentication_failed", "unknown or revoked API key"),
        lambda method, body: True,
    ),
    403: (
        "The credentials' role or scopes do not allow this (`permission_denied`).",
        _error("permission_denied", "the role viewer may not send"),
        lambda method, body: True,
    ),
    404: (
        "Not found, or not in the caller's account (`not_found`).",
        _error("not_found", "campaign 7 does not exist"),
        lambda method, body: True,
    ),
    409: (
        "Conflicts with the current state (`conflict`, `illegal_transition`).",
        _error("illegal_transition", "campaign: cannot go from sent to sending"),
        lambda method, body: method != "get",
    ),
    413: (
        "The body is too large (`payload_too_large`).",
        _error("payload_too_large", "the XML body is larger than 8388608 bytes"),
        lambda method, body: body,
    ),
    422: (
        "The request does not validate (`validation_failed`); `field` names the first "
        "offending field.",
        _error("validation_failed", "Field required", "text"),
        lambda method, body: True,
    ),
    429: (
        "Too many requests for the application's rate limit (`rate_limited`); retry after "
        "the seconds in `Retry-After`.",
        _error("rate_limited", "too many requests; retry in 2 seconds"),
        lambda method, body: True,
    ),
}

HEADERS: dict[int, dict[str, Any]] = {
    401: {
        "WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}},
    },
    429: {
        "Retry-After": {
            "description": "Seconds to wait before retrying.",
            "schema": {"type": "integer"},
        }
    },
}

DESCRIPTION = """\
Email and SMS sending, audiences, templates, campaigns and webhooks.

**Authentication**: `Authorization: Bearer <API key>` (or `X-API-Key`).

**JSON or XML**: every operation accepts `application/json` or `application/xml` (also
`text/xml`) bodies, chosen by `Content-Type`, and answers in the format `Accept` prefers
(JSON by default; XML when `Accept: application/xml`, or when the body was XML and `Accept`
states no preference).  In XML the root element is `<response>`, a list is repeated
`<item>` elements, `null` is `xsi:nil="true"`; see `docs/integration.md`.

**Errors**: `{"error": {"code", "message", "field"}}` (or `<response><error>...` in XML)
with a stable `code`.
"""

TAGS = [
    (
        "account",
        "Who is calling, the allowances per channel and their movements; API keys, "
        "sub-accounts and the audit log (admin role).",
    ),
    ("messages", "Transactional e-mail: send one message and follow it."),
    ("sms", "Send SMS to numbers, a list or a segment; follow them; replies and figures."),
    ("lists", "Lists of contacts and imports into them."),
    ("contacts", "Contacts, consent, custom attributes, export and erasure."),
    ("segments", "Saved rules that select contacts."),
    ("suppression", "Addresses and numbers that are never sent to."),
    ("cleaning", "Address verification and list cleaning."),
    ("templates", "E-mail templates, their versions, checks, tests and the library."),
    ("campaigns", "E-mail campaigns: create, schedule, send, pause, follow."),
    ("webhooks", "Endpoints that receive signed events (admin role)."),
]


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` return the completed document."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        document = build()  # FastAPI's, cached until the routes change
        if "ErrorOut" not in document.get("components", {}).get("schemas", {}):
            document_api(document)
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def document_api(openapi: dict[str, Any]) -> None:
    """Complete *openapi* in place (see the module)."""
    components = openapi.setdefault("components", {}).setdefault("schemas", {})
    error_schema = ErrorOut.model_json_schema(ref_template=REF + "{model}")
    components.update(error_schema.pop("$defs", {}))
    components["ErrorOut"] = error_schema
    openapi.setdefault("info", {})["description"] = DESCRIPTION
    known = {tag["name"] for tag in openapi.get("tags", [])}
    openapi.setdefault("tags", []).extend(
        {"name": name, "description": text} for name, text in TAGS if name not in known
    )
    for path, operations in openapi.get("paths", {}).items():
        if not path.startswith(API_PREFIX):
            continue
        for method, operation in operations.items():
            _document_operation(method, operation, components)
    _drop_unused(openapi, components)


def _document_operation(
    method: str, operation: dict[str, Any], components: Mapping[str, Any]
) -> None:
    _declare_idempotency_key(method, operation)
    content = operation.get("requestBody", {}).get("content", {})
    has_json_body = "application/json" in content
    requests = _Examples(components, answer=False)
    if has_json_body:
        _with_xml(content, requests, root="request")
    for other in content.values():
        if "example" not in other and "examples" not in other:
            found = requests.of(other.get("schema"))
            if found:
                other["example"] = found[0]
    responses = operation.setdefault("responses", {})
    answers = _Examples(components, answer=True)
    for response in responses.values():
        if "application/json" in response.get("content", {}):
            _with_xml(response["content"], answers, root="response")
    for status, (description, example, applies) in ERRORS.items():
        if not applies(method, has_json_body):
            continue
        if str(status) in responses and status != 422:
            continue
        response = {
            "description": description,
            "content": {
                "application/json": {"schema": {"$ref": REF + "ErrorOut"}, "example": example},
                "application/xml": {
                    "schema": {"$ref": REF + "ErrorOut"},
                    "example": render_xml(example).decode(),
                },
            },
        }
        if status in HEADERS:
            response["headers"] = HEADERS[status]
        responses[str(status)] = response


def _declare_idempotency_key(method: str, operation: dict[str, Any]) -> None:
    """The optional ``Idempotency-Key`` header, on the POST operations that honour it."""
    honoured = not operation.pop(NO_IDEMPOTENCY_KEY, False)
    parameters = operation.get("parameters", [])
    authenticated = any(
        p.get("in") == "header" and p.get("name", "").lower() == "authorization" for p in parameters
    )
    declared = any(
        p.get("in") == "header" and p.get("name", "").lower() == "idempotency-key"
        for p in parameters
    )
    if method == "post" and honoured and authenticated and not declared:
        operation.setdefault("parameters", []).append(dict(IDEMPOTENCY_KEY))


def _with_xml(content: dict[str, Any], examples: _Examples, root: str) -> None:
    """Lift the JSON media's examples from its schema, and add the XML alternative."""
    media = content["application/json"]
    if "example" not in media and "examples" not in media:
        found = examples.of(media.get("schema"))
        if len(found) == 1:
            media["example"] = found[0]
        elif found:
            media["examples"] = {
                f"example {index}": {"value": value} for index, value in enumerate(found, 1)
            }
    schema = media.get("schema", {})

    def rendered(value: Any) -> str:
        return render_xml(value, root, schema, examples.components).decode()

    xml: dict[str, Any] = {"schema": schema}
    if "example" in media:
        xml["example"] = rendered(media["example"])
    elif "examples" in media:
        xml["examples"] = {
            name: {**example, "value": rendered(example.get("value"))}
            for name, example in media["examples"].items()
        }
    content.setdefault(XML_MEDIA_TYPES[0], xml)


class _Examples:
    """The examples written on a schema (through references; a list gets a list of one),
    with their keys in the order of the schema's properties, as the answers have them.

    FastAPI drops every ``None`` from the document, examples included; for an *answer*,
    which always carries every field, a nullable property the example lacks is ``null``."""

    def __init__(self, components: Mapping[str, Any], *, answer: bool) -> None:
        self.components = components
        self.answer = answer

    def of(self, schema: Any, depth: int = 0) -> list[Any]:
        if not isinstance(schema, Mapping) or depth > 8:
            return []
        reference = schema.get("$ref")
        if isinstance(reference, str) and reference.startswith(REF):
            found = self.of(schema_without_ref(schema), depth + 1)
            return found or self.of(self.components.get(reference[len(REF) :]), depth + 1)
        if isinstance(schema.get("examples"), list) and schema["examples"]:
            return [self.shaped(example, schema) for example in schema["examples"]]
        if "example" in schema:
            return [self.shaped(schema["example"], schema)]
        if schema.get("type") == "array":
            return [[item] for item in self.of(schema.get("items"), depth + 1)[:1]]
        return []

    def shaped(self, value: Any, schema: Any, depth: int = 0) -> Any:
        while isinstance(schema, Mapping) and str(schema.get("$ref", "")).startswith(REF):
            schema = self.components.get(str(schema["$ref"])[len(REF) :])
        if not isinstance(schema, Mapping) or depth > 16:
            return value
        if isinstance(value, list):
            return [self.shaped(item, schema.get("items"), depth + 1) for item in value]
        if not isinstance(value, dict):
            return value
        properties = schema.get("properties") or {}
        shaped: dict[str, Any] = {}
        for key, subschema in properties.items():
            if key in value:
                shaped[key] = self.shaped(value[key], _not_null(subschema), depth + 1)
            elif self.answer and _allows_null(subschema):
                shaped[key] = None
        shaped.update({k: v for k, v in value.items() if k not in properties})
        return shaped


def _allows_null(schema: Any) -> bool:
    if not isinstance(schema, Mapping):
        return False
    alternatives = schema.get("anyOf") or schema.get("oneOf") or []
    return schema.get("type") == "null" or any(_allows_null(s) for s in alternatives)


def _not_null(schema: Any) -> Any:
    """The non-null alternative of ``X | None``."""
    if isinstance(schema, Mapping) and isinstance(schema.get("anyOf"), list):
        others = [s for s in schema["anyOf"] if s.get("type") != "null"]
        if len(others) == 1:
            return others[0]
    return schema


def schema_without_ref(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in schema.items() if key != "$ref"}


def _drop_unused(openapi: dict[str, Any], components: dict[str, Any]) -> None:
    """FastAPI's 422 schema, once no answer refers to it any more."""
    if f'"{REF}HTTPValidationError"' not in json.dumps(openapi.get("paths", {})):
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
