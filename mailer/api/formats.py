"""JSON and XML on every ``/api/v1`` route, present and future, without per-route code.

:class:`ApiFormats` is a pure ASGI middleware.  A request whose ``Content-Type`` is
``application/xml`` or ``text/xml`` is parsed safely (defusedxml: no DTD, no entities, no
external references; at most :data:`MAX_XML_BYTES`) and handed to the route as the JSON
its Pydantic model validates; a response is rendered as XML when ``Accept`` prefers
``application/xml`` or ``text/xml`` (or names no preference and the request body was XML).
Requests and answers in JSON pass straight through: the middleware only looks at two
headers.  Form posts and multipart uploads are left alone.

The mapping (``docs/integration.md`` shows it to integrators):

* A response's root element is ``<response>``, declaring the ``xsi`` namespace; a request's
  root element may have any name (``<request>`` by convention).
* An object is an element per key, in order.  A key that is not an ASCII XML name
  (``[A-Za-z_][A-Za-z0-9_.-]*``, not starting with ``xml``), or is ``item`` or ``entry``,
  becomes ``<entry key="the key">``.
* A list is an element whose children are repeated ``<item>`` elements; a top-level list is
  ``<response><item>..</item>...</response>``.
* ``null`` is an empty element with ``xsi:nil="true"``; an empty string, list or object is
  an empty element (``<tags/>``).
* Booleans are ``true``/``false``, numbers their JSON text, datetimes ISO 8601 text.
  Characters XML 1.0 cannot carry (control characters but tab, line feed and carriage
  return) are replaced by U+FFFD; a carriage return is written ``&#13;`` so it survives.

Both ways the types come from the operation's schema in the OpenAPI document (the request
body's schema when reading, the answer's when writing): an element is a list where the
schema says array, so a list of one stays a list; ``"5"`` becomes ``5`` where the schema
says integer; an empty element is ``""``, ``[]``, ``{}`` or ``null`` as the schema allows.
Where the schema does not tell (free-form objects such as ``variables``, ``attributes``,
webhook payloads), a value is a string unless its element says ``type="number"``
(``integer``, ``boolean``, ``string``, ``array``, ``object``), and children all named
``item`` are a list; the writer adds ``type`` exactly where a reader would otherwise get
another value back, so any JSON survives the round trip.  Repeated sibling elements of a
list field (``<to>1</to><to>2</to>``) are read as one list too.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring
from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailer.api.errors import error_body
from mailer.core.errors import MailerError, ValidationFailed
from mailer.core.i18n import localise, negotiate

API_PREFIX = "/api/v1/"
XML_MEDIA_TYPES = ("application/xml", "text/xml")
XML_CONTENT_TYPE = "application/xml; charset=utf-8"
MAX_XML_BYTES = 8 * 1024 * 1024  # an e-mail's HTML may be 2 MB, escaped in XML up to 4x
MAX_DEPTH = 64
MAX_RENDER_DEPTH = 256  # deeper than this, answers are written without their schema
XSI = "http://www.w3.org/2001/XMLSchema-instance"
ROOT = "response"
ITEM = "item"
ENTRY = "entry"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_TEXT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})
_ATTRIBUTE_ESCAPES = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        '"': "&quot;",
        "\r": "&#13;",
        "\n": "&#10;",
        "\t": "&#9;",
    }
)
_INTEGER = re.compile(r"[+-]?\d+\Z")
_NIL = f"{{{XSI}}}nil"
_SCALARS = frozenset({"string", "integer", "number", "boolean"})
_HINTS = frozenset({"string", "integer", "number", "boolean", "array", "object"})


class MalformedXml(MailerError):
    code = "malformed_xml"


class ForbiddenXml(MailerError):
    code = "forbidden_xml"


class PayloadTooLarge(MailerError):
    code = "payload_too_large"


STATUS = {MalformedXml: 400, ForbiddenXml: 400, PayloadTooLarge: 413}


# -- schemas -------------------------------------------------------------------------------


class Schemas:
    """Reads OpenAPI schemas (``$ref`` into *components*, ``anyOf``/``oneOf``, ``allOf`` of
    one) for the mapping; a schema that says nothing (``{}``, ``Any``) is free-form."""

    def __init__(self, components: Mapping[str, Any] | None = None) -> None:
        self.components = components or {}

    def resolve(self, schema: Any) -> Mapping[str, Any] | None:
        for _ in range(32):  # a cycle of bare references would never end
            if not isinstance(schema, Mapping):
                return None
            reference = schema.get("$ref")
            if isinstance(reference, str) and reference.startswith("#/components/schemas/"):
                schema = self.components.get(reference.rsplit("/", 1)[-1])
                continue
            all_of = schema.get("allOf")
            if isinstance(all_of, list) and len(all_of) == 1:
                schema = all_of[0]
                continue
            return schema
        return None

    def shape(self, schema: Any) -> Shape | None:
        """What *schema* allows; ``None`` when it, or any alternative of it, is free-form."""
        branches = self._branches(schema)
        return None if branches is None else Shape(branches)

    def _branches(self, schema: Any) -> list[Mapping[str, Any]] | None:
        resolved = self.resolve(schema)
        if resolved is None:
            return None
        alternatives = resolved.get("anyOf") or resolved.get("oneOf")
        if isinstance(alternatives, list):
            branches: list[Mapping[str, Any]] = []
            for alternative in alternatives:
                found = self._branches(alternative)
                if found is None:
                    return None
                branches.extend(found)
            return branches
        return [resolved] if _types(resolved) else None


class Shape:
    """The alternatives of a typed schema: their JSON types, and the array and object ones."""

    def __init__(self, branches: list[Mapping[str, Any]]) -> None:
        self.types: set[str] = set().union(*(_types(b) for b in branches))
        self.array = next((b for b in branches if "array" in _types(b)), None)
        self.object = next((b for b in branches if "object" in _types(b)), None)

    def item(self, index: int) -> Any:
        prefix = (self.array or {}).get("prefixItems")
        if isinstance(prefix, list) and index < len(prefix):
            return prefix[index]
        return (self.array or {}).get("items")

    def property(self, key: str) -> Any:
        properties = (self.object or {}).get("properties") or {}
        if key in properties:
            return properties[key]
        extra = (self.object or {}).get("additionalProperties")
        return extra if isinstance(extra, Mapping) else None


def _types(schema: Mapping[str, Any]) -> set[str]:
    kind = schema.get("type")
    if isinstance(kind, str):
        return {kind}
    if isinstance(kind, list):
        return {str(k) for k in kind}
    if "properties" in schema or "additionalProperties" in schema:
        return {"object"}
    if "items" in schema or "prefixItems" in schema:
        return {"array"}
    values = schema.get("enum", [schema["const"]] if "const" in schema else [])
    found = set()
    for value in values:
        if isinstance(value, bool):
            found.add("boolean")
        elif isinstance(value, int | float):
            found.add("number")
        elif isinstance(value, str):
            found.add("string")
        elif value is None:
            found.add("null")
    return found


def _scalar(text: str, types: set[str]) -> object:
    stripped = text.strip()
    if "boolean" in types and stripped.lower() in ("true", "false"):
        return stripped.lower() == "true"
    if types & {"integer", "number"} and _INTEGER.match(stripped):
        try:
            return int(stripped)
        except ValueError:  # more digits than Python converts; let validation refuse it
            return text
    if "number" in types:
        try:
            number = float(stripped)
        except ValueError:
            return text
        return number if math.isfinite(number) else text
    return text


def _leaf(text: str, shape: Shape | None) -> object:
    """The value of an element without children (and without ``xsi:nil`` or ``type``)."""
    if shape is None:
        return text
    if not text.strip():
        if "string" in shape.types:
            return text
        if shape.array is not None:
            return []
        if shape.object is not None:
            return {}
        if "null" in shape.types:
            return None
        return text
    return _scalar(text, shape.types)


def _hinted(text: str, hint: str) -> object:
    """The value of an element without children marked ``type="..."``."""
    if hint == "array":
        return []
    if hint == "object":
        return {}
    return text if hint == "string" else _scalar(text, {hint})


def _bare_list(shape: Shape, text: str) -> bool:
    return shape.array is not None and not shape.types & _SCALARS and bool(text.strip())


def _same(left: object, right: object) -> bool:
    return type(left) is type(right) and left == right


# -- JSON -> XML ---------------------------------------------------------------------------


def render_xml(
    value: object,
    root: str = ROOT,
    schema: Any = None,
    components: Mapping[str, Any] | None = None,
) -> bytes:
    """*value* (JSON data) as an XML document under *root*, by the module's mapping.
    *schema* (with its *components*) is what a reader will use: where it does not tell a
    value's type (free-form parts), the element says it with ``type="..."``."""
    out = ['<?xml version="1.0" encoding="UTF-8"?>\n']
    XmlWriter(Schemas(components), out).write(root, f' xmlns:xsi="{XSI}"', value, schema, 0)
    return "".join(out).encode("utf-8")


