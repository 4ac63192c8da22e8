"""Rendering: one recipient's context, errors with their part, the subject on one line."""

from __future__ import annotations

import pytest

from mailer.content import RenderedMessage, TemplateError, compile_template


def test_render_returns_the_three_parts() -> None:
    template = compile_template("Hola {{ n }}", "<p>Hola {{ n }}</p>", "Hola {{ n }}")

    message = template.render({"n": "Ana"})

    assert message == RenderedMessage("Hola Ana", "<p>Hola Ana</p>", "Hola Ana")


def test_subject_is_one_line() -> None:
    template = compile_template("  Hola\n  {{ n }}\r\n{% if x %}\n!{% endif %}  ", "<p></p>")

    assert template.render({"n": "Ana\nB", "x": True}).subject == "Hola Ana B !"


def test_render_errors_name_part_and_line() -> None:
    template = compile_template("s", "<p>a</p>", "uno\ndos\n{{ 10 / n }}\n")

    with pytest.raises(TemplateError) as caught:
        template.render({"n": 0})

    assert (caught.value.part, caught.value.line) == ("text", 3)
    assert str(caught.value) == "text, line 3: ZeroDivisionError: division by zero"


def test_errors_of_link_url_are_not_template_errors() -> None:
    class TrackingDown(Exception):
        pass

    def link_url(index: int, url: str) -> str:
        raise TrackingDown("no tokens")

    template = compile_template("s", '<a href="https://x.pe">x</a>')

    with pytest.raises(TrackingDown):
        template.render({}, link_url=link_url)


def test_a_compiled_template_is_reused_for_many_recipients() -> None:
    template = compile_template("s", '<a href="https://x.pe/{{ id }}">{{ id }}</a>')
    seen: list[str] = []

    def link_url(index: int, url: str) -> str:
        seen.append(url)
        return url

    for recipient in range(3):
        html = template.render({"id": recipient}, link_url=link_url).html
        assert html == f'<a href="https://x.pe/{recipient}">{recipient}</a>'

    assert seen == ["https://x.pe/0", "https://x.pe/1", "https://x.pe/2"]


def test_template_tags_in_odd_places_survive_inlining() -> None:
    html = (
        "{% set color = color or 'red' %}\n<!doctype html>\n"
        "<html><head><style>td { padding: 4px; }</style></head><body>\n"
        '<table>{% for row in rows %}<tr><td {% if row.vip %}class="vip"{% endif %}'
        ' style="color: {{ color }}">{{ row.name }}</td></tr>{% endfor %}</table>\n'
        "</body></html>\n{# end #}\n"
    )
    rows = [{"name": "A", "vip": True}, {"name": "B", "vip": False}]

    rendered = compile_template("s", html).render({"rows": rows}).html

    assert rendered.startswith("\n<!doctype html>\n<html>")
    # premailer puts the element's own style last, so it wins over the <style> rules
    cells = rendered.replace("  ", " ")
    assert '<table><tr><td class="vip" style="padding:4px; color:red">A</td></tr>' in cells
    assert '<tr><td style="padding:4px; color:red">B</td></tr></table>' in cells


def test_template_code_the_html_parser_would_drop_is_refused() -> None:
    html = "<style>p { color: red }</style>\n<p>a</p>\n<{{ tag }}>x</{{ tag }}>\n"

    with pytest.raises(TemplateError) as caught:
        compile_template("s", html)

    assert (caught.value.part, caught.value.line) == ("html", 3)
    assert caught.value.detail.startswith("CSS inlining would move, copy or drop '{{ tag }}'")
    # without inlining the same template is fine
    assert compile_template("s", html, inline_css=False).render({"tag": "b"}).html == (
        "<style>p { color: red }</style>\n<p>a</p>\n<b>x</b>\n"
    )


def test_expressions_in_css_rules_are_inlined_with_the_rule() -> None:
    html = '<style>.marca { color: {{ color }}; }</style><p class="marca">Hola</p>'

    rendered = compile_template("s", html).render({"color": "#c00"}).html

    assert rendered.count("#c00") == 2  # in the <style> block and on the element
    assert '<p class="marca" style="color:#c00">Hola</p>' in rendered


def test_block_tags_in_css_rules_are_refused_when_inlining() -> None:
    html = "<style>\n.marca { {% if vip %}color: gold;{% endif %} }</style><p class=marca>x</p>"

    with pytest.raises(TemplateError) as caught:
        compile_template("s", html)

    assert caught.value.line == 2
    assert compile_template("s", html, inline_css=False).render({"vip": True}).html == (
        "<style>\n.marca { color: gold; }</style><p class=marca>x</p>"
    )


def test_braces_written_as_entities_stay_text() -> None:
    html = "<style>p { margin: 0 }</style><p>&#123;&#123; no es código }}</p>"

    message = compile_template("s", html).render({})

    assert '<p style="margin:0">{{ no es código }}</p>' in message.html
    assert message.text == "{{ no es código }}\n"
