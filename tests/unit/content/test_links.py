"""Link extraction at compile time, personalisation and tracking at render time."""

from __future__ import annotations

from mailer.content import Link, compile_template

PAGE = """<!DOCTYPE html>
<html><head><style>
a.cta { color: #ffffff; background-color: #c00; }
@media only screen and (max-width: 600px) { a.cta { display: block !important; } }
</style></head>
<body>
<p>Hola {{ contact.first_name }}:</p>
<p><a class="cta" href="https://seace.gob.pe/ficha?ruc={{ contact.ruc }}&amp;origen=correo">
  Ver la ficha de  {{ contact.razon_social }}
</a></p>
<p><a href="https://www.gob.pe/osce"><img src="https://x.pe/logo.png" alt="OSCE"></a></p>
<p><a href="mailto:ayuda@osce.gob.pe">ayuda@osce.gob.pe</a> · <a href="tel:+5116135555">Llamar</a>
 · <a href="#inicio">Arriba</a> · <a href="/relativo">Relativo</a></p>
<p><a href="{{ web_version_url }}">Ver en el navegador</a>
 · <a href="{{unsubscribe_url}}">Darse de baja</a></p>
<p><a href='{{ contact.portal_url }}'>Su portal</a></p>
</body></html>
"""

CONTEXT = {
    "contact": {
        "first_name": "Ana",
        "ruc": "20123456789",
        "razon_social": "Constructora Andina SAC",
        "portal_url": "https://portal.example.pe/ana",
    },
    "unsubscribe_url": "https://t.example/u/tok",
    "web_version_url": "https://t.example/w/tok",
}


def test_links_in_document_order_with_their_texts() -> None:
    template = compile_template("s", PAGE)

    assert template.links == (
        Link(
            0,
            "https://seace.gob.pe/ficha?ruc={{ contact.ruc }}&origen=correo",
            "Ver la ficha de {{ contact.razon_social }}",
        ),
        Link(1, "https://www.gob.pe/osce", "OSCE"),
        Link(2, "{{ contact.portal_url }}", "Su portal"),
    )


def test_link_url_receives_index_and_personalised_url() -> None:
    calls: list[tuple[int, str]] = []

    def link_url(index: int, url: str) -> str:
        calls.append((index, url))
        return f"https://t.example/c/{index}?k=1&s=2"

    html = compile_template("s", PAGE).render(CONTEXT, link_url=link_url).html

    assert sorted(calls) == [  # once per link, though the text part shows them too
        (0, "https://seace.gob.pe/ficha?ruc=20123456789&origen=correo"),
        (1, "https://www.gob.pe/osce"),
        (2, "https://portal.example.pe/ana"),
    ]
    assert html.count('href="https://t.example/c/') == 3
    assert 'href="https://t.example/c/0?k=1&amp;s=2"' in html  # & escaped in the attribute


def test_jinja_in_href_survives_inlining_and_personalises() -> None:
    template = compile_template("s", PAGE)  # has a <style>: premailer runs

    html = template.render(CONTEXT).html

    assert 'href="https://seace.gob.pe/ficha?ruc=20123456789&amp;origen=correo"' in html
    # inlined on the <a> (cssutils shortens #ffffff)
    assert 'style="color:#fff; background-color:#c00"' in html
    assert "@media only screen and (max-width: 600px)" in html


def test_untracked_hrefs_are_left_alone() -> None:
    html = compile_template("s", PAGE).render(CONTEXT, link_url=lambda i, u: "TRACKED").html

    for href in ("mailto:ayuda@osce.gob.pe", "tel:+5116135555", "#inicio", "/relativo"):
        assert f'href="{href}"' in html
    assert 'href="https://t.example/u/tok"' in html
    assert 'href="https://t.example/w/tok"' in html
    assert html.count('href="TRACKED"') == 3


def test_a_link_that_renders_to_no_http_url_is_not_tracked() -> None:
    html = '<a href="{{ url }}">x</a>'
    calls: list[int] = []

    def link_url(index: int, url: str) -> str:
        calls.append(index)
        return "https://t.example/c"

    assert compile_template("s", html).render({}, link_url=link_url).html == '<a href="">x</a>'
    rendered = compile_template("s", html).render({"url": "mailto:a@b.pe"}, link_url=link_url)
    assert rendered.html == '<a href="mailto:a@b.pe">x</a>'
    assert calls == []


