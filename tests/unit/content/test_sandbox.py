"""User-authored templates run sandboxed, escaped and lenient with missing data."""

from __future__ import annotations

import pytest
from jinja2.exceptions import SecurityError

from mailer.content import TemplateError, compile_template

ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ joiner.__init__.__globals__.os }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ contact.__class__ }}",
    "{{ self.__init__.__globals__ }}",
    "{{ '{0.__class__}'.format('') }}",
    "{{ (1).__class__.__base__.__subclasses__() }}",
    "{{ range.__init__ }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
]


@pytest.mark.parametrize("source", ESCAPES)
@pytest.mark.parametrize("part", ["subject", "html", "text"])
def test_escapes_from_the_sandbox_fail_at_render(source: str, part: str) -> None:
    parts = {"subject": "s", "html": "<p>x</p>", "text": "t", part: f"a\n{source}"}
    template = compile_template(parts["subject"], parts["html"], parts["text"])

    with pytest.raises(TemplateError) as caught:
        template.render({"contact": {"first_name": "Ana"}})

    assert caught.value.part == part
    assert isinstance(caught.value.__cause__, SecurityError)
    assert caught.value.detail.startswith("not allowed in a template: ")


def test_templates_cannot_mutate_their_context() -> None:
    items = ["a"]
    template = compile_template("s", "{{ items.append('b') }}")

    with pytest.raises(TemplateError):
        template.render({"items": items})

    assert items == ["a"]


def test_html_is_autoescaped_but_not_subject_and_text() -> None:
    contact = {"first_name": "<script>alert(1)</script>", "company": "Ríos & Hijos"}
    template = compile_template(
        "Hola {{ contact.first_name }}", "<p>{{ contact.first_name }} — {{ contact.company }}</p>"
    )

    message = template.render({"contact": contact})

    assert message.html == "<p>&lt;script&gt;alert(1)&lt;/script&gt; — Ríos &amp; Hijos</p>"
    assert message.subject == "Hola <script>alert(1)</script>"
    assert message.text == "<script>alert(1)</script> — Ríos & Hijos\n"


@pytest.mark.parametrize(
    "context",
    [
        {},
        {"contact": {}},
        {"contact": {"first_name": None}},
        {"contact": {"first_name": ""}},
        {"contact": {"first_name": "   "}},
    ],
)
def test_default_covers_missing_none_and_empty_fields(context: dict[str, object]) -> None:
    template = compile_template(
        'Estimado {{ contact.first_name | default("proveedor") }}',
        '<p>Estimado {{ contact.first_name | default("proveedor", true) }}</p>',
    )

    message = template.render(context)

    assert message.subject == "Estimado proveedor"
    assert message.html == "<p>Estimado proveedor</p>"


def test_default_keeps_a_real_value_and_a_zero() -> None:
    template = compile_template('{{ n | default("-") }} {{ name | d("x") }}', "<p></p>")

    assert template.render({"n": 0, "name": "Ana"}).subject == "0 Ana"


def test_undefined_and_none_render_empty() -> None:
    template = compile_template("s", "<p>[{{ missing }}][{{ a.b.c }}][{{ phone }}]</p>")

    assert template.render({"phone": None}).html == "<p>[][][]</p>"


def test_a_key_starting_with_underscore_is_data_not_an_attribute() -> None:
    template = compile_template("s", "<p>[{{ row._id }}]</p>")

    assert template.render({"row": {"_id": 7}}).html == "<p>[7]</p>"


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'a' * 10**9 }}",  # refused before anything is allocated, even at compile time
        "{{ [1] * 10**8 }}",
        "{{ 2 ** 100000 }}",
        "{% for i in range(10**7) %}x{% endfor %}",
        "{% for i in range(9999) %}{% for j in range(9999) %}xxxxxxxxxx{% endfor %}{% endfor %}",
    ],
)
def test_templates_cannot_exhaust_memory_or_cpu(source: str) -> None:
    import time

    started = time.monotonic()
    with pytest.raises(TemplateError, match="not allowed in a template"):
        compile_template("Asunto", f"<p>{source}</p>").render({})
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    "payload",
    [
        "{{ self._TemplateReference__context }}",
        "{{ self._TemplateReference__context.cycler.__init__.__globals__.os }}",
        "{{ config }}",
        "{{ config.items() }}",
        "{{ request.application.__globals__ }}",
        "{{ ''|attr('__class__') }}",
        "{{ ''|attr('\\x5f\\x5fclass\\x5f\\x5f') }}",
        "{{ '%s'|format(''.__class__) }}",
        "{{ '{0.__class__.__init__.__globals__}'.format(cycler) }}",
        "{{ cycler.next.__func__ }}",
        "{{ dict.mro() }}",
        "{{ lipsum.__globals__ }}",
        "{{ url_for.__globals__ }}",
        "{{ get_flashed_messages.__globals__ }}",
        "{% set x = namespace() %}{{ x.__dict__ }}",
        "{{ contact.update({'email': 'x'}) }}",
    ],
)
def test_known_injection_payloads_leak_nothing(payload: str) -> None:
    """Server-side template injection payloads of the field: refused, or harmlessly empty."""
    try:
        rendered = compile_template("s", f"<p>{payload}</p>").render(
            {"contact": {"email": "a@example.pe"}}
        )
    except TemplateError:
        return
    leaked = rendered.html.lower()
    for marker in ("class", "module", "function", "built-in", "<bound", "globals", "os"):
        assert marker not in leaked.replace("<p>", "").replace("</p>", ""), (payload, rendered.html)


@pytest.mark.parametrize(
    "source",
    [
        "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
        "{% set x = (((10**100)**100)**100)**30 %}",
        "{% set x = 99 ** 99 %}{% set y = x * x * x * x * x * x * x * x %}{{ y * y * y * y * y }}",
        "{% set x %}{% for i in range(10000) %}{{ 'a' * 99999 }}{% endfor %}{% endset %}",
        "{{ 'a'|center(10**8) }}",
        "{{ 'a'|indent(10**8) }}",
        "{{ '%100000000s' % 'a' }}",
        "{{ '{:>100000000}'.format('a') }}",
    ],
)
def test_silent_or_single_step_exhaustion_is_stopped(source: str) -> None:
    """Work that prints nothing, or one huge step, is stopped as well (previews, check)."""
    import time

    from mailer.content.check import check_template
    from mailer.content.preview import preview

    started = time.monotonic()
    with pytest.raises(TemplateError):
        preview("Asunto", f"<p>{source}</p>", None)
    with pytest.raises(TemplateError):
        check_template("Asunto", f"<p>{source}</p>")
    assert time.monotonic() - started < 8


def test_a_recursive_macro_is_a_template_error() -> None:
    source = "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"
    with pytest.raises(TemplateError):
        compile_template("s", f"<p>{source}</p>").render({})
