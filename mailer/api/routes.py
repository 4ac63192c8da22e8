"""The ``/api/v1`` routes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, File, Form, Request, UploadFile, status
from sqlmodel import Session

from mailer.accounts.service import Principal, audit, get_account
from mailer.analytics.service import campaign_stats
from mailer.api.deps import (
    Editor,
    EmailSender,
    Id,
    Limit,
    Locale,
    Offset,
    Reader,
    Sender,
    SessionDep,
)
from mailer.api.schemas import (
    CampaignIn,
    CampaignOut,
    CampaignStatsOut,
    CheckOut,
    ContactOut,
    FindingOut,
    ImportOut,
    LibraryItemOut,
    ListIn,
    ListOut,
    MeOut,
    ProgressOut,
    RowErrorOut,
    ScheduleIn,
    TemplateIn,
    TemplateOut,
    TemplateVersionOut,
    TestIn,
    TestResultOut,
)
from mailer.audience import service as audience
from mailer.campaigns import service as campaigns
from mailer.campaigns.models import Campaign
from mailer.campaigns.proofs import send_test_message
from mailer.content import store as templates
from mailer.content.check import check_template
from mailer.core.errors import NotFound
from mailer.core.i18n import localise_text

router = APIRouter(prefix="/api/v1")


def _campaign_out(
    session: Session, campaign: Campaign, counts: dict[str, int] | None = None
) -> CampaignOut:
    assert campaign.id is not None
    return CampaignOut(
        id=campaign.id,
        name=campaign.name,
        state=campaign.state,
        state_reason=campaign.state_reason,
        parent_id=campaign.parent_id,
        channel=campaign.channel,
        template_id=campaign.template_id,
        list_id=campaign.list_id,
        segment_id=campaign.segment_id,
        from_email=campaign.from_email,
        from_name=campaign.from_name,
        subject=campaign.subject,
        scheduled_at=campaign.scheduled_at,
        started_at=campaign.started_at,
        completed_at=campaign.completed_at,
        counts=counts if counts is not None else campaigns.campaign_counts(session, campaign),
    )


@router.get("/me", response_model=MeOut, tags=["account"], summary="Who is calling")
def me(session: SessionDep, principal: Reader) -> MeOut:
    """Who the API key belongs to."""
    account = get_account(session, principal.account_id)
    return MeOut(
        account_id=principal.account_id,
        account_name=account.name,
        role=principal.role,
        actor=principal.actor,
    )


# -- lists and contacts ----------------------------------------------------------------


@router.get("/lists", response_model=list[ListOut], tags=["lists"], summary="List the lists")
def get_lists(session: SessionDep, principal: Reader) -> list[ListOut]:
    """The account's lists with their number of members."""
    return [
        ListOut(id=lst.id or 0, name=lst.name, description=lst.description, members=members)
        for lst, members in audience.list_lists(session, principal.account_id)
    ]


@router.post(
    "/lists",
    response_model=ListOut,
    status_code=status.HTTP_201_CREATED,
    tags=["lists"],
    summary="Create a list",
)
def post_list(body: ListIn, session: SessionDep, principal: Editor) -> ListOut:
    """Create an empty list; fill it with an import or by adding contacts."""
    lst = audience.create_list(session, principal.account_id, body.name, body.description)
    audit(session, principal, "list.create", f"list:{lst.id}", name=lst.name)
    session.commit()
    return ListOut(id=lst.id or 0, name=lst.name, description=lst.description, members=0)


@router.get(
    "/lists/{list_id}/contacts",
    response_model=list[ContactOut],
    tags=["lists"],
    summary="Contacts of a list",
)
def get_list_contacts(
    list_id: Id, session: SessionDep, principal: Reader, offset: Offset = 0, limit: Limit = 100
) -> list[ContactOut]:
    """The list's contacts, a page at a time (``offset``, ``limit``)."""
    contacts = audience.list_contacts(
        session, principal.account_id, list_id, offset=offset, limit=limit
    )
    return [ContactOut.model_validate(c, from_attributes=True) for c in contacts]


