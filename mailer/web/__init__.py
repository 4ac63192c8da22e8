"""The portal: server-rendered pages (Jinja), Spanish first, translatable through gettext
(``_()`` in the page templates).  Pages call the domain services; every page checks the
user's role."""