def _text(value: str) -> str:
    return _NOT_XML_CHAR.sub("\ufffd", value).translate(_TEXT_ESCAPES)


def _tag(key: str) -> tuple[str, str]:
    """The element name and attributes of an object key."""
    if _NAME.match(key) and key not in (ITEM, ENTRY) and key[:3].lower() != "xml":
        return key, ""
    escaped = _NOT_XML_CHAR.sub("\ufffd", key).translate(_ATTRIBUTE_ESCAPES)
    return ENTRY, f' key="{escaped}"'


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "string"


class XmlWriter:
    def __init__(self, schemas: Schemas, out: list[str]) -> None:
        self.schemas = schemas
        self.out = out

    def write(self, name: str, attributes: str, value: object, schema: Any, depth: int) -> None:
        out = self.out
        if value is None:
            out.append(f'<{name}{attributes} xsi:nil="true"/>')
            return
        shape = self.schemas.shape(schema) if depth < MAX_RENDER_DEPTH else None
        if isinstance(value, list | tuple | dict) and value:
            if shape is not None and (shape.object if isinstance(value, dict) else shape.array):
                hint = ""
            elif shape is None:
                hint = ""  # a reader finds the list (all <item>) or the object on its own
            else:
                hint = f' type="{_kind(value)}"'
            out.append(f"<{name}{attributes}{hint}>")
            if isinstance(value, dict):
                for key, item in value.items():
                    tag, key_attribute = _tag(str(key))
                    subschema = shape.property(str(key)) if shape else None
                    self.write(tag, key_attribute, item, subschema, depth + 1)
            else:
                for index, item in enumerate(value):
                    self.write(ITEM, "", item, shape.item(index) if shape else None, depth + 1)
            out.append(f"</{name}>")
            return
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = json.dumps(value)
        elif isinstance(value, str):
            text = value
        elif isinstance(value, list | tuple | dict):
            text = ""
        else:
            text = str(value)
        expected: object = [] if isinstance(value, list | tuple) else value
        hint = "" if _same(_leaf(text, shape), expected) else f' type="{_kind(value)}"'
        if text:
            out.append(f"<{name}{attributes}{hint}>{_text(text)}</{name}>")
        else:
            out.append(f"<{name}{attributes}{hint}/>")


