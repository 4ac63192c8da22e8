"""Where webhooks may be posted: the target policy against server-side request forgery.

An account user chooses the URL our server posts to.  Without a policy they could make it
call what trusts only this machine or its network: a database on 127.0.0.1, the cloud
metadata service on 169.254.169.254, the office LAN.  So by default only public addresses
are allowed, on ports 80, 443 and 1024-65535; ``webhooks.allowed_networks`` opens the
operator's own networks (receivers on an internal network) and ``webhooks.allowed_ports``
other ports.

The policy is applied when a URL is saved (``check_target``: the literal address, or every
address its name resolves to) and whenever a delivery opens a connection
(``PinnedBackend``): the name is resolved once, every address is checked and the
connection is made to a checked address, with the original Host header and TLS verified
against the name.  A name whose DNS answer changes after it was saved (DNS rebinding)
gains nothing.  Addresses written in other forms are judged by the address they reach:
IPv4 in decimal, hex or octal (``2130706433``, ``0x7f.1``, ``0177.0.0.1``), and the IPv4
inside IPv4-mapped, 6to4, Teredo and NAT64 IPv6 addresses.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import SplitResult

import httpcore2

from mailer.core.config import WebhookSettings
from mailer.core.errors import Term, ValidationFailed
from mailer.webhooks.errors import TargetRefused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_PORTS = {"http": 80, "https": 443}
_RFC1918 = tuple(
    ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)
_ULA = ipaddress.IPv6Network("fc00::/7")
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_IPV4_PART = re.compile(r"0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*")


@dataclass(frozen=True, slots=True)
class TargetPolicy:
    """The networks and ports webhooks may be posted to besides the public Internet."""

    allowed_networks: tuple[Network, ...] = ()
    allowed_ports: tuple[tuple[int, int], ...] = ((80, 80), (443, 443), (1024, 65535))

    @classmethod
    def from_settings(cls, settings: WebhookSettings) -> TargetPolicy:
        return cls(
            tuple(ipaddress.ip_network(network) for network in settings.allowed_networks),
            tuple(settings.port_ranges),
        )

    def port_allowed(self, port: int) -> bool:
        return any(low <= port <= high for low, high in self.allowed_ports)

    def _allowed(self, address: IPAddress) -> bool:
        return any(address in network for network in self.allowed_networks)

    def refusal(self, address: IPAddress) -> tuple[IPAddress, str] | None:
        """``(the address judged, why)`` if *address* may not be posted to, else None."""
        if self._allowed(address):
            return None
        for judged in reached(address):
            if self._allowed(judged):
                continue
            reason = non_public_reason(judged)
            if reason is not None:
                return judged, reason
        return None

    def check_port(self, port: int) -> None:
        if not self.port_allowed(port):
            allowed = ", ".join(
                str(low) if low == high else f"{low}-{high}" for low, high in self.allowed_ports
            )
            raise TargetRefused(
                "webhooks may not be posted to port {port}; the allowed ports are {allowed} "
                "(webhooks.allowed_ports)",
                field="url",
                port=port,
                allowed=allowed,
            )

    def check_address(self, host: str, address: IPAddress) -> None:
        refused = self.refusal(address)
        if refused is None:
            return
        judged, reason = refused
        target = host if _is_standard_literal(host) else f"{host} ({address})"
        if judged != address:
            target += f" = {judged}"
        raise TargetRefused(
            "webhooks may not be posted to {target}, {reason}; an administrator can allow "
            "its network in webhooks.allowed_networks",
            field="url",
            target=target,
            reason=Term(reason),
        )

    def checked_addresses(self, host: str, port: int) -> list[IPAddress]:
        """The addresses of *host* to connect to: resolved once, every one of them checked.

        Raises :class:`TargetRefused` if the port or any address is refused (a name that
        also points somewhere refused is not trusted), OSError if *host* does not resolve.
        """
        self.check_port(port)
        found = addresses(host, port)
        if not found:
            raise OSError(f"{host} has no address")
        for address in found:
            self.check_address(host, address)
        return [connectable(address) for address in found]


def _is_standard_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip().removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    return True


def reached(address: IPAddress) -> list[IPAddress]:
    """The addresses a connection to *address* reaches: itself, or the IPv4 address an IPv6
    form carries (IPv4-mapped, NAT64: only that one, the translator is the network's own;
    6to4, Teredo: the relay's and that one)."""
    if isinstance(address, ipaddress.IPv4Address):
        return [address]
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if any(address in network for network in _NAT64):
        return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    found: list[IPAddress] = [address]
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.append(address.teredo[1])
    return found


def non_public_reason(address: IPAddress) -> str | None:
    """Why *address* is not a public Internet address (a phrase), or None if it is one."""
    v4 = isinstance(address, ipaddress.IPv4Address)
    if address.is_loopback:
        return "a loopback address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_link_local:
        return "a link-local address (such as the cloud metadata service)"
    if address.is_multicast:
        return "a multicast address"
    if v4 and address == _BROADCAST:
        return "the broadcast address"
    if v4 and address in _CGNAT:
        return "a carrier-grade NAT address"
    if any(address in network for network in _RFC1918) or address in _ULA:
        return "a private address"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "a site-local address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private or not address.is_global:
        return "an address reserved for special use"
    return None


def connectable(address: IPAddress) -> IPAddress:
    """The address to open the socket to (an IPv4-mapped address as plain IPv4)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def legacy_ipv4(text: str) -> ipaddress.IPv4Address | None:
    """IPv4 written as inet_aton(3) and browsers read it: one to four parts, each decimal,
    octal (leading 0) or hex (0x), the last filling the remaining bytes (``2130706433``,
    ``0x7f.1``, ``0177.0.0.1``); None if *text* is not such an address."""
    parts = text.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()  # a trailing dot, as in a fully qualified name
    if not 1 <= len(parts) <= 4 or not all(_IPV4_PART.fullmatch(part) for part in parts):
        return None
    values = []
    for part in parts:
        if part[:2].lower() == "0x":
            values.append(int(part[2:] or "0", 16))
        elif part.startswith("0"):
            values.append(int(part, 8))
        else:
            values.append(int(part))
    *leading, last = values
    if any(value > 255 for value in leading) or last >= 256 ** (5 - len(values)):
        return None
    number = last
    for index, value in enumerate(leading):
        number += value << (8 * (3 - index))
    return ipaddress.IPv4Address(number)


def literal_address(host: str) -> IPAddress | None:
    """The address *host* is written as (IPv6 with or without brackets, any IPv4 form)."""
    name = host.strip().removeprefix("[").removesuffix("]")
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return legacy_ipv4(name)


def resolve(host: str, port: int) -> list[IPAddress]:
    """The addresses of the name *host*, from the system resolver (the hosts file, then
    DNS), as a connection would use them; raises OSError if it does not resolve."""
    found: list[IPAddress] = []
    for *_info, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        address = ipaddress.ip_address(sockaddr[0])
        if address not in found:
            found.append(address)
    return found


def addresses(host: str, port: int) -> list[IPAddress]:
    """The address of a literal *host*, or those its name resolves to (resolved once)."""
    literal = literal_address(host)
    if literal is not None:
        return [literal]
    return resolve(host, port)


def check_target(parts: SplitResult, policy: TargetPolicy) -> None:
    """Refuse a URL (already split) whose port or any of whose addresses the policy
    refuses; an unresolvable name is refused too (there would be nowhere to post)."""
    host = parts.hostname or ""
    port = DEFAULT_PORTS[parts.scheme] if parts.port is None else parts.port
    policy.check_port(port)
    try:
        found = addresses(host, port)
    except (OSError, UnicodeError):
        found = []
    if not found:
        raise ValidationFailed(
            "the webhook host {host} cannot be resolved: check the name", field="url", host=host
        )
    for address in found:
        policy.check_address(host, address)


class RefusedConnection(httpcore2.ConnectError):
    """A connection the target policy did not allow (its message says why)."""


class PinnedBackend(httpcore2.SyncBackend):
    """httpcore's network backend, connecting only to addresses the policy allows."""

    def __init__(self, policy: TargetPolicy) -> None:
        self.policy = policy

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.NetworkStream:
        try:
            checked = self.policy.checked_addresses(host, port)
        except TargetRefused as exc:
            raise RefusedConnection(exc.message) from None
        except (OSError, UnicodeError) as exc:
            raise httpcore2.ConnectError(f"cannot resolve {host}: {exc}") from None
        options = list(socket_options or ())
        failure: Exception | None = None
        for address in checked:
            try:
                # A numeric address: no second lookup, the socket goes where was checked.
                return super().connect_tcp(str(address), port, timeout, local_address, options)
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure
