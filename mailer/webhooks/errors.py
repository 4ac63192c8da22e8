"""Errors of outbound webhooks."""

from __future__ import annotations

from mailer.core.errors import ValidationFailed


class TargetRefused(ValidationFailed):
    """A webhook URL whose host or port the target policy refuses (see ``targets``); the
    API answers it as any ``validation_failed`` on field ``url``."""
