"""JSON and XML on the API: an XML answer equals the JSON one under the documented mapping
(read back with the operation's response schema), an XML request does what the JSON one
does, errors come in the format asked for, and hostile or broken XML is refused."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import fromstring

import pytest
from fastapi.testclient import TestClient
from httpx2 import Response

from mailer.accounts import credits
from mailer.accounts.service import create_api_key
from mailer.api.formats import (
    MAX_XML_BYTES,
    ForbiddenXml,
    XmlReader,
    parse_xml,
    render_xml,
    wants_xml,
)
from mailer.asgi import create_app
from mailer.core.config import Settings
from mailer.storage.db import session_scope
from tests.helpers import DOMAIN, World, build_world

XML = {"Content-Type": "application/xml", "Accept": "application/xml"}


@pytest.fixture
def world(sqlite_settings: Settings, tmp_path: Path) -> World:
    built = build_world(sqlite_settings, tmp_path, 2)
    with session_scope(sqlite_settings) as session:
        credits.grant(session, built.account_id, "sms", 100)
        credits.grant(session, built.account_id, "email", 100)
    return built


@pytest.fixture
def client(sqlite_settings: Settings, world: World) -> Iterator[TestClient]:
    with TestClient(create_app(sqlite_settings)) as test_client:
        yield test_client


def key(world: World, role: str) -> dict[str, str]:
    with session_scope() as session:
        _key, plaintext = create_api_key(session, world.account_id, f"app-{role}", role)
    return {"Authorization": f"Bearer {plaintext}", "Accept-Language": "en"}


def auth(world: World) -> dict[str, str]:
    return {"Authorization": f"Bearer {world.api_key}", "Accept-Language": "en"}


def xml_as_json(client: TestClient, response: Response, method: str, path: str) -> Any:
    """The XML answer read back by the mapping, with the operation's documented schema."""
    assert response.headers["content-type"] == "application/xml; charset=utf-8", response.text
    openapi = client.app.openapi()  # type: ignore[attr-defined]
    answer = openapi["paths"][path][method]["responses"][str(response.status_code)]
    schema = answer["content"]["application/json"]["schema"]
    root = parse_xml(response.content)
    assert root.tag == "response"
    return XmlReader(openapi["components"]["schemas"]).read(root, schema)


def both(
    client: TestClient, method: str, url: str, path: str, headers: dict[str, str]
) -> tuple[Response, Response]:
    as_json = client.request(method, url, headers=headers)
    as_xml = client.request(method, url, headers={**headers, "Accept": "application/xml"})
    assert as_json.status_code == as_xml.status_code
    assert xml_as_json(client, as_xml, method, path) == as_json.json()
    return as_json, as_xml


# -- the mapping alone ---------------------------------------------------------------------


SHAPE_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "ok": {"type": "boolean"},
        "rate": {"type": "number"},
        "none": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "empty": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "attributes": {"type": "object", "additionalProperties": True},
        "text": {"type": "string"},
    },
}


def test_the_documented_shape() -> None:
    value = {
        "id": 7,
        "ok": True,
        "rate": 0.5,
        "none": None,
        "empty": "",
        "tags": ["a"],
        "attributes": {"año": 1, "item": "x", "C.P.": "15001", "xmlns": False, "l": []},
        "text": "<b>&\r\x01",
    }
    assert render_xml(value, schema=SHAPE_SCHEMA).decode() == (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<response xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        '<id>7</id><ok>true</ok><rate>0.5</rate><none xsi:nil="true"/><empty/>'
        "<tags><item>a</item></tags>"
        '<attributes><entry key="año" type="number">1</entry><entry key="item">x</entry>'
        '<C.P.>15001</C.P.><entry key="xmlns" type="boolean">false</entry>'
        '<l type="array"/></attributes>'
        "<text>&lt;b&gt;&amp;&#13;\ufffd</text></response>"
    )
    read = XmlReader().read(parse_xml(render_xml(value, schema=SHAPE_SCHEMA)), SHAPE_SCHEMA)
    assert read == {**value, "text": "<b>&\r\ufffd"}
    assert render_xml([]).decode().endswith('XMLSchema-instance" type="array"/>')


