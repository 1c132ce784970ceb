"""The sink scrubber: every string and bytes it is handed comes back with nothing sensitive in it."""

from __future__ import annotations

import base64
import io
import logging
import sys

import pytest

from pangate.credentials.forms import Redactor, echo_forms
from pangate.sinks import output
from pangate.sinks.scrubber import SecretRegistry, SinkScrubber

PAN = "4111111111111111"
SECRET = "sk_live/9fQ+x2Zk8wLmPq"


@pytest.fixture
def scrubber():
    reg = SecretRegistry()
    reg.replace({"processor": (SECRET, None), "legacy": ("hunter2hunter2", "svc")})
    return SinkScrubber(secrets=reg)


def test_pans_are_masked_in_text_bytes_and_structures(scrubber):
    assert PAN not in scrubber.text(f"GET /v1/cards/{PAN} 200")
    assert PAN.encode() not in scrubber.data(f"card={PAN}".encode())
    rec = scrubber.value({"reason": f"path /{PAN}", PAN: [f"x {PAN}", (PAN.encode(),)], "n": 3})
    flat = repr(rec)
    assert PAN not in flat and rec["n"] == 3


@pytest.mark.parametrize("form", echo_forms(SECRET) + echo_forms("hunter2hunter2", "svc"))
def test_every_echo_form_of_a_secret_is_starred(scrubber, form):
    out = scrubber.text(f'{{"echo": "{form}", "next": 1}}')
    assert form not in out and '"next": 1' in out


def test_base64_of_a_secret_inside_a_longer_blob(scrubber):
    for lead in (b"", b"a", b"ab", b"abc:"):
        blob = base64.b64encode(lead + SECRET.encode() + b"tail").decode()
        out = scrubber.text(blob)
        assert base64.b64decode(out.replace("*", "A") + "==="[: (4 - len(out) % 4) % 4], validate=False) \
            .find(SECRET.encode()) < 0


def test_bearer_material_is_redacted(scrubber):
    jwt = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJkZW1vIn0.c2lnbmF0dXJlc2lnbmF0dXJl"
    for line in (f"token {jwt}", "Proxy-Authorization: Basic ZGVtbzpzZWNyZXRzZWNyZXQ=",
                 'headers: {"authorization": "Bearer abcdefghijkl"}'):
        out = scrubber.text(line)
        assert jwt not in out and "ZGVtbzpzZWNyZXRzZWNyZXQ" not in out and "abcdefghijkl" not in out


def test_harmless_text_is_untouched(scrubber):
    line = "pangate decision id=5f0c allow demo-client GET /v1/charges?limit=10 took 1699999999999 ms"
    assert scrubber.text(line) == line


def test_stream_redactor_finds_a_form_split_at_every_offset():
    r = Redactor(echo_forms(SECRET))
    body = f"before {SECRET} after".encode()
    for cut in range(len(body) + 1):
        s = r.stream()
        out = s.feed(body[:cut]) + s.feed(body[cut:]) + s.flush()
        assert len(out) == len(body) and SECRET.encode() not in out


def test_output_scrubs_log_records_and_printed_lines(scrubber, monkeypatch):
    real = io.StringIO()
    monkeypatch.setattr(sys, "stdout", real)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    saved = logging.getLogRecordFactory()
    try:
        output.install(scrubber)
        handler = logging.StreamHandler(sys.stdout)
        log = logging.getLogger("scrub-test")
        log.addHandler(handler)
        log.propagate = False
        log.warning("card %s secret %s", PAN, SECRET)
        try:
            int(f"x{PAN}")
        except ValueError:
            log.exception("failed")
        print(f"GET https://h/{PAN}?k={SECRET}", end="")
        print(" continued")
        sys.stdout.flush()
        text = real.getvalue()
        assert PAN not in text and SECRET not in text
        assert "continued" in text and "failed" in text and "Traceback" in text
    finally:
        logging.setLogRecordFactory(saved)
        log.removeHandler(handler)


@pytest.mark.parametrize("form", [
    "4111 1111 1111 1111", "4111-1111-1111-1111", "4111.1111.1111.1111", "4111_1111_1111_1111",
    "4111/1111/1111/1111", "4111\t1111\t1111\t1111", "4111 - 1111 - 1111 - 1111", "4111\u00a01111\u00a01111\u00a01111",
    "4111\u200b1111\u200b1111\u200b1111", "4111\u00ad1111\u00ad1111\u00ad1111",
    "\uff14\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11",
    "\u0664\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661",
    "ref4111111111111111", "6703444444444449", "3088000000000009",
])
def test_sink_masks_separator_script_and_unknown_range_forms(scrubber, form):
    out = scrubber.text(f"at rest: {form} end")
    digits = "".join(str(int(c)) for c in out if c.isdecimal())
    assert "4111111111111111" not in digits and "6703444444444449" not in digits and "3088000000000009" not in digits
    assert scrubber.data(f"x {form} y".encode()).decode().count("*") >= 6


def test_value_keeps_generated_ids_under_their_keys():
    # A policy digest whose hex holds a Luhn-valid run: kept under "digest" (an evidence pack's
    # policy history must still match the policy), starred anywhere else.
    digest = "ab4111111111111111" + "c" * 46
    out = SinkScrubber(secrets=SecretRegistry()).value({"digest": digest, "note": digest, "digest2": [digest]})
    assert out["digest"] == digest
    assert "4111111111111111" not in out["note"] and "4111111111111111" not in out["digest2"][0]
    # Only the generated shape is kept: a card number under the same key is still masked.
    assert SinkScrubber(secrets=SecretRegistry()).value({"digest": "4111111111111111"})["digest"] != "4111111111111111"
