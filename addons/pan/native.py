"""Loader of the native PAN engine (_pannative, C), and the engine choice.

The Python modules (scan.py, sad.py, iin.py, kinds.py, engine.py) are the
reference and the source of truth: the C engine is handed the IIN table, the
allowed lengths per prefix, the unknown-brand lengths, the SAD field names and
the finding kinds from them when an Engine is built, and the fixed rule
constants it was written against (separators, gap width, key and value caps,
anchors) are compared with the Python ones here before it is used at all. A
mismatch, a failed import or a failed self-check means the Python engine runs,
and the reason is kept in DETAIL (and logged by the gateway at startup).

Choice: the environment variable PANGATE_ENGINE = auto (default: native if it
loads, else python), native (native or refuse to start: a deployment that asks
for it should not silently run 10x slower) or python.
"""

from __future__ import annotations

import os

from pangate.pan import iin, kinds, sad, scan

CHOICES = ("auto", "native", "python")


class EngineUnavailable(RuntimeError):
    """PANGATE_ENGINE=native, but the native engine cannot be used."""


def _check_rules(mod) -> str | None:
    """Why the compiled rules differ from the Python ones, or None."""
    r = mod.RULES
    want = {
        "seps": scan.SEPS, "max_gap": scan.MAX_GAP, "maxkey": sad.MAXKEY, "maxval": sad._MAXVAL,
        "after_key": bytes(sorted(sad._AFTER_KEY)), "track_lead": bytes(sorted(sad.TRACK_LEAD)),
        "anchors": tuple(sorted(sad._ANCHORS)),
    }
    have = dict(r, after_key=bytes(sorted(r["after_key"])), track_lead=bytes(sorted(r["track_lead"])),
                anchors=tuple(sorted(r["anchors"])))
    for k, v in want.items():
        if have.get(k) != v:
            return f"rule {k} differs (native {have.get(k)!r}, python {v!r})"
    if kinds.TRACK1 != "track1" or kinds.TRACK2 != "track2":
        return "track kind names differ from the track labels"
    return None


def _load():
    try:
        from pangate.pan import _pannative as mod
    except ImportError as e:
        return None, f"not built ({e})"
    why = _check_rules(mod)
    if why:
        return None, why
    return mod, None


_MOD, _WHY = _load()


def engine_for(*, bin6: bool, sad_: bool, strict_brand: bool, hmac_key: bytes | None):
    """A native Engine for one Masker configuration (raises if unavailable)."""
    if _MOD is None:
        raise EngineUnavailable(f"native PAN engine unavailable: {_WHY}")
    return _MOD.Engine(bin6, sad_, strict_brand, hmac_key, iin.IIN_INDEX,
                       scan._LEN2 if strict_brand else scan._LEN2_LOOSE, iin.UNKNOWN_BRAND_LENGTHS,
                       sad.SAD_KIND_OF, (kinds.PAN, kinds.PAN_UNKNOWN_BRAND, kinds.CVC, kinds.PIN,
                                         kinds.TRACK_FIELD, kinds.TRACK1, kinds.TRACK2))


SELF_CHECK_DOCS = [
    b"card 4111 1111 1111 1111, cvv: 123", b'{"pan":"5500-0000-0000-0004","pin":"1234"}',
    b"%B4111111111111111^DOE/JANE^2512101000000?;4111111111111111=25121010000000?",
    b"id 1732800000000 4111.1111.1111.1111 6011000000000004=2512101"]


def _self_check(reference, modes=("bin6last4", "last4")) -> str | None:
    """The native engine masks a few known documents exactly as the Python one
    (reference(mode, hmac_key) -> a Python-engine Masker). Mode hmac is checked
    when the first hmac masker is built (hmac_self_check): its reference needs
    hashlib, which a `pangate mask` process in another mode need not import."""
    for mode in modes:
        key = b"k" * 32 if mode == "hmac" else None
        ref = reference(mode, key)
        eng = engine_for(bin6=mode == "bin6last4", sad_=True, strict_brand=False, hmac_key=key)
        for d in SELF_CHECK_DOCS:
            if eng.mask(d, 0, len(d))[:2] != ref.mask(d):
                return f"self-check failed in mode {mode}"
    return None


_HMAC_CHECKED: list = []


def hmac_self_check(reference) -> str | None:
    """_self_check for mode hmac, once per process; None when it passed."""
    if not _HMAC_CHECKED:
        try:
            _HMAC_CHECKED.append(_self_check(reference, ("hmac",)))
        except Exception as e:
            _HMAC_CHECKED.append(f"self-check raised {type(e).__name__}: {e}")
    return _HMAC_CHECKED[0]


def choose(reference, environ=None) -> tuple[str, str]:
    """(ENGINE, DETAIL): which engine the maskers of this process use, and why.
    Raises EngineUnavailable for PANGATE_ENGINE=native without a usable native
    engine, and for a value that is not a choice."""
    env = os.environ if environ is None else environ
    want = (env.get("PANGATE_ENGINE") or "auto").strip().lower()
    if want not in CHOICES:
        raise EngineUnavailable(f"PANGATE_ENGINE={want!r}: expected one of {', '.join(CHOICES)}")
    if want == "python":
        return "python", "python (PANGATE_ENGINE=python)"
    why = _WHY
    if why is None:
        try:
            why = _self_check(reference)
        except Exception as e:  # a broken build must not take the gateway down in auto mode
            why = f"self-check raised {type(e).__name__}: {e}"
    if why is None:
        r = _MOD.RULES
        return "native", f"native (C, {r['simd']}, GIL released from {r['gil_release_bytes'] // 1024} KiB)"
    if want == "native":
        raise EngineUnavailable(f"PANGATE_ENGINE=native, but the native PAN engine is unavailable: {why}")
    return "python", f"python (native engine unavailable: {why})"