def test_reading_follows_the_schema_so_a_list_of_one_stays_a_list() -> None:
    schema = {
        "type": "object",
        "properties": {
            "to": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string"}]},
            "ids": {"type": "array", "items": {"type": "integer"}},
            "count": {"type": "integer"},
            "on": {"type": "boolean"},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "pairs": {
                "type": "array",
                "items": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "string"}]},
            },
            "variables": {"type": "object", "additionalProperties": True},
        },
    }
    document = (
        b"<request xmlns:xsi='http://www.w3.org/2001/XMLSchema-instance'>"
        b"<to><item>987654321</item></to><ids><item>5</item></ids><count> 3 </count>"
        b"<on>true</on><note xsi:nil='true'/>"
        b"<pairs><item><item>gmial.com</item><item>gmail.com</item></item></pairs>"
        b"<variables><orden>OC-1</orden><monto type='number'>1500.5</monto>"
        b"<lineas><item>a</item></lineas><entry key='C.P.'>15001</entry></variables>"
        b"</request>"
    )
    assert XmlReader().read(parse_xml(document), schema) == {
        "to": ["987654321"],
        "ids": [5],
        "count": 3,
        "on": True,
        "note": None,
        "pairs": [["gmial.com", "gmail.com"]],
        "variables": {"orden": "OC-1", "monto": 1500.5, "lineas": ["a"], "C.P.": "15001"},
    }
    single = XmlReader().read(parse_xml(b"<r><to>987654321</to></r>"), schema)
    assert single == {"to": "987654321"}  # the schema allows a bare string too
    repeated = XmlReader().read(parse_xml(b"<r><ids>1</ids><ids>2</ids></r>"), schema)
    assert repeated == {"ids": [1, 2]}
    empty = XmlReader().read(parse_xml(b"<r><ids/><note/></r>"), schema)
    assert empty == {"ids": [], "note": ""}


def test_round_trip_of_any_json_through_the_mapping() -> None:
    value = {"a": [1, [2, 3], {"b": None}], "c": {"": "empty key", "item": [True]}, "d": "x\ny"}
    free = {"f": [value, 1.5, "1.5", "", [], {}, {"item": {"entry": 0}}, True, "true", None]}
    assert XmlReader().read(parse_xml(render_xml(free)), None) == free
    schema = {
        "type": "object",
        "properties": {
            "a": {
                "type": "array",
                "prefixItems": [
                    {"type": "integer"},
                    {"type": "array", "items": {"type": "integer"}},
                    {"type": "object", "properties": {"b": {"type": "null"}}},
                ],
            },
            "c": {
                "type": "object",
                "properties": {
                    "": {"type": "string"},
                    "item": {"type": "array", "items": {"type": "boolean"}},
                },
            },
            "d": {"type": "string"},
        },
    }
    assert XmlReader().read(parse_xml(render_xml(value)), schema) == value


