"""Cleaning (depuración) of stored contacts and of contact files.

``mailer.cleaning`` judges an address by itself; this module applies it to an account's
contacts (a list, a segment, or what a campaign is about to send to), adds what only the
audience knows (suppressed, duplicate), stores the verdicts, and builds the report: counts
by verdict and reason, the top domains, and the typo fixes a list manager can accept in
bulk.

DNS is asked once per distinct domain (the checker caches), and contacts are walked in
pages by id with one bulk UPDATE per page for the rows whose verdict changed, so a million
contacts over twenty thousand domains clean in well under a minute.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, func, select, update
from sqlmodel import Session, col

from mailer.audience.importer import SeenTable, map_columns
from mailer.audience.models import ChannelStatus, CleaningRun, Contact, ListMember
from mailer.audience.service import target_filter
from mailer.audience.suppression import not_suppressed, suppressed_among
from mailer.audience.tables import Row, RowProblem, open_table, write_table
from mailer.cleaning.dns import DomainChecker
from mailer.cleaning.phones import check_phone
from mailer.cleaning.service import check_syntax, judge_address, split_address
from mailer.cleaning.verdicts import (
    REASON_LABELS_ES,
    VERDICT_LABELS_ES,
    DomainVerdict,
    Reason,
    Verdict,
)
from mailer.core.clock import utcnow
from mailer.core.config import Settings
from mailer.core.errors import MailerError, NotFound, ValidationFailed

PAGE = 5000
DOMAIN_SLICE = 2000
TOP_DOMAINS = 20

_checkers: dict[tuple[Any, ...], DomainChecker] = {}
_checkers_lock = threading.Lock()


def get_checker(settings: Settings) -> DomainChecker:
    """One checker (and so one DNS cache) per process and resolver configuration."""
    key = (tuple(settings.dns.servers), settings.dns.port, settings.dns.timeout_seconds)
    with _checkers_lock:
        checker = _checkers.get(key)
        if checker is None:
            checker = _checkers[key] = DomainChecker(settings.dns)
        return checker


@dataclass(slots=True)
class CleaningTally:
    """What a cleaning found, ready for the report."""

    total: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    domains: Counter[str] = field(default_factory=Counter)
    domain_verdicts: dict[str, str] = field(default_factory=dict)
    suggestions: Counter[tuple[str, str]] = field(default_factory=Counter)
    changed: int = 0

    def add(self, verdict: str, reasons: Iterable[str], domain: str, suggestion: str) -> None:
        self.total += 1
        self.verdicts[verdict] += 1
        for reason in reasons:
            self.reasons[reason] += 1
        self.domains[domain] += 1
        if suggestion:
            self.suggestions[(domain, suggestion.rpartition("@")[2])] += 1

    def as_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "verdicts": dict(self.verdicts),
            "reasons": dict(self.reasons),
            "top_domains": [
                {"domain": d, "count": n, "verdict": self.domain_verdicts.get(d, "")}
                for d, n in self.domains.most_common(TOP_DOMAINS)
            ],
            "suggestions": [
                {"from": a, "to": b, "count": n} for (a, b), n in self.suggestions.most_common()
            ],
            "changed": self.changed,
        }


CleanProgress = Callable[[int, int], None]  # (done, total)


def clean_contacts(
    session: Session,
    account_id: int,
    where: list[ColumnElement[bool]],
    checker: DomainChecker,
    *,
    progress: CleanProgress | None = None,
) -> CleaningTally:
    """Judge the addresses of the contacts matching *where* and store the verdicts."""
    base = [col(Contact.account_id) == account_id, *where]
    domain_counts = dict(
        session.execute(
            select(col(Contact.email_domain), func.count())
            .where(*base)
            .group_by(col(Contact.email_domain))
        ).all()
    )
    total = sum(domain_counts.values())
    tally = CleaningTally()
    if progress:
        progress(0, total)
    names = list(domain_counts)
    domains: dict[str, DomainVerdict] = {}
    checked_rows = 0
    for start in range(0, len(names), DOMAIN_SLICE):
        part = names[start : start + DOMAIN_SLICE]
        domains.update(checker.check_many_sync(part))
        checked_rows += sum(domain_counts[d] for d in part)
        if progress:
            # DNS is half of the work, storing the verdicts the other half.
            progress(checked_rows // 2, total)
    tally.domain_verdicts = {d: v.verdict.value for d, v in domains.items()}
    now = utcnow()
    last_id = 0
    done = 0
    while True:
        rows = session.execute(
            select(
                col(Contact.id),
                col(Contact.email),
                col(Contact.email_domain),
                col(Contact.email_verdict),
                col(Contact.email_reasons),
                col(Contact.email_suggestion),
                col(Contact.email_status),
            )
            .where(*base, col(Contact.id) > last_id)
            .order_by(col(Contact.id))
            .limit(PAGE)
        ).all()
        if not rows:
            break
        changes: list[dict[str, Any]] = []
        for contact_id, email, domain, verdict, reasons, suggestion, status in rows:
            judged = judge_address(email, domains)
            new_reasons = ",".join(judged.reasons)
            new_suggestion = judged.suggestion or ""
            tally.add(judged.verdict, judged.reasons, domain, new_suggestion)
            new_status = status
            if judged.verdict == Verdict.INVALID and status == ChannelStatus.ACTIVE:
                new_status = ChannelStatus.INVALID
            elif judged.verdict != Verdict.INVALID and status == ChannelStatus.INVALID:
                new_status = ChannelStatus.ACTIVE
            if (judged.verdict.value, new_reasons, new_suggestion, new_status) != (
                verdict,
                reasons,
                suggestion,
                status,
            ):
                changes.append(
                    {
                        "id": contact_id,
                        "email_verdict": judged.verdict.value,
                        "email_reasons": new_reasons[:200],
                        "email_suggestion": new_suggestion[:320],
                        "email_status": new_status,
                    }
                )
        if changes:
            session.execute(update(Contact), changes)
            tally.changed += len(changes)
        first, last_id = rows[0][0], rows[-1][0]
        session.execute(
            update(Contact)
            .where(*base, col(Contact.id) >= first, col(Contact.id) <= last_id)
            .values(cleaned_at=now)
            .execution_options(synchronize_session=False)
        )
        done += len(rows)
        if progress:
            progress(total // 2 + done // 2 if total else 0, total)
    suppressed = int(
        session.execute(
            select(func.count())
            .select_from(Contact)
            .where(*base, ~not_suppressed(account_id, "email"))
        ).scalar_one()
    )
    if suppressed:
        tally.reasons[Reason.SUPPRESSED] += suppressed
    if progress:
        progress(total, total)
    return tally


def start_cleaning(
    session: Session,
    account_id: int,
    *,
    list_id: int | None = None,
    segment_id: int | None = None,
    actor: str = "",
) -> CleaningRun:
    """Record a cleaning to be run by a worker (:func:`run_cleaning`)."""
    if list_id is None and segment_id is None:
        raise ValidationFailed("choose a list or a segment to clean", field="list_id")
    # Refuses a list or segment of another account.
    target_filter(session, account_id, list_id=list_id, segment_id=segment_id)
    run = CleaningRun(
        account_id=account_id, list_id=list_id, segment_id=segment_id, created_by=actor
    )
    session.add(run)
    session.flush()
    return run


def run_cleaning(session: Session, run_id: int, checker: DomainChecker) -> CleaningRun:
    """Run a recorded cleaning, committing its progress as it goes."""
    run = session.get(CleaningRun, run_id)
    if run is None:
        raise NotFound("cleaning {id} does not exist", id=run_id)
    if run.status == "done":
        return run
    run.status = "running"
    session.add(run)
    session.commit()

    def progress(done: int, total: int) -> None:
        assert run is not None
        run.done, run.total = done, total
        session.add(run)
        session.commit()

    try:
        where = target_filter(
            session, run.account_id, list_id=run.list_id, segment_id=run.segment_id
        )
        tally = clean_contacts(session, run.account_id, where, checker, progress=progress)
    except Exception as exc:
        session.rollback()
        run = session.get(CleaningRun, run_id)
        assert run is not None
        run.status = "failed"
        run.error = (exc.message if isinstance(exc, MailerError) else repr(exc))[:1000]
        run.finished_at = utcnow()
        session.add(run)
        session.commit()
        if not isinstance(exc, MailerError):
            raise
        return run
    run.counts = tally.as_json()
    run.status = "done"
    run.total = run.done = tally.total
    run.finished_at = utcnow()
    session.add(run)
    session.commit()
    return run


def get_run(session: Session, account_id: int, run_id: int) -> CleaningRun:
    run = session.get(CleaningRun, run_id)
    if run is None or run.account_id != account_id:
        raise NotFound("cleaning {id} does not exist", id=run_id)
    return run


def latest_runs(session: Session, account_id: int, limit: int = 20) -> list[CleaningRun]:
    return list(
        session.execute(
            select(CleaningRun)
            .where(col(CleaningRun.account_id) == account_id)
            .order_by(col(CleaningRun.id).desc())
            .limit(limit)
        ).scalars()
    )


def accept_suggestions(
    session: Session,
    account_id: int,
    fixes: Iterable[tuple[str, str]],
    checker: DomainChecker,
) -> dict[str, int]:
    """Correct the addresses of every contact whose domain *from* has the suggestion *to*
    (``gmial.com`` -> ``gmail.com``).  When the corrected address already belongs to a
    contact, the typo contact's lists move to it and the typo contact is removed."""
    fixed = merged = 0
    corrected_ids: list[int] = []
    for wrong, right in fixes:
        rows = session.execute(
            select(Contact).where(
                col(Contact.account_id) == account_id,
                col(Contact.email_domain) == wrong,
                col(Contact.email_suggestion).like(f"%@{right}"),
            )
        ).scalars()
        for contact in list(rows):
            corrected = contact.email_suggestion
            other = session.execute(
                select(Contact).where(
                    col(Contact.account_id) == account_id, col(Contact.email) == corrected
                )
            ).scalar_one_or_none()
            if other is not None:
                _merge_lists(session, contact, other)
                session.delete(contact)
                merged += 1
                continue
            contact.email = corrected
            contact.email_domain = right
            contact.email_suggestion = ""
            contact.email_verdict = ""
            contact.email_reasons = ""
            contact.cleaned_at = None
            if contact.email_status == ChannelStatus.INVALID:
                contact.email_status = ChannelStatus.ACTIVE
            contact.updated_at = utcnow()
            session.add(contact)
            assert contact.id is not None
            corrected_ids.append(contact.id)
            fixed += 1
        session.flush()
    for start in range(0, len(corrected_ids), 900):
        part = corrected_ids[start : start + 900]
        clean_contacts(session, account_id, [col(Contact.id).in_(part)], checker)
    return {"fixed": fixed, "merged": merged}


