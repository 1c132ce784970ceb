"""The suite's independent at-rest scan must itself find every form it claims to (else it proves nothing)."""

from __future__ import annotations

import pytest

import leakscan

PAN = "4242424242424242"


@pytest.mark.parametrize("form", [
    PAN, "4242 4242 4242 4242", "4242-4242-4242-4242", "4242.4242.4242.4242", "4242\\t4242\\t4242\\t4242",
    "\\u0034\\u0032\\u0034\\u0032424242424242", "&#52;&#x32;42424242424242", "4242%204242%204242%204242",
    "4242+4242+4242+4242", "\uff14\uff12\uff14\uff12424242424242", "4242\u200b4242\u00ad4242\u00a04242",
    "4242\\/4242\\/4242\\/4242",
])
def test_scan_finds_each_form(form):
    assert PAN in leakscan.pans_in(f"x {form} y")


def test_scan_finds_utf16_and_masked_is_clean():
    assert PAN in leakscan.pans_in(f"card {PAN}".encode("utf-16-le"))
    assert PAN in leakscan.pans_in(f"card {PAN}".encode("utf-32-be"))
    assert leakscan.pans_in("424242******4242 and 1732800000000") == set()


def test_scan_finds_secret_forms():
    s = "sk_live/abcdef123456"
    for form in leakscan.secret_forms(s):
        assert leakscan.secrets_in(f"echo {form} end", [s]) == {s}
    assert leakscan.secrets_in("echo ******************** end", [s]) == set()
