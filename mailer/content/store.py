"""Saved templates per account, and the ready-made library under ``templates/``.

A library template is a folder: ``template.toml`` (name, description, sample fields),
``subject.txt``, ``body.html`` (Jinja) and optionally ``body.txt``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from mailer.content.models import Template, TemplateVersion
from mailer.content.service import check_syntax
from mailer.core.clock import utcnow
from mailer.core.errors import Conflict, NotFound, ValidationFailed


@dataclass(frozen=True, slots=True)
class LibraryTemplate:
    key: str
    name: str
    description: str
    subject: str
    html: str
    text: str | None
    sample: dict[str, Any] = field(default_factory=dict)
    preheader: str = ""


def load_library(root: Path) -> list[LibraryTemplate]:
    """Every e-mail template folder under *root*/email, sorted by key."""
    base = root / "email"
    if not base.is_dir():
        return []
    return [
        load_library_template(folder)
        for folder in sorted(base.iterdir())
        if (folder / "template.toml").is_file()
    ]


def load_library_template(folder: Path) -> LibraryTemplate:
    meta_path = folder / "template.toml"
    try:
        meta = tomllib.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValidationFailed(
            "{path} is missing", field="template.toml", path=str(meta_path)
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ValidationFailed(
            "{path}: {error}", field="template.toml", path=str(meta_path), error=str(exc)
        ) from None
    text_path = folder / "body.txt"
    return LibraryTemplate(
        key=folder.name,
        name=str(meta.get("name", folder.name)),
        description=str(meta.get("description", "")),
        subject=(folder / "subject.txt").read_text(encoding="utf-8").strip(),
        html=(folder / "body.html").read_text(encoding="utf-8"),
        text=text_path.read_text(encoding="utf-8") if text_path.exists() else None,
        sample=dict(meta.get("sample", {})),
        preheader=str(meta.get("preheader", "")),
    )


def create_template(
    session: Session,
    account_id: int,
    *,
    name: str,
    subject: str,
    html: str,
    text: str | None = None,
    description: str = "",
    library_key: str | None = None,
    saved_by: str = "",
    note: str = "",
) -> Template:
    """Save a template after checking its syntax (the error names the part and the line)."""
    name = _checked(session, account_id, name, subject, html, text)
    template = Template(
        account_id=account_id,
        name=name,
        subject=subject.strip(),
        html=html,
        text=text or None,
        description=description,
        library_key=library_key,
    )
    session.add(template)
    session.flush()
    _keep_version(session, template, saved_by, note or "creada")
    return template


def update_template(
    session: Session,
    account_id: int,
    template_id: int,
    *,
    subject: str,
    html: str,
    text: str | None = None,
    name: str | None = None,
    saved_by: str = "",
    note: str = "",
) -> Template:
    """Save a new version of a template (the previous ones are kept)."""
    template = get_template(session, account_id, template_id)
    template.name = _checked(
        session, account_id, name or template.name, subject, html, text, template_id=template_id
    )
    unchanged = (template.subject, template.html, template.text) == (
        subject.strip(),
        html,
        text or None,
    )
    template.subject = subject.strip()
    template.html = html
    template.text = text or None
    template.updated_at = utcnow()
    if not unchanged:
        template.version += 1
    session.add(template)
    try:
        session.flush()
        if not unchanged:
            _keep_version(session, template, saved_by, note)
    except IntegrityError:
        # Someone saved the same template at the same moment (a double click, two editors).
        raise Conflict(
            "the template was saved by someone else meanwhile: reload it and save again",
            field="html",
        ) from None
    return template


def _keep_version(session: Session, template: Template, saved_by: str, note: str) -> None:
    assert template.id is not None
    session.add(
        TemplateVersion(
            template_id=template.id,
            version=template.version,
            name=template.name,
            subject=template.subject,
            html=template.html,
            text=template.text,
            saved_by=saved_by[:200],
            note=note[:300],
        )
    )
    session.flush()


def list_versions(session: Session, account_id: int, template_id: int) -> list[TemplateVersion]:
    """The template's versions, newest first."""
    get_template(session, account_id, template_id)
    return list(
        session.exec(
            select(TemplateVersion)
            .where(TemplateVersion.template_id == template_id)
            .order_by(col(TemplateVersion.version).desc())
        )
    )