def _merge_lists(session: Session, source: Contact, target: Contact) -> None:
    assert source.id is not None and target.id is not None
    have = set(
        session.execute(
            select(col(ListMember.list_id)).where(col(ListMember.contact_id) == target.id)
        ).scalars()
    )
    for member in list(
        session.execute(select(ListMember).where(col(ListMember.contact_id) == source.id)).scalars()
    ):
        if member.list_id not in have:
            session.add(ListMember(list_id=member.list_id, contact_id=target.id))
        session.delete(member)
    session.flush()


def freshness_cutoff(freshness_days: int, timezone: str, now: datetime | None = None) -> datetime:
    """Verdicts older than this are stale: midnight of today in the account's time zone,
    minus *freshness_days* (0 = cleaned today)."""
    local = (now or utcnow()).astimezone(ZoneInfo(timezone))
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight - timedelta(days=max(freshness_days, 0))


def ensure_fresh(
    session: Session,
    account_id: int,
    *,
    list_id: int | None,
    segment_id: int | None,
    freshness_days: int,
    timezone: str,
    checker: DomainChecker,
) -> CleaningTally | None:
    """Clean the targeted contacts whose last verdict is older than the campaign's
    freshness setting (negative = never); returns None when nothing needed it."""
    if freshness_days < 0:
        return None
    cutoff = freshness_cutoff(freshness_days, timezone)
    where = [
        *target_filter(session, account_id, list_id=list_id, segment_id=segment_id),
        col(Contact.email_status).in_([ChannelStatus.ACTIVE, ChannelStatus.INVALID]),
        (col(Contact.cleaned_at).is_(None)) | (col(Contact.cleaned_at) < cutoff),
    ]
    stale = int(
        session.execute(
            select(func.count())
            .select_from(Contact)
            .where(col(Contact.account_id) == account_id, *where)
        ).scalar_one()
    )
    if not stale:
        return None
    return clean_contacts(session, account_id, where, checker)


