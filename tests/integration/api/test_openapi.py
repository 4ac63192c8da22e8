"""The OpenAPI document at ``/api/openapi.json``: every ``/api/v1`` operation has a summary,
a description and a tag, an example for its request body (if any) and for its success
answer, in JSON and in XML, and its error answers in the API's error shape.  The JSON
examples validate against their schemas and the XML ones read back to the JSON ones."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest
from fastapi.testclient import TestClient

from mailer.api.formats import XmlReader, parse_xml
from mailer.asgi import create_app
from mailer.core.config import Settings

ERROR_REF = "#/components/schemas/ErrorOut"


@pytest.fixture(scope="module")
def openapi() -> Iterator[dict[str, Any]]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MAILER_BROKER_URL", "")
        settings = Settings(database_url="sqlite://", secret_key="openapi-" + "x" * 32)
        with TestClient(create_app(settings)) as client:
            answer = client.get("/api/openapi.json")
            assert answer.status_code == 200
            assert client.get("/api/docs").status_code == 200
            yield answer.json()


def operations(openapi: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, methods in openapi["paths"].items():
        if path.startswith("/api/v1/"):
            for method, operation in methods.items():
                yield f"{method.upper()} {path}", operation


def examples_of(media: dict[str, Any]) -> list[Any]:
    if "example" in media:
        return [media["example"]]
    return [example["value"] for example in media.get("examples", {}).values()]


def check_examples(
    name: str, content: dict[str, Any], components: dict[str, Any], problems: list[str]
) -> None:
    """Every media type has an example; the JSON ones validate; the XML ones are the JSON
    ones under the documented mapping."""
    for media_type, media in content.items():
        if not examples_of(media):
            problems.append(f"{name}: no example for {media_type}")
    if "application/json" not in content:
        return
    media = content["application/json"]
    if "application/xml" not in content:
        problems.append(f"{name}: no application/xml alternative")
        return
    schema = media["schema"]
    validator = jsonschema_rs.Draft202012Validator(
        {**schema, "components": {"schemas": components}}
    )
    xml_examples = examples_of(content["application/xml"])
    for index, example in enumerate(examples_of(media)):
        errors = [error.message for error in validator.iter_errors(example)]
        if errors:
            problems.append(f"{name}: the example does not match its schema: {errors[:3]}")
        if index < len(xml_examples):
            read = XmlReader(components).read(parse_xml(xml_examples[index].encode()), schema)
            if read != example:
                problems.append(f"{name}: the XML example reads back as {read!r}")


def test_every_operation_is_documented_with_examples(openapi: dict[str, Any]) -> None:
    components = openapi["components"]["schemas"]
    problems: list[str] = []
    seen = 0
    for name, operation in operations(openapi):
        seen += 1
        for part in ("summary", "description", "tags"):
            if not operation.get(part):
                problems.append(f"{name}: no {part}")
        body = operation.get("requestBody")
        if body is not None:
            check_examples(f"{name} request", body["content"], components, problems)
        successes = {s: r for s, r in operation["responses"].items() if s.startswith("2")}
        if not successes:
            problems.append(f"{name}: no success answer")
        for status, answer in successes.items():
            if status == "204":
                continue
            if not answer.get("content"):
                problems.append(f"{name}: {status} without content")
                continue
            check_examples(f"{name} {status}", answer["content"], components, problems)
    assert seen > 60
    assert not problems, "\n".join(problems)


def test_errors_are_documented_in_the_api_shape(openapi: dict[str, Any]) -> None:
    problems = []
    for name, operation in operations(openapi):
        if "/oauth/token" in name:  # answers OAuth errors (RFC 6749) for the token request
            continue
        responses = operation["responses"]
        for status in ("400", "401", "403", "404", "422", "429"):
            content = responses.get(status, {}).get("content", {})
            if content.get("application/json", {}).get("schema", {}).get("$ref") != ERROR_REF:
                problems.append(f"{name}: {status} is not documented as an ErrorOut")
            elif "application/xml" not in content:
                problems.append(f"{name}: {status} has no XML alternative")
        if "Retry-After" not in responses.get("429", {}).get("headers", {}):
            problems.append(f"{name}: 429 without Retry-After")
    assert not problems, "\n".join(problems)
    assert "HTTPValidationError" not in openapi["components"]["schemas"]


def test_the_document_tells_about_xml_and_errors(openapi: dict[str, Any]) -> None:
    description = openapi["info"]["description"]
    assert "application/xml" in description and "<item>" in description
    assert {"sms", "messages", "webhooks"} <= {tag["name"] for tag in openapi["tags"]}
    sms = openapi["paths"]["/api/v1/sms"]["post"]["requestBody"]["content"]["application/xml"]
    assert "<to><item>987654321</item>" in str(sms["examples"])
