"""Shared fixtures for the content tests: the real-world templates in tests/fixtures."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
TEMPLATES = REPO / "tests" / "fixtures" / "email_templates"

# The package is not installed in the venv and the project has no pytest `pythonpath`
# setting yet: make `import mailer` work when pytest is run from the repository.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def read_template() -> Callable[[str], str]:
    def read(name: str) -> str:
        return (TEMPLATES / name).read_text(encoding="utf-8")

    return read
