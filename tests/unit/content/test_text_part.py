"""The text part: derived from the HTML once, personalised per recipient; or given."""

from __future__ import annotations

from collections.abc import Callable

from mailer.content import compile_template

NEWSLETTER = """<!DOCTYPE html>
<html><head><title>Boletín</title>
<style>.preheader { display: none; } h1 { font-size: 24px; }</style>
<script>var tracking = 1;</script></head>
<body>
<span class="preheader">Texto de vista previa</span>
<div style="display:none; max-height:0">&zwnj;&nbsp;&zwnj;&nbsp;</div>
<!--[if mso]><p>Solo para Outlook</p><![endif]-->
<h1>Hola, {{ contact.first_name | default("proveedor") }}</h1>
<p>Le recordamos   que su
   inscripción vence el {{ vence | fecha }}.</p>
<p>Línea uno<br>Línea dos</p>
<ul>
  {% for doc in documentos %}
  <li>{{ doc }}</li>
  {% endfor %}
</ul>
<table>
  <tr><td>Monto</td><td>{{ monto | soles }}</td></tr>
</table>
{% if contact.vip %}<p>Gracias por ser cliente preferente.</p>{% endif %}
<p><a href="https://www.gob.pe/rnp?ruc={{ contact.ruc }}">Renovar inscripción</a></p>
<p><a href="https://www.gob.pe/osce">https://www.gob.pe/osce</a></p>
<p><a href="mailto:rnp@osce.gob.pe">Escríbanos</a>
 | <a href="{{ unsubscribe_url }}">Darse de baja</a></p>
</body></html>
"""

CONTEXT = {
    "contact": {"first_name": "Ana", "ruc": "20123456789", "vip": False},
    "vence": "2026-11-22",
    "documentos": ["Ficha RUC", "Declaración jurada"],
    "monto": 1234.5,
    "unsubscribe_url": "https://t.example/u/tok",
}


def test_text_part_is_derived_readable_and_personalised() -> None:
    template = compile_template("s", NEWSLETTER)

    text = template.render(CONTEXT, link_url=lambda index, url: f"https://t.example/c/{index}").text

    assert text == (
        "Hola, Ana\n"
        "\n"
        "Le recordamos que su inscripción vence el 22 de noviembre de 2026.\n"
        "\n"
        "Línea uno\n"
        "Línea dos\n"
        "\n"
        "- Ficha RUC\n"
        "- Declaración jurada\n"
        "\n"
        "Monto  S/ 1,234.50\n"
        "\n"
        "Renovar inscripción (https://t.example/c/0)\n"
        "\n"
        "https://t.example/c/1\n"
        "\n"
        "Escríbanos (rnp@osce.gob.pe) | Darse de baja (https://t.example/u/tok)\n"
    )


def test_text_part_follows_conditions() -> None:
    template = compile_template("s", NEWSLETTER)
    context = {**CONTEXT, "contact": {"vip": True}}

    text = template.render(context).text

    assert text.startswith("Hola, proveedor\n")
    assert "Monto  S/ 1,234.50\n\nGracias por ser cliente preferente.\n\nRenovar" in text
    assert "Renovar inscripción (https://www.gob.pe/rnp?ruc=)\n" in text


def test_text_part_without_inlining_hides_inline_hidden_elements() -> None:
    text = compile_template("s", NEWSLETTER, inline_css=False).render(CONTEXT).text

    assert "&zwnj;" not in text and "\u200c" not in text
    assert "Solo para Outlook" not in text
    assert "var tracking" not in text and "Boletín" not in text


def test_derived_text_of_a_real_template(read_template: Callable[[str], str]) -> None:
    text = compile_template("s", read_template("leemunroe_email.html")).render({}).text

    assert text.startswith("Hi there\n\nSometimes you just want to send a simple HTML email")
    assert "Call To Action (http://htmlemail.io)" in text
    assert "This is preheader text" not in text  # hidden by a class: visible once inlined
    assert "\n\n\n" not in text


def test_given_text_part_is_used_as_written() -> None:
    text = "Hola {{ contact.first_name }},\n\n  sin   cambios <b>{{ x }}</b>\n"

    message = compile_template("s", NEWSLETTER, text).render({**CONTEXT, "x": "<i>"})

    assert message.text == "Hola Ana,\n\n  sin   cambios <b><i></b>\n"


def test_nested_and_numbered_lists() -> None:
    html = "<ol><li>Uno<ul><li>a</li><li>b</li></ul></li><li>Dos</li></ol><p>Fin</p>"

    text = compile_template("s", html).render({}).text

    assert text == "1. Uno\n  - a\n  - b\n2. Dos\n\nFin\n"


def test_omitted_end_tags_do_not_swallow_the_text() -> None:
    html = (
        "<html><head><title>t</title><body>"
        "<p style='display:none'>oculto<p>Uno<li>Dos</body></html>"
    )

    assert compile_template("s", html, inline_css=False).render({}).text == "oculto\n\nUno\n- Dos\n"


def test_conditional_text_keeps_its_paragraphs() -> None:
    html = (
        "<p>{% if vip %}Es cliente VIP{% endif %}</p>\n<p>Siguiente</p>\n"
        "<ul>{% for d in docs %}<li>{{ d }}{% if d == 'b' %} (nuevo){% endif %}</li>{% endfor %}"
        "</ul>\n<p>Fin</p>"
    )
    template = compile_template("s", html)

    assert template.render({"vip": True, "docs": ["a", "b"]}).text == (
        "Es cliente VIP\n\nSiguiente\n\n- a\n- b (nuevo)\n\nFin\n"
    )
    assert template.render({"vip": False, "docs": []}).text == "Siguiente\n\nFin\n"
