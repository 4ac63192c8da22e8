"""A real IMAP and POP3 server for the mailbox tests: a Dovecot of the test suite's own
(Debian's ``dovecot-imapd`` and ``dovecot-pop3d``), on free 127.0.0.1 ports.

:class:`DovecotServer` writes a ``dovecot.conf`` into a directory of its own (config, run
and state directories, log, a passwd-file with one user, that user's Maildir), starts
``dovecot -F -c CONFIG`` and stops it by its PID.  Nothing of the system's Dovecot
configuration is read or changed, and the packages' own service is never started.

Dovecot runs unprivileged: as the current user, or as ``nobody`` when the tests run as
root (its services then need no user switching and no chroot, and a mail user cannot be
root).  With ``tls=True`` it also listens for IMAPS and POP3S and offers STARTTLS, with a
self-signed certificate for 127.0.0.1 made with ``cryptography`` (:attr:`ca_file` is the
PEM to trust).

Each :class:`MailUser` (:meth:`DovecotServer.add_user`; the server's own ``username``,
``deliver``, ``messages`` and ``flags`` are those of its first user) has a Maildir of its
own, so tests can share one server (Dovecot takes a second to stop) and still not see each
other's mail.
Messages are delivered as an MDA would: written into the Maildir (``tmp/`` then ``new/``);
:meth:`MailUser.messages` and :meth:`MailUser.flags` read the Maildir back, so what the
server did is checked without going through the code under test.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

DOVECOT = Path("/usr/sbin/dovecot")
DOVECOT_LIBEXEC = Path("/usr/lib/dovecot")

_counter = itertools.count()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dovecot_available() -> bool:
    """Dovecot with its IMAP and POP3 services (dovecot-imapd, dovecot-pop3d)."""
    return DOVECOT.exists() and all((DOVECOT_LIBEXEC / name).exists() for name in ("imap", "pop3"))


class DovecotServer:
    """``with DovecotServer() as server:`` a running Dovecot (see the module docstring)."""

    def __init__(
        self,
        *,
        username: str = "tester",
        password: str = "mailbox-test-password",
        tls: bool = False,
        spare_users: int = 40,
        binary: Path = DOVECOT,
    ) -> None:
        self.tls = tls
        self.binary = binary
        self.imap_port = free_port()
        self.pop3_port = free_port()
        self.imaps_port = free_port() if tls else 0
        self.pop3s_port = free_port() if tls else 0
        self.directory = Path(tempfile.mkdtemp(prefix="mailer-dovecot-"))
        self.directory.chmod(0o755)
        self.config = self.directory / "dovecot.conf"
        self.log_path = self.directory / "dovecot.log"
        self.ca_file: Path | None = None
        # As root, Dovecot runs as nobody: a mail user cannot be root.
        root = os.geteuid() == 0
        self.account = pwd.getpwnam("nobody") if root else pwd.getpwuid(os.geteuid())
        self.process: subprocess.Popen[bytes] | None = None
        self.users: list[MailUser] = []
        self._spare: list[MailUser] = []
        self.user = self._new_user(username, password)
        # Dovecot looks at its passwd-file at most once a second: users made up front are
        # ready at once (add_user hands them out), later ones a second after.
        self._spare = [self._new_user() for _ in range(spare_users)]
        self._write_users()

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> DovecotServer:
        if not self.binary.exists():
            raise FileNotFoundError(f"{self.binary} (Debian packages dovecot-imapd, dovecot-pop3d)")
        self._write_files()
        user = self.account.pw_uid if os.geteuid() == 0 else None
        group = self.account.pw_gid if os.geteuid() == 0 else None
        self.process = subprocess.Popen(
            [str(self.binary), "-F", "-c", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(self.directory / "stderr.log").open("wb"),
            user=user,
            group=group,
            extra_groups=[] if user is not None else None,
            cwd=self.directory,
        )
        try:
            deadline = time.monotonic() + 30
            self._wait_for(self.imap_port, b"* OK", deadline)
            self._wait_for(self.pop3_port, b"+OK", deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)
        # Its services exit when the master is gone; give them a moment, then clean up.
        time.sleep(0.1)
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> DovecotServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def log(self) -> str:
        parts = []
        for path in (self.log_path, self.directory / "stderr.log"):
            with contextlib.suppress(OSError):
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)

    def _wait_for(self, port: int, greeting: bytes, deadline: float) -> None:
        last: object = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"dovecot exited while starting:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.settimeout(2)
                    banner = sock.recv(512)
                    if banner.startswith(greeting):
                        return
                    last = banner
            except OSError as exc:
                last = exc
            time.sleep(0.05)
        raise RuntimeError(f"dovecot did not answer on 127.0.0.1:{port} ({last}):\n{self.log()}")

    # --- files ----------------------------------------------------------------------------

    def _write_files(self) -> None:
        directory = self.directory
        for name in ("run", "state"):
            (directory / name).mkdir(exist_ok=True)
        gid = self.account.pw_gid
        ssl_lines = ["ssl = no"]
        imaps = pop3s = "port = 0"
        if self.tls:
            cert, key = self._make_certificate()
            ssl_lines = [
                "ssl = yes",
                f"ssl_cert = <{cert}",
                f"ssl_key = <{key}",
                "ssl_min_protocol = TLSv1.2",
            ]
            imaps = f"port = {self.imaps_port}\n    ssl = yes"
            pop3s = f"port = {self.pop3s_port}\n    ssl = yes"
        self.config.write_text(
            "\n".join(
                [
                    f"base_dir = {directory / 'run'}",
                    f"state_dir = {directory / 'state'}",
                    f"instance_name = mailer-test-{os.getpid()}-{next(_counter)}",
                    f"log_path = {self.log_path}",
                    f"info_log_path = {self.log_path}",
                    "listen = 127.0.0.1",
                    "protocols = imap pop3",
                    *ssl_lines,
                    "disable_plaintext_auth = no",
                    "auth_mechanisms = plain login",
                    "auth_failure_delay = 0",
                    f"default_internal_user = {self.account.pw_name}",
                    f"default_internal_group = {_group_name(gid)}",
                    f"default_login_user = {self.account.pw_name}",
                    "first_valid_uid = 1",
                    "passdb {",
                    "  driver = passwd-file",
                    f"  args = scheme=PLAIN username_format=%u {directory / 'users'}",
                    "}",
                    "userdb {",
                    "  driver = passwd-file",
                    f"  args = username_format=%u {directory / 'users'}",
                    "}",
                    f"mail_location = maildir:{directory / 'mail'}/%u/Maildir",
                    "service imap-login {",
                    "  chroot =",
                    "  inet_listener imap {",
                    f"    port = {self.imap_port}",
                    "  }",
                    "  inet_listener imaps {",
                    f"    {imaps}",
                    "  }",
                    "}",
                    "service pop3-login {",
                    "  chroot =",
                    "  inet_listener pop3 {",
                    f"    port = {self.pop3_port}",
                    "  }",
                    "  inet_listener pop3s {",
                    f"    {pop3s}",
                    "  }",
                    "}",
                    "service anvil {",
                    "  chroot =",
                    # No authentication penalty: tests fail logins on purpose, all from
                    # 127.0.0.1, and would wait up to 15 s each after a few.
                    "  unix_listener anvil-auth-penalty {",
                    "    mode = 0",
                    "  }",
                    "}",
                    "",
                ]
            ),
            encoding="utf-8",
        )
        self._give_away(directory)

    def _make_certificate(self) -> tuple[Path, Path]:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                        x509.DNSName("localhost"),
                    ]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        cert_path = self.directory / "cert.pem"
        key_path = self.directory / "key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
        self.ca_file = cert_path
        return cert_path, key_path

    def _give_away(self, path: Path) -> None:
        """Everything under the directory belongs to the user Dovecot runs as."""
        if os.geteuid() != 0:
            return
        uid, gid = self.account.pw_uid, self.account.pw_gid
        os.chown(path, uid, gid)
        for root, dirs, files in os.walk(path):  # nothing for a file
            for name in dirs + files:
                os.chown(os.path.join(root, name), uid, gid)

    # --- users and their mailboxes --------------------------------------------------------

    def add_user(self) -> MailUser:
        """A user of its own with an empty Maildir."""
        if self._spare:
            return self._spare.pop(0)
        user = self._new_user()
        self._write_users()
        time.sleep(1.1)  # until Dovecot reads the passwd-file again
        return user

    def _new_user(self, username: str | None = None, password: str | None = None) -> MailUser:
        number = len(self.users)
        name = username or f"user{number}"
        user = MailUser(
            self,
            name,
            # Not ASCII: clients must log in with UTF-8 (IMAP's LOGIN cannot).
            password or f"contraseña-{number}-de-prueba",
            self.directory / "mail" / name / "Maildir",
        )
        for sub in ("cur", "new", "tmp"):
            (user.maildir / sub).mkdir(parents=True, exist_ok=True)
        self._give_away(self.directory / "mail")
        self.users.append(user)
        return user

    def _write_users(self) -> None:
        uid, gid = self.account.pw_uid, self.account.pw_gid
        lines = [
            f"{u.username}:{{PLAIN}}{u.password}:{uid}:{gid}::{u.maildir.parent}\n"
            for u in self.users
        ]
        staged = self.directory / "users.new"
        staged.write_text("".join(lines), encoding="utf-8")
        self._give_away(staged)
        staged.rename(self.directory / "users")

    @property
    def username(self) -> str:
        return self.user.username

    @property
    def password(self) -> str:
        return self.user.password

    def deliver(self, data: bytes, folder: str = "INBOX") -> str:
        return self.user.deliver(data, folder)

    def messages(self, folder: str = "INBOX") -> list[bytes]:
        return self.user.messages(folder)

    def flags(self, folder: str = "INBOX") -> list[str]:
        return self.user.flags(folder)


@dataclass(frozen=True)
class MailUser:
    """One user of a :class:`DovecotServer` and its Maildir."""

    server: DovecotServer
    username: str
    password: str
    maildir: Path

    @property
    def imap_port(self) -> int:
        return self.server.imap_port

    @property
    def pop3_port(self) -> int:
        return self.server.pop3_port

    @property
    def imaps_port(self) -> int:
        return self.server.imaps_port

    @property
    def pop3s_port(self) -> int:
        return self.server.pop3s_port

    @property
    def ca_file(self) -> Path | None:
        return self.server.ca_file

    def folder_path(self, folder: str = "INBOX") -> Path:
        """The Maildir++ directory of *folder* (INBOX is the Maildir itself)."""
        return self.maildir if folder.upper() == "INBOX" else self.maildir / f".{folder}"

    def deliver(self, data: bytes, folder: str = "INBOX") -> str:
        """Write *data* into *folder* as a new message; its Maildir file name."""
        path = self.folder_path(folder)
        for sub in ("cur", "new", "tmp"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns()}.M{next(_counter)}P{os.getpid()}.mailer-test"
        staged = path / "tmp" / name
        staged.write_bytes(data)
        if os.geteuid() == 0:
            account = self.server.account
            for item in (path, path / "cur", path / "new", path / "tmp", staged):
                os.chown(item, account.pw_uid, account.pw_gid)
        staged.rename(path / "new" / name)
        return name

    def _files(self, folder: str) -> list[Path]:
        path = self.folder_path(folder)
        found = [p for sub in ("new", "cur") for p in (path / sub).glob("*") if p.is_file()]
        return sorted(found, key=lambda p: p.name)

    def messages(self, folder: str = "INBOX") -> list[bytes]:
        """The messages in *folder*, read from the Maildir (expunged ones are gone)."""
        return [path.read_bytes() for path in self._files(folder)]

    def flags(self, folder: str = "INBOX") -> list[str]:
        """The Maildir flags of each message in *folder* ("F" flagged, "T" deleted, ...)."""
        return [path.name.partition(":2,")[2] for path in self._files(folder)]


def _group_name(gid: int) -> str:
    import grp

    return grp.getgrgid(gid).gr_name
