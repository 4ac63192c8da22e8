"""Thumbnails: a real Chromium screenshot, and the failure paths and the disk cache with a
stand-in "chromium" (a small script), so they run everywhere and fast."""

from __future__ import annotations

import io
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from mailer.content.thumbnails import ThumbnailCache, ThumbnailError, render_png
from mailer.core.errors import ValidationFailed
from tests.conftest import IN_CI

CHROMIUM = "/usr/bin/chromium"
# A valid 1x1 PNG, written by the stand-in at the --screenshot path.
TINY_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201e2a1f1"
    "d40000000049454e44ae426082"
)


def fake_chromium(tmp_path: Path, body: str) -> str:
    """An executable that takes Chromium's arguments and runs *body* (Python)."""
    script = tmp_path / "fake-chromium"
    script.write_text(
        f"#!{sys.executable}\n"
        "import os, sys, time\n"
        "args = dict(a[2:].split('=', 1) for a in sys.argv[1:] if '=' in a)\n"
        f"{body}\n"
    )
    script.chmod(0o755)
    return str(script)


def writes_png(tmp_path: Path) -> str:
    log = tmp_path / "calls.log"
    return fake_chromium(
        tmp_path,
        f"open({str(log)!r}, 'a').write(args['window-size'] + '\\n')\n"
        f"open(args['screenshot'], 'wb').write({TINY_PNG!r})",
    )


@pytest.mark.browser
def test_a_real_screenshot_has_the_window_size() -> None:
    if shutil.which(CHROMIUM) is None:
        if IN_CI:
            pytest.fail(f"{CHROMIUM} is required under CI=true")
        pytest.skip(f"{CHROMIUM} is not installed")
    image_module = pytest.importorskip("PIL.Image")
    page = (
        '<html lang="es"><body style="margin:0;background:#ffffff">'
        '<div style="width:100px;height:50px;background:#ff0000"></div>'
        # A remote image must not hold the screenshot up: no host name resolves.
        '<img src="https://images.example.com/logo.png" alt="logo" width="10" height="10">'
        "</body></html>"
    )

    started = time.monotonic()
    png = render_png(page, width=320, height=200)

    assert time.monotonic() - started < 15
    image = image_module.open(io.BytesIO(png)).convert("RGB")
    assert image.size == (320, 200)
    assert image.getpixel((10, 10)) == (255, 0, 0)
    assert image.getpixel((300, 150)) == (255, 255, 255)


def test_missing_chromium_is_a_clear_validation_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-chromium")

    with pytest.raises(ThumbnailError) as caught:
        render_png("<p>hola</p>", width=100, height=100, chromium=missing)

    assert isinstance(caught.value, ValidationFailed)
    assert caught.value.code == "thumbnail_failed"
    assert "Chromium was not found" in str(caught.value) and missing in str(caught.value)


def test_a_failing_chromium_reports_its_output(tmp_path: Path) -> None:
    chromium = fake_chromium(
        tmp_path, "sys.stderr.write('ERROR: cannot open display\\n'); sys.exit(3)"
    )

    with pytest.raises(ThumbnailError, match=r"exit status 3\): ERROR: cannot open display"):
        render_png("<p>hola</p>", width=100, height=100, chromium=chromium)


def test_no_image_is_an_error_even_with_exit_status_0(tmp_path: Path) -> None:
    chromium = fake_chromium(tmp_path, "open(args['screenshot'], 'wb').write(b'not a png')")

    with pytest.raises(ThumbnailError, match="failed to take the screenshot"):
        render_png("<p>hola</p>", width=100, height=100, chromium=chromium)


def test_a_hung_chromium_is_killed_with_its_children(tmp_path: Path) -> None:
    ids_file = tmp_path / "ids"
    chromium = fake_chromium(
        tmp_path,
        "import subprocess\n"
        "child = subprocess.Popen(['sleep', '60'])\n"  # like Chromium's helper processes
        f"open({str(ids_file)!r}, 'w').write(f'{{os.getpgid(0)}} {{os.getpid()}} {{child.pid}}')\n"
        "time.sleep(60)",
    )

    started = time.monotonic()
    with pytest.raises(ThumbnailError, match=r"more than 0\.5 s"):
        render_png("<p>hola</p>", width=100, height=100, chromium=chromium, timeout=0.5)

    assert time.monotonic() - started < 5
    pgid, *pids = (int(number) for number in ids_file.read_text().split())
    assert pgid != os.getpgid(0)  # its own process group, not the test runner's
    deadline = time.monotonic() + 2
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in pids)


def alive(pid: int) -> bool:
    """Whether *pid* runs (a killed child that nobody has reaped yet is a zombie: dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_sizes_out_of_range_are_refused(tmp_path: Path) -> None:
    for width, height in ((0, 100), (100, -1), (100_000, 100)):
        with pytest.raises(ThumbnailError, match="between 1 and"):
            render_png("<p></p>", width=width, height=height, chromium=writes_png(tmp_path))


def test_cache_renders_once_per_html_and_size(tmp_path: Path) -> None:
    chromium = writes_png(tmp_path)
    cache = ThumbnailCache(tmp_path / "cache" / "thumbnails", chromium=chromium)

    first = cache.get("<p>hola</p>", width=375, height=800)
    again = cache.get("<p>hola</p>", width=375, height=800)
    other_size = cache.get("<p>hola</p>", width=1200, height=800)
    other_html = cache.get("<p>chau</p>", width=375, height=800)

    assert first == again == other_size == other_html == TINY_PNG
    assert (tmp_path / "calls.log").read_text().split() == ["375,800", "1200,800", "375,800"]
    stored = sorted(path.name for path in (tmp_path / "cache").rglob("*") if path.is_file())
    assert len(stored) == 3 and all(name.endswith(".png") for name in stored)
    path = cache.path_for("<p>hola</p>", width=375, height=800)
    assert path.read_bytes() == TINY_PNG and len(path.stem) == 64


def test_cache_renders_again_over_a_damaged_file(tmp_path: Path) -> None:
    cache = ThumbnailCache(tmp_path / "cache", chromium=writes_png(tmp_path))
    path = cache.path_for("<p>hola</p>", width=375, height=800)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"half a fi")

    assert cache.get("<p>hola</p>", width=375, height=800) == TINY_PNG
    assert path.read_bytes() == TINY_PNG


@pytest.mark.browser
def test_a_thumbnail_reads_no_local_file_and_runs_no_script(tmp_path: Path) -> None:
    if shutil.which(CHROMIUM) is None:
        if IN_CI:
            pytest.fail(f"{CHROMIUM} is required under CI=true")
        pytest.skip(f"{CHROMIUM} is not installed")
    image_module = pytest.importorskip("PIL.Image")
    secret = tmp_path / "secret.png"
    image_module.new("RGB", (50, 50), (255, 0, 0)).save(secret)
    page = (
        '<!doctype html><html lang="es"><head><title>x</title></head>'
        '<body style="margin:0;background:#ffffff">'
        f'<img src="{secret.as_uri()}" width="50" height="50" alt="">'
        "<script>document.body.style.background = '#00ff00'</script>"
        "</body></html>"
    )
    image = image_module.open(io.BytesIO(render_png(page, width=200, height=100))).convert("RGB")
    assert image.getpixel((25, 25)) != (255, 0, 0)  # the local file was not loaded
    assert image.getpixel((150, 80)) == (255, 255, 255)  # the script did not run
