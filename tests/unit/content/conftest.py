"""Shared fixtures for the content tests: the real-world templates in tests/fixtures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
TEMPLATES = REPO / "tests" / "fixtures" / "email_templates"


@pytest.fixture(scope="session")
def read_template() -> Callable[[str], str]:
    def read(name: str) -> str:
        return (TEMPLATES / name).read_text(encoding="utf-8")

    return read