def get_version(
    session: Session, account_id: int, template_id: int, version: int
) -> TemplateVersion:
    get_template(session, account_id, template_id)
    found = session.exec(
        select(TemplateVersion).where(
            TemplateVersion.template_id == template_id, TemplateVersion.version == version
        )
    ).first()
    if found is None:
        raise NotFound(
            "version {version} of template {id} does not exist", id=template_id, version=version
        )
    return found


def restore_version(
    session: Session, account_id: int, template_id: int, version: int, *, saved_by: str = ""
) -> Template:
    """Make an earlier version current again, as a new version (history is never rewritten)."""
    old = get_version(session, account_id, template_id, version)
    return update_template(
        session,
        account_id,
        template_id,
        subject=old.subject,
        html=old.html,
        text=old.text,
        saved_by=saved_by,
        note=f"restaurada la versión {version}",
    )


def duplicate_template(
    session: Session, account_id: int, template_id: int, *, saved_by: str = ""
) -> Template:
    """A copy under a free name ("X (copia)", "X (copia 2)", ...)."""
    original = get_template(session, account_id, template_id)
    taken = {t.name for t in list_templates(session, account_id)}
    base = original.name[:180]  # room for the suffix within the 200 characters of a name
    name, n = f"{base} (copia)", 1
    while name in taken:
        n += 1
        name = f"{base} (copia {n})"
    return create_template(
        session,
        account_id,
        name=name[:200],
        subject=original.subject,
        html=original.html,
        text=original.text,
        description=original.description,
        saved_by=saved_by,
        note=f"copia de «{original.name}»",
    )


MAX_TEMPLATE_CHARS = 512 * 1024


def _checked(
    session: Session,
    account_id: int,
    name: str,
    subject: str,
    html: str,
    text: str | None,
    *,
    template_id: int | None = None,
) -> str:
    """The stripped name, once name, subject, size and syntax are fine and the name is free."""
    name = name.strip()
    if not name:
        raise ValidationFailed("the template needs a name", field="name")
    if not subject.strip():
        raise ValidationFailed("the template needs a subject", field="subject")
    if len(html) + len(text or "") > MAX_TEMPLATE_CHARS:
        raise ValidationFailed(
            "the template is larger than {limit} KB", field="html", limit=MAX_TEMPLATE_CHARS // 1024
        )
    check_syntax(subject, html, text or None)
    clash = session.exec(
        select(Template).where(Template.account_id == account_id, Template.name == name)
    ).first()
    if clash is not None and clash.id != template_id:
        raise Conflict("a template named '{name}' already exists", field="name", name=name)
    return name


def create_from_library(
    session: Session, account_id: int, item: LibraryTemplate, *, saved_by: str = ""
) -> Template:
    """A saved template from a library one (a free name is chosen if it is taken)."""
    taken = {t.name for t in list_templates(session, account_id)}
    name, n = item.name[:180], 1
    while name in taken:
        n += 1
        name = f"{item.name[:180]} ({n})"
    return create_template(
        session,
        account_id,
        name=name,
        subject=item.subject,
        html=item.html,
        text=item.text,
        description=item.description,
        library_key=item.key,
        saved_by=saved_by,
        note=f"desde la biblioteca: {item.key}",
    )


def library_template(root: Path, key: str) -> LibraryTemplate:
    for item in load_library(root):
        if item.key == key:
            return item
    raise NotFound("there is no library template '{key}'", key=key)


def get_template(session: Session, account_id: int, template_id: int) -> Template:
    template = session.get(Template, template_id)
    if template is None or template.account_id != account_id:
        raise NotFound("template {id} does not exist", id=template_id)
    return template


def list_templates(session: Session, account_id: int) -> list[Template]:
    return list(
        session.exec(
            select(Template).where(Template.account_id == account_id).order_by(col(Template.id))
        )
    )
