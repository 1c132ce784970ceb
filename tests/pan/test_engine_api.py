"""Finding kinds, the one masker factory, and the stream-window bound."""

from __future__ import annotations

import pytest

from pangate.pan import engine, kinds
from pangate.pan.engine import MODES, Masker, masker_from
from pangate.pan.scan import Scanner

KEY = "k" * 32


@pytest.mark.parametrize("doc,kind", [
    (b"card 4111111111111111 x", kinds.PAN),
    (b'{"cvc": "123"}', kinds.CVC),
    (b'{"securityCode": "123"}', kinds.CVC),
    (b"pin=1234", kinds.PIN),
    (b'{"pinBlock": "0412AC89"}', kinds.PIN),
    (b'{"track2": "x"}', kinds.TRACK_FIELD),
    (b"%B4111111111111111^DOE/JOHN^2512101000?", kinds.TRACK1),
    (b";4111111111111111=25121010000?", kinds.TRACK2),
    (b"f35=4111111111111111=25121010000000000000 x", kinds.TRACK2),
])
def test_every_finding_has_a_named_kind(doc, kind):
    finds = Scanner(True, True).scan(doc, 0, len(doc))
    assert [f[4] for f in finds] == [kind]
    assert kind in kinds.Kind.ALL and kinds.is_pan(kind) == (kind in kinds.PAN_KINDS)


def test_policy_and_engine_share_the_mode_list():
    from pangate.policy.model import MASK_MODES

    assert MASK_MODES is MODES


def test_masker_from():
    m = masker_from("last4")
    assert isinstance(m, Masker) and m.mode == "last4" and m.sad
    assert masker_from().mask(b"4111111111111111") == (b"411111******1111", 1)
    h = masker_from("hmac", "K", {"K": KEY})
    assert h.mask(b"4111111111111111")[0] == Masker("hmac", hmac_key=KEY.encode()).mask(b"4111111111111111")[0]
    assert masker_from(sad=False).mask(b'{"cvc": "123"}') == (b'{"cvc": "123"}', 0)
    for args, why in [(("hmac", None, {}), "none named"), (("hmac", "K", {}), "$K is not set"),
                      (("hmac", "K", {"K": "short"}), "at least 16"), (("sha1",), "unknown mask mode")]:
        with pytest.raises(ValueError, match=why.replace("$", r"\$")):
            masker_from(*args)


def test_cli_and_gateway_build_the_same_masker(tmp_path, monkeypatch):
    import types

    from pangate.cli.pan import build_masker
    from pangate.masking.addon import masker_for
    from pangate.policy.model import load_policy

    pol = tmp_path / "p.yaml"
    pol.write_text("version: 1\nsettings:\n  masking: {mode: hmac, hmac_key_env: PG_TEST_KEY}\n")
    monkeypatch.setenv("PG_TEST_KEY", KEY)
    args = types.SimpleNamespace(policy=str(pol), mode=None, hmac_key_env=None)
    doc = b"x 4111 1111 1111 1111 y"
    assert build_masker(args).mask(doc) == masker_for(load_policy(str(pol))).mask(doc)
    monkeypatch.delenv("PG_TEST_KEY")
    with pytest.raises(ValueError, match="PG_TEST_KEY"):
        build_masker(args)
    with pytest.raises(ValueError, match="PG_TEST_KEY"):
        masker_for(load_policy(str(pol)))


def test_a_finding_longer_than_the_lookahead_is_decided_whole():
    # A SAD value of 128 escaped characters (256 bytes) is longer than the
    # look-ahead: cut short at a buffer end it straddles the cut and is
    # decided again; split at every offset, the stream equals the whole body.
    m = Masker()
    value = b"\\n" * 128
    doc = b"x" * 500 + b'{"cardVerificationCvc" :\n    "' + value + b'"}' + b"y" * 500
    want = m.mask(doc)
    assert want[1] == 1 and want[0].count(b"*") == len(value)
    assert len(doc) - 1000 > engine._LOOKAHEAD
    for cut in range(400, len(doc) - 400):
        sm = m.stream()
        assert (sm.feed(doc[:cut]) + sm.feed(doc[cut:]) + sm.flush(), sm.count) == want, cut


