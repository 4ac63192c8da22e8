"""Real SMTP peers for the delivery tests: Postfix's ``smtp-sink`` and a Postfix of the test
suite's own, both Debian's, both on 127.0.0.1.

``SmtpSink`` runs ``smtp-sink`` on a free port: it accepts everything (and counts it, and
optionally dumps each message to a file), or refuses every RCPT with a 5xx (``reject``) or
a 4xx (``defer``).

``PostfixServer`` writes a ``main.cf``/``master.cf`` in a temporary directory and starts
``postfix -c DIR start`` with its own queue: smtpd listens on a free 127.0.0.1 port and
delivers ``mta.test`` to one Maildir through the ``virtual`` agent (``messages(user)``
picks a recipient's by their Delivered-To).  Recipients are answered by their local part:

- ``reject-*``: 550 at RCPT; ``defer-*``: 450; ``full-*``: 452;
- ``bounce-*``: relayed to ``sink_port`` (an ``SmtpSink`` that refuses RCPT), so Postfix
  writes a real DSN; ``delay-*``: relayed to ``defer_sink_port`` (a sink answering 4xx);
  with ``queue_lifetime="0"`` (the default) a deferral is bounced after one attempt;
- anything else at ``mta.test``: delivered to ``maildirs/mta.test/inbox/``.

DSNs and anything else for ``bounce_domain`` go to ``127.0.0.1:inbound_port``: the test
suite's inbound receiver, for which ``SmtpReceiver`` (an aiosmtpd server) stands in.  Every
other destination goes to Postfix's ``error`` transport: nothing leaves the machine, and no
DNS is asked.

Starting Postfix needs root (it switches to the ``postfix`` user); the fixtures in
``tests/integration/delivery/conftest.py`` skip (or fail under CI=true) where the binaries
or root are missing.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller

SBIN = Path("/usr/sbin")
POSTFIX = SBIN / "postfix"
POSTQUEUE = SBIN / "postqueue"
SMTP_SINK_CANDIDATES = (
    SBIN / "smtp-sink",
    Path("/usr/lib/postfix/smtp-sink"),
    Path("/usr/libexec/postfix/smtp-sink"),
)

TEST_DOMAIN = "mta.test"  # delivered to a Maildir
MAILDIR_NAME = "inbox"
BOUNCE_DOMAIN = "bounce.test"  # the VERP return path's domain: DSNs go to inbound_port
REJECT_PREFIX = "reject-"  # 550 at RCPT
DEFER_PREFIX = "defer-"  # 450 at RCPT
FULL_PREFIX = "full-"  # 452 at RCPT
BOUNCE_PREFIX = "bounce-"  # relayed to the rejecting sink: Postfix bounces with a DSN
DELAY_PREFIX = "delay-"  # relayed to the deferring sink

ACCESS_REPLIES = {
    REJECT_PREFIX: "550 5.1.1 User unknown",
    DEFER_PREFIX: "450 4.2.0 Try again later",
    FULL_PREFIX: "452 4.2.2 Mailbox full",
}


def smtp_sink_binary() -> Path | None:
    return next((path for path in SMTP_SINK_CANDIDATES if path.exists()), None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_banner(host: str, port: int, deadline: float, alive: object = None) -> None:
    """Until an SMTP server on *host:port* greets with 220 (or *deadline* passes)."""
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if callable(alive) and not alive():
            raise RuntimeError(f"the server on {host}:{port} exited while starting")
        try:
            with socket.create_connection((host, port), timeout=1) as sock:
                sock.settimeout(2)
                banner = sock.recv(512)
                if banner.startswith(b"220"):
                    with contextlib.suppress(OSError):
                        sock.sendall(b"QUIT\r\n")
                        sock.recv(512)
                    return
                last_error = RuntimeError(f"unexpected banner {banner!r}")
        except OSError as exc:
            last_error = exc
        time.sleep(0.05)
    raise RuntimeError(f"no SMTP server answered on {host}:{port}: {last_error}")


class _TempDir:
    """A temporary directory that the ``postfix`` and ``nobody`` users can traverse."""

    def __init__(self, prefix: str) -> None:
        self._tempdir = tempfile.TemporaryDirectory(prefix=prefix)
        self.path = Path(self._tempdir.name)
        self.path.chmod(0o755)

    def cleanup(self) -> None:
        with contextlib.suppress(OSError):
            self._tempdir.cleanup()


# --- smtp-sink ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SinkMessage:
    """One transaction as ``smtp-sink -d`` dumped it."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes  # the message as received (LF line ends, dot-unstuffed)


