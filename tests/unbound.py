"""A real DNS server for tests: Debian's unbound on 127.0.0.1, serving test zones.

``UnboundServer`` writes a configuration in a temporary directory, starts ``unbound -d`` on a
free port (UDP and TCP), waits until it answers and stops the process it started.  Names
outside the served zones are forwarded over TCP to a closed local port, so nothing leaves
the machine and they fail fast with SERVFAIL.

``DEFAULT_LOCAL_ZONES``/``DEFAULT_LOCAL_DATA`` cover every case cleaning distinguishes; the
constants below name the test domains.  Extra zones and records (``local_zones``,
``local_data``) are written in one pass, so thousands of generated domains start quickly
(``generated_mx_domains``).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

import dns.exception
import dns.message
import dns.query

UNBOUND = Path("/usr/sbin/unbound")

# --- the default test domains ---------------------------------------------------------------

MX_DOMAIN = "mx.casos.pe"  # two MX, both with addresses
MX_HOSTS = ("mx1.casos.pe", "mx2.casos.pe")
MANY_MX_DOMAIN = "varios-mx.casos.pe"  # four MX; only the last (preference 40) has an address
A_ONLY_DOMAIN = "solo-a.casos.pe"  # implicit MX through A
AAAA_ONLY_DOMAIN = "solo-aaaa.casos.pe"  # implicit MX through AAAA
NULL_MX_DOMAIN = "nulo.casos.pe"  # "MX 0 ." (RFC 7505)
NODATA_DOMAIN = "sin-datos.casos.pe"  # exists (TXT), no MX, A or AAAA
NXDOMAIN_DOMAIN = "inexistente.casos.pe"
MX_TO_NXDOMAIN = "mx-fantasma.casos.pe"  # MX target does not exist
MX_TO_NODATA = "mx-sin-ip.casos.pe"  # MX target exists without an address
MX_ONE_DEAD = "mx-medio.casos.pe"  # first MX target does not exist, second does
MX_TO_TIMEOUT = "mx-lento.casos.pe"  # MX target's lookup is dropped (times out)
LONG_TTL_DOMAIN = "ttl-largo.casos.pe"  # MX and target with a one-day TTL
SHORT_TTL = 120  # TTL of MX_DOMAIN's records
NEGATIVE_TTL = 60  # SOA minimum of casos.pe: how long NXDOMAIN/NODATA may be cached
IDN_DOMAIN = "correo.españa.pe"
IDN_ASCII = "correo.xn--espaa-rta.pe"
TIMEOUT_DOMAIN = "lento.pe"  # queries dropped
REFUSED_DOMAIN = "rechazo.pe"  # REFUSED
SERVFAIL_DOMAIN = "fallo.pe"  # forwarded to a closed port: SERVFAIL
TYPO_WITH_MX = "gmial.com"
TYPO_NXDOMAIN = "hotmial.com"
DISPOSABLE_DOMAIN = "mailinator.com"
GMAIL = "gmail.com"
HOTMAIL = "hotmail.com"

DEFAULT_LOCAL_ZONES: tuple[str, ...] = (
    '"casos.pe." static',
    f'"{IDN_ASCII.split(".", 1)[1]}." static',
    f'"{TIMEOUT_DOMAIN}." deny',
    f'"{REFUSED_DOMAIN}." always_refuse',
    f'"{TYPO_WITH_MX}." static',
    f'"{TYPO_NXDOMAIN}." static',
    f'"{DISPOSABLE_DOMAIN}." static',
    f'"{GMAIL}." static',
    f'"{HOTMAIL}." static',
)

DEFAULT_LOCAL_DATA: tuple[str, ...] = (
    f"casos.pe. 3600 IN SOA ns.casos.pe. hostmaster.casos.pe. 1 3600 600 86400 {NEGATIVE_TTL}",
    f"{MX_DOMAIN}. {SHORT_TTL} IN MX 10 {MX_HOSTS[0]}.",
    f"{MX_DOMAIN}. {SHORT_TTL} IN MX 20 {MX_HOSTS[1]}.",
    f"{MX_HOSTS[0]}. {SHORT_TTL} IN A 192.0.2.1",
    f"{MX_HOSTS[1]}. {SHORT_TTL} IN A 192.0.2.2",
    f"{MX_HOSTS[1]}. {SHORT_TTL} IN AAAA 2001:db8::2",
    f"{MANY_MX_DOMAIN}. 300 IN MX 10 uno.fantasma.casos.pe.",
    f"{MANY_MX_DOMAIN}. 300 IN MX 20 dos.fantasma.casos.pe.",
    f"{MANY_MX_DOMAIN}. 300 IN MX 30 {NODATA_DOMAIN}.",
    f"{MANY_MX_DOMAIN}. 300 IN MX 40 {MX_HOSTS[0]}.",
    f"{A_ONLY_DOMAIN}. 300 IN A 192.0.2.10",
    f"{AAAA_ONLY_DOMAIN}. 300 IN AAAA 2001:db8::10",
    f"{NULL_MX_DOMAIN}. 300 IN MX 0 .",
    f'{NODATA_DOMAIN}. 300 IN TXT "v=spf1 -all"',
    f"{MX_TO_NXDOMAIN}. 300 IN MX 10 fantasma.casos.pe.",
    f"{MX_TO_NODATA}. 300 IN MX 10 {NODATA_DOMAIN}.",
    f"{MX_ONE_DEAD}. 300 IN MX 10 fantasma.casos.pe.",
    f"{MX_ONE_DEAD}. 300 IN MX 20 {MX_HOSTS[1]}.",
    f"{MX_TO_TIMEOUT}. 300 IN MX 10 mx.{TIMEOUT_DOMAIN}.",
    f"{LONG_TTL_DOMAIN}. 86400 IN MX 10 mx.{LONG_TTL_DOMAIN}.",
    f"mx.{LONG_TTL_DOMAIN}. 86400 IN A 192.0.2.3",
    f"{IDN_ASCII}. 300 IN MX 10 {MX_HOSTS[0]}.",
    f"{TYPO_WITH_MX}. 300 IN MX 10 mx.{TYPO_WITH_MX}.",
    f"mx.{TYPO_WITH_MX}. 300 IN A 192.0.2.20",
    f"{DISPOSABLE_DOMAIN}. 300 IN MX 10 mail.{DISPOSABLE_DOMAIN}.",
    f"mail.{DISPOSABLE_DOMAIN}. 300 IN A 192.0.2.30",
    f"{GMAIL}. 300 IN MX 5 gmail-smtp-in.l.{GMAIL}.",
    f"gmail-smtp-in.l.{GMAIL}. 300 IN A 192.0.2.40",
    f"{HOTMAIL}. 300 IN MX 10 mx.{HOTMAIL}.",
    f"mx.{HOTMAIL}. 300 IN AAAA 2001:db8::50",
)


def generated_mx_domains(
    count: int, parent: str = "masivo.pe"
) -> tuple[list[str], list[str], list[str]]:
    """*count* domains under *parent*, each with an MX to one shared host:
    ``(domains, local_zones, local_data)`` for ``UnboundServer``."""
    host = f"mx.{parent}"
    domains = [f"d{i}.{parent}" for i in range(count)]
    zones = [f'"{parent}." static']
    data = [f"{host}. 300 IN A 192.0.2.99"]
    data.extend(f"{domain}. 300 IN MX 10 {host}." for domain in domains)
    return domains, zones, data


def _free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port for unbound")


def _quote(record: str) -> str:
    return f"'{record}'" if '"' in record else f'"{record}"'


class UnboundServer:
    """``with UnboundServer() as server: ... server.address`` ("127.0.0.1:PORT")."""

    def __init__(
        self,
        *,
        local_zones: Iterable[str] = (),
        local_data: Iterable[str] = (),
        defaults: bool = True,
        binary: Path = UNBOUND,
        startup_timeout: float = 10.0,
    ) -> None:
        self.local_zones: Sequence[str] = [
            *(DEFAULT_LOCAL_ZONES if defaults else ()),
            *local_zones,
        ]
        self.local_data: Iterable[str] = local_data
        self.defaults = defaults
        self.binary = binary
        self.startup_timeout = startup_timeout
        self.host = "127.0.0.1"
        self.port = 0
        self.closed_port = 0
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log(self) -> str:
        if self._tempdir is None:
            return ""
        path = Path(self._tempdir.name) / "unbound.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def config(self, directory: Path) -> str:
        lines = [
            "server:",
            f"  interface: {self.host}@{self.port}",
            f"  port: {self.port}",
            "  do-daemonize: no",
            '  username: ""',
            '  chroot: ""',
            '  pidfile: ""',
            "  use-syslog: no",
            '  logfile: ""',
            f'  directory: "{directory}"',
            '  module-config: "iterator"',
            "  do-not-query-localhost: no",
            "  num-threads: 1",
            "  verbosity: 0",
            "  do-ip6: no",
            "  access-control: 127.0.0.0/8 allow",
        ]
        lines.extend(f"  local-zone: {zone}" for zone in self.local_zones)
        data = [*(DEFAULT_LOCAL_DATA if self.defaults else ()), *self.local_data]
        lines.extend(f"  local-data: {_quote(record)}" for record in data)
        lines += ["remote-control:", "  control-enable: no"]
        # Everything else (and SERVFAIL_DOMAIN by name) goes to a port nobody listens on.
        for zone in (f"{SERVFAIL_DOMAIN}.", "."):
            lines += [
                "forward-zone:",
                f'  name: "{zone}"',
                f"  forward-addr: 127.0.0.1@{self.closed_port}",
                "  forward-tcp-upstream: yes",
            ]
        return "\n".join(lines) + "\n"

    def start(self) -> UnboundServer:
        if not self.binary.exists():
            raise FileNotFoundError(self.binary)
        self._tempdir = tempfile.TemporaryDirectory(prefix="unbound-")
        directory = Path(self._tempdir.name)
        self.port = _free_port()
        self.closed_port = _free_port()
        conf = directory / "unbound.conf"
        conf.write_text(self.config(directory), encoding="utf-8")
        with (directory / "unbound.log").open("wb") as log:
            self._process = subprocess.Popen(
                [str(self.binary), "-d", "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_until_answering()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_answering(self) -> None:
        assert self._process is not None
        query = dns.message.make_query("localhost.", "A")
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"unbound exited ({self._process.returncode}):\n{self.log}")
            try:
                dns.query.udp(query, self.host, port=self.port, timeout=0.2)
            except (dns.exception.Timeout, OSError):
                time.sleep(0.02)
                continue
            return
        raise RuntimeError(f"unbound did not answer within {self.startup_timeout} s:\n{self.log}")

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
            with contextlib.suppress(OSError):
                self._tempdir.cleanup()
            self._tempdir = None

    def __enter__(self) -> UnboundServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