# ---- separators (scan.py) ---------------------------------------------------------------------
@pytest.mark.parametrize("doc,want", [
    (b"4111.1111.1111.1111", b"4111.11**.****.1111"),
    (b"4111_1111_1111_1111", b"4111_11**_****_1111"),
    (b"4111/1111/1111/1111", b"4111/11**/****/1111"),
    (b"4111\t1111\t1111\t1111", b"4111\t11**\t****\t1111"),
    (b"4111\n1111\n1111\n1111", b"4111\n11**\n****\n1111"),
    (b"4111\r\n1111\r\n1111\r\n1111", b"4111\r\n11**\r\n****\r\n1111"),
    (b"4111  1111  1111  1111", b"4111  11**  ****  1111"),
    (b"4111 - 1111 - 1111 - 1111", b"4111 - 11** - **** - 1111"),
    (b"3782.822463.10005", b"3782.82****.*0005"),
])
def test_separators(doc, want):
    assert Masker().mask(doc) == (want, 1)


@pytest.mark.parametrize("doc", [
    b"4111    1111 1111 1111",         # a gap of 4 splits the run
    b"amount 4234567.890123 x",        # one dot: a decimal number
    b"4111.1111 1111.1111",            # dots mixed with other gaps
    b"41.111.111.111 52.222.222.222",  # IP addresses
    b"4234567\n890123",                # two numbers on two lines
])
def test_separator_rules_keep_numbers_out(doc):
    assert Masker().mask(doc) == (doc, 0)


# ---- IIN table and unknown brands (iin.py) ------------------------------------------------------
def _pan(prefix, n):
    # A fixed seed: make_pan's default seeds from hash(), which differs per process, and
    # one draw in ~30 turned "2123..." into 21 + a valid MMDD (excluded as a date).
    import random

    from pan_corpus import make_pan
    return make_pan(prefix, n, random.Random(f"{prefix}/{n}")).encode()


@pytest.mark.parametrize("prefix,n,brand", [
    ("6703", 17, "bancontact"), ("6771", 16, "maestro"), ("3088", 16, "jcb"), ("3102", 19, "jcb"),
    ("3115", 16, "jcb"), ("3158", 16, "jcb"), ("3340", 16, "jcb"), ("3130", 19, "tunion"),
    ("606282", 16, "hipercard"), ("9891", 16, "dinacard"),
])
def test_ranges_in_live_use(prefix, n, brand):
    from pangate.pan.engine import brand_of
    pan = _pan(prefix, n)
    assert brand_of(pan) == brand
    assert [f[4] for f in Scanner(True, True).scan(pan, 0, len(pan))] == [kinds.PAN]


@pytest.mark.parametrize("prefix,n", [("2900", 16), ("4999", 14), ("5999", 16), ("6900", 13), ("3300", 18),
                                      ("2123", 17), ("2199", 19)])
def test_unknown_brand_is_masked_unless_strict(prefix, n):
    pan = _pan(prefix, n)
    finds = Scanner(True, True).scan(pan, 0, len(pan))
    assert [(f[4], f[5][0]) for f in finds] == [(kinds.PAN_UNKNOWN_BRAND, "unknown")]
    assert Masker().mask(pan)[1] == 1 and Masker(strict_brand=True).mask(pan) == (pan, 0)
    assert engine.find_pans(pan)[0].brand == "unknown" and engine.contains_pan(pan)


@pytest.mark.parametrize("prefix,n", [
    ("1732", 13), ("1732", 16), ("7000", 16), ("8800", 16), ("9000", 16), ("0400", 16),  # not a payment MII
    ("3569", 15), ("4900", 15), ("8612", 15),      # 15 digits: IMEIs
    ("4000", 12), ("5000000", 20),                  # no scheme issues these lengths as unknown
    ("20241128", 16), ("20241128", 14), ("21011231", 18),  # 20/21 + YYMMDD: dates, date-stamped ids
])
def test_unknown_brand_rule_leaves_non_payment_numbers(prefix, n):
    pan = _pan(prefix, n)
    from pangate.pan.engine import brand_of, luhn_ok
    assert luhn_ok(pan)
    if brand_of(pan) is None:
        assert Masker().mask(pan) == (pan, 0), pan