_COUNTERS = re.compile(rb"mesg=(\d+)")


class SmtpSink:
    """``with SmtpSink(reject=("RCPT",)) as sink: ... sink.port``.

    *reject* and *defer* name SMTP commands (``RCPT``, ``MAIL``, ``DATA``, ``.``) refused
    with *hard_reply* or *soft_reply*; *dump* keeps each accepted message for
    :meth:`messages`.  :attr:`received` counts accepted messages (``-c`` counters).
    """

    def __init__(
        self,
        *,
        reject: Iterable[str] = (),
        defer: Iterable[str] = (),
        hard_reply: str = "550 5.1.1 User unknown",
        soft_reply: str = "450 4.2.0 Try again later",
        dump: bool = False,
        backlog: int = 1000,
        max_connections: int = 256,
        binary: Path | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        self.reject = tuple(reject)
        self.defer = tuple(defer)
        self.hard_reply = hard_reply
        self.soft_reply = soft_reply
        self.dump = dump
        self.backlog = backlog
        self.max_connections = max_connections
        self.binary = binary or smtp_sink_binary()
        self.startup_timeout = startup_timeout
        self.host = "127.0.0.1"
        self.port = 0
        self._tempdir: _TempDir | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def directory(self) -> Path:
        assert self._tempdir is not None, "the sink is not running"
        return self._tempdir.path

    def command(self) -> list[str]:
        command = [str(self.binary), "-c", "-m", str(self.max_connections)]
        if os.geteuid() == 0:
            command += ["-u", "nobody"]  # required when started as root
        if self.reject:
            command += ["-f", ",".join(self.reject), "-B", self.hard_reply]
        if self.defer:
            command += ["-r", ",".join(self.defer), "-b", self.soft_reply]
        if self.dump:
            command += ["-d", f"{self.directory / 'dump'}/msg."]
        return [*command, f"{self.host}:{self.port}", str(self.backlog)]

    def start(self) -> SmtpSink:
        if self.binary is None or not self.binary.exists():
            raise FileNotFoundError("smtp-sink (Debian package postfix)")
        self._tempdir = _TempDir("smtp-sink-")
        dump = self.directory / "dump"
        dump.mkdir()
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(dump, nobody.pw_uid, nobody.pw_gid)
        self.port = free_port()
        with (self.directory / "counters.log").open("wb") as log:
            self._process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            process = self._process
            wait_for_banner(
                self.host,
                self.port,
                time.monotonic() + self.startup_timeout,
                alive=lambda: process.poll() is None,
            )
        except BaseException:
            log_text = self.log
            self.stop()
            raise RuntimeError(f"smtp-sink did not start:\n{log_text}") from None
        return self

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self._process

    @property
    def log(self) -> str:
        if self._tempdir is None:
            return ""
        path = self.directory / "counters.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def received(self) -> int:
        """Messages received so far (completed DATA), from smtp-sink's ``-c`` counters."""
        if self._tempdir is None:
            return 0
        counts = _COUNTERS.findall((self.directory / "counters.log").read_bytes())
        return int(counts[-1]) if counts else 0

    def wait_for(self, count: int, timeout: float = 10.0) -> int:
        """Wait until at least *count* messages arrived; the number received."""
        deadline = time.monotonic() + timeout
        while (received := self.received) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return received

    def messages(self) -> list[SinkMessage]:
        """The dumped messages (``dump=True``), oldest first."""
        if not self.dump:
            raise RuntimeError("SmtpSink(dump=True) keeps the messages")
        files = sorted((self.directory / "dump").glob("msg.*"), key=lambda p: p.stat().st_mtime_ns)
        return [_parse_dump(path.read_bytes()) for path in files]

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()  # only the process this object started
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _parse_dump(raw: bytes) -> SinkMessage:
    """smtp-sink's dump: X-* envelope records, a three-line Received, the message, an
    empty line."""
    lines = raw.split(b"\n")
    mail_from, rcpt_tos = "", []
    index = 0
    while index < len(lines) and not lines[index].startswith(b"Received: "):
        name, _, value = lines[index].partition(b": ")
        if name == b"X-Mail-Args":
            mail_from = value.decode(errors="replace").split()[0].strip("<>")
        elif name == b"X-Rcpt-Args":
            rcpt_tos.append(value.decode(errors="replace").split()[0].strip("<>"))
        index += 1
    index += 1
    while index < len(lines) and lines[index][:1] in (b" ", b"\t"):
        index += 1  # the Received header's continuation lines
    data = b"\n".join(lines[index:])
    return SinkMessage(mail_from, rcpt_tos, data.removesuffix(b"\n\n") + b"\n")


def process_running(pid: int) -> bool:
    """Whether *pid* is a live process (a zombie left to an init that does not reap
    counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _postconf_default(name: str) -> str:
    return subprocess.run(
        [str(SBIN / "postconf"), "-d", "-h", name],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout.strip()


def delivered_to(message: bytes) -> bytes:
    """The (lower-cased) Delivered-To address that Postfix's virtual agent put on top."""
    match = re.search(rb"^Delivered-To: *([^\r\n]*)", message.split(b"\n\n", 1)[0], re.M)
    return match.group(1).strip().lower() if match else b""


SinkFactory = Callable[..., SmtpSink]  # the smtp_sink_factory fixture: options -> started sink


# --- Postfix --------------------------------------------------------------------------------

_MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
{host}:{port} inet n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixServer:
    """``with PostfixServer(sink_port=..., inbound_port=...) as mta: ... mta.port``."""

    def __init__(
        self,
        *,
        sink_port: int | None = None,
        defer_sink_port: int | None = None,
        inbound_port: int | None = None,
        domain: str = TEST_DOMAIN,
        bounce_domain: str = BOUNCE_DOMAIN,
        queue_lifetime: str = "0",
        extra_main_cf: Mapping[str, str] | None = None,
        startup_timeout: float = 20.0,
    ) -> None:
        self.sink_port = sink_port
        self.defer_sink_port = defer_sink_port
        self.inbound_port = inbound_port
        self.domain = domain
        self.bounce_domain = bounce_domain
        self.queue_lifetime = queue_lifetime
        self.extra_main_cf = dict(extra_main_cf or {})
        self.startup_timeout = startup_timeout
        self.host = "127.0.0.1"
        self.port = 0
        self._tempdir: _TempDir | None = None
        self._master_pid: int | None = None

    # -- paths ------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def directory(self) -> Path:
        assert self._tempdir is not None, "Postfix is not running"
        return self._tempdir.path

    @property
    def master_pid(self) -> int | None:
        return self._master_pid

    @property
    def config_directory(self) -> Path:
        return self.directory / "etc"

    @property
    def queue_directory(self) -> Path:
        return self.directory / "spool"

    @property
    def mailbox_base(self) -> Path:
        return self.directory / "maildirs"

    @property
    def log(self) -> str:
        """Postfix's own log (``maillog_file``)."""
        if self._tempdir is None:
            return ""
        path = self.directory / "postfix.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- configuration ----------------------------------------------------------------------

    def main_cf(self) -> dict[str, str]:
        etc = self.config_directory
        owner = pwd.getpwnam("postfix")
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_directory),
            "data_directory": str(self.directory / "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": f"mx.{self.domain}",
            "mydomain": self.domain,
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": self.host,
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_banner": "$myhostname ESMTP Postfix (tests)",
            "biff": "no",
            "append_dot_mydomain": "no",
            "recipient_delimiter": "",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "notify_classes": "",
            # Nothing leaves the machine; nothing asks DNS.
            "local_transport": "error:no local delivery in tests",
            "default_transport": "error:no outbound mail in tests",
            "relay_transport": "error:no outbound mail in tests",
            "relay_domains": "",
            "transport_maps": f"regexp:{etc / 'transport'}",
            "smtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "smtpd_peername_lookup": "no",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "smtp_connect_timeout": "5s",
            # The test domain, delivered to Maildirs.
            "virtual_mailbox_domains": self.domain,
            "virtual_mailbox_base": str(self.mailbox_base),
            "virtual_mailbox_maps": f"regexp:{etc / 'mailboxes'}",
            "virtual_uid_maps": f"static:{owner.pw_uid}",
            "virtual_gid_maps": f"static:{owner.pw_gid}",
            "virtual_minimum_uid": str(min(owner.pw_uid, 100)),
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_recipient_restrictions": (
                f"check_recipient_access regexp:{etc / 'access'}, "
                "permit_mynetworks, reject_unauth_destination"
            ),
            # Fast: refusals on purpose must not slow the client down or cut it off.
            "smtpd_error_sleep_time": "0",
            "smtpd_soft_error_limit": "1000",
            "smtpd_hard_error_limit": "1000",
            "in_flow_delay": "0",
            # Deferred mail is retried within seconds and bounced (with a DSN) once
            # queue_lifetime has passed ("0": after the first attempt).
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "maximal_queue_lifetime": self.queue_lifetime,
            "bounce_queue_lifetime": self.queue_lifetime,
            "delay_warning_time": "0",
            "maillog_file": str(self.directory / "postfix.log"),
            "maillog_file_prefixes": str(self.directory),
        }
        settings.update(self.extra_main_cf)
        return settings

    def transport_map(self) -> list[str]:
        domain = re.escape(self.domain)
        lines = []
        if self.sink_port:
            lines.append(f"/^{BOUNCE_PREFIX}[^@]*@{domain}$/ smtp:[127.0.0.1]:{self.sink_port}")
        if self.defer_sink_port:
            lines.append(
                f"/^{DELAY_PREFIX}[^@]*@{domain}$/ smtp:[127.0.0.1]:{self.defer_sink_port}"
            )
        if self.inbound_port:
            bounce = re.escape(self.bounce_domain)
            lines.append(f"/@{bounce}$/ smtp:[127.0.0.1]:{self.inbound_port}")
        return lines

    def _write_config(self) -> None:
        etc = self.config_directory
        etc.mkdir()
        main_cf = "".join(f"{key} = {value}\n" for key, value in self.main_cf().items())
        (etc / "main.cf").write_text(main_cf, encoding="utf-8")
        (etc / "master.cf").write_text(
            _MASTER_CF.format(host=self.host, port=self.port), encoding="utf-8"
        )
        access = [f"/^{re.escape(prefix)}/ {reply}" for prefix, reply in ACCESS_REPLIES.items()]
        (etc / "access").write_text("\n".join(access) + "\n", encoding="utf-8")
        (etc / "transport").write_text("\n".join(self.transport_map()) + "\n", encoding="utf-8")
        domain = re.escape(self.domain)
        # One catch-all Maildir: virtual(8) refuses $1 substitutions in a regexp map.
        (etc / "mailboxes").write_text(
            f"/^[^@]+@{domain}$/ {self.domain}/{MAILDIR_NAME}/\n", encoding="utf-8"
        )
        # Postfix waits until main.cf is a couple of seconds old (an editor may still be
        # writing it): date the files back.
        past = time.time() - 60
        for path in etc.iterdir():
            os.utime(path, (past, past))
        owner = pwd.getpwnam("postfix")
        self.mailbox_base.mkdir()
        os.chown(self.mailbox_base, owner.pw_uid, owner.pw_gid)

    def _create_queue_directories(self) -> None:
        """The queue and data directories with the owners and modes that Debian's
        ``postfix-files`` gives them (what ``post-install create-missing`` does)."""
        paths = {
            "$queue_directory": self.queue_directory,
            "$data_directory": self.directory / "data",
        }
        owners = {"root": 0, "$mail_owner": pwd.getpwnam("postfix").pw_uid, "-": -1}
        groups = {"-": -1, "$setgid_group": grp.getgrnam("postdrop").gr_gid}
        postfix_files = Path(_postconf_default("meta_directory")) / "postfix-files"
        entries: list[tuple[Path, str, str, str]] = []
        for line in postfix_files.read_text(encoding="utf-8").splitlines():
            name, kind, owner, group, mode, *_ = [*line.split(":"), "", "", "", "", ""]
            top, _, rest = name.partition("/")
            if kind == "d" and top in paths:
                entries.append((paths[top] / rest if rest else paths[top], owner, group, mode))
        if not any(path == self.queue_directory / "public" for path, *_ in entries):
            raise RuntimeError(f"{postfix_files} does not list the queue directories")
        for path, owner, group, mode in sorted(entries, key=lambda entry: len(entry[0].parts)):
            path.mkdir(exist_ok=True)
            os.chown(path, owners[owner], groups[group])
            path.chmod(int(mode, 8))

    # -- running ----------------------------------------------------------------------------

    def _postfix(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(POSTFIX), "-c", str(self.config_directory), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self) -> PostfixServer:
        if not POSTFIX.exists():
            raise FileNotFoundError(POSTFIX)
        self._tempdir = _TempDir("postfix-")
        self.port = free_port()
        try:
            self._write_config()
            # "postfix start" would run its integrity checks, which take seconds: create
            # the queue's directories as they would and skip them.
            self._create_queue_directories()
            (self.queue_directory / "quick-start").touch()
            started = self._postfix("start", timeout=self.startup_timeout)
            self._master_pid = self._read_master_pid()
            if started.returncode != 0:
                raise RuntimeError(
                    f"postfix start failed ({started.returncode}):\n{started.stderr}\n{self.log}"
                )
            wait_for_banner(
                self.host,
                self.port,
                time.monotonic() + self.startup_timeout,
                alive=self._master_alive,
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _read_master_pid(self) -> int | None:
        path = self.queue_directory / "pid" / "master.pid"
        try:
            return int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _master_alive(self) -> bool:
        if self._master_pid is None:
            self._master_pid = self._read_master_pid()
        if self._master_pid is None:
            return True  # still starting
        return process_running(self._master_pid)

    def flush(self) -> None:
        """Ask Postfix to retry its deferred mail now (``postqueue -f``)."""
        subprocess.run(
            [str(POSTQUEUE), "-c", str(self.config_directory), "-f"],
            capture_output=True,
            timeout=30,
            check=True,
        )

    def queue(self) -> str:
        """``postqueue -p``: what is still queued."""
        return subprocess.run(
            [str(POSTQUEUE), "-c", str(self.config_directory), "-p"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout

    def stop(self) -> None:
        if self._tempdir is None:
            return
        pid = self._master_pid or self._read_master_pid()
        if pid is not None and self._master_alive():
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._postfix("stop", timeout=20)
            deadline = time.monotonic() + 10
            while self._master_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if self._master_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)  # the master this object started
        self._master_pid = None
        self._tempdir.cleanup()
        self._tempdir = None

    # -- what arrived -----------------------------------------------------------------------

    @property
    def maildir(self) -> Path:
        """The one Maildir that every recipient at ``domain`` is delivered to."""
        return self.mailbox_base / self.domain / MAILDIR_NAME

    def maildir_files(self) -> list[Path]:
        """The delivered message files, oldest first."""
        files = [
            path
            for folder in ("new", "cur")
            if (self.maildir / folder).is_dir()
            for path in (self.maildir / folder).iterdir()
        ]
        files.sort(key=lambda path: (path.stat().st_mtime_ns, path.name))
        return files

    def messages(self, user: str | None = None) -> list[bytes]:
        """The messages delivered to ``user@domain`` (or to anyone), oldest first, as
        Postfix stored them: LF line ends, with its Return-Path, Delivered-To and Received
        headers on top."""
        messages = [path.read_bytes() for path in self.maildir_files()]
        if user is None:
            return messages
        wanted = f"{user}@{self.domain}".lower().encode()
        return [message for message in messages if delivered_to(message) == wanted]

    def wait_for_messages(self, user: str | None, count: int, timeout: float = 10.0) -> list[bytes]:
        """The messages of ``user@domain`` once at least *count* arrived; raises
        ``TimeoutError`` (with Postfix's log) after *timeout* seconds."""
        deadline = time.monotonic() + timeout
        while True:
            messages = self.messages(user)
            if len(messages) >= count:
                return messages
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{len(messages)} of {count} messages for {user or '*'}@{self.domain} "
                    f"arrived within {timeout} s; Postfix log:\n{self.log}"
                )
            time.sleep(0.05)

    def __enter__(self) -> PostfixServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


# --- a stand-in for the inbound receiver -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes


class _CollectingHandler:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[ReceivedMessage] = []

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        data = envelope.original_content or envelope.content or b""
        mail_from = envelope.mail_from or ""
        if mail_from == "<>":  # aiosmtpd keeps the null return path's brackets
            mail_from = ""
        with self.lock:
            self.messages.append(ReceivedMessage(mail_from, list(envelope.rcpt_tos), bytes(data)))
        return "250 2.0.0 Ok: received"


class SmtpReceiver:
    """An aiosmtpd server on a free 127.0.0.1 port that keeps every message: it stands in
    for the inbound (bounce) receiver where Postfix delivers its DSNs."""

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self._handler = _CollectingHandler()
        self._controller: Controller | None = None

    def start(self) -> SmtpReceiver:
        self.port = free_port()
        self._controller = Controller(
            self._handler,
            hostname=self.host,
            port=self.port,
            server_hostname="inbound.bounce.test",
            ready_timeout=10,
        )
        self._controller.start()
        return self

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    @property
    def messages(self) -> list[ReceivedMessage]:
        with self._handler.lock:
            return list(self._handler.messages)

    def clear(self) -> None:
        with self._handler.lock:
            self._handler.messages.clear()

    def wait_for(
        self, predicate: Callable[[ReceivedMessage], bool], timeout: float = 10.0
    ) -> ReceivedMessage:
        """The first message that satisfies *predicate*; ``TimeoutError`` if none comes."""
        deadline = time.monotonic() + timeout
        while True:
            for message in self.messages:
                if predicate(message):
                    return message
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no matching message within {timeout} s")
            time.sleep(0.05)

    def __enter__(self) -> SmtpReceiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
