"""The audit signing key: a lost key stops the gateway instead of being replaced in silence, and
`pangate audit rotate-key` changes it on purpose, on the record, so verification follows it."""

from __future__ import annotations

import base64
import json
import os
import subprocess

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pangate.audit.keys import SigningKeyMissing, key_id, load_or_create_signing_key, public_raw
from pangate.audit.log import AuditWriter, checkpoint_message, dumps_line, line_hash, list_audit_files
from pangate.audit.verify import verify_log
from pangate.common.files import create_key_pair

from conftest import UPSTREAM_SECRET
from harness import VENV_BIN, Gateway


def pangate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "pangate"), *map(str, args)], capture_output=True, text=True, timeout=60)


def _trail(directory, key, n: int = 5) -> None:
    with AuditWriter(str(directory), key, fsync=False) as w:
        for i in range(n):
            w.append({"event": "request", "outcome": "allowed", "identity": {"name": "reader"}, "i": i})


def test_missing_key_with_a_trail_is_refused_not_regenerated(tmp_path):
    key = tmp_path / "k" / "audit.key"
    assert load_or_create_signing_key(str(key), str(tmp_path / "audit"))  # new trail: a new key
    pub = key.with_name("audit.key.pub").read_bytes()
    _trail(tmp_path / "audit", load_or_create_signing_key(str(key), str(tmp_path / "audit")))
    key.unlink()
    with pytest.raises(SigningKeyMissing, match=r"audit\.key is missing .* rotate-key --key"):
        load_or_create_signing_key(str(key), str(tmp_path / "audit"))
    assert not key.exists() and key.with_name("audit.key.pub").read_bytes() == pub  # nothing overwritten


def _restart(gw, **kw) -> Gateway:
    return Gateway(gw.workdir, gw.policy_path.read_text(), gw.confdir, gw.upstream_ca,
                   env={"UPSTREAM_KEY": UPSTREAM_SECRET}, **kw)


@pytest.fixture
def stopped_gateway(start_gateway, upstream, mint, pki):
    gw = start_gateway()
    gw.upstream_ca = pki.ca_cert
    r = gw.session("reader", mint("reader")).get(f"https://localhost:{upstream.port}/v1/charges")
    assert r.status_code == 200
    assert gw.stop() == 0
    return gw


def test_gateway_refuses_to_start_without_its_key_then_rotation_is_verified(stopped_gateway, upstream, mint):
    gw = stopped_gateway
    key = gw.workdir / "audit-signing.key"
    pub = key.with_name("audit-signing.key.pub")
    old_pub = pub.read_bytes()
    key.unlink()
    with pytest.raises(TimeoutError) as e:  # exits before it listens
        _restart(gw)
    # The real process exited, saying once which key and how to rotate on purpose.
    lines = [ln for ln in str(e.value).splitlines() if "audit signing key" in ln]
    assert len(lines) == 1, lines
    assert str(key) in lines[0] and "pangate audit rotate-key" in lines[0] and "--lost" in lines[0], lines
    assert not key.exists() and pub.read_bytes() == old_pub

    res = pangate("audit", "rotate-key", "--key", key, "--audit-dir", gw.audit_dir, "--lost", "--reason", "CHG-1")
    assert res.returncode == 0, res.stderr
    gw2 = _restart(gw)
    r = gw2.session("reader", mint("reader")).get(f"https://localhost:{upstream.port}/v1/charges")
    assert r.status_code == 200
    assert gw2.stop() == 0
    res = pangate("audit", "verify", gw.audit_dir, "--pubkey", pub)  # the old key is found beside it
    assert res.returncode == 0, res.stdout + res.stderr
    assert "key rotation at seq" in res.stdout and "WITHOUT the old key" in res.stdout and "CHG-1" in res.stdout
    # The unsealed rotation is trusted only on the operator's word: the old key alone does not do.
    old_only = next(gw.workdir.glob("audit-signing.key.*.pub"))
    res = pangate("audit", "verify", gw.audit_dir, "--pubkey", old_only)
    assert res.returncode == 1 and "FAILED (bad_signature)" in res.stdout and "--pubkey" in res.stdout, res.stdout


def test_rotation_with_the_old_key_is_sealed_and_followed(stopped_gateway, upstream, mint):
    gw = stopped_gateway
    key = gw.workdir / "audit-signing.key"
    pub = key.with_name("audit-signing.key.pub")
    old_id = key_id(load_or_create_signing_key(str(key)).public_key())
    res = pangate("audit", "rotate-key", "--key", key, "--audit-dir", gw.audit_dir, "--reason", "yearly")
    assert res.returncode == 0, res.stderr
    kept = gw.workdir / f"audit-signing.key.{old_id}.pub"
    assert kept.exists() and key.stat().st_mode & 0o077 == 0
    new_id = key_id(load_or_create_signing_key(str(key)).public_key())
    assert new_id != old_id
    gw2 = _restart(gw)
    r = gw2.session("reader", mint("reader")).get(f"https://localhost:{upstream.port}/v1/charges")
    assert r.status_code == 200
    assert gw2.stop() == 0
    for keys in ([pub], [kept]):  # new key (+ the kept one beside it), or the old key alone: sealed rotation
        res = pangate("audit", "verify", gw.audit_dir, *sum((["--pubkey", k] for k in keys), []),
                      "--recordings", gw.workdir / "var" / "recordings")
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"{old_id} -> {new_id}, sealed by the old key; reason: yearly" in res.stdout, res.stdout
        assert "0 failed" in res.stdout  # recordings signed before and after the rotation
    cps = [r for r in gw.audit_records() if r["event"] == "checkpoint"]
    assert {c["key_id"] for c in cps} == {old_id, new_id}


