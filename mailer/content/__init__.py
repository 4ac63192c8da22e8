"""Message content: user-authored templates compiled once per campaign, rendered per recipient.

What lives here: the sandboxed Jinja environments and the Peruvian Spanish filters
(``fecha``, ``soles``), syntax checks with errors that name the part and line (and spot
Handlebars/Mustache templates), CSS inlining with premailer, extraction of the trackable
links and their rewriting into ``_link(N)`` placeholders, the text part derived from the
HTML, and :class:`CompiledTemplate`, whose ``render`` only runs compiled templates.

What does not: tracking (the caller passes a ``link_url`` callable that wraps each link),
MIME assembly and sending (``delivery/``), "send a test" (``campaigns/``).

The public API is in :mod:`mailer.content.service`, re-exported here.
"""

from mailer.content.errors import TemplateError
from mailer.content.service import (
    CompiledTemplate,
    Link,
    LinkUrl,
    RenderedMessage,
    check_syntax,
    compile_template,
)

__all__ = [
    "CompiledTemplate",
    "Link",
    "LinkUrl",
    "RenderedMessage",
    "TemplateError",
    "check_syntax",
    "compile_template",
]
