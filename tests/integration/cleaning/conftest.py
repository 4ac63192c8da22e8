"""A real DNS server (unbound) for the cleaning tests; skipped locally without it, a failure
under CI=true."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import IN_CI
from tests.unbound import UNBOUND, UnboundServer


@pytest.fixture(scope="session")
def dns_server() -> Iterator[UnboundServer]:
    if not UNBOUND.exists():
        message = f"{UNBOUND} is not installed (apt-get install unbound)"
        if IN_CI:
            pytest.fail(f"{message} (required under CI=true)")
        pytest.skip(message)
    with UnboundServer() as server:
        yield server