@pytest.mark.parametrize(
    ("accept", "xml_body", "expected"),
    [
        ("", False, False),
        ("", True, True),
        ("*/*", True, True),
        ("application/json", True, False),
        ("application/xml", False, True),
        ("text/xml", False, True),
        ("application/json;q=0.5, application/xml", False, True),
        ("application/xml;q=0.5, application/json", True, False),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", False, True),
        ("text/html", False, False),
    ],
)
def test_accept_negotiation(accept: str, xml_body: bool, expected: bool) -> None:
    assert wants_xml(accept, default=xml_body) is expected


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<request><name>&lol9;</name></request>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><request><name>&x;</name></request>"""


@pytest.mark.parametrize("document", [BILLION_LAUGHS, EXTERNAL_ENTITY])
def test_dtds_and_entities_are_refused_by_the_parser(document: bytes) -> None:
    with pytest.raises(ForbiddenXml):
        parse_xml(document)


# -- through the app -----------------------------------------------------------------------


def test_lists_in_xml_equal_json_and_an_xml_request_creates_the_same(
    client: TestClient, world: World
) -> None:
    body = {"name": "Ciudadanos", "description": "Lima & Callao"}
    created_json = client.post("/api/v1/lists", json=body, headers=auth(world))
    assert created_json.status_code == 201
    created_xml = client.post(
        "/api/v1/lists",
        content=(
            b"<?xml version='1.0' encoding='UTF-8'?><request><name>Vecinos</name>"
            b"<description>Lima &amp; Callao</description></request>"
        ),
        headers={**auth(world), **XML},
    )
    assert created_xml.status_code == 201, created_xml.text
    read = xml_as_json(client, created_xml, "post", "/api/v1/lists")
    assert read == {**created_json.json(), "id": read["id"], "name": "Vecinos"}
    assert b"<description>Lima &amp; Callao</description>" in created_xml.content
    as_json, as_xml = both(client, "get", "/api/v1/lists", "/api/v1/lists", auth(world))
    assert {"Ciudadanos", "Vecinos"} <= {lst["name"] for lst in as_json.json()}
    assert as_xml.content.count(b"<item>") == len(as_json.json())
    both(client, "get", "/api/v1/campaigns", "/api/v1/campaigns", auth(world))
    both(
        client,
        "get",
        f"/api/v1/campaigns/{world.campaign_id}",
        "/api/v1/campaigns/{campaign_id}",
        auth(world),
    )


def test_errors_come_in_the_format_asked_for(client: TestClient, world: World) -> None:
    lists = "/api/v1/lists"
    unauthenticated, _ = both(client, "get", lists, lists, {"Accept-Language": "en"})
    assert unauthenticated.status_code == 401
    assert unauthenticated.json()["error"]["code"] == "authentication_failed"
    viewer = key(world, "viewer")
    forbidden = client.post(
        lists, content=b"<request><name>X</name></request>", headers={**viewer, **XML}
    )
    assert forbidden.status_code == 403
    assert xml_as_json(client, forbidden, "post", lists)["error"]["code"] == "permission_denied"
    missing, _ = both(
        client, "get", "/api/v1/templates/99999", "/api/v1/templates/{template_id}", auth(world)
    )
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    invalid = client.post(
        lists, content=b"<request><name/></request>", headers={**auth(world), **XML}
    )
    assert invalid.status_code == 422
    same_in_json = client.post(lists, json={"name": ""}, headers=auth(world))
    assert same_in_json.status_code == 422
    assert xml_as_json(client, invalid, "post", lists) == same_in_json.json()
    assert same_in_json.json()["error"]["code"] == "validation_failed"
    assert b"<field>name</field>" in invalid.content
    as_json_anyway = client.post(
        lists,
        content=b"<request><name/></request>",
        headers={**auth(world), "Content-Type": "text/xml", "Accept": "application/json"},
    )
    assert as_json_anyway.json()["error"]["field"] == "name"


def test_malformed_and_hostile_xml_is_refused_in_xml(client: TestClient, world: World) -> None:
    headers = {**auth(world), "Content-Type": "application/xml"}  # no Accept: answer in XML
    broken = client.post("/api/v1/lists", content=b"<request><name>x</request>", headers=headers)
    assert broken.status_code == 400
    error = xml_as_json(client, broken, "post", "/api/v1/lists")["error"]
    assert error["code"] == "malformed_xml" and "line 1, column" in error["message"]
    assert error["field"] is None
    started = time.monotonic()
    bomb = client.post("/api/v1/lists", content=BILLION_LAUGHS, headers=headers)
    assert time.monotonic() - started < 2
    assert bomb.status_code == 400
    assert xml_as_json(client, bomb, "post", "/api/v1/lists")["error"]["code"] == "forbidden_xml"
    too_big = client.post(
        "/api/v1/lists",
        content=b"<request><name>" + b"x" * MAX_XML_BYTES + b"</name></request>",
        headers=headers,
    )
    assert too_big.status_code == 413
    assert b"<code>payload_too_large</code>" in too_big.content
    deep = b"<r>" + b"<a>" * 100 + b"</a>" * 100 + b"</r>"
    nested = client.post("/api/v1/sms", content=deep, headers=headers)
    assert nested.status_code == 400 and b"<code>malformed_xml</code>" in nested.content
    with_json_error = client.post(
        "/api/v1/lists", content=b"not xml", headers={**headers, "Accept": "application/json"}
    )
    assert with_json_error.status_code == 400
    assert with_json_error.json()["error"]["code"] == "malformed_xml"
    assert client.get("/api/v1/lists", headers=auth(world)).status_code == 200


SMS_ONE = (
    "<request><to><item>987654321</item></to>"
    "<text>Su orden {{ orden }} vence el 30/11.</text>"
    "<variables><orden>OC-118</orden></variables></request>"
)
SMS_MANY = (
    "<request><to><item>987654321</item><item>987650000</item><item>01 4261234</item></to>"
    "<text>Aviso</text></request>"
)


def test_sms_to_one_and_many_numbers_in_xml(client: TestClient, world: World) -> None:
    sms = "/api/v1/sms"
    one = client.post(sms, content=SMS_ONE.encode(), headers={**auth(world), **XML})
    assert one.status_code == 202, one.text
    read = xml_as_json(client, one, "post", sms)
    assert [m["to"] for m in read["messages"]] == ["+51987654321"]
    assert read["rejected"] == [] and read["parts"] == 1 and read["campaign_id"] is None
    assert b"<rejected/>" in one.content and b'<campaign_id xsi:nil="true"/>' in one.content
    many = client.post(sms, content=SMS_MANY.encode(), headers={**auth(world), **XML})
    assert many.status_code == 202, many.text
    read_many = xml_as_json(client, many, "post", sms)
    same_in_json = client.post(
        sms,
        json={"to": ["987654321", "987650000", "01 4261234"], "text": "Aviso"},
        headers=auth(world),
    ).json()
    assert [m["to"] for m in read_many["messages"]] == [m["to"] for m in same_in_json["messages"]]
    assert (
        read_many["rejected"] == same_in_json["rejected"] and read_many["rejected"][0]["index"] == 2
    )
    path = "/api/v1/sms/{message_id}"
    sent, _ = both(client, "get", f"/api/v1/sms/{read['messages'][0]['id']}", path, auth(world))
    assert sent.json()["text"] == "Su orden OC-118 vence el 30/11."
    assert sent.json()["part_states"] == []  # not submitted yet: an empty list, not absent
    both(client, "get", "/api/v1/credits", "/api/v1/credits", auth(world))


def test_a_transactional_email_in_xml(client: TestClient, world: World) -> None:
    document = f"""<?xml version="1.0" encoding="UTF-8"?>