@router.post(
    "/lists/{list_id}/import",
    response_model=ImportOut,
    tags=["lists"],
    openapi_extra={
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    "example": {"file": "proveedores.csv", "mode": "add_or_update"}
                }
            }
        }
    },
    summary="Import a CSV into a list (synchronous)",
)
def import_into_list(
    list_id: Id,
    session: SessionDep,
    principal: Editor,
    locale: Locale,
    file: UploadFile = File(..., description="CSV file (UTF-8 or Windows-1252, , or ;)"),
    mode: str = Form("add_or_update"),
) -> ImportOut:
    """Import contacts from a CSV file; bad rows are reported with their line numbers."""
    report = audience.import_contacts(
        session,
        principal.account_id,
        file.file,
        list_id=list_id,
        mode=mode,
        filename=file.filename or "",
        actor=principal.actor,
    )
    audit(
        session,
        principal,
        "list.import",
        f"list:{list_id}",
        file=file.filename,
        rows=report.rows,
        errors=len(report.errors),
    )
    session.commit()

    def translate(template: str, params: dict[str, Any]) -> str:
        return localise_text(template, params, locale)

    return ImportOut(
        import_id=report.import_id,
        rows=report.rows,
        created=report.created,
        updated=report.updated,
        unchanged=report.unchanged,
        duplicates_in_file=report.duplicates_in_file,
        added_to_list=report.added_to_list,
        encoding=report.encoding,
        delimiter=report.delimiter,
        mapping=report.mapping,
        errors=[
            RowErrorOut(line=e.line, column=e.column, value=e.value, reason=e.message(translate))
            for e in report.errors
        ],
    )


# -- templates -------------------------------------------------------------------------


@router.get(
    "/templates", response_model=list[TemplateOut], tags=["templates"], summary="List the templates"
)
def get_templates(session: SessionDep, principal: Reader) -> list[TemplateOut]:
    """The account's templates, each at its current version."""
    return [
        TemplateOut.model_validate(t, from_attributes=True)
        for t in templates.list_templates(session, principal.account_id)
    ]


@router.post(
    "/templates",
    response_model=TemplateOut,
    status_code=status.HTTP_201_CREATED,
    tags=["templates"],
    summary="Create a template",
)
def post_template(body: TemplateIn, session: SessionDep, principal: Editor) -> TemplateOut:
    """Save a template; a Jinja syntax error is refused with its part and line."""
    template = templates.create_template(
        session,
        principal.account_id,
        name=body.name,
        subject=body.subject,
        html=body.html,
        text=body.text,
        description=body.description,
    )
    audit(session, principal, "template.create", f"template:{template.id}", name=template.name)
    session.commit()
    return TemplateOut.model_validate(template, from_attributes=True)


@router.get(
    "/templates/{template_id}",
    response_model=TemplateOut,
    tags=["templates"],
    summary="One template",
)
def get_template(template_id: Id, session: SessionDep, principal: Reader) -> TemplateOut:
    """The template at its current version."""
    template = templates.get_template(session, principal.account_id, template_id)
    return TemplateOut.model_validate(template, from_attributes=True)


@router.put(
    "/templates/{template_id}",
    response_model=TemplateOut,
    tags=["templates"],
    summary="Save a new version of a template",
)
def put_template(
    template_id: Id, body: TemplateIn, session: SessionDep, principal: Editor
) -> TemplateOut:
    """Save a new version (earlier versions are kept and can be restored)."""
    template = templates.update_template(
        session,
        principal.account_id,
        template_id,
        name=body.name,
        subject=body.subject,
        html=body.html,
        text=body.text,
        saved_by=principal.actor,
    )
    audit(session, principal, "template.update", f"template:{template_id}")
    session.commit()
    return TemplateOut.model_validate(template, from_attributes=True)


@router.get(
    "/templates/{template_id}/versions",
    response_model=list[TemplateVersionOut],
    tags=["templates"],
    summary="Versions of a template",
)
def get_template_versions(
    template_id: Id, session: SessionDep, principal: Reader
) -> list[TemplateVersionOut]:
    """Every saved version of the template, newest first."""
    return [
        TemplateVersionOut.model_validate(v, from_attributes=True)
        for v in templates.list_versions(session, principal.account_id, template_id)
    ]


@router.post(
    "/templates/{template_id}/versions/{version}/restore",
    response_model=TemplateOut,
    tags=["templates"],
    summary="Restore an earlier version",
)
def restore_template_version(
    template_id: Id, version: Id, session: SessionDep, principal: Editor
) -> TemplateOut:
    """Make an earlier version the current one (saved as a new version)."""
    template = templates.restore_version(
        session, principal.account_id, template_id, version, saved_by=principal.actor
    )
    audit(session, principal, "template.restore", f"template:{template_id}", version=version)
    session.commit()
    return TemplateOut.model_validate(template, from_attributes=True)


@router.post(
    "/templates/{template_id}/duplicate",
    response_model=TemplateOut,
    status_code=status.HTTP_201_CREATED,
    tags=["templates"],
    summary="Duplicate a template",
)
def duplicate_template(template_id: Id, session: SessionDep, principal: Editor) -> TemplateOut:
    """A copy of the template under a new name."""
    copy = templates.duplicate_template(
        session, principal.account_id, template_id, saved_by=principal.actor
    )
    audit(session, principal, "template.duplicate", f"template:{copy.id}", source=template_id)
    session.commit()
    return TemplateOut.model_validate(copy, from_attributes=True)


