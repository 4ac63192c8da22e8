"""Segments: saved rules over contacts, turned into one SQL condition when used.

Rules are JSON, nested groups allowed::

    {"match": "all",                      # or "any"
     "conditions": [
        {"field": "company", "op": "contains", "value": "S.A.C."},
        {"field": "attr:monto", "op": "gt", "value": 1000},
        {"field": "list", "op": "in", "value": 3},
        {"field": "email_status", "op": "eq", "value": "active"},
        {"field": "engagement", "op": "opened_within", "value": 30},
        {"match": "any", "conditions": [...]}]}

:func:`validate_rules` says exactly which condition is wrong and how to fix it;
:func:`compile_rules` gives a WHERE clause over ``contacts`` that works on SQLite and
PostgreSQL.  Segments are dynamic: they are compiled again each time they are counted or
sent to.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, and_, exists, func, not_, or_, true
from sqlmodel import col

from mailer.audience.models import AttributeType, ChannelStatus, Contact, ListMember
from mailer.core.clock import utcnow
from mailer.core.errors import ValidationFailed
from mailer.events.models import Event, EventKind

MAX_DEPTH = 4
MAX_CONDITIONS = 100

TEXT_FIELDS = (
    "email",
    "email_domain",
    "first_name",
    "last_name",
    "phone",
    "phone_kind",
    "company",
    "position",
    "document",
)
STATUS_FIELDS: dict[str, tuple[str, ...]] = {
    "email_status": tuple(ChannelStatus),
    "sms_status": tuple(ChannelStatus),
    "email_verdict": ("valid", "risky", "invalid", "unknown", ""),
}
DATE_FIELDS = ("created_at", "cleaned_at")

OPS: dict[str, tuple[str, ...]] = {
    AttributeType.TEXT: (
        "eq",
        "neq",
        "contains",
        "not_contains",
        "starts_with",
        "ends_with",
        "in",
        "empty",
        "not_empty",
    ),
    AttributeType.NUMBER: ("eq", "neq", "gt", "gte", "lt", "lte", "empty", "not_empty"),
    AttributeType.DATE: (
        "eq",
        "before",
        "after",
        "within_days",
        "older_than_days",
        "empty",
        "not_empty",
    ),
    AttributeType.BOOLEAN: ("is_true", "is_false", "empty", "not_empty"),
    "status": ("eq", "neq", "in", "not_in"),
    "list": ("in", "not_in"),
    "engagement": (
        "opened_within",
        "clicked_within",
        "not_opened_within",
        "never_opened",
        "never_clicked",
    ),
}
NO_VALUE_OPS = frozenset(
    {"empty", "not_empty", "is_true", "is_false", "never_opened", "never_clicked"}
)

FIELD_LABELS_ES: dict[str, str] = {
    "email": "Correo",
    "email_domain": "Dominio del correo",
    "first_name": "Nombre",
    "last_name": "Apellido",
    "phone": "Celular",
    "phone_kind": "Tipo de teléfono",
    "company": "Empresa",
    "position": "Cargo",
    "document": "RUC / documento",
    "email_status": "Estado (correo)",
    "sms_status": "Estado (SMS)",
    "email_verdict": "Resultado de depuración",
    "created_at": "Fecha de alta",
    "cleaned_at": "Fecha de depuración",
    "list": "Lista",
    "engagement": "Interacción",
}
OP_LABELS_ES: dict[str, str] = {
    "eq": "es igual a",
    "neq": "no es igual a",
    "contains": "contiene",
    "not_contains": "no contiene",
    "starts_with": "empieza con",
    "ends_with": "termina en",
    "in": "es uno de",
    "not_in": "no es uno de",
    "empty": "está vacío",
    "not_empty": "no está vacío",
    "gt": "es mayor que",
    "gte": "es mayor o igual que",
    "lt": "es menor que",
    "lte": "es menor o igual que",
    "before": "es anterior a",
    "after": "es posterior a",
    "within_days": "en los últimos N días",
    "older_than_days": "hace más de N días",
    "is_true": "es verdadero",
    "is_false": "es falso",
    "opened_within": "abrió en los últimos N días",
    "clicked_within": "hizo clic en los últimos N días",
    "not_opened_within": "no abrió en los últimos N días",
    "never_opened": "nunca abrió",
    "never_clicked": "nunca hizo clic",
}


def field_kind(field: str, attribute_types: Mapping[str, str]) -> str:
    """The kind of a field, which decides its operators; '' for an unknown field."""
    if field in TEXT_FIELDS:
        return AttributeType.TEXT
    if field in STATUS_FIELDS:
        return "status"
    if field in DATE_FIELDS:
        return AttributeType.DATE
    if field in {"list", "engagement"}:
        return field
    if field.startswith("attr:") and len(field) > 5:
        return attribute_types.get(field[5:], AttributeType.TEXT)
    return ""


def validate_rules(
    rules: Any, attribute_types: Mapping[str, str], list_ids: set[int] | None = None
) -> dict[str, Any]:
    """Check rules and return them normalised; errors name the condition (``conditions[2]``)."""
    counter = [0]
    return _validate_group(rules, attribute_types, list_ids, "rules", 0, counter)


def _fail(where: str, message: str, **params: Any) -> ValidationFailed:
    return ValidationFailed("{where}: " + message, field=where, where=where, **params)


def _validate_group(
    group: Any,
    attribute_types: Mapping[str, str],
    list_ids: set[int] | None,
    where: str,
    depth: int,
    counter: list[int],
) -> dict[str, Any]:
    if not isinstance(group, dict):
        raise _fail(where, 'a group must be an object with "match" and "conditions"')
    match = group.get("match", "all")
    if match not in {"all", "any"}:
        raise _fail(where, "match must be 'all' or 'any', not '{match}'", match=match)
    conditions = group.get("conditions", [])
    if not isinstance(conditions, list):
        raise _fail(where, '"conditions" must be a list')
    if depth > MAX_DEPTH:
        raise _fail(where, "groups nest at most {depth} deep", depth=MAX_DEPTH)
    normalised: list[dict[str, Any]] = []
    for index, condition in enumerate(conditions):
        here = f"{where}.conditions[{index}]"
        counter[0] += 1
        if counter[0] > MAX_CONDITIONS:
            raise _fail(here, "a segment has at most {n} conditions", n=MAX_CONDITIONS)
        if isinstance(condition, dict) and "conditions" in condition:
            normalised.append(
                _validate_group(condition, attribute_types, list_ids, here, depth + 1, counter)
            )
        else:
            normalised.append(_validate_condition(condition, attribute_types, list_ids, here))
    return {"match": match, "conditions": normalised}


def _validate_condition(
    condition: Any, attribute_types: Mapping[str, str], list_ids: set[int] | None, where: str
) -> dict[str, Any]:
    if not isinstance(condition, dict):
        raise _fail(where, 'a condition must be an object with "field", "op" and "value"')
    field = str(condition.get("field", ""))
    op = str(condition.get("op", ""))
    kind = field_kind(field, attribute_types)
    if not kind:
        raise _fail(
            where,
            "unknown field '{name}': use a contact field, attr:NAME, list or engagement",
            name=field,
        )
    if op not in OPS[kind]:
        raise _fail(
            where,
            "the operator '{op}' does not apply to '{name}' (use one of: {ops})",
            op=op,
            name=field,
            ops=", ".join(OPS[kind]),
        )
    value = condition.get("value")
    if op in NO_VALUE_OPS:
        return {"field": field, "op": op}
    value = _validate_value(kind, field, op, value, list_ids, where)
    return {"field": field, "op": op, "value": value}


def _validate_value(
    kind: str, field: str, op: str, value: Any, list_ids: set[int] | None, where: str
) -> Any:
    if op in {"within_days", "older_than_days"} or kind == "engagement":
        return _whole_number(value, where)
    if kind == "list":
        ids = value if isinstance(value, list) else [value]
        checked = [_whole_number(v, where) for v in ids]
        if list_ids is not None:
            for list_id in checked:
                if list_id not in list_ids:
                    raise _fail(where, "list {id} does not exist", id=list_id)
        return checked
    if op in {"in", "not_in"}:
        values = value if isinstance(value, list) else str(value or "").split(",")
        values = [str(v).strip() for v in values if str(v).strip()]
        if not values:
            raise _fail(where, "give at least one value")
        if kind == "status":
            for v in values:
                if v not in STATUS_FIELDS[field]:
                    raise _fail(where, "'{value}' is not a status of {name}", value=v, name=field)
        return values
    if kind == "status":
        if value not in STATUS_FIELDS[field]:
            raise _fail(where, "'{value}' is not a status of {name}", value=value, name=field)
        return value
    if kind == AttributeType.NUMBER:
        try:
            return float(str(value).replace(",", "."))
        except ValueError:
            raise _fail(where, "'{value}' is not a number", value=value) from None
    if kind == AttributeType.DATE:
        try:
            return date.fromisoformat(str(value)).isoformat()
        except ValueError:
            raise _fail(where, "'{value}' is not a date (YYYY-MM-DD)", value=value) from None
    if value is None or str(value) == "":
        raise _fail(where, "give a value to compare with")
    return str(value)


def _whole_number(value: Any, where: str) -> int:
    try:
        number = int(str(value))
    except ValueError:
        raise _fail(where, "'{value}' is not a whole number", value=value) from None
    if number < 0:
        raise _fail(where, "'{value}' must not be negative", value=value)
    return number


def compile_rules(
    rules: Mapping[str, Any], attribute_types: Mapping[str, str]
) -> ColumnElement[bool]:
    """A WHERE clause over ``contacts`` for validated rules (an empty group matches all)."""
    parts = [
        compile_rules(c, attribute_types) if "conditions" in c else _condition(c, attribute_types)
        for c in rules.get("conditions", [])
    ]
    if not parts:
        return true()
    return and_(*parts) if rules.get("match", "all") == "all" else or_(*parts)


def _condition(
    condition: Mapping[str, Any], attribute_types: Mapping[str, str]
) -> ColumnElement[bool]:
    field, op, value = condition["field"], condition["op"], condition.get("value")
    kind = field_kind(field, attribute_types)
    if kind == "list":
        member = exists().where(
            col(ListMember.contact_id) == col(Contact.id),
            col(ListMember.list_id).in_(list(value or [])),
        )
        return member if op == "in" else not_(member)
    if kind == "engagement":
        return _engagement(op, value)
    if field.startswith("attr:"):
        return _attribute(field[5:], kind, op, value)
    column: Any = getattr(Contact, field)
    if kind == AttributeType.DATE:
        return _date_column(column, op, value)
    if kind == "status":
        if op == "eq":
            return column == value  # type: ignore[no-any-return]
        if op == "neq":
            return column != value  # type: ignore[no-any-return]
        return column.in_(value) if op == "in" else column.not_in(value)  # type: ignore[no-any-return]
    return _text(column, op, value)


def _text(column: Any, op: str, value: Any) -> ColumnElement[bool]:
    if op in {"empty", "not_empty"}:
        blank = func.coalesce(column, "") == ""
        return blank if op == "empty" else not_(blank)
    lowered = func.lower(column)
    if op == "in":
        return lowered.in_([v.lower() for v in value])  # type: ignore[no-any-return]
    text = str(value).lower()
    expressions: dict[str, Any] = {
        "eq": lambda: lowered == text,
        "neq": lambda: func.coalesce(lowered, "") != text,
        "contains": lambda: lowered.contains(text, autoescape=True),
        "not_contains": lambda: not_(func.coalesce(lowered, "").contains(text, autoescape=True)),
        "starts_with": lambda: lowered.startswith(text, autoescape=True),
        "ends_with": lambda: lowered.endswith(text, autoescape=True),
    }
    return expressions[op]()  # type: ignore[no-any-return]


def _date_column(column: Any, op: str, value: Any) -> ColumnElement[bool]:
    if op == "empty":
        return column.is_(None)  # type: ignore[no-any-return]
    if op == "not_empty":
        return column.is_not(None)  # type: ignore[no-any-return]
    now = utcnow()
    if op == "within_days":
        return column >= now - timedelta(days=value)  # type: ignore[no-any-return]
    if op == "older_than_days":
        return column < now - timedelta(days=value)  # type: ignore[no-any-return]
    day = datetime.fromisoformat(value).replace(tzinfo=UTC)
    if op == "before":
        return column < day  # type: ignore[no-any-return]
    if op == "after":
        return column >= day + timedelta(days=1)  # type: ignore[no-any-return]
    return and_(column >= day, column < day + timedelta(days=1))


def _attribute(name: str, kind: str, op: str, value: Any) -> ColumnElement[bool]:
    element: Any = col(Contact.attributes)[name]
    if op == "empty":
        return func.coalesce(element.as_string(), "") == ""
    if op == "not_empty":
        return func.coalesce(element.as_string(), "") != ""
    if kind == AttributeType.NUMBER:
        number = element.as_float()
        comparisons: dict[str, Any] = {
            "eq": lambda: number == value,
            "neq": lambda: number != value,
            "gt": lambda: number > value,
            "gte": lambda: number >= value,
            "lt": lambda: number < value,
            "lte": lambda: number <= value,
        }
        return comparisons[op]()  # type: ignore[no-any-return]
    if kind == AttributeType.BOOLEAN:
        flag = element.as_boolean()
        return cast(ColumnElement[bool], flag.is_(True) if op == "is_true" else flag.is_(False))
    if kind == AttributeType.DATE:
        text: Any = element.as_string()
        today = date.today()
        day = func.substr(text, 1, 10)
        dates: dict[str, Any] = {
            "within_days": lambda: day >= (today - timedelta(days=value)).isoformat(),
            "older_than_days": lambda: day < (today - timedelta(days=value)).isoformat(),
            "before": lambda: day < value,
            "after": lambda: day > value,
            "eq": lambda: day == value,
        }
        return cast(ColumnElement[bool], dates[op]())
    return _text(element.as_string(), op, value)


def _engagement(op: str, value: Any) -> ColumnElement[bool]:
    # Human activity only: a proxy's prefetch or a link scanner says nothing about the
    # reader.  A human click implies the message was opened, even if its images were off.
    if op in {"clicked_within", "never_clicked"}:
        kinds = [EventKind.CLICKED.value]
    else:
        kinds = [EventKind.OPENED.value, EventKind.CLICKED.value]
    query = exists().where(
        col(Event.contact_id) == col(Contact.id),
        col(Event.kind).in_(kinds),
        col(Event.machine).is_(False),
    )
    if op in {"opened_within", "clicked_within", "not_opened_within"}:
        query = query.where(col(Event.occurred_at) >= utcnow() - timedelta(days=value))
    if op in {"opened_within", "clicked_within"}:
        return query
    return not_(query)


def describe(rules: Mapping[str, Any]) -> str:
    """A one-line Spanish description of the rules, for lists of segments."""
    parts = []
    for condition in rules.get("conditions", []):
        if "conditions" in condition:
            parts.append("(" + describe(condition) + ")")
            continue
        field = condition["field"]
        label = FIELD_LABELS_ES.get(field, field.removeprefix("attr:"))
        value = condition.get("value")
        text = f"{label} {OP_LABELS_ES.get(condition['op'], condition['op'])}"
        if value is not None and condition["field"] != "engagement":
            text += f" {', '.join(map(str, value)) if isinstance(value, list) else value}"
        elif value is not None:
            text = text.replace("N", str(value))
        parts.append(text)
    joiner = " y " if rules.get("match", "all") == "all" else " o "
    return joiner.join(parts) or "Todos los contactos"