# --- files -------------------------------------------------------------------------------


FILE_COLUMNS = ("verdict", "reasons", "suggestion", "phone_e164", "phone_type", "sms_ok")
FILE_COLUMNS_ES = (
    "resultado",
    "motivos",
    "sugerencia",
    "celular_e164",
    "tipo_telefono",
    "apto_sms",
)


def clean_file(
    source: Path | IO[bytes],
    output: Path,
    checker: DomainChecker,
    *,
    filename: str = "",
    suppressed: Callable[[list[str]], set[str]] | None = None,
    spanish: bool = True,
) -> CleaningTally:
    """Write *source* back to *output* (CSV or XLSX by its suffix) with verdict, reasons
    and suggestion columns (and the phone in E.164 with its type when there is a phone
    column).  Two passes: the domains first (one DNS lookup each), then the rows."""
    if isinstance(source, Path):
        filename = filename or source.name
    with open_table(source, filename) as table:
        mapping = map_columns(table.headers)
        email_index = _column_of(table.headers, mapping, "email")
        domains: set[str] = set()
        for item in table.rows:
            if isinstance(item, Row):
                verdict = check_syntax(item.values[email_index])
                if verdict.ok:
                    domains.add(split_address(verdict.normalized)[1])
    if not isinstance(source, Path):
        source.seek(0)
    verdicts = checker.check_many_sync(sorted(domains))
    tally = CleaningTally(domain_verdicts={d: v.verdict.value for d, v in verdicts.items()})
    with open_table(source, filename) as table:
        phone_index = _column_of(table.headers, mapping, "phone", required=False)
        labels = FILE_COLUMNS_ES if spanish else FILE_COLUMNS
        extra = labels if phone_index is not None else labels[:3]
        write_table(
            output,
            [*table.headers, *extra],
            _judged_rows(
                table.rows, email_index, phone_index, verdicts, tally, suppressed, spanish
            ),
        )
    return tally


