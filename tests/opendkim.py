"""A second, independent DKIM verifier for tests: Debian's ``opendkim`` in test mode.

:func:`verify_with_opendkim` writes the message and a ``TestPublicKeys`` file (one
``selector._domainkey.domain  <TXT value>`` line per key) into a temporary directory and
runs ``opendkim -x CONF -vv -t FILE``.  With ``-vv`` opendkim prints the
``Authentication-Results`` header it would add, one ``dkim=`` entry per signature; each
becomes a :class:`SignatureResult` (result, ``d=``, ``s=``, ``a=``, reason).  Keys come only
from that file: opendkim asks no DNS server.  Its exit status is 0 whether signatures pass
or fail, so the results are the only verdict.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

OPENDKIM = Path("/usr/sbin/opendkim")

_AR_HEADER = re.compile(r"hname='Authentication-Results' hvalue='(.*?)'\n", re.S)
_RESULT = re.compile(r'^dkim=(\w+)(?: reason="([^"]*)")?')
_PROPERTY = re.compile(r"\bheader\.([a-z])=(\S+)")


@dataclass(frozen=True, slots=True)
class SignatureResult:
    """opendkim's verdict on one DKIM-Signature."""

    result: str  # pass, fail, neutral, permerror, temperror, policy
    domain: str  # d=
    selector: str  # s=
    algorithm: str  # a=
    reason: str = ""  # why it did not pass ("signature verification failed", ...)

    @property
    def passed(self) -> bool:
        return self.result == "pass"

    def __str__(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        return f"{self.result}{why} d={self.domain} s={self.selector} a={self.algorithm}"


OpendkimVerifier = Callable[[bytes, Mapping[str, str]], list["SignatureResult"]]


def verify_with_opendkim(
    message: bytes,
    public_keys: Mapping[str, str],
    *,
    binary: Path = OPENDKIM,
    timeout: float = 30.0,
) -> list[SignatureResult]:
    """opendkim's result for each DKIM signature of *message*, top to bottom (none if the
    message is unsigned).  *public_keys* maps ``selector._domainkey.domain`` to the TXT
    record's value (``v=DKIM1; k=rsa; p=...``)."""
    if not binary.exists():
        raise FileNotFoundError(f"{binary} (Debian package opendkim)")
    with tempfile.TemporaryDirectory(prefix="opendkim-") as tmp:
        directory = Path(tmp)
        keys = directory / "keys"
        keys.write_text(
            "".join(f"{name.rstrip('.')} {value}\n" for name, value in public_keys.items()),
            encoding="utf-8",
        )
        conf = directory / "opendkim.conf"
        conf.write_text(
            "\n".join(
                [
                    "Mode v",
                    "Syslog no",
                    f"TestPublicKeys {keys}",
                    f"TemporaryDirectory {directory}",
                    "MinimumKeyBits 1024",
                    "AuthservID opendkim.test",
                ]
            )
            + "\n",
            encoding="utf-8",
        )
        path = directory / "message.eml"
        path.write_bytes(message)
        completed = subprocess.run(
            [str(binary), "-x", str(conf), "-vv", "-t", str(path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    output = completed.stdout + completed.stderr
    if completed.returncode != 0:
        raise RuntimeError(f"opendkim exited with {completed.returncode}:\n{output}")
    header = _AR_HEADER.search(output)
    if header is None:
        if "message not signed" in output:
            return []
        raise RuntimeError(f"opendkim printed no Authentication-Results:\n{output}")
    return _parse_results(header.group(1))


def _parse_results(value: str) -> list[SignatureResult]:
    results = []
    for entry in value.split(";")[1:]:  # the first part is the authserv-id
        entry = " ".join(entry.split())
        match = _RESULT.match(entry)
        if match is None:
            continue  # dkim-atps=..., other methods
        tags = dict(_PROPERTY.findall(entry))
        results.append(
            SignatureResult(
                result=match.group(1),
                domain=tags.get("d", ""),
                selector=tags.get("s", ""),
                algorithm=tags.get("a", ""),
                reason=match.group(2) or "",
            )
        )
    return results
