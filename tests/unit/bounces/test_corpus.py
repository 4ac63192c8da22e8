"""Agreement with the labelled bounce corpus (tests/fixtures/bounces, a sample of sisimai's
set-of-emails, BSD-2-Clause): recipient, hard/soft, reason and complaint type, overall and per
reporting MTA.  Run with ``pytest -s`` to see the table.

The labels are what sisimai reports, not absolute truth.  The floors sit just below what the
parser achieves today, so any regression fails; raise them when the parser improves.  Known
disagreements left alone on purpose: sisimai reads a few "user unknown" replies without an
SMTP command as ``filtered``, and one sample (rfc3464-28) is two DSNs concatenated in one file,
of which we read the first; arf-12 names its ``Removal-Recipient``, which we report.
"""

from __future__ import annotations

import csv
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailer.bounces import Report, parse_message

CORPUS = Path(__file__).resolve().parents[2] / "fixtures" / "bounces"

# sisimai's stand-in for a complaint whose original hides its recipients: we report "" there.
UNDISCLOSED = "undisclosed-recipient-in-headers@libsisimai.org.invalid"

FIELDS = ("recipient", "hard_or_soft", "reason", "feedback_type")
# Overall floors, in percent.
OVERALL_FLOORS = {"recipient": 98.0, "hard_or_soft": 93.5, "reason": 91.0, "feedback_type": 94.0}
# Per-MTA floors (recipient, hard/soft, reason) for the MTAs with at least three labelled rows;
# set at what is achieved today: with so few rows, any lost row is a regression.
MTA_FLOORS: dict[str, tuple[float, float, float]] = {
    "postfix": (99.9, 99.9, 99.9),
    "arf": (94.6, 94.6, 94.6),
    "exim": (99.9, 99.9, 91.6),
    "sendmail": (99.9, 99.9, 99.9),
    "outlook": (99.9, 99.9, 99.9),
    "rfc3464": (87.4, 62.4, 62.4),
    "qmail": (99.9, 99.9, 99.9),
    "amazonses": (99.9, 83.2, 83.2),
    "gmail": (99.9, 99.9, 79.9),
    "google": (99.9, 99.9, 99.9),
    "aol": (99.9, 74.9, 74.9),
    "exchange2003": (99.9, 74.9, 74.9),
    "exchange2007": (99.9, 99.9, 99.9),
    "gsuite": (99.9, 74.9, 74.9),
    "opensmtpd": (99.9, 99.9, 99.9),
    "yahoo": (99.9, 74.9, 74.9),
    "dragonfly": (99.9, 99.9, 99.9),
    "messagingserver": (99.9, 99.9, 99.9),
    "microsoft": (99.9, 99.9, 99.9),
}


@dataclass
class Row:
    file: str
    recipient: str
    hard_or_soft: str
    reason: str
    feedback_type: str
    mta: str


def load_rows() -> list[Row]:
    with (CORPUS / "labels.csv").open(newline="") as handle:
        return [
            Row(
                file=row["file"],
                recipient="" if row["recipient"] == UNDISCLOSED else row["recipient"].lower(),
                hard_or_soft=row["hard_or_soft"],
                reason=row["expected_reason"],
                feedback_type=row["feedback_type"],
                mta=row["mta"],
            )
            for row in csv.DictReader(handle)
        ]


def hard_or_soft(report: Report, hard: bool) -> str:
    if report.kind in ("complaint", "autoreply", "delivered"):
        return "n/a"
    return "hard" if hard else "soft"


def judge(row: Row, report: Report) -> dict[str, bool | None]:
    """Per field: True/False for agreement, None when the field does not apply to the row."""
    found = [r for r in report.recipients if r.address.lower() == row.recipient]
    verdict: dict[str, bool | None] = {"recipient": bool(found)}
    recipient = found[0] if found else None
    verdict["hard_or_soft"] = bool(
        recipient and hard_or_soft(report, recipient.hard) == row.hard_or_soft
    )
    verdict["reason"] = bool(recipient and recipient.reason == row.reason)
    verdict["feedback_type"] = (
        report.feedback_type == row.feedback_type if row.feedback_type else None
    )
    return verdict


@pytest.fixture(scope="module")
def results() -> tuple[list[tuple[Row, dict[str, bool | None]]], float]:
    rows = load_rows()
    reports: dict[str, Report] = {}
    started = time.perf_counter()
    for row in rows:
        if row.file not in reports:
            reports[row.file] = parse_message((CORPUS / row.file).read_bytes())
    per_message_ms = (time.perf_counter() - started) * 1000 / len(reports)
    return [(row, judge(row, reports[row.file])) for row in rows], per_message_ms


def percent(verdicts: list[bool | None]) -> float | None:
    applicable = [v for v in verdicts if v is not None]
    if not applicable:
        return None
    return 100.0 * sum(applicable) / len(applicable)


def agreement(
    judged: list[tuple[Row, dict[str, bool | None]]],
) -> tuple[dict[str, float | None], dict[str, dict[str, float | None]], dict[str, int]]:
    overall = {name: percent([v[name] for _, v in judged]) for name in FIELDS}
    by_mta: dict[str, list[dict[str, bool | None]]] = defaultdict(list)
    for row, verdict in judged:
        by_mta[row.mta].append(verdict)
    per_mta = {
        mta: {name: percent([v[name] for v in verdicts]) for name in FIELDS}
        for mta, verdicts in by_mta.items()
    }
    return overall, per_mta, {mta: len(v) for mta, v in by_mta.items()}


def show(figure: float | None) -> str:
    return "   -  " if figure is None else f"{figure:5.1f}%"


def test_corpus_agreement(results: tuple[list[tuple[Row, dict[str, bool | None]]], float]) -> None:
    judged, per_message_ms = results
    overall, per_mta, counts = agreement(judged)

    print(f"\nbounce corpus: {len(judged)} labelled rows, {per_message_ms:.2f} ms per message")
    print(f"{'mta':<16}{'rows':>5}  recipient  hard/soft  reason  complaint")
    for mta in sorted(per_mta, key=lambda m: (-counts[m], m)):
        figures = per_mta[mta]
        print(f"{mta:<16}{counts[mta]:>5}  " + "  ".join(show(figures[f]) for f in FIELDS))
    print(f"{'overall':<16}{len(judged):>5}  " + "  ".join(show(overall[f]) for f in FIELDS))
    for row, verdict in judged:
        if not all(v is not False for v in verdict.values()):
            wrong = ", ".join(name for name, v in verdict.items() if v is False)
            print(f"  disagrees on {wrong}: {row.file} {row.recipient} ({row.reason})")

    for name, floor in OVERALL_FLOORS.items():
        figure = overall[name]
        assert figure is not None and figure >= floor, f"{name}: {figure} < {floor}"
    for mta, floors in MTA_FLOORS.items():
        figures = per_mta[mta]
        for name, floor in zip(FIELDS[:3], floors, strict=True):
            figure = figures[name]
            assert figure is not None and figure >= floor, f"{mta} {name}: {figure} < {floor}"
