"""Thumbnails of messages: PNG screenshots of rendered HTML taken with headless Chromium.

:func:`render_png` writes the HTML to a scratch directory and runs Debian's Chromium once in
headless mode to screenshot it at a given window size; :class:`ThumbnailCache` keeps the
PNGs on disk, keyed by a hash of the HTML and the size, so a library or template grid is
rendered once. Chromium runs in its own process group with a fresh profile, is killed with
its children when it overruns its time limit, and cannot reach the network: every host name
resolves to nothing, so remote images and fonts fail at once (and show their alt text).

What does not live here: rendering the template itself (:mod:`mailer.content.service`) and
serving the images (``web/``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from mailer.core.errors import ValidationFailed

__all__ = ["DEFAULT_CHROMIUM", "ThumbnailCache", "ThumbnailError", "render_png"]

DEFAULT_CHROMIUM = "/usr/bin/chromium"
MAX_SIDE = 8192
"""Largest width or height asked of Chromium (a screenshot is width x height x 4 bytes)."""
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_STDERR_TAIL = 600
_CACHE_VERSION = b"thumbnail-v1"  # change to invalidate every cached PNG


class ThumbnailError(ValidationFailed):
    """A screenshot could not be taken (no Chromium, a crash, a time-out)."""

    code = "thumbnail_failed"


_LOCKED_DOWN = (
    '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
    "img-src data: https:; style-src 'unsafe-inline'; font-src data: https:\">\n"
)
"""No scripts, no frames, no local files; https images only."""

_HEAD = re.compile(r"<head(?:\s[^>]*)?>", re.IGNORECASE)


def _locked_down(html: str) -> str:
    """*html* with the policy first in its <head> (before the doctype would mean quirks mode)."""
    head = _HEAD.search(html)
    if head is None:
        return _LOCKED_DOWN + html
    return html[: head.end()] + _LOCKED_DOWN + html[head.end() :]


def _chromium_command(chromium: str, page: Path, png: Path, profile: Path, size: str) -> list[str]:
    return [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--hide-scrollbars",
        # No network at all: no host name resolves, so remote resources fail fast.
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={profile}",
        f"--window-size={size}",
        f"--screenshot={png}",
        page.as_uri(),
    ]


def _executable(chromium: str) -> str:
    found = shutil.which(chromium)
    if found is None:
        raise ThumbnailError(
            "Chromium was not found at {path}; install it (apt install chromium) to get thumbnails",
            field="chromium",
            path=chromium,
        )
    return found


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Kill Chromium and every process it started (they share its process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _tail(stderr: bytes) -> str:
    lines = [line for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    return "\n".join(lines)[-_STDERR_TAIL:] or "(no output)"


def render_png(
    html: str,
    *,
    width: int,
    height: int,
    chromium: str = DEFAULT_CHROMIUM,
    timeout: float = 20.0,
) -> bytes:
    """A PNG screenshot of *html* in a *width* x *height* browser window.

    Raises :class:`ThumbnailError` if Chromium is missing, fails, produces no image or
    takes longer than *timeout* seconds (it is then killed with all its processes).
    """
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise ThumbnailError(
            "a thumbnail must be between 1 and {limit} pixels wide and high, not {width}x{height}",
            field="size",
            limit=MAX_SIDE,
            width=width,
            height=height,
        )
    executable = _executable(chromium)
    with tempfile.TemporaryDirectory(prefix="mailer-thumbnail-") as scratch:
        root = Path(scratch)
        page, png, profile = root / "message.html", root / "screenshot.png", root / "profile"
        page.write_text(_locked_down(html), encoding="utf-8")
        # HOME and the XDG folders point into the scratch directory: nothing is left behind.
        env = {
            **os.environ,
            "HOME": scratch,
            "XDG_CONFIG_HOME": str(root / "config"),
            "XDG_CACHE_HOME": str(root / "cache"),
        }
        command = _chromium_command(executable, page, png, profile, f"{width},{height}")
        try:
            # A fixed argument list, no shell; the HTML only reaches Chromium as a file.
            process = subprocess.Popen(  # noqa: S603
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
                cwd=scratch,
                start_new_session=True,  # its own process group, killed as a whole
            )
        except OSError as exc:
            raise ThumbnailError(
                "Chromium ({path}) could not be started: {error}",
                field="chromium",
                path=executable,
                error=str(exc),
            ) from exc
        try:
            _, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(process)
            process.communicate()
            raise ThumbnailError(
                "Chromium took more than {seconds} s to take the screenshot and was stopped",
                field="chromium",
                seconds=timeout,
            ) from None
        finally:
            _stop(process)  # helpers that outlived the browser (zygote, GPU process)
        data = png.read_bytes() if png.is_file() else b""
        if process.returncode != 0 or not data.startswith(_PNG_SIGNATURE):
            raise ThumbnailError(
                "Chromium failed to take the screenshot (exit status {status}): {output}",
                field="chromium",
                status=process.returncode,
                output=_tail(stderr),
            )
        return data


class ThumbnailCache:
    """PNG thumbnails kept on disk under *directory*, one file per (HTML, width, height)."""

    def __init__(
        self,
        directory: Path | str,
        *,
        chromium: str = DEFAULT_CHROMIUM,
        timeout: float = 20.0,
    ) -> None:
        self.directory = Path(directory)
        self.chromium = chromium
        self.timeout = timeout

    def path_for(self, html: str, *, width: int, height: int) -> Path:
        """Where the thumbnail of *html* at this size is (or would be) stored."""
        digest = hashlib.sha256()
        # The size goes first and ends with a newline, so no two keys hash the same bytes.
        digest.update(_CACHE_VERSION + f"\n{width}x{height}\n".encode())
        digest.update(html.encode("utf-8", "surrogatepass"))
        key = digest.hexdigest()
        return self.directory / key[:2] / f"{key}.png"

    def get(self, html: str, *, width: int, height: int) -> bytes:
        """The PNG of *html* at *width* x *height*, rendered on first use."""
        path = self.path_for(html, width=width, height=height)
        with contextlib.suppress(FileNotFoundError):
            cached = path.read_bytes()
            if cached.startswith(_PNG_SIGNATURE):
                return cached
        data = render_png(
            html, width=width, height=height, chromium=self.chromium, timeout=self.timeout
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a reader never sees half a file, concurrent writers are harmless.
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        return data
