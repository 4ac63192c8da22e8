"""The acceptance journal: one write per outcome, found again only when its owner is gone."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from mailer.core.types import DeliveryResult, DeliveryStatus
from mailer.delivery.journal import Journal, orphaned_journals, read_journal


def _accepted(message_id: int) -> DeliveryResult:
    return DeliveryResult(
        message_id, DeliveryStatus.ACCEPTED, 250, "OK queued as X", "r1", provider_id="X"
    )


def test_a_live_journal_is_not_an_orphan_and_a_closed_one_is_gone(tmp_path: Path) -> None:
    with Journal(tmp_path, "abc") as journal:
        journal.record(_accepted(1))
        journal.record(DeliveryResult(2, DeliveryStatus.REJECTED, 550, "RCPT: 5.1.1 unknown"))
        assert list(orphaned_journals(tmp_path)) == []  # held by this process
        assert [r.message_id for r in read_journal(journal.path)] == [1, 2]
    assert list(tmp_path.glob("*.journal")) == []


def test_an_exception_keeps_the_journal_for_recovery(tmp_path: Path) -> None:
    try:
        with Journal(tmp_path, "kept") as journal:
            journal.record(_accepted(7))
            raise RuntimeError("database gone")
    except RuntimeError:
        pass
    found = []
    for orphan in orphaned_journals(tmp_path):
        found.append((orphan.token, [r.message_id for r in orphan.results()]))
        orphan.remove()
    assert found == [("kept", [7])]
    assert list(tmp_path.iterdir()) == []


def test_the_journal_of_a_killed_process_is_an_orphan_with_its_outcomes(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from mailer.core.types import DeliveryResult, DeliveryStatus
        from mailer.delivery.journal import Journal
        journal = Journal(Path({str(tmp_path)!r}), "dead")
        for i in range(1, 4):
            journal.record(DeliveryResult(i, DeliveryStatus.ACCEPTED, 250, "ok", "r1"))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], check=False)
    assert done.returncode == -9
    results = {}
    for orphan in orphaned_journals(tmp_path):
        results[orphan.token] = [(r.message_id, r.status) for r in orphan.results()]
    assert results == {"dead": [(i, DeliveryStatus.ACCEPTED) for i in (1, 2, 3)]}


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    with Journal(tmp_path, "torn") as journal:
        journal.record(_accepted(1))
        os.write(journal._fd, b'[2,"a",25')  # a write cut short
        assert [r.message_id for r in read_journal(journal.path)] == [1]
