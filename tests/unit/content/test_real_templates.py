"""The real-world templates of tests/fixtures/email_templates through compile and render."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from mailer.content import TemplateError, compile_template

GOOD = ["cerberus-responsive.html", "leemunroe_email.html", "sendwithus_oxygen_welcome.html"]


@pytest.mark.parametrize("name", GOOD)
def test_real_templates_compile_and_render(name: str, read_template: Callable[[str], str]) -> None:
    template = compile_template("Hola {{ contact.first_name }}", read_template(name))

    message = template.render({"contact": {"first_name": "Ana"}})

    assert message.subject == "Hola Ana"
    assert "<html" in message.html and "</html>" in message.html
    assert message.text.strip()
    assert "<" not in message.text  # no markup leaks into the text part


@pytest.mark.parametrize("name", GOOD)
def test_media_queries_survive_inlining(name: str, read_template: Callable[[str], str]) -> None:
    source = read_template(name)
    media_queries = re.findall(r"@media[^{]+", source)
    assert media_queries  # every fixture is responsive

    html = compile_template("s", source).render({}).html

    for query in media_queries:
        assert query in html


def test_doctype_is_kept_whatever_its_case(read_template: Callable[[str], str]) -> None:
    # lxml spells the doctype "<!DOCTYPE html>"; premailer drops a "<!doctype html>".
    html = compile_template("s", read_template("leemunroe_email.html")).render({}).html

    assert html.startswith("<!doctype html>\n<html")


def test_styles_are_inlined_on_elements(read_template: Callable[[str], str]) -> None:
    source = read_template("leemunroe_email.html")
    assert 'class="btn btn-primary"' in source

    html = compile_template("s", source).render({}).html

    # `.btn table td { ... text-align: center; }` and the more specific
    # `.btn-primary table td { background-color: #0867ec; }` land in the cell's style=.
    cell = re.search(r'<td[^>]*style="([^"]*)"[^>]*>\s*<a href=[^>]*>Call To Action', html)
    assert cell is not None
    style = cell.group(1).replace(" ", "")
    assert "background-color:#0867ec" in style
    assert "text-align:center" in style
    # classes stay for the media queries, and !important stays in the <style> block
    assert 'class="btn btn-primary"' in html
    assert "!important" in html


def test_inline_css_false_leaves_markup_as_written(read_template: Callable[[str], str]) -> None:
    source = read_template("leemunroe_email.html")

    html = compile_template("s", source, inline_css=False).render({}).html

    untracked = re.sub(r'href="[^"]*"', 'href=""', source)
    assert re.sub(r'href="[^"]*"', 'href=""', html) == untracked


def test_links_of_a_real_template(read_template: Callable[[str], str]) -> None:
    template = compile_template("s", read_template("leemunroe_email.html"))

    assert [(link.index, link.url, link.text) for link in template.links] == [
        (0, "http://htmlemail.io", "Call To Action"),
        (1, "http://htmlemail.io/blog", "Unsubscribe"),
        (2, "http://htmlemail.io", "HTMLemail.io"),
    ]


def test_outlook_vml_buttons_are_tracked_too(read_template: Callable[[str], str]) -> None:
    # The "bulletproof button": a <v:roundrect href> in <!--[if mso]> plus an <a> for the
    # other clients, both with the same URL and label.
    template = compile_template("s", read_template("sendwithus_oxygen_welcome.html"))

    html = template.render({}, link_url=lambda index, url: f"https://t.example/{index}").html

    assert len(template.links) == 6
    assert [link.text for link in template.links[:2]] == ["My Account", "My Account"]
    assert re.search(r'<v:roundrect [^>]*href="https://t.example/0"', html)
    assert 'href="https://t.example/1"' in html
    assert 'href="http://"' not in html


def test_mustachio_template_is_refused_with_its_line(read_template: Callable[[str], str]) -> None:
    source = read_template("postmark_basic-full_invoice.html")
    line = 1 + source[: source.index("{{#each invoice_details}}")].count("\n")
    assert line == 542

    with pytest.raises(TemplateError) as caught:
        compile_template("Invoice", source)

    error = caught.value
    assert (error.part, error.line, error.code) == ("html", 542, "template_error")
    assert str(error) == (
        "html, line 542: '{{#each invoice_details}}' is Handlebars/Mustache syntax, not Jinja;"
        " use {% for item in invoice_details %} ... {% endfor %}"
    )