def _column_of(
    headers: list[str], mapping: dict[str, str], target: str, *, required: bool = True
) -> Any:
    for index, header in enumerate(headers):
        if mapping[header] == target:
            return index
    if required:
        raise ValidationFailed(
            "no e-mail column found: name one column 'email' or 'correo' (headers seen: {headers})",
            field="file",
            headers=", ".join(headers),
        )
    return None


def _judged_rows(
    rows: Iterable[Row | RowProblem],
    email_index: int,
    phone_index: int | None,
    verdicts: dict[str, DomainVerdict],
    tally: CleaningTally,
    suppressed: Callable[[list[str]], set[str]] | None,
    spanish: bool,
) -> Iterable[list[Any]]:
    seen = SeenTable()
    batch: list[tuple[list[str], str, str, str, str]] = []

    def flush() -> Iterable[list[Any]]:
        blocked = suppressed([b[1] for b in batch if b[1]]) if suppressed else set()
        for values, address, verdict, reasons, suggestion in batch:
            reason_list = [r for r in reasons.split(",") if r]
            if address and address in blocked:
                verdict = Verdict.INVALID
                reason_list.append(Reason.SUPPRESSED)
            domain = address.rpartition("@")[2] if address else ""
            tally.add(verdict, reason_list, domain, suggestion)
            shown_verdict = VERDICT_LABELS_ES.get(Verdict(verdict), verdict) if spanish else verdict
            shown_reasons = (
                "; ".join(REASON_LABELS_ES.get(Reason(r), r) for r in reason_list)
                if spanish
                else ",".join(reason_list)
            )
            out = [*values, shown_verdict, shown_reasons, suggestion]
            if phone_index is not None:
                phone = check_phone(values[phone_index]) if values[phone_index].strip() else None
                out += (
                    [phone.e164, phone.kind.value, "sí" if phone.sms_ok else "no"]
                    if phone and phone.ok
                    else ["", "", "no"]
                )
            yield out
        batch.clear()

    for item in rows:
        if isinstance(item, RowProblem):
            continue
        raw = item.values[email_index]
        syntax = check_syntax(raw)
        if not syntax.ok:
            batch.append((item.values, "", Verdict.INVALID.value, Reason.SYNTAX.value, ""))
        elif not seen.add(syntax.normalized):
            batch.append((item.values, "", Verdict.INVALID.value, Reason.DUPLICATE.value, ""))
        else:
            judged = judge_address(syntax.normalized, verdicts)
            batch.append(
                (
                    item.values,
                    syntax.normalized,
                    judged.verdict.value,
                    ",".join(judged.reasons),
                    judged.suggestion or "",
                )
            )
        if len(batch) >= PAGE:
            yield from flush()
    yield from flush()


def suppression_checker(session: Session, account_id: int) -> Callable[[list[str]], set[str]]:
    return lambda addresses: suppressed_among(session, account_id, "email", addresses)