# -- XML -> JSON ---------------------------------------------------------------------------


def parse_xml(body: bytes) -> Element:
    """The document's root element; raises :class:`MalformedXml` or :class:`ForbiddenXml`."""
    try:
        return fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as error:
        raise ForbiddenXml(
            "XML with a DTD, entities or external references is not accepted ({kind})",
            kind=type(error).__name__,
        ) from None
    except ParseError as error:
        line, column = getattr(error, "position", (0, 0))
        raise MalformedXml(
            "the body is not well-formed XML: line {line}, column {column}",
            line=line,
            column=column,
        ) from None


def _local(tag: object) -> str:
    return str(tag).rsplit("}", 1)[-1]


def _key(element: Element) -> str:
    name = _local(element.tag)
    if name == ENTRY and "key" in element.attrib:
        return element.attrib["key"]
    return name


def _is_nil(element: Element) -> bool:
    return (element.get(_NIL) or element.get("nil") or "").strip().lower() in ("true", "1")


class XmlReader:
    """Turns an element into the JSON value its schema (OpenAPI, with ``$ref`` into
    *components*) describes; without a schema, into free-form JSON."""

    def __init__(self, components: Mapping[str, Any] | None = None) -> None:
        self.schemas = Schemas(components)

    def read(self, element: Element, schema: Any) -> Any:
        return self._value(element, schema, 0)

    def _value(self, element: Element, schema: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise MalformedXml("the XML is nested deeper than {depth} levels", depth=MAX_DEPTH)
        if _is_nil(element):
            return None
        shape = self.schemas.shape(schema)
        hint = (element.get("type") or "").strip().lower()
        hint = hint if hint in _HINTS else ""
        children = list(element)
        if not children:
            text = element.text or ""
            if hint:
                return _hinted(text, hint)
            if shape is not None and _bare_list(shape, text):  # one value for a list
                return [self._value(element, shape.item(0), depth + 1)]
            return _leaf(text, shape)
        all_items = all(_local(c.tag) == ITEM for c in children)
        if hint == "array" or (hint != "object" and shape is None and all_items):
            return self._array(children, shape, depth)
        if hint == "object" or shape is None:
            return self._object(children, shape, depth)
        if shape.array is not None and (shape.object is None or all_items):
            return self._array(children, shape, depth)
        if shape.object is not None:
            return self._object(children, shape, depth)
        return self._object(children, None, depth)  # validation will say what was expected

    def _array(self, children: list[Element], shape: Shape | None, depth: int) -> list[Any]:
        return [
            self._value(child, shape.item(index) if shape else None, depth + 1)
            for index, child in enumerate(children)
        ]

    def _object(self, children: list[Element], shape: Shape | None, depth: int) -> dict[str, Any]:
        grouped: dict[str, list[Any]] = {}
        for child in children:
            key = _key(child)
            schema = shape.property(key) if shape else None
            grouped.setdefault(key, []).append(self._value(child, schema, depth + 1))
        result: dict[str, Any] = {}
        for key, values in grouped.items():
            if len(values) == 1:
                result[key] = values[0]
            elif all(isinstance(v, list) for v in values):  # <to>1</to><to>2</to>
                result[key] = [item for value in values for item in value]
            else:
                result[key] = values
        return result


# -- negotiation ---------------------------------------------------------------------------


def is_xml(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() in XML_MEDIA_TYPES


def _quality(ranges: list[tuple[str, float]], target: str) -> float:
    family = target.split("/", 1)[0] + "/*"
    best, quality = -1, 0.0
    for media, q in ranges:
        specificity = (
            2 if media == target else 1 if media == family else 0 if media == "*/*" else -1
        )
        if specificity > best:
            best, quality = specificity, q
    return quality


def wants_xml(accept: str, default: bool = False) -> bool:
    """Whether ``Accept`` prefers XML to JSON; *default* on a tie (no preference)."""
    ranges = []
    for part in accept.split(","):
        media, *parameters = part.split(";")
        q = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        ranges.append((media.strip().lower(), q))
    xml = max(_quality(ranges, t) for t in XML_MEDIA_TYPES)
    json_ = _quality(ranges, "application/json")
    return default if xml == json_ else xml > json_


# -- wiring --------------------------------------------------------------------------------

HTTP_CODES = {
    400: "bad_request",
    401: "authentication_failed",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "rate_limited",
}


def install_formats(app: FastAPI) -> None:
    """JSON or XML on every ``/api/v1`` route of *app*, and in the API's error shape the
    errors that FastAPI and Starlette raise themselves (a body that cannot be read, an
    unknown path, a method not allowed) and the values the database refuses."""
    app.add_middleware(ApiFormats)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(DataError, data_error)


async def data_error(request: Request, exc: Exception) -> Response:
    """A value the database cannot store or compare (found by fuzzing: PostgreSQL refuses
    NUL characters in text and integers out of range), refused as invalid rather than
    answered with a server error; the transaction was rolled back."""
    if not request.url.path.startswith("/api/"):
        raise exc
    reason = str(getattr(exc, "orig", exc)).splitlines()[0]
    locale = negotiate(request.headers.get("accept-language"))
    error = ValidationFailed("a value cannot be stored: {reason}", reason=reason)
    return JSONResponse(error_body(error.code, localise(error, locale)), status_code=422)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if not request.url.path.startswith("/api/"):
        return await http_exception_handler(request, exc)
    if exc.status_code in (204, 304) or exc.status_code < 400:
        return Response(status_code=exc.status_code, headers=exc.headers)
    code = HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    return JSONResponse(
        error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
    )


# -- the middleware ------------------------------------------------------------------------


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str:
    return next((v.decode("latin-1") for k, v in headers if k == name), "")


class _ClientGone(Exception):
    pass


class ApiFormats:
    """Reads XML request bodies and writes XML responses on ``/api/v1`` (see the module)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API_PREFIX):
            await self.app(scope, receive, send)
            return
        content_type = accept = b""
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"accept":
                accept = value
        xml_body = b"xml" in content_type and is_xml(content_type.decode("latin-1"))
        if not xml_body and b"xml" not in accept:  # the JSON path: nothing more to do
            await self.app(scope, receive, send)
            return
        xml_out = wants_xml(accept.decode("latin-1"), default=xml_body)
        if xml_body:
            try:
                scope, receive = await self._as_json(scope, receive)
            except _ClientGone:
                return
            except MailerError as error:
                await self._refuse(scope, send, error, xml_out)
                return
        await self.app(scope, receive, _XmlSender(send, scope) if xml_out else send)

    async def _as_json(self, scope: Scope, receive: Receive) -> tuple[Scope, Receive]:
        """The request with its XML body replaced by the equivalent JSON."""
        declared = _header(scope["headers"], b"content-length")
        if declared.isdigit() and int(declared) > MAX_XML_BYTES:
            raise PayloadTooLarge("the XML body is larger than {limit} bytes", limit=MAX_XML_BYTES)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_XML_BYTES:
                raise PayloadTooLarge(
                    "the XML body is larger than {limit} bytes", limit=MAX_XML_BYTES
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if not body.strip():
            return scope, _replay(b"", receive)
        root = parse_xml(body)
        operation, components = _operation(scope)
        data = json.dumps(XmlReader(components).read(root, _body_schema(operation)))
        encoded = data.encode("utf-8")
        headers = [
            (k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")
        ]
        headers += [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(encoded)),
        ]
        return {**scope, "headers": headers}, _replay(encoded, receive)

    async def _refuse(self, scope: Scope, send: Send, error: MailerError, xml: bool) -> None:
        locale = negotiate(_header(scope["headers"], b"accept-language") or None)
        payload = error_body(error.code, localise(error, locale), error.field)
        body = render_xml(payload) if xml else json.dumps(payload).encode("utf-8")
        media = XML_CONTENT_TYPE if xml else "application/json"
        status = next((s for kind, s in STATUS.items() if isinstance(error, kind)), 400)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", media.encode()),
                    (b"content-length", b"%d" % len(body)),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _replay(data: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": data, "more_body": False}

    return replay


class Operations:
    """Finds the OpenAPI operation of a request by its path and method, as the router does
    (literal segments before parameters), from the document alone."""

    def __init__(self, openapi: Mapping[str, Any]) -> None:
        self.openapi = openapi
        self.components: Mapping[str, Any] = openapi.get("components", {}).get("schemas", {})
        entries = []
        for order, (path, operations) in enumerate(openapi.get("paths", {}).items()):
            parts = re.split(r"(\{[^}]*\})", path)
            pattern = "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
            entries.append((path.count("{"), order, re.compile(pattern + r"\Z"), operations))
        entries.sort(key=lambda entry: entry[:2])
        self.entries = [(pattern, operations) for _, _, pattern, operations in entries]

    def find(self, path: str, method: str) -> Mapping[str, Any]:
        method = method.lower()
        for pattern, operations in self.entries:
            if method in operations and pattern.match(path):
                return operations[method]  # type: ignore[no-any-return]
        return {}


def _operation(scope: Scope) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """The OpenAPI operation *scope* asks for, and the schema components."""
    app = scope.get("app")
    if app is None or not hasattr(app, "openapi"):
        return {}, {}
    openapi = app.openapi()
    operations = getattr(app.state, "api_operations", None)
    if operations is None or operations.openapi is not openapi:
        operations = app.state.api_operations = Operations(openapi)
    return operations.find(scope["path"], scope["method"]), operations.components


def _body_schema(operation: Mapping[str, Any]) -> Any:
    content = operation.get("requestBody", {}).get("content", {})
    return content.get("application/json", {}).get("schema")


def _answer_schema(operation: Mapping[str, Any], status: int) -> Any:
    responses = operation.get("responses", {})
    answer = responses.get(str(status)) or responses.get("default") or {}
    return answer.get("content", {}).get("application/json", {}).get("schema")


class _XmlSender:
    """Wraps ``send``: a JSON response is held, then sent as XML written with the schema
    of the operation's answer."""

    def __init__(self, send: Send, scope: Scope) -> None:
        self.send = send
        self.scope = scope
        self.start: Message | None = None
        self.chunks: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            media = _header(list(message.get("headers", [])), b"content-type")
            if media.split(";", 1)[0].strip().lower() == "application/json":
                self.start = message
                return
        elif message["type"] == "http.response.body" and self.start is not None:
            self.chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            await self._send_as_xml(self.start, b"".join(self.chunks))
            return
        await self.send(message)

    async def _send_as_xml(self, start: Message, data: bytes) -> None:
        headers = [(k, v) for k, v in start.get("headers", []) if k != b"content-type"]
        body = data
        if data:
            operation, components = _operation(self.scope)
            schema = _answer_schema(operation, start["status"])
            try:
                body = render_xml(json.loads(data), ROOT, schema, components)
            except (ValueError, RecursionError):  # not JSON after all, or too deep for XML
                await self.send(start)
                await self.send({"type": "http.response.body", "body": data})
                return
            headers = [(k, v) for k, v in headers if k != b"content-length"]
            headers.append((b"content-length", b"%d" % len(body)))
        headers.append((b"content-type", XML_CONTENT_TYPE.encode()))
        await self.send({**start, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})
