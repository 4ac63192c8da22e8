"""Syntax errors are found at compile time and reported with their part and line."""

from __future__ import annotations

import pytest

from mailer.content import TemplateError, check_syntax, compile_template
from mailer.core.errors import MailerError, ValidationFailed


def compile_error(
    subject: str = "s", html: str = "<p>x</p>", text: str | None = None
) -> TemplateError:
    with pytest.raises(TemplateError) as caught:
        compile_template(subject, html, text)
    return caught.value


def test_template_error_is_a_validation_error_with_part_and_line() -> None:
    error = compile_error(html="<p>\n{{ a } </p>")

    assert isinstance(error, ValidationFailed) and isinstance(error, MailerError)
    assert (error.code, error.part, error.field) == ("template_error", "html", "html")
    assert error.line == 2
    assert error.detail == "unexpected '}'"
    assert str(error) == "html, line 2: unexpected '}'"


def test_unclosed_if_reports_the_line_that_opened_it() -> None:
    html = "<p>Hola</p>\n<p>\n{% if contact.vip %}\n<b>VIP</b>\n</p>\n<p>Adiós</p>\n"

    error = compile_error(html=html)

    assert (error.part, error.line) == ("html", 3)
    assert error.detail == "'{% if %}' is never closed; add {% endif %} where the block ends"


def test_unclosed_block_inside_closed_ones() -> None:
    html = "{% for a in b %}\n{% if a %}x{% endif %}\n{% for c in a %}\n{% endfor %}\n{% if z %}\n"

    error = compile_error(html=html)

    assert error.line == 5
    assert "{% endif %}" in error.detail


def test_if_without_condition_reports_its_line() -> None:
    error = compile_error(html="<p>a</p>\n\n<p>{% if %}b{% endif %}</p>")

    assert error.line == 3
    assert "Expected an expression" in error.detail


@pytest.mark.parametrize(
    ("part", "kwargs", "line"),
    [
        ("subject", {"subject": "Hola {{ nombre"}, 1),
        ("text", {"text": "Hola\n\n{% for x in y %}"}, 3),
        ("html", {"html": "<p>\n\n\n{{ 'a' + }}</p>"}, 4),
    ],
)
def test_each_part_is_named(part: str, kwargs: dict[str, str], line: int) -> None:
    error = compile_error(**kwargs)

    assert (error.part, error.line) == (part, line)
    assert str(error).startswith(f"{part}, line {line}: ")


def test_unknown_filter_is_found_at_compile_time() -> None:
    error = compile_error(html="<p>\n{{ total | dinero }}</p>")

    assert (error.line, error.detail) == (2, "No filter named 'dinero'.")


@pytest.mark.parametrize(
    ("source", "advice"),
    [
        ("{{#each items}}<p>{{this}}</p>{{/each}}", "use {% for item in items %} ... {% endfor %}"),
        ("{{#if paid}}ok{{/if}}", "use {% if paid %} ... {% endif %}"),
        ("{{#unless paid}}debe{{/unless}}", "use {% if not paid %} ... {% endif %}"),
        ("{{^paid}}debe{{/paid}}", "use {% if not paid %} ... {% endif %}"),
        ("{{> footer}}", "partials are not available"),
        ("{{! nota }}", "write comments as {# ... #}"),
        ("{{{ nombre }}}", "use {{ nombre }} (HTML is escaped automatically)"),
    ],
)
def test_handlebars_and_mustache_are_recognised(source: str, advice: str) -> None:
    error = compile_error(html=f"<p>Hola</p>\n<div>\n{source}\n</div>")

    assert error.line == 3
    assert "is Handlebars/Mustache syntax, not Jinja; " in error.detail
    assert advice in error.detail


def test_handlebars_closing_tag_alone() -> None:
    error = compile_error(html="<p>a</p>\n{{/each}}")

    assert error.line == 2
    assert error.detail.endswith("close the block with {% endfor %}")


def test_jinja_raw_block_may_show_handlebars() -> None:
    html = "<pre>{% raw %}{{#each items}}{{/each}}{% endraw %}</pre>"

    assert "{{#each items}}" in compile_template("s", html).render({}).html


def test_loading_other_templates_is_refused() -> None:
    error = compile_error(html="<p>a</p>\n{% include 'footer.html' %}")

    assert error.line == 2
    assert error.detail.startswith("{% include %} is not available")


def test_a_link_must_be_a_template_on_its_own() -> None:
    html = '<p>a</p>\n<a href="https://x.pe/{% if a %}?b=1">x</a>{% endif %}'

    error = compile_error(html=html)

    assert (error.part, error.line) == ("html", 2)
    assert "is not a complete template on its own" in error.detail


def test_check_syntax_accepts_and_refuses_like_compile() -> None:
    check_syntax("Hola {{ nombre }}", "<p>{{ x | soles }}</p>", "Hola {{ nombre }}")

    with pytest.raises(TemplateError) as caught:
        check_syntax("Hola", "<p>ok</p>", "line\n{{#if x}}y{{/if}}")

    assert (caught.value.part, caught.value.line) == ("text", 2)
