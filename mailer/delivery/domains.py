"""Sending domains: one folder per domain under ``sending_domains/`` with ``domain.toml``
and its DKIM private keys (git-ignored, mode 0600).

``mailer domain add DOMAIN`` calls :func:`add_domain` and prints :func:`SendingDomain.records`.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

from mailer.core.errors import Conflict, NotFound, ValidationFailed
from mailer.delivery.dkim import DkimSigner, dns_records, generate_ed25519_key, generate_rsa_key

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True, slots=True)
class SendingDomain:
    domain: str
    selector: str
    rsa_key_pem: bytes
    ed25519_key_pem: bytes | None = None
    ed25519_selector: str | None = None

    def signers(self) -> list[DkimSigner]:
        signers = [DkimSigner.from_pem(self.domain, self.selector, self.rsa_key_pem)]
        if self.ed25519_key_pem and self.ed25519_selector:
            signers.append(
                DkimSigner.from_pem(self.domain, self.ed25519_selector, self.ed25519_key_pem)
            )
        return signers

    def records(self) -> list[tuple[str, str, str]]:
        """The DNS records to publish: DKIM TXT (one per key), SPF, DMARC."""
        records = dns_records(self.domain, self.selector, self.rsa_key_pem, spf_include=None)
        if self.ed25519_key_pem and self.ed25519_selector:
            records.insert(
                1,
                dns_records(
                    self.domain, self.ed25519_selector, self.ed25519_key_pem, spf_include=None
                )[0],
            )
        return records


def normalise_domain(domain: str) -> str:
    candidate = domain.strip().rstrip(".").lower()
    try:
        candidate = candidate.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValidationFailed(
            "'{domain}' is not a valid domain name (example: boletin.entidad.gob.pe)",
            field="domain",
            domain=domain,
        ) from None
    labels = candidate.split(".")
    if len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise ValidationFailed(
            "'{domain}' is not a valid domain name (example: boletin.entidad.gob.pe)",
            field="domain",
            domain=domain,
        )
    return candidate


def add_domain(
    root: Path,
    domain: str,
    *,
    selector: str | None = None,
    ed25519: bool = False,
    replace: bool = False,
) -> SendingDomain:
    """Create the domain's folder with a new RSA-2048 key (and optionally an Ed25519 one)."""
    domain = normalise_domain(domain)
    folder = root / domain
    if (folder / "domain.toml").exists() and not replace:
        raise Conflict(
            "{domain} already exists in {folder}; use --replace to rotate its keys",
            field="domain",
            domain=domain,
            folder=str(folder),
        )
    selector = selector or datetime.now(UTC).strftime("m%Y%m")
    if not _LABEL.match(selector):
        raise ValidationFailed(
            "'{selector}' is not a valid DKIM selector", field="selector", selector=selector
        )
    folder.mkdir(parents=True, exist_ok=True)
    _write_secret(folder / f"{selector}.rsa.pem", generate_rsa_key())
    lines = [
        f'domain = "{domain}"',
        f'selector = "{selector}"',
        f'rsa_key = "{selector}.rsa.pem"',
        f'created_at = "{datetime.now(UTC).isoformat(timespec="seconds")}"',
    ]
    if ed25519:
        ed_selector = f"{selector}e"
        _write_secret(folder / f"{ed_selector}.ed25519.pem", generate_ed25519_key())
        lines += [
            f'ed25519_selector = "{ed_selector}"',
            f'ed25519_key = "{ed_selector}.ed25519.pem"',
        ]
    (folder / "domain.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _load_cached.cache_clear()
    return load_domain(root, domain)


def _write_secret(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def load_domain(root: Path, domain: str) -> SendingDomain:
    """The sending domain of *domain*, or NotFound telling how to add it."""
    domain = normalise_domain(domain)
    folder = root / domain
    toml_path = folder / "domain.toml"
    if not toml_path.exists():
        raise NotFound(
            "sending domain {domain} is not set up: run `mailer domain add {domain}` "
            "and publish the DNS records it prints",
            field="from_email",
            domain=domain,
        )
    return _load_cached(str(folder.resolve()), toml_path.stat().st_mtime_ns)


@lru_cache(maxsize=64)
def _load_cached(folder_path: str, _mtime: int) -> SendingDomain:
    folder = Path(folder_path)
    meta = tomllib.loads((folder / "domain.toml").read_text(encoding="utf-8"))
    ed_key = meta.get("ed25519_key")
    return SendingDomain(
        domain=meta["domain"],
        selector=meta["selector"],
        rsa_key_pem=(folder / meta["rsa_key"]).read_bytes(),
        ed25519_key_pem=(folder / ed_key).read_bytes() if ed_key else None,
        ed25519_selector=meta.get("ed25519_selector"),
    )


def list_domains(root: Path) -> list[SendingDomain]:
    if not root.is_dir():
        return []
    return [
        load_domain(root, folder.name)
        for folder in sorted(root.iterdir())
        if (folder / "domain.toml").exists()
    ]
