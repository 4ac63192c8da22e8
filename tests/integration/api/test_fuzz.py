"""API fuzzing with schemathesis: every ``/api/v1`` operation of the OpenAPI document, called
in-process (ASGI, no network) with an admin's API key and JSON bodies, valid and invalid,
must answer without a server error, with a documented status code and content type, and a
body that matches its documented schema.

The same bodies are then sent as XML: no server error, and an XML answer that reads back to
what the schema documents.

Bounded: a few dozen examples per operation, no shrinking, one module-wide app and
database (about a minute and a half on two cores)."""

from __future__ import annotations

import copy
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings, strategies
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from mailer.accounts import credits
from mailer.accounts.service import create_api_key
from mailer.api.formats import XmlReader, parse_xml, render_xml
from mailer.asgi import create_app
from mailer.core.config import get_settings
from mailer.storage.db import dispose_engines, session_scope
from tests.conftest import CLOSED_DNS_PORT, PG_ADMIN_URL, REPO, require_server
from tests.helpers import build_world

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES = int(os.environ.get("MAILER_FUZZ_EXAMPLES", "30"))  # per operation; more to dig
XML_EXAMPLES = 12


def json_only(document: dict[str, Any]) -> dict[str, Any]:
    """The ``/api/v1`` operations with their JSON request bodies only: schemathesis would
    write XML its own way; :func:`fuzz_in_xml` writes it by the documented mapping."""
    document = copy.deepcopy(document)
    document["paths"] = {
        path: operations
        for path, operations in document["paths"].items()
        if path.startswith("/api/v1/")
    }
    for operations in document["paths"].values():
        for operation in operations.values():
            content = operation.get("requestBody", {}).get("content", {})
            for media_type in [m for m in content if "xml" in m]:
                del content[media_type]
    return document


@contextmanager
def database(backend: str, tmp_path: Path) -> Iterator[str]:
    """A new, empty database of *backend*, dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'mailer.db'}"
        return
    require_server("PostgreSQL", "127.0.0.1", 5432)
    import psycopg

    name = f"mailer_fuzz_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        dispose_engines()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fuzzed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Any, str]]:
    """The app on a migrated database of each backend (they refuse different values) with
    an account, and an admin's API key."""
    from mailer.storage.migrate import upgrade
    from mailer.workers import configure_broker

    tmp_path: Path = tmp_path_factory.mktemp("fuzz")
    with database(request.param, tmp_path) as url, pytest.MonkeyPatch.context() as patch:
        for key, value in {
            "MAILER_DATABASE_URL": url,
            "MAILER_DATA_DIR": str(tmp_path / "var"),
            "MAILER_SENDING_DOMAINS_DIR": str(tmp_path / "sending_domains"),
            "MAILER_TEMPLATES_DIR": str(REPO / "templates"),
            "MAILER_SECRET_KEY": "fuzz-secret-" + "x" * 32,
            "MAILER_BROKER_URL": "",  # in-process: what the API queues is never worked
            "MAILER_CONFIG": str(tmp_path / "absent.toml"),
            "MAILER_DNS_SERVERS": f"127.0.0.1:{CLOSED_DNS_PORT}",
            "MAILER_DNS__TIMEOUT_SECONDS": "0.01",
            "MAILER_RELAY__PORT": str(CLOSED_DNS_PORT),  # test sends fail at once, locally
        }.items():
            patch.setenv(key, value)
        get_settings.cache_clear()
        dispose_engines()
        settings = get_settings()
        upgrade(settings)
        configure_broker(settings, force=True)
        world = build_world(settings, tmp_path, 3)
        with session_scope(settings) as session:
            credits.grant(session, world.account_id, "sms", 1_000_000)
            credits.grant(session, world.account_id, "email", 1_000_000)
            _key, admin_key = create_api_key(session, world.account_id, "fuzz", "admin")
        yield create_app(settings), admin_key
        dispose_engines()
        get_settings.cache_clear()


@pytest.fixture(scope="module")
def api_schema(fuzzed: tuple[Any, str]) -> Any:
    app, _key = fuzzed
    config = SchemathesisConfig.from_dict({"generation": {"max-examples": EXAMPLES}})
    schema = schemathesis.openapi.from_dict(json_only(app.openapi()), config=config)
    schema.app = app
    return schema


def fuzz(operation: Any, admin_key: str) -> None:
    """Valid and invalid cases of *operation*; the first that breaks a check fails."""
    headers = {"Authorization": f"Bearer {admin_key}"}
    cases = strategies.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
        *operation.schema.get_strategies_from_examples(operation),  # the documented ones
    )

    @given(case=cases)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,  # the same cases on every run
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def call(case: Any) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)

    call()


def test_every_operation_answers_as_documented(
    api_schema: Any, fuzzed: tuple[Any, str], subtests: pytest.Subtests
) -> None:
    _app, admin_key = fuzzed
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) > 60
    for operation in operations:
        with subtests.test(msg=operation.label):
            fuzz(operation, admin_key)


def fuzz_in_xml(operation: Any, client: TestClient, admin_key: str) -> None:
    """The same bodies, sent as XML (written by the documented mapping): never a server
    error, and always an XML answer."""
    body = operation.definition.raw.get("requestBody", {}).get("content", {})
    schema = body.get("application/json", {}).get("schema")
    components = client.app.openapi()["components"]["schemas"]  # type: ignore[attr-defined]
    responses = operation.definition.raw["responses"]
    headers = {
        "Authorization": f"Bearer {admin_key}",
        "Content-Type": "application/xml",
        "Accept": "application/xml",
    }
    cases = strategies.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    @given(case=cases)
    @settings(
        max_examples=XML_EXAMPLES,
        deadline=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def call(case: Any) -> None:
        document = render_xml(case.body, "request", schema, components)
        answer = client.request(
            case.method, case.formatted_path, params=case.query, content=document, headers=headers
        )
        assert answer.status_code < 500, answer.text
        if answer.status_code == 204:
            return
        assert answer.headers["content-type"] == "application/xml; charset=utf-8"
        documented = responses[str(answer.status_code)]["content"]["application/json"]["schema"]
        read = XmlReader(components).read(parse_xml(answer.content), documented)
        validator = jsonschema_rs.Draft202012Validator(
            {**documented, "components": {"schemas": components}}
        )
        assert validator.is_valid(read), (answer.text, read)

    call()


def test_xml_bodies_never_break_the_api(
    api_schema: Any, fuzzed: tuple[Any, str], subtests: pytest.Subtests
) -> None:
    app, admin_key = fuzzed
    operations = [result.ok() for result in api_schema.get_all_operations()]
    with_body = [
        operation
        for operation in operations
        if "application/json" in operation.definition.raw.get("requestBody", {}).get("content", {})
    ]
    assert len(with_body) > 20
    with TestClient(app) as client:
        for operation in with_body:
            with subtests.test(msg=operation.label):
                fuzz_in_xml(operation, client, admin_key)
