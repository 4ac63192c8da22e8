"""Per-recipient cost of rendering a compiled template: the shipped newsletter (boletín).

Compiles ``templates/email/<template>`` once (CSS inlining, link rewriting, text part),
then renders it for N generated contacts (varied names and companies), each with its own
``link_url`` that turns every link into a tracked URL ``https://t.example.pe/c/<link>/<n>``,
as a campaign worker does. Contacts are generated before the clock starts.

    .venv/bin/python scripts/bench/render.py [--recipients 100000] [--template boletin]

Prints one JSON object last: compile time in ms, the mean render time per recipient and the
99th percentile in microseconds. Goal: <= 300 us per recipient.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run from a checkout
from mailer.content import compile_template  # noqa: E402
from mailer.content.store import load_library_template  # noqa: E402

FIRST_NAMES = (
    "María", "José", "Luis", "Rosa", "Carlos", "Ana", "Jorge", "Carmen", "Juan", "Lucía",
    "Pedro", "Elena", "Miguel", "Sofía", "Víctor", "Milagros", "Raúl", "Gladys", "Iván", "Ñusta",
)  # fmt: skip
LAST_NAMES = (
    "Quispe", "Flores", "Huamán", "Mamani", "Rojas", "García", "Sánchez", "Chávez", "Torres",
    "Ramírez", "Vargas", "Castillo", "Mendoza", "Condori", "Núñez", "Paredes",
)  # fmt: skip
COMPANY_WORDS = (
    "Servicios", "Inversiones", "Constructora", "Distribuidora", "Consultores", "Andina",
    "Amazonía", "Pacífico", "Huallaga", "Ingeniería", "Logística", "Comercial", "del Sur",
)  # fmt: skip
COMPANY_FORMS = ("S.A.C.", "S.A.", "E.I.R.L.", "S.R.L.", "S.A.A.")


def generate_contacts(count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    contacts = []
    for number in range(count):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        words = rng.sample(COMPANY_WORDS, 2)
        contacts.append(
            {
                "email": f"proveedor{number}@example.pe",
                "first_name": "" if number % 17 == 0 else first,  # some rows have no name
                "last_name": last,
                "company": f"{words[0]} {words[1]} {rng.choice(COMPANY_FORMS)}",
                "phone": f"+519{rng.randrange(10**7, 10**8)}",
                "ruc": f"20{rng.randrange(10**8, 10**9)}",
            }
        )
    return contacts


def percentile(sorted_values: list[int], fraction: float) -> int:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--template", default="boletin")
    parser.add_argument("--seed", type=int, default=29733)
    args = parser.parse_args()
    count: int = args.recipients

    item = load_library_template(REPO / "templates" / "email" / args.template)
    started = time.perf_counter()
    template = compile_template(item.subject, item.html, item.text)
    compile_ms = (time.perf_counter() - started) * 1e3

    contacts = generate_contacts(count, args.seed)
    campaign = {"name": "Boletín de noviembre", "id": 1}
    durations: list[int] = []
    html_bytes = 0
    clock = time.perf_counter_ns
    wall = time.perf_counter()
    for number, contact in enumerate(contacts):
        begin = clock()

        def tracked(index: int, url: str, number: int = number) -> str:
            return f"https://t.example.pe/c/{index}/{number}"

        message = template.render(
            {
                "contact": contact,
                "campaign": campaign,
                "unsubscribe_url": f"https://t.example.pe/u/{number}",
            },
            link_url=tracked,
        )
        durations.append(clock() - begin)
        html_bytes += len(message.html)
    wall = time.perf_counter() - wall

    # The last message is checked, so a silently broken render cannot look fast.
    assert f"https://t.example.pe/c/0/{count - 1}" in message.html
    assert contacts[-1]["company"] in message.html
    durations.sort()
    print(
        json.dumps(
            {
                "template": args.template,
                "recipients": count,
                "compile_ms": round(compile_ms, 1),
                "render_us_per_recipient": round(wall / count * 1e6, 1),
                "p99_us": round(percentile(durations, 0.99) / 1e3, 1),
                "p50_us": round(percentile(durations, 0.50) / 1e3, 1),
                "html_bytes_per_recipient": html_bytes // count,
                "goal_us": 300,
            }
        )
    )


if __name__ == "__main__":
    main()
