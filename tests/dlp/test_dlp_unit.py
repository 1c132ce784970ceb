"""Outbound DLP reads a body the way the receiving server will."""

from __future__ import annotations

import pytest

from pangate.dlp.addon import body_contains_pan


@pytest.mark.parametrize("body,ctype,found", [
    (b'{"card": "4111111111111111"}', "application/json", True),
    (b'{"card": "\\u0034111111111111111"}', "application/json", True),
    (b'{"card": "\\u00341\\u00311 1111 1111 1111"}', "application/json", True),
    (b'{"n": "\\u0034"}', "application/json", False),
    ('{"card": "4111111111111111"}'.encode("utf-16"), "application/json; charset=utf-16", True),
    ('{"card": "4111111111111111"}'.encode("utf-16"), "application/json", True),  # BOM, no charset
    ('{"card": "4111111111111111"}'.encode("utf-16-le"), "application/json", True),  # NULs, no BOM
    (b"card=4111+1111+1111+1111", "application/x-www-form-urlencoded", True),
    (b'{"ts": 1732800000000}', "application/json", False),
])
def test_body_contains_pan(body, ctype, found):
    assert body_contains_pan(body, ctype) is found
