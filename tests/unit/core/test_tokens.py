from __future__ import annotations

import pytest

from mailer.core.tokens import BadToken, sign, unsign


def test_round_trip_and_url_safe() -> None:
    token = sign("k", "unsubscribe", "12345")
    assert unsign("k", "unsubscribe", token) == "12345"
    assert all(c.isalnum() or c in "-_." for c in token)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # MAC changed
        lambda t: "OTk5." + t.split(".", 1)[1],  # payload swapped for "999"
        lambda t: t.replace(".", ""),  # malformed
        lambda t: "",
    ],
)
def test_tampered_tokens_are_refused(mutate: object) -> None:
    token = sign("k", "unsubscribe", "12345")
    with pytest.raises(BadToken):
        unsign("k", "unsubscribe", mutate(token))  # type: ignore[operator]


def test_purpose_and_secret_are_bound() -> None:
    token = sign("k", "click", "1")
    with pytest.raises(BadToken):
        unsign("k", "unsubscribe", token)
    with pytest.raises(BadToken):
        unsign("other", "click", token)