def test_personalised_values_are_escaped_in_the_href() -> None:
    template = compile_template("s", '<a href="https://x.pe/?q={{ q }}">x</a>')

    html = template.render({"q": 'a"><script>&b=1'}).html

    assert html == '<a href="https://x.pe/?q=a&#34;&gt;&lt;script&gt;&amp;b=1">x</a>'


def test_rewrite_touches_nothing_but_the_hrefs() -> None:
    html = (
        "<table><tr><td><A HREF=https://x.pe/a TARGET=_blank>Uno</A></td></tr></table>\n"
        "<p class='x'>  dos  <br/>  <a data-href=\"https://no.pe\" href='https://x.pe/b'>Dos</a>\n"
    )

    rendered = compile_template("s", html).render({}, link_url=lambda i, u: f"T{i}").html

    assert rendered == html.replace("https://x.pe/a", "T0").replace("https://x.pe/b", "T1")


def test_links_of_a_hand_written_text_part_are_tracked_too() -> None:
    text = "Vea su ficha: https://seace.gob.pe/ficha?ruc={{ contact.ruc }}&origen=correo.\n"

    message = compile_template("s", PAGE, text).render(CONTEXT, link_url=lambda i, u: f"T{i}")

    assert message.text == "Vea su ficha: T0.\n"


def test_links_inside_a_loop_get_each_items_url() -> None:
    html = (
        "<ul>{% for p in contact.procesos %}"
        '<li><a href="https://example.pe/proceso/{{ p.codigo }}?r={{ contact.ruc }}&amp;x=1">'
        "{{ p.codigo }}</a></li>{% endfor %}</ul>"
        '<a href="https://example.pe/todos">Todos</a>'
    )
    seen: list[tuple[int, str]] = []

    def track(index: int, url: str) -> str:
        seen.append((index, url))
        return f"https://t.example.pe/{len(seen)}"

    compiled = compile_template("s", html)
    rendered = compiled.render(
        {"contact": {"ruc": "20100", "procesos": [{"codigo": "A-1"}, {"codigo": "B&2"}]}},
        link_url=track,
    )
    assert seen == [
        (0, "https://example.pe/proceso/A-1?r=20100&x=1"),
        (0, "https://example.pe/proceso/B&2?r=20100&x=1"),
        (1, "https://example.pe/todos"),
    ]
    assert 'href="https://t.example.pe/1"' in rendered.html
    assert 'href="https://t.example.pe/2"' in rendered.html
    assert "https://t.example.pe/1" in rendered.text and "https://t.example.pe/2" in rendered.text


def test_captured_links_are_decoded_once() -> None:
    html = (
        '<a href="https://x.pe/?id={{ contact.id }}&amp;region=lima&amp;copy=2">a</a>'
        '<a href="https://x.pe/?n={{ contact.n }}">b</a>'
        '<a href="https://x.pe/?a=1&region=2">c</a>'
    )
    seen: list[str] = []
    compiled = compile_template("s", html)
    rendered = compiled.render(
        {"contact": {"id": 7, "n": "&amp;"}}, link_url=lambda i, url: seen.append(url) or url
    )
    assert seen == [
        "https://x.pe/?id=7&region=lima&copy=2",
        "https://x.pe/?n=&amp;",  # the contact's value, as it is
        "https://x.pe/?a=1&region=2",  # '&region' without ';' is not an entity
    ]
    assert 'href="https://x.pe/?id=7&amp;region=lima&amp;copy=2"' in rendered.html


def test_hand_written_text_part_keeps_per_item_urls() -> None:
    html = '{% for i in contact.l %}<a href="https://a.pe/item/{{ i }}">{{ i }}</a>{% endfor %}'
    text = "{% for i in contact.l %}Ver: https://a.pe/item/{{ i }}\n{% endfor %}"
    rendered = compile_template("s", html, text).render(
        {"contact": {"l": [1, 2]}}, link_url=lambda i, url: f"T{i}:{url}"
    )
    assert "T0:https://a.pe/item/1" in rendered.text and "T0:https://a.pe/item/2" in rendered.text


def test_templates_may_not_use_reserved_names() -> None:
    import pytest

    from mailer.content import TemplateError

    for source in ('{{ _link(0, "https://evil.example") }}', "{% set _link = 1 %}", "{{ _x }}"):
        with pytest.raises(TemplateError, match="reserved"):
            compile_template("s", f"<p>{source}</p>")
