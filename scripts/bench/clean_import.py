"""Import and clean a large contact file: 1,000,000 contacts over 20,000 domains served by a
local unbound (nothing leaves the machine).

Generates the CSV (a few dirty rows, duplicates, role accounts and typos among them),
imports it into a list of a fresh SQLite (or --database-url) database with the real
importer, then cleans the list with the real DNS checker.  Prints JSON, the last line:
``{"rows":..., "import_s":..., "clean_s":..., "peak_rss_mb":...}``.

    .venv/bin/python scripts/bench/clean_import.py --rows 1000000 --domains 20000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def generate(path: Path, rows: int, domains: list[str]) -> None:
    rng = random.Random(7)
    roles = ("info", "ventas", "contacto")
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("correo,nombres,apellidos,celular,empresa,ruc\n")
        for i in range(rows):
            domain = domains[i % len(domains)]
            local = roles[i % 3] if i % 997 == 0 else f"persona{i}"
            if i % 50_000 == 1:
                out.write(f"sin-arroba-{i},Mal,Dato,,Empresa,\n")  # a bad row
                continue
            if i % 100_000 == 2:
                domain = "gmial.com"  # a typo
            phone = f"9{rng.randrange(10**8):08d}"
            company = f"Empresa {i % 5000} S.A.C."
            out.write(f"{local}@{domain},Nombre {i},Apellido,{phone},{company},20{i:09d}\n")
        out.write(f"persona3@{domains[3]},Duplicado,,,,\n")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--domains", type=int, default=20_000)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()

    from tests.unbound import UnboundServer, generated_mx_domains

    workdir = Path(tempfile.mkdtemp(prefix="mailer-clean-bench-"))
    domains, zones, data = generated_mx_domains(args.domains)
    csv_path = workdir / "contactos.csv"
    generate(csv_path, args.rows, domains)
    with UnboundServer(local_zones=zones, local_data=data) as dns:
        os.environ.update(
            {
                "MAILER_DATA_DIR": str(workdir / "var"),
                "MAILER_DATABASE_URL": args.database_url,
                "MAILER_DNS_SERVERS": dns.address,
                "MAILER_CONFIG": str(workdir / "absent.toml"),
            }
        )
        from mailer.accounts.service import create_account
        from mailer.audience import clean, service
        from mailer.core.config import get_settings
        from mailer.storage.db import session_scope
        from mailer.storage.migrate import upgrade

        settings = get_settings()
        upgrade(settings)
        with session_scope(settings) as session:
            account = create_account(session, "Bench")
            lst = service.create_list(session, account.id or 0, "Masiva")
            account_id, list_id = account.id or 0, lst.id or 0
        started = time.perf_counter()
        with session_scope(settings) as session:
            report = service.import_contacts(
                session,
                account_id,
                csv_path,
                list_id=list_id,
                progress=lambda _r, _f: session.commit(),
            )
        import_s = time.perf_counter() - started
        rss_after_import = peak_rss_mb()
        started = time.perf_counter()
        with session_scope(settings) as session:
            where = service.target_filter(session, account_id, list_id=list_id)
            tally = clean.clean_contacts(
                session,
                account_id,
                where,
                clean.get_checker(settings),
                progress=lambda _done, _total: session.commit(),
            )
        clean_s = time.perf_counter() - started
    result = {
        "rows": report.rows,
        "created": report.created,
        "errors": len(report.errors),
        "duplicates_in_file": report.duplicates_in_file,
        "domains": args.domains,
        "verdicts": dict(tally.verdicts),
        "import_s": round(import_s, 1),
        "clean_s": round(clean_s, 1),
        "import_rows_per_s": round(report.rows / import_s),
        "peak_rss_after_import_mb": round(rss_after_import, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "database": "postgresql" if args.database_url else "sqlite",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
