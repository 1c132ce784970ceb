"""Generated ids can never be taken for a card number, by any scrubber, in any text."""

from __future__ import annotations

import re

import pytest

from pangate.common import ids
from pangate.common.ids import hex_id
from pangate.sinks.scrubber import default as sink_scrubber

SHAPE = re.compile(r"[a-f][0-9a-f]*[a-f]")


def test_a_random_hex_id_can_look_like_a_card_number():
    """Why ids are shaped (an id a CI run lost its audit record to): uuid4 hex, 13 digits in a
    row, Luhn-valid: the decision line's id was starred and no longer matched its record."""
    line = "pangate decision id=9fac54d6083245098272 identity=svc"
    assert sink_scrubber().text(line) != line


@pytest.mark.parametrize("length", [3, 16, 20, 32])
def test_ids_have_the_shape(length):
    for _ in range(20000 if length == 20 else 2000):
        value = hex_id(length)
        assert len(value) == length and SHAPE.fullmatch(value), value
        assert not re.search(r"[0-9]{12}", value), value


def test_ids_pass_every_sink_unchanged_even_beside_digits():
    scrub = sink_scrubber()
    for _ in range(5000):
        value = hex_id(20)
        for text in (f"pangate decision id={value} identity=svc", f"1234567 {value} 8901234",
                     f"apr_{hex_id(16)} {value}", value):
            assert scrub.text(text) == text, text


def test_a_draw_with_a_long_digit_run_is_drawn_again(monkeypatch):
    draws = iter(["6083245098272999", "0123456789abcdef01"])
    monkeypatch.setattr(ids.secrets, "token_hex", lambda n: next(draws))
    assert not re.search(r"[0-9]{12}", hex_id(20))
    with pytest.raises(StopIteration):  # both draws were taken: the first was refused
        next(draws)


def test_request_and_approval_ids_are_shaped():
    from mitmproxy.test import tflow

    from pangate.approval.model import Ledger
    from pangate.chain.context import request_id
    from pangate.policy.model import Approval

    rids = {request_id(tflow.tflow()) for _ in range(200)}
    assert all(len(r) == 20 and SHAPE.fullmatch(r) for r in rids) and len(rids) == 200
    ledger = Ledger()
    rule = Approval("r", ("svc",), (), None, frozenset({"POST"}), ("/",), (), ("alice",), 1, 60.0, "hold", 0.0,
                    False, 1)
    apr = {ledger.open(rule, "svc", {}, None).id for _ in range(200)}
    assert all(re.fullmatch(r"apr_[a-f][0-9a-f]{14}[a-f]", a) for a in apr) and len(apr) == 200
    with pytest.raises(ValueError):
        hex_id(2)