<request xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <to>ana@empresa.pe</to>
  <from_email>notificaciones@{DOMAIN}</from_email>
  <subject>Su trámite {{{{ tramite }}}}</subject>
  <html><![CDATA[<p>Hola, su trámite <b>{{{{ tramite }}}}</b>.</p>]]></html>
  <reply_to xsi:nil="true"/>
  <variables><tramite>T-118</tramite></variables>
  <tags><item>mesa-de-partes</item></tags>
</request>"""
    accepted = client.post(
        "/api/v1/messages", content=document.encode(), headers={**auth(world), **XML}
    )
    assert accepted.status_code == 202, accepted.text
    read = xml_as_json(client, accepted, "post", "/api/v1/messages")
    assert read["state"] == "queued"
    as_json, _ = both(
        client,
        "get",
        f"/api/v1/messages/{read['id']}",
        "/api/v1/messages/{message_id}",
        auth(world),
    )
    message = as_json.json()
    assert message["subject"] == "Su trámite {{ tramite }}"  # rendered by the worker
    assert message["tags"] == ["mesa-de-partes"]
    json_twin = client.post(
        "/api/v1/messages",
        json={
            "to": "ana@empresa.pe",
            "from_email": f"notificaciones@{DOMAIN}",
            "subject": "Su trámite {{ tramite }}",
            "html": "<p>Hola, su trámite <b>{{ tramite }}</b>.</p>",
            "reply_to": None,
            "variables": {"tramite": "T-118"},
            "tags": ["mesa-de-partes"],
        },
        headers=auth(world),
    ).json()
    twin = client.get(f"/api/v1/messages/{json_twin['id']}", headers=auth(world)).json()
    same = ("to", "state", "subject", "tags", "origin")
    assert {k: twin[k] for k in same} == {k: message[k] for k in same}


def test_the_json_path_is_untouched(client: TestClient, world: World) -> None:
    answer = client.get("/api/v1/me", headers=auth(world))
    assert answer.headers["content-type"] == "application/json"
    xml = client.get("/api/v1/me", headers={**auth(world), "Accept": "application/xml"})
    root = fromstring(xml.content)
    assert root.tag == "response" and root.findtext("role") == "manager"
    docs = client.get("/api/openapi.json", headers={"Accept": "application/xml"})
    assert docs.headers["content-type"] == "application/json"  # only /api/v1 speaks XML


def test_what_fuzzing_found_is_refused_in_the_api_shape(settings: Settings, tmp_path: Path) -> None:
    """Ids beyond 32 bits, NUL characters (PostgreSQL refuses them), bodies that cannot be
    read, unknown paths and methods: 4xx in the API's error shape, never a server error."""
    world = build_world(settings, tmp_path, 1)
    headers = auth(world)
    big = 10**20
    with TestClient(create_app(settings)) as client:
        for method, url, body, status, field in [
            (
                "post",
                "/api/v1/campaigns",
                {
                    "name": "x",
                    "template_id": big,
                    "list_id": 1,
                    "from_email": "a@b.pe",
                    "from_name": "x",
                },
                422,
                "template_id",
            ),
            ("get", f"/api/v1/sms/replies?campaign_id={big}", None, 422, "query.campaign_id"),
            ("get", f"/api/v1/contacts?list_id={big}", None, 422, "query.list_id"),
            ("post", "/api/v1/lists", {"name": "a\x00b"}, None, None),
            ("get", "/api/v1/contacts?q=a%00b", None, None, None),
            ("get", "/api/v1/nothing-here", None, 404, None),
            ("delete", "/api/v1/lists", None, 405, None),
        ]:
            answer = client.request(method, url, json=body, headers=headers)
            assert answer.status_code < 500, (url, answer.text)
            if status is not None:
                assert answer.status_code == status, (url, answer.text)
            if answer.status_code >= 400:  # SQLite stores a NUL, PostgreSQL refuses it
                error = answer.json()["error"]
                assert set(error) == {"code", "message", "field"}
                assert error["field"] == field
        unreadable = client.post(
            "/api/v1/lists",
            content=b"\xff\xfe{",
            headers={**headers, "Content-Type": "application/json"},
        )
        assert unreadable.status_code in (400, 422)
        assert "error" in unreadable.json()
        not_found = client.get("/api/v1/nothing-here", headers={**headers, **XML})
        assert b"<code>not_found</code>" in not_found.content
