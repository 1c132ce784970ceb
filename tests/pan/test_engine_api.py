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
