"""Fixtures of the browser tests: the real system started as a user would (``mailer demo
--serve`` in a scratch directory) and Debian's Chromium driven by Playwright.

No browser is downloaded: Playwright only drives ``/usr/bin/chromium``.  Without it the
tests are skipped locally and fail under CI=true.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import CLOSED_DNS_PORT, IN_CI, REPO, free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
CREDENTIAL = re.compile(r"^\s*(Usuario|Contraseña):\s*(\S+)\s*$")


@dataclass
class Portal:
    """A running ``mailer demo --serve`` and what it printed."""

    base_url: str
    process: subprocess.Popen[str]
    workdir: Path
    output: list[str] = field(default_factory=list)
    credentials: dict[str, str] = field(default_factory=dict)
    ready: threading.Event = field(default_factory=threading.Event)

    @property
    def email(self) -> str:
        return self.credentials["Usuario"]

    @property
    def password(self) -> str:
        return self.credentials["Contraseña"]

    def log(self) -> str:
        return "".join(self.output[-200:])

    def url(self, path: str) -> str:
        return self.base_url + path


def _read_output(portal: Portal) -> None:
    """Drain the server's stdout so the pipe never fills, noting the printed credentials."""
    assert portal.process.stdout is not None
    for raw in portal.process.stdout:
        line = ANSI.sub("", raw)
        portal.output.append(line)
        match = CREDENTIAL.match(line)
        if match:
            portal.credentials[match.group(1)] = match.group(2)
            if len(portal.credentials) == 2:
                portal.ready.set()
    portal.ready.set()  # the process ended: stop waiting


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT)


def _server_env(workdir: Path, http_port: int, capture_port: int) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MAILER_")}
    env.update(
        MAILER_HTTP_PORT=str(http_port),
        MAILER_BASE_URL=f"http://127.0.0.1:{http_port}",
        MAILER_CAPTURE__PORT=str(capture_port),
        MAILER_RELAY__PORT=str(capture_port),
        MAILER_SECRET_KEY="e2e-test-secret-" + "k" * 32,
        MAILER_CONFIG=str(workdir / "absent.toml"),
        # Nothing leaves the machine: DNS lookups go to a closed local port.
        MAILER_DNS_SERVERS=f"127.0.0.1:{CLOSED_DNS_PORT}",
        MAILER_DNS__TIMEOUT_SECONDS="0.1",
        NO_COLOR="1",
        TERM="dumb",
        COLUMNS="200",
        PYTHONUNBUFFERED="1",
        PYTHONIOENCODING="utf-8",
    )
    return env


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portal]:
    """``mailer demo --serve`` in a fresh directory, with its own HTTP and capture ports."""
    workdir = tmp_path_factory.mktemp("portal")
    (workdir / "templates").symlink_to(REPO / "templates", target_is_directory=True)
    http_port, capture_port = free_port(), free_port()
    while capture_port == http_port:
        capture_port = free_port()
    command = [str(Path(sys.executable).with_name("mailer")), "demo", "--serve"]
    process = subprocess.Popen(
        command,
        cwd=workdir,
        env=_server_env(workdir, http_port, capture_port),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
    )
    portal = Portal(f"http://127.0.0.1:{http_port}", process, workdir)
    reader = threading.Thread(target=_read_output, args=(portal,), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        portal.ready.wait(STARTUP_TIMEOUT)
        if len(portal.credentials) != 2:
            pytest.fail(f"`mailer demo` printed no credentials:\n{portal.log()}")
        while not _healthy(portal.url("/healthz")):
            if process.poll() is not None:
                pytest.fail(f"`mailer demo --serve` exited ({process.returncode}):\n{portal.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no /healthz within {STARTUP_TIMEOUT:.0f} s:\n{portal.log()}")
            time.sleep(0.2)
        yield portal
    finally:
        _stop(process)
        reader.join(timeout=STOP_TIMEOUT)


@pytest.fixture(scope="module")
def chromium_path() -> Path:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is absent (install Debian's chromium package)"
        if IN_CI:
            pytest.fail(f"{message}; required under CI=true")
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture(scope="module")
def screenshots() -> Path:
    """The folder of screenshots (git-ignored), emptied of the previous run's PNGs."""
    SCREENSHOTS.mkdir(exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    return SCREENSHOTS
