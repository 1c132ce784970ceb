"""Loading a policy never stops traffic: off the event loop, within a time budget, settled files only.

End to end through a real mitmdump: a probe loop of requests runs on one
open tunnel while hostile or huge policy files are written; its latency
stays near its baseline, each file is refused with file and line, the
policy in force stays. Plus: a file written in place is not read
half-written (no false alert), the policy the gateway starts with is
recorded, and a token's identity is found by index, not by scanning.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time

import pytest

from pangate.policy.addon import PolicyLoad
from pangate.policy.errors import PolicyError
from pangate.policy.model import Identity, Issuer, Policy

from conftest import policy_text


def _url(upstream, path: str) -> str:
    return f"https://localhost:{upstream.port}{path}"


def _write_atomically(path, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _records(gw, event: str, timeout: float = 5.0, **fields) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in gw.audit_records()
                 if r.get("event") == event and all(r.get(k) == v for k, v in fields.items())]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _laughs(levels: int = 12) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "version: 1\nsettings:\n  x:\n" + "\n".join("    " + x for x in lines) + "\n"


def _with_identities(base: str, n: int, last: str = "") -> str:
    """The test policy with n more identities (and `last` as the final one)."""
    more = "".join(f"  svc-{i:06d}: {{issuer: pangate, roles: [charges-reader]}}\n" for i in range(n))
    return base.replace("identities:\n", "identities:\n" + more + last, 1)


class Probe:
    """Requests in a loop on one open tunnel, each timed."""

    def __init__(self, gw, upstream, token):
        self.s = gw.session("reader", token)
        self.url = _url(upstream, "/v1/charges")
        self.samples: list[tuple[float, float]] = []  # (started, seconds)
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = None

    def one(self) -> float:
        t0 = time.monotonic()
        try:
            r = self.s.get(self.url, timeout=60)
            if r.status_code != 200:
                self.failures.append(f"{r.status_code} {r.text[:200]}")
        except Exception as e:  # recorded, and the loop goes on: a dead probe would prove nothing
            self.failures.append(f"{type(e).__name__}: {e}")
        took = time.monotonic() - t0
        self.samples.append((t0, took))
        return took

    def start(self) -> "Probe":
        def loop():
            while not self._stop.is_set():
                self.one()
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(90)

    def between(self, t0: float, t1: float) -> list[float]:
        """Latencies of probes under way at any moment in [t0, t1]."""
        return [took for started, took in self.samples if started <= t1 and started + took >= t0]


def p99(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * 0.99))]


@pytest.fixture(scope="module")
def gw(start_gateway, token_key, upstream):
    return start_gateway(options={"pangate_policy_load_timeout": "60s"})


def test_hostile_and_huge_policies_do_not_stop_traffic(gw, upstream, mint, token_key):
    probe = Probe(gw, upstream, mint("reader"))
    for _ in range(5):
        probe.one()  # the tunnel is open and warm
    probe.samples.clear()
    for _ in range(40):
        probe.one()
    baseline = p99([t for _, t in probe.samples])
    base = policy_text(token_key, upstream.port)
    huge = "version: 1\nidentities:\n" + "".join(f"  svc-{i:06d}: {{issuer: pangate, roles: [r]}}\n"
                                                for i in range(480_000))
    assert len(huge) > 20 << 20
    # Valid YAML under every cap, slow to read (thousands of identities), wrong at its last line.
    slow = _with_identities(base, 6000, "  the-last: {issuer: pangate, roles: [no-such-role]}\n")
    slow_line = slow.splitlines().index("  the-last: {issuer: pangate, roles: [no-such-role]}") + 1
    files = [("alias bomb", _laughs(), r"expands to more than"),
             ("20 MB", huge, r"passes 8 MB"),
             ("slow", slow, r"unknown role 'no-such-role'")]
    probe.samples.clear()
    probe.start()
    windows = []
    try:
        for name, text, why in files:
            mark = gw.log.mark()
            t0 = time.monotonic()
            _write_atomically(gw.policy_path, text)
            line = gw.log.wait_for(r"policy NOT reloaded.*", start=mark, timeout=120).group(0)
            windows.append((name, t0, time.monotonic()))
            assert why in line and f"{gw.policy_path}:" in line, (name, line)
            if name == "slow":
                assert f"{gw.policy_path}:{slow_line}:" in line, line
    finally:
        probe.stop()
    assert not probe.failures, probe.failures[:3]  # the good policy stayed in force throughout
    # A few times the baseline, with room for a machine shared with other work; on the event
    # loop the slow file held every request for its whole load (seconds), in a thread it does not.
    bound = max(5 * baseline, baseline + 0.5)
    for name, t0, t1 in windows:
        during = probe.between(t0, t1)
        assert during, (name, t0, t1, probe.samples[-5:], probe.failures[-3:], windows)
        assert p99(during) <= bound, (name, p99(during), baseline, len(during), t1 - t0)
        if name == "slow":
            assert t1 - t0 > 1.0 and max(during) < (t1 - t0) / 2, (max(during), t1 - t0)
    for name, _, why in files:
        deadline = time.monotonic() + 10
        while not (rejected := [r for r in _records(gw, "policy_rejected", timeout=0) if why in r["error"]]):
            assert time.monotonic() < deadline, f"no policy_rejected record for the {name} file"
            time.sleep(0.05)
        assert rejected[0]["alert"] is True and str(gw.policy_path) in rejected[0]["error"], name
    _write_atomically(gw.policy_path, base)
    gw.log.wait_for(r"pangate policy loaded", timeout=30)


def test_a_half_written_policy_raises_no_false_alert(gw, upstream, mint, token_key):
    text = policy_text(token_key, upstream.port).replace("/public/**", "/public/**\", \"/half/**")
    good = policy_text(token_key, upstream.port) + "# rewritten\n"
    _write_atomically(gw.policy_path, good)
    digest = hashlib.sha256(good.encode()).hexdigest()
    loaded = _records(gw, "policy_loaded", timeout=10, digest=digest)
    assert loaded, "the good policy was not loaded"
    since = loaded[-1]["seq"]  # rejections of earlier tests come before this record
    mark = gw.log.mark()
    cut = len(text) // 2
    with open(gw.policy_path, "w") as f:  # in place, as an editor or `cat >` writes it
        f.write(text[:cut])
        f.flush()
        # The gateway has seen the half file; the writer finishes now.
        gw.log.wait_for(r"policy file .* changed; it is read once it stops changing", start=mark, timeout=10)
        f.write(text[cut:])
    line = gw.log.wait_for(r"pangate policy (loaded|NOT reloaded).*", start=mark, timeout=10).group(0)
    assert "NOT" not in line, line
    assert hashlib.sha256(text.encode()).hexdigest()[:16] in line
    time.sleep(0.3)  # a further poll would see nothing new; checked once more below
    assert "NOT reloaded" not in "\n".join(gw.log.lines[mark:])
    assert not [r for r in _records(gw, "policy_rejected", timeout=0) if r["seq"] > since]


def test_the_policy_in_force_at_start_is_recorded(start_gateway, token_key, upstream):
    g = start_gateway()
    digest = hashlib.sha256(g.policy_path.read_bytes()).hexdigest()
    recs = _records(g, "policy_loaded", digest=digest)
    assert recs, "the policy loaded at start has no policy_loaded record"
    assert recs[0]["previous"] is None and recs[0]["path"] == str(g.policy_path)


def test_a_load_over_its_budget_is_refused_and_the_old_policy_stays(start_gateway, token_key, upstream, mint):
    g = start_gateway(options={"pangate_policy_load_timeout": "500ms"})
    s = g.session("reader", mint("reader"))
    assert s.get(_url(upstream, "/v1/charges")).status_code == 200
    mark = g.log.mark()
    _write_atomically(g.policy_path, _with_identities(policy_text(token_key, upstream.port), 20_000))
    line = g.log.wait_for(r"policy NOT reloaded.*", start=mark, timeout=30).group(0)
    assert "longer than 0.5 s" in line and str(g.policy_path) in line
    assert s.get(_url(upstream, "/v1/charges")).status_code == 200


def test_a_stopped_load_stops_its_thread():
    def forever(path):
        while True:
            pass
    load = PolicyLoad("spin.yaml", loader=forever).start()
    t0 = time.monotonic()
    with pytest.raises(PolicyError, match="longer than 0.2 s"):
        load.wait(0.2)
    load.thread.join(5)
    assert not load.thread.is_alive() and time.monotonic() - t0 < 5


# ---------------------------------------------------------------- the identity index

def _policy(n: int) -> Policy:
    issuers = {"pangate": Issuer("pangate", "pangate", ("pangate",), type="pangate", public_key_file="k.pub"),
               "idp": Issuer("idp", "https://idp.example", ("pangate",), jwks_file="j.json")}
    idents = {}
    for i in range(n):
        kind = i % 3
        name = f"svc-{i:06d}"
        if kind == 0:
            idents[name] = Identity(name, ("r",), "pangate")
        elif kind == 1:
            idents[name] = Identity(name, ("r",), "idp", subject=f"system:serviceaccount:ns:{name}")
        else:
            idents[name] = Identity(name, ("r",), "idp", claims=(("repository", f"acme/{name}"),
                                                                  ("ref", "refs/heads/main")))
    return Policy("p.yaml", "0" * 64, issuers=issuers, identities=idents)


def _linear(policy: Policy, issuer: str, subject: str, claims: dict) -> str | None:
    """The scan the index replaces, as the reference for what it must answer."""
    for ident in policy.identities.values():
        if ident.issuer != issuer:
            continue
        want = ident.subject or (ident.name if policy.issuers[ident.issuer].type == "pangate" else None)
        if want is not None and subject != want:
            continue
        if want is None and not ident.claims:
            continue
        if all(str(claims.get(k)) == v for k, v in ident.claims):
            return ident.name
    return None


def test_the_index_answers_as_the_scan_did():
    p = _policy(300)
    p.identities["dup-sub"] = Identity("dup-sub", ("r",), "idp", subject="system:serviceaccount:ns:svc-000001")
    p.identities["no-pin"] = Identity("no-pin", ("r",), "idp")
    p.identities["sub-and-claim"] = Identity("sub-and-claim", ("r",), "idp", subject="x", claims=(("env", "prod"),))
    cases = [("pangate", "svc-000000", {}), ("pangate", "svc-000001", {}), ("idp", "svc-000000", {}),
             ("idp", "system:serviceaccount:ns:svc-000001", {}),
             ("idp", "anything", {"repository": "acme/svc-000002", "ref": "refs/heads/main"}),
             ("idp", "anything", {"repository": "acme/svc-000002", "ref": "refs/heads/dev"}),
             ("idp", "x", {"env": "prod"}), ("idp", "x", {"env": "dev"}), ("idp", "x", {}),
             ("idp", "nobody", {}), ("other", "svc-000000", {})]
    for issuer, subject, claims in cases:
        found = p.identity_index.match(issuer, subject, claims)
        assert (found.name if found else None) == _linear(p, issuer, subject, claims), (issuer, subject, claims)


class _CountingClaims(dict):
    """Token claims that count how often the lookup reads them: its work, measured without a clock."""

    reads = 0

    def get(self, key, default=None):
        type(self).reads += 1
        return super().get(key, default)


def _reads_per_lookup(policy: Policy) -> float:
    """Claim reads per lookup over the last declared identities (the worst case of a scan)."""
    from pangate.identity.addon import identity_for
    from pangate.identity.tokens import Principal

    principals = []
    for name in list(policy.identities)[-30:]:
        ident = policy.identities[name]
        if ident.issuer == "pangate":
            principals.append(Principal("pangate", name, _CountingClaims(), method="pangate"))
        elif ident.subject:
            principals.append(Principal("idp", ident.subject, _CountingClaims()))
        else:
            principals.append(Principal("idp", "job", _CountingClaims(ident.claims)))
    _CountingClaims.reads = 0
    assert all(identity_for(policy, p) == n for p, n in zip(principals, list(policy.identities)[-30:], strict=True))
    return _CountingClaims.reads / len(principals)


def test_mapping_a_token_to_its_identity_costs_the_same_for_100_or_10k_identities():
    # Why a count, not a timer: a shared CI machine makes a 2x timing bound flaky,
    # while a scan would read claims once per identity, 100x more at 10k.
    small, large = _reads_per_lookup(_policy(100)), _reads_per_lookup(_policy(10_000))
    assert large == small, (small, large)
    assert large <= 4, large
