"""silo.errors.quote: error messages quote caller input cut to a bounded length."""

from __future__ import annotations

from silo.errors import quote


def test_quote_keeps_short_values_as_repr() -> None:
    assert quote("job-1") == "'job-1'"
    assert quote(b"ab") == "b'ab'"


def test_quote_cuts_long_values_and_says_how_long_they_were() -> None:
    text = quote("x" * 65536)
    assert len(text) < 120
    assert text.startswith("'xxxx") and text.endswith("... (65536 chars)")
    assert quote(b"y" * 500, max_chars=10).endswith("... (500 bytes)")
    assert len(quote(list(range(10_000)))) <= 83
