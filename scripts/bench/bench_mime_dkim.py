"""Per-message cost of MIME assembly and DKIM signing on the send path.

Builds N personalised messages with a ~30 KB HTML body (each with its own recipient,
Message-ID and tracked links, as a campaign would) and times, per message:
``mime.assemble``, the RSA-2048 signature, both together, and Ed25519 for comparison.
A small sample also times the stdlib ``email.message`` route and dkimpy, for reference.

    .venv/bin/python scripts/bench/bench_mime_dkim.py [--messages 2000]

Prints one JSON object; figures are microseconds per message (best of --repeat runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout
from mailer.delivery.dkim import (
    DkimSigner,
    generate_ed25519_key,
    generate_rsa_key,
)
from mailer.delivery.mime import MessageHeaders, assemble

ROW = (
    '<tr>\n  <td style="padding: 12px 24px; font-family: Arial, Helvetica, sans-serif; '
    'font-size: 15px; color: #333333; line-height: 22px;">Estimado proveedor {{name}}: le '
    "informamos que el plazo para presentar su propuesta vence el 30 de noviembre. "
    'Más información en <a href="https://t.munilima.gob.pe/c/{{token}}/{i}" '
    'style="color:#0b5cab">este enlace</a>.</td>\n</tr>\n'
)
TEXT = (
    "Estimado proveedor {{name}}:\n\nLe informamos que el plazo para presentar su propuesta "
    "vence el 30 de noviembre.\nMás información: https://t.munilima.gob.pe/c/{{token}}/0\n"
) * 12


def _html_template(target_bytes: int) -> str:
    rows: list[str] = []
    size = 0
    while size < target_bytes:
        row = ROW.replace("{i}", str(len(rows)))
        rows.append(row)
        size += len(row.encode())
    return "<html><body><table>\n" + "".join(rows) + "</table></body></html>\n"


def _per_message(function: Callable[[int], object], count: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for index in range(count):
            function(index)
        best = min(best, time.perf_counter() - started)
    return round(best / count * 1e6, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--html-kb", type=int, default=30)
    args = parser.parse_args()
    count: int = args.messages

    html_template = _html_template(args.html_kb * 1024)
    recipients = [
        {
            "email": f"proveedor{index}@example.pe",
            "name": f"Núñez {index}",
            "html": html_template.replace("{{name}}", f"Núñez {index}").replace(
                "{{token}}", f"tk{index:08d}"
            ),
            "text": TEXT.replace("{{name}}", f"Núñez {index}").replace(
                "{{token}}", f"tk{index:08d}"
            ),
            "message_id": f"{index:032x}@munilima.gob.pe",
        }
        for index in range(count)
    ]
    headers = MessageHeaders(
        from_name="Municipalidad de Lima — Logística",
        from_email="avisos@munilima.gob.pe",
        reply_to="mesa@munilima.gob.pe",
        extra=(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),),
    )
    date = datetime.now(UTC)
    rsa_pem, ed_pem = generate_rsa_key(2048), generate_ed25519_key()
    rsa_signer = DkimSigner.from_pem("munilima.gob.pe", "m2025", rsa_pem)
    rsa_key = serialization.load_pem_private_key(rsa_pem, password=None)
    assert isinstance(rsa_key, rsa.RSAPrivateKey)
    ed_signer = DkimSigner.from_pem("munilima.gob.pe", "m2025e", ed_pem)

    def build(index: int) -> bytes:
        recipient = recipients[index]
        return assemble(
            headers,
            to_email=recipient["email"],
            to_name=recipient["name"],
            subject=f"Comunicado: ¿Qué tal, señor {recipient['name']}? Plazo €",
            html=recipient["html"],
            text=recipient["text"],
            message_id=recipient["message_id"],
            date=date,
            list_unsubscribe=f"<https://t.munilima.gob.pe/u/tk{index:08d}>",
        )

    messages = [build(index) for index in range(count)]

    def stdlib_build(index: int) -> bytes:
        recipient = recipients[index]
        message = EmailMessage()
        message["From"] = "Municipalidad de Lima — Logística <avisos@munilima.gob.pe>"
        message["To"] = f"{recipient['name']} <{recipient['email']}>"
        message["Subject"] = f"Comunicado: ¿Qué tal, señor {recipient['name']}? Plazo €"
        message["Message-ID"] = f"<{recipient['message_id']}>"
        message.set_content(recipient["text"], cte="quoted-printable")
        message.add_alternative(recipient["html"], subtype="html", cte="quoted-printable")
        return message.as_bytes(policy=SMTP)

    sample = min(count, 50)
    figures = {
        "messages": count,
        "html_bytes": len(recipients[0]["html"].encode()),
        "message_bytes": len(messages[0]),
        "assemble_us": _per_message(build, count, args.repeat),
        "rsa2048_sign_us": _per_message(lambda i: rsa_signer.sign(messages[i]), count, args.repeat),
        "assemble_plus_rsa2048_sign_us": _per_message(
            lambda i: rsa_signer.sign(build(i)), count, args.repeat
        ),
        "ed25519_sign_us": _per_message(lambda i: ed_signer.sign(messages[i]), count, args.repeat),
        "reference_rsa2048_private_key_operation_us": _per_message(
            lambda i: rsa_key.sign(messages[i][:400], padding.PKCS1v15(), hashes.SHA256()),
            count,
            args.repeat,
        ),
        "reference_stdlib_email_message_us": _per_message(stdlib_build, sample, 1),
        "reference_dkimpy_rsa2048_sign_us": _per_message(
            lambda i: dkim.sign(messages[i], b"m2025", b"munilima.gob.pe", rsa_pem),
            sample,
            1,
        ),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