def _rotated(tmp_path):
    """A trail rotated K1 -> K2 with the writer API, and the lines of its only file."""
    k1, k2 = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    d = tmp_path / "audit"
    with AuditWriter(str(d), k1, fsync=False) as w:
        w.append({"event": "request", "n": 1})
        w.rotate_key(k2, reason="test")
        w.append({"event": "request", "n": 2})
    assert verify_log(str(d), k1.public_key()).ok
    f = list_audit_files(str(d))[0]
    with open(f, "rb") as fh:
        return k1, k2, d, f, fh.read().splitlines()


def _rechain(lines: list[bytes], start: int, key) -> list[bytes]:
    """Recompute prev/head and re-sign with `key` (or a {key id: key} map) from line `start` on:
    an attacker with file access (and, for the map, the keys)."""
    out = lines[:start]
    for raw in lines[start:]:
        rec = json.loads(raw)
        rec["prev"] = line_hash(out[-1])
        if rec["event"] == "checkpoint":
            k = key[rec["key_id"]] if isinstance(key, dict) else key
            rec["head"] = rec["prev"]
            rec["key_id"] = key_id(k.public_key())
            msg = checkpoint_message(rec["seq"], rec["head"], rec["covers"], rec["file"], rec["time"],
                                     rec["reason"], rec["every"])
            rec["sig"] = base64.b64encode(k.sign(msg)).decode()
        out.append(dumps_line(rec))
    return out


def _write(f, lines):
    with open(f, "wb") as fh:
        fh.write(b"".join(line + b"\n" for line in lines))


def test_a_tampered_rotation_fails(tmp_path):
    k1, k2, d, f, lines = _rotated(tmp_path)
    i = next(i for i, ln in enumerate(lines) if b'"event":"key_rotation"' in ln)
    attacker = Ed25519PrivateKey.generate()
    rot = json.loads(lines[i])
    # 1. The new key swapped for the attacker's: the chain breaks at the edit.
    forged = dict(rot, new_key_id=key_id(attacker.public_key()), new_public_key=public_raw(attacker.public_key()))
    _write(f, lines[:i] + [dumps_line(forged)] + lines[i + 1:])
    rep = verify_log(str(d), k1.public_key())
    assert not rep.ok and rep.kind == "edited", rep.summary()
    # 2. The same, with the chain recomputed and everything after re-signed by the attacker: the
    #    rotation is not sealed by the old key.
    _write(f, _rechain(lines[:i] + [dumps_line(forged)] + lines[i + 1:], i, attacker))
    rep = verify_log(str(d), k1.public_key())
    assert not rep.ok and rep.kind == "bad_signature" and "not sealed by the old key" in rep.error, rep.summary()
    # 3. Claimed lost (unsealed): only a key the operator gives is trusted for it.
    lost = dict(forged, sealed=False)
    _write(f, _rechain(lines[:i] + [dumps_line(lost)] + lines[i + 1:], i, attacker))
    rep = verify_log(str(d), k1.public_key())
    assert not rep.ok and rep.kind == "bad_signature" and "--pubkey" in rep.error, rep.summary()
    # 4. A key change with no rotation record at all.
    plain = dumps_line({k: v for k, v in rot.items() if k in ("seq", "prev", "time")} | {"event": "request"})
    _write(f, _rechain(lines[:i] + [plain] + lines[i + 1:], i, {key_id(k.public_key()): k for k in (k1, k2)}))
    rep = verify_log(str(d), [k1.public_key(), k2.public_key()])
    assert not rep.ok and "records no key rotation" in rep.error, rep.summary()
    # The untouched trail still verifies with the old key alone, and reports the rotation.
    _write(f, lines)
    rep = verify_log(str(d), k1.public_key())
    assert rep.ok and rep.rotations and rep.rotations[0]["new_key_id"] == key_id(k2.public_key()), rep.summary()


def test_rotate_key_refuses_what_it_cannot_do_safely(tmp_path):
    key = tmp_path / "audit.key"
    d = tmp_path / "audit"
    res = pangate("audit", "rotate-key", "--key", key, "--audit-dir", d)
    assert res.returncode == 2 and "no audit trail" in res.stderr
    _trail(d, create_key_pair(str(key)))
    res = pangate("audit", "rotate-key", "--key", key, "--audit-dir", d, "--lost")
    assert res.returncode == 2 and "--lost is for a key that is gone" in res.stderr
    other = tmp_path / "other.key"
    create_key_pair(str(other))
    res = pangate("audit", "rotate-key", "--key", other, "--audit-dir", d)
    assert res.returncode == 2 and "last sealed by" in res.stderr
    assert not os.path.exists(str(other) + ".new")