@router.get(
    "/templates/{template_id}/check",
    response_model=CheckOut,
    tags=["templates"],
    summary="Check a template before sending",
)
def check_saved_template(
    template_id: Id, session: SessionDep, principal: Reader, locale: Locale
) -> CheckOut:
    """What to fix before sending: unknown variables, size, unsubscribe link, images..."""
    template = templates.get_template(session, principal.account_id, template_id)
    findings = check_template(
        template.subject,
        template.html,
        template.text,
        contact_fields=audience.attribute_names(session, principal.account_id),
    )
    return CheckOut(
        findings=[
            FindingOut(
                severity=f.severity, code=f.code, message=localise_text(f.message, f.params, locale)
            )
            for f in findings
        ]
    )


@router.post(
    "/templates/{template_id}/test",
    response_model=list[TestResultOut],
    tags=["templates"],
    summary="Send a test of a template",
)
def send_template_test(
    template_id: Id, body: TestIn, request: Request, session: SessionDep, principal: EmailSender
) -> list[TestResultOut]:
    """Send the template now to up to 10 addresses, through the normal delivery path."""
    contact_id = None
    if body.contact_email:
        contact = audience.find_contact(session, principal.account_id, body.contact_email)
        if contact is None:
            raise NotFound(
                "there is no contact {email}", field="contact_email", email=body.contact_email
            )
        contact_id = contact.id
    results = send_test_message(
        principal.account_id,
        template_id,
        body.addresses,
        from_email=body.from_email,
        from_name=body.from_name,
        contact_id=contact_id,
        settings=request.app.state.settings,
    )
    audit(
        session,
        principal,
        "template.test",
        f"template:{template_id}",
        to=[r.address for r in results],
    )
    session.commit()
    return [TestResultOut(address=r.address, state=r.state, reply=r.reply) for r in results]


@router.get(
    "/library",
    response_model=list[LibraryItemOut],
    tags=["templates"],
    summary="Ready-made templates",
)
def get_library(request: Request, principal: Reader) -> list[LibraryItemOut]:
    """The ready-made templates that can be copied into the account."""
    return [
        LibraryItemOut(key=i.key, name=i.name, description=i.description, subject=i.subject)
        for i in templates.load_library(request.app.state.settings.templates_dir)
    ]


@router.post(
    "/library/{key}/use",
    response_model=TemplateOut,
    status_code=status.HTTP_201_CREATED,
    tags=["templates"],
    summary="Copy a library template into the account",
)
def use_library_template(
    key: str, request: Request, session: SessionDep, principal: Editor
) -> TemplateOut:
    """Copy a ready-made template (``GET /api/v1/library``) into the account."""
    item = templates.library_template(request.app.state.settings.templates_dir, key)
    template = templates.create_from_library(
        session, principal.account_id, item, saved_by=principal.actor
    )
    audit(session, principal, "template.create", f"template:{template.id}", library=key)
    session.commit()
    return TemplateOut.model_validate(template, from_attributes=True)


# -- campaigns -------------------------------------------------------------------------


@router.get(
    "/campaigns", response_model=list[CampaignOut], tags=["campaigns"], summary="List the campaigns"
)
def get_campaigns(session: SessionDep, principal: Reader) -> list[CampaignOut]:
    """The account's campaigns, newest first, with their ledger counts."""
    return [
        _campaign_out(session, campaign, counts)
        for campaign, counts in campaigns.campaigns_with_counts(session, principal.account_id)
    ]


@router.post(
    "/campaigns",
    response_model=CampaignOut,
    status_code=status.HTTP_201_CREATED,
    tags=["campaigns"],
    summary="Create a campaign",
)
def post_campaign(body: CampaignIn, session: SessionDep, principal: Editor) -> CampaignOut:
    """A draft campaign: a template sent to a list from a sending address."""
    campaign = campaigns.create_campaign(
        session, principal.account_id, **body.model_dump(), created_by=principal.actor
    )
    audit(session, principal, "campaign.create", f"campaign:{campaign.id}", name=campaign.name)
    session.commit()
    return _campaign_out(session, campaign)


@router.get(
    "/campaigns/{campaign_id}",
    response_model=CampaignOut,
    tags=["campaigns"],
    summary="One campaign",
)
def get_campaign(campaign_id: Id, session: SessionDep, principal: Reader) -> CampaignOut:
    """The campaign with its ledger counts (queued, sending, sent, deferred, failed...)."""
    return _campaign_out(
        session, campaigns.get_campaign(session, principal.account_id, campaign_id)
    )


