"""Human or machine: why an open or a click was (probably) not a person.

Each rule gives a reason code; a hit with no reason is counted as human.  The rules:

- ``head_request``: a HEAD request (link checkers, "existence discovery"); browsers GET.
- ``no_user_agent``: no User-Agent at all.
- ``apple_mpp``: Apple Mail Privacy Protection, which fetches every image of every message
  through Apple's proxy on delivery (and again at random): its User-Agent is a bare
  ``Mozilla/5.0``, its addresses are Apple's 17.0.0.0/8.
- ``proxy_prefetch``: an image proxy (GoogleImageProxy, YahooMailProxy, ...) fetching the
  pixel within ``prefetch_window_seconds`` of sending: fetched on delivery, not on opening.
  Later proxy fetches are people opening the message (the proxy is noted in the data).
- ``scanner_agent``: a known security scanner, link previewer, HTTP library or headless
  browser (Barracuda, Mimecast, Proofpoint, Safe Links, BingPreview, curl, ...).
- ``too_soon``: a click within ``scanner_window_seconds`` of sending (or before the send
  was recorded): no person reads and clicks that fast; gateways scan on arrival.
- ``trap``: an open or click within ``trap_window_seconds`` of a hit on the hidden link.
- ``burst``: ``burst_links`` distinct links of one message clicked within
  ``burst_seconds``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache

from mailer.core.config import TrackingSettings

HEAD_REQUEST = "head_request"
NO_USER_AGENT = "no_user_agent"
APPLE_MPP = "apple_mpp"
PROXY_PREFETCH = "proxy_prefetch"
SCANNER_AGENT = "scanner_agent"
TOO_SOON = "too_soon"
TRAP = "trap"
BURST = "burst"

_APPLE_NETWORK = ipaddress.ip_network("17.0.0.0/8")

_PROXIES = (
    ("google", re.compile(r"googleimageproxy|via ggpht\.com", re.IGNORECASE)),
    ("yahoo", re.compile(r"yahoomailproxy|ymailproxy|yahoo! slurp", re.IGNORECASE)),
    ("microsoft", re.compile(r"outlook-?proxy|owa-?proxy|ms-office-?proxy", re.IGNORECASE)),
    ("other", re.compile(r"image ?proxy|mail ?proxy", re.IGNORECASE)),
)

_SCANNERS = re.compile(
    "|".join(
        (
            r"barracuda",
            r"mimecast",
            r"proofpoint",
            r"ppops-",
            r"safe ?links",
            r"microsoft defender",
            r"existence discovery",
            r"bingpreview",
            r"trend ?micro",
            r"symantec",
            r"messagelabs",
            r"forcepoint",
            r"fortiguard",
            r"ironport",
            r"sophos",
            r"zscaler",
            r"appriver",
            r"trustwave",
            r"urlscan",
            r"virustotal",
            r"^curl/",
            r"^wget/",
            r"python-requests",
            r"python-urllib",
            r"python-httpx",
            r"aiohttp",
            r"go-http-client",
            r"^java/",
            r"apache-httpclient",
            r"okhttp",
            r"libwww-perl",
            r"headlesschrome",
            r"phantomjs",
            r"puppeteer",
            r"slackbot",
            r"facebookexternalhit",
            r"twitterbot",
            r"linkedinbot",
            r"telegrambot",
            r"discordbot",
            r"whatsapp",
            r"googlebot",
            r"bingbot",
            r"\bcrawler\b",
            r"\bspider\b",
            r"\bbot\b",
            r"[a-z]bot/",
        )
    ),
    re.IGNORECASE,
)


@lru_cache(maxsize=8192)
def proxy_of(user_agent: str) -> str | None:
    """Which image proxy a User-Agent names, if any (cached: agents repeat)."""
    for name, pattern in _PROXIES:
        if pattern.search(user_agent):
            return name
    return None


@lru_cache(maxsize=8192)
def is_scanner_agent(user_agent: str) -> bool:
    return _SCANNERS.search(user_agent) is not None


def is_apple_proxy(user_agent: str, ip: str) -> bool:
    if user_agent.strip() == "Mozilla/5.0":
        return True
    return ip.startswith("17.") and _in_apple_network(ip)


@lru_cache(maxsize=8192)
def _in_apple_network(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip) in _APPLE_NETWORK
    except ValueError:
        return False


@dataclass(slots=True)
class Activity:
    """What one message did around the hits being classified (this batch and the recent
    events already stored): link clicks and hidden-link hits, as ``(time, link)``."""

    clicks: list[tuple[datetime, int]] = field(default_factory=list)
    traps: list[datetime] = field(default_factory=list)


def _seconds(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds()


def classify_open(
    *,
    at: datetime,
    method: str,
    user_agent: str,
    ip: str,
    sent_at: datetime | None,
    activity: Activity,
    rules: TrackingSettings,
) -> list[str]:
    reasons = _common(method, user_agent)
    if is_apple_proxy(user_agent, ip):
        reasons.append(APPLE_MPP)
    elif proxy_of(user_agent) and (
        sent_at is None or _seconds(at, sent_at) <= rules.prefetch_window_seconds
    ):
        reasons.append(PROXY_PREFETCH)
    if _near_trap(at, activity.traps, rules):
        reasons.append(TRAP)
    return reasons


def classify_click(
    *,
    at: datetime,
    method: str,
    user_agent: str,
    link: int,
    sent_at: datetime | None,
    activity: Activity,
    rules: TrackingSettings,
) -> list[str]:
    reasons = _common(method, user_agent)
    if proxy_of(user_agent) and SCANNER_AGENT not in reasons:
        reasons.append(SCANNER_AGENT)  # an image proxy does not click
    if sent_at is None or _seconds(at, sent_at) < rules.scanner_window_seconds:
        reasons.append(TOO_SOON)
    if _near_trap(at, activity.traps, rules):
        reasons.append(TRAP)
    if in_burst(at, link, activity.clicks, rules):
        reasons.append(BURST)
    return reasons


def _common(method: str, user_agent: str) -> list[str]:
    reasons = []
    if method == "HEAD":
        reasons.append(HEAD_REQUEST)
    if not user_agent.strip():
        reasons.append(NO_USER_AGENT)
    elif is_scanner_agent(user_agent):
        reasons.append(SCANNER_AGENT)
    return reasons


def _near_trap(at: datetime, traps: Iterable[datetime], rules: TrackingSettings) -> bool:
    return any(abs(_seconds(at, trap)) <= rules.trap_window_seconds for trap in traps)


def in_burst(
    at: datetime, link: int, clicks: Sequence[tuple[datetime, int]], rules: TrackingSettings
) -> bool:
    """Whether, with this click, ``burst_links`` distinct links of the message were clicked
    within ``burst_seconds`` of each other (this click among them)."""
    near = {other for when, other in clicks if abs(_seconds(at, when)) <= rules.burst_seconds}
    near.add(link)
    return len(near) >= rules.burst_links