@router.get(
    "/campaigns/{campaign_id}/stats",
    response_model=CampaignStatsOut,
    tags=["campaigns"],
    summary="A campaign's statistics",
)
def get_campaign_stats(campaign_id: Id, session: SessionDep, principal: Reader) -> CampaignStatsOut:
    """Delivery, bounces, opens and clicks (total and human-only, per link), unsubscribes
    and complaints, with rates."""
    campaigns.get_campaign(session, principal.account_id, campaign_id)  # 404 if not yours
    return CampaignStatsOut.model_validate(
        campaign_stats(session, principal.account_id, campaign_id)
    )


def _audited(session: Session, principal: Principal, action: str, campaign_id: Id) -> None:
    audit(session, principal, action, f"campaign:{campaign_id}")
    session.commit()


@router.post(
    "/campaigns/{campaign_id}/send",
    response_model=CampaignOut,
    status_code=status.HTTP_202_ACCEPTED,
    tags=["campaigns"],
    summary="Send a campaign now",
)
def send_campaign(campaign_id: Id, session: SessionDep, principal: Sender) -> CampaignOut:
    """Start sending now: answers 202 at once; the workers deliver in the background."""
    campaigns.send_now(principal.account_id, campaign_id, actor=principal.actor)
    _audited(session, principal, "campaign.send", campaign_id)
    return _campaign_out(
        session, campaigns.get_campaign(session, principal.account_id, campaign_id)
    )


@router.post(
    "/campaigns/{campaign_id}/schedule",
    response_model=CampaignOut,
    tags=["campaigns"],
    summary="Schedule a campaign",
)
def schedule_campaign(
    campaign_id: Id, body: ScheduleIn, session: SessionDep, principal: Sender
) -> CampaignOut:
    """Send the campaign at ``scheduled_at`` (with its time zone)."""
    campaign = campaigns.schedule_campaign(
        session, principal.account_id, campaign_id, body.scheduled_at
    )
    _audited(session, principal, "campaign.schedule", campaign_id)
    return _campaign_out(session, campaign)


@router.post(
    "/campaigns/{campaign_id}/pause",
    response_model=CampaignOut,
    tags=["campaigns"],
    summary="Pause a campaign",
)
def pause_campaign(campaign_id: Id, session: SessionDep, principal: Sender) -> CampaignOut:
    """Stop handing messages to the relays; what is queued waits."""
    campaign = campaigns.pause_campaign(session, principal.account_id, campaign_id)
    _audited(session, principal, "campaign.pause", campaign_id)
    return _campaign_out(session, campaign)


@router.post(
    "/campaigns/{campaign_id}/resume",
    response_model=CampaignOut,
    tags=["campaigns"],
    summary="Resume a paused campaign",
)
def resume_campaign(campaign_id: Id, session: SessionDep, principal: Sender) -> CampaignOut:
    """Go on sending a paused campaign."""
    campaigns.resume_campaign(principal.account_id, campaign_id)
    _audited(session, principal, "campaign.resume", campaign_id)
    return _campaign_out(
        session, campaigns.get_campaign(session, principal.account_id, campaign_id)
    )


@router.get(
    "/campaigns/{campaign_id}/progress",
    response_model=ProgressOut,
    tags=["campaigns"],
    summary="A sending campaign's progress",
)
def get_campaign_progress(campaign_id: Id, session: SessionDep, principal: Reader) -> ProgressOut:
    """Live progress: sent, pending, deferred, failed, the current rate and the time left."""
    campaign = campaigns.get_campaign(session, principal.account_id, campaign_id)
    return ProgressOut(**campaigns.campaign_progress(session, campaign))


@router.post(
    "/campaigns/{campaign_id}/resend-failed",
    response_model=CampaignOut,
    status_code=status.HTTP_201_CREATED,
    tags=["campaigns"],
    summary="Resend to the failed recipients",
)
def resend_failed(campaign_id: Id, session: SessionDep, principal: Editor) -> CampaignOut:
    """A new draft campaign for the failed recipients of this one (send it as any other)."""
    child = campaigns.resend_failed(
        session, principal.account_id, campaign_id, created_by=principal.actor
    )
    _audited(session, principal, "campaign.resend_failed", campaign_id)
    return _campaign_out(session, child)


@router.post(
    "/campaigns/{campaign_id}/cancel",
    response_model=CampaignOut,
    tags=["campaigns"],
    summary="Cancel a campaign",
)
def cancel_campaign(campaign_id: Id, session: SessionDep, principal: Sender) -> CampaignOut:
    """Withdraw every message not yet sent; cannot be undone."""
    campaign = campaigns.cancel_campaign(session, principal.account_id, campaign_id)
    _audited(session, principal, "campaign.cancel", campaign_id)
    return _campaign_out(session, campaign)
