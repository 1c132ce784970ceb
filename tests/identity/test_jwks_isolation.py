"""JWKS and discovery fetches run on their own pool: a slow IdP delays only its own tokens, never
another identity's new connections or the resolution of destinations, and a recovered IdP is used
again within seconds (retry with backoff, not a minute-long cooldown)."""

from __future__ import annotations

import asyncio
import base64
import threading
import time

import pytest

from pangate.identity.tokens import KeyFetchError, TokenError, TokenVerifier

from conftest import raw_connect
from jwks_issuer import JwksIssuer

POLICY = """
version: 1
issuers:
  pangate:
    type: pangate
    public_key_file: {pubkey}
  slow:
    type: oidc
    issuer: {slow_iss}
    discovery_url: {slow_disc}
    ca_file: {slow_ca}
    audience: pangate
    algorithms: [RS256]
  flaky:
    type: oidc
    issuer: {flaky_iss}
    discovery_url: {flaky_disc}
    ca_file: {flaky_ca}
    audience: pangate
    algorithms: [RS256]
identities:
  reader:
    issuer: pangate
    roles: [reader]
  svc-slow:
    issuer: slow
    subject: svc-slow
    roles: [reader]
  svc-flaky:
    issuer: flaky
    subject: svc-flaky
    roles: [reader]
roles:
  reader:
    allow:
      - destination: upstream
        methods: [GET]
        paths: ["/v1/charges"]
destinations:
  upstream:
    host: localhost
    port: {port}
    addresses: [127.0.0.1/32]
"""


class Clock:
    def __init__(self):
        self.now = 1_700_000_000.0

    def __call__(self):
        return self.now


def _reason(coro) -> str:
    with pytest.raises(TokenError) as e:
        asyncio.run(coro)
    return e.value.reason


def test_failed_fetch_is_retried_with_backoff_not_after_a_minute():
    clock = Clock()
    with JwksIssuer(algs=("RS256",)) as idp:
        v = TokenVerifier([idp.issuer_config(refresh_interval=60)], clock=clock)
        tok = idp.mint(now=clock())
        idp.status = 503
        assert _reason(v.averify(tok)) == "keys_unavailable"
        st = v._state["idp"]
        assert st.next_attempt - clock() == 1.0
        assert _reason(v.averify(tok)) == "keys_unavailable"  # within the backoff: no new fetch
        hits = idp.hits["/.well-known/openid-configuration"]
        clock.now += 1
        assert _reason(v.averify(tok)) == "keys_unavailable"
        assert idp.hits["/.well-known/openid-configuration"] == hits + 1
        assert st.next_attempt - clock() == 2.0  # doubled
        for _ in range(10):
            clock.now = st.next_attempt
            _reason(v.averify(tok))
        assert st.next_attempt - clock() == 60.0  # capped
        idp.status = 200
        clock.now = st.next_attempt
        assert asyncio.run(v.averify(idp.mint(now=clock()))).subject == "svc-test"
        assert st.failures == 0 and st.next_attempt - clock() == 60.0  # success: the usual interval
        v.close()


def test_waiters_share_one_fetch_off_the_default_executor():
    """Many connections needing the same slow JWKS hold no thread of the loop's default executor:
    getaddrinfo (destination resolution) still answers at once."""
    release = threading.Event()
    threads = []
    with JwksIssuer(algs=("RS256",)) as idp:
        cfg = idp.issuer_config(jwks_uri="https://idp.invalid/jwks")

        def fetch(url, *, ca_file=None):
            threads.append(threading.current_thread().name)
            assert release.wait(10)
            return idp.jwks()

        v = TokenVerifier([cfg], fetch=fetch)
        tok = idp.mint()

        async def main():
            loop = asyncio.get_running_loop()
            waiting = [asyncio.create_task(v.averify(tok)) for _ in range(40)]
            await asyncio.sleep(0.1)
            t0 = time.monotonic()
            await loop.getaddrinfo("localhost", 443)
            resolve = time.monotonic() - t0
            release.set()
            done = await asyncio.gather(*waiting)
            return resolve, done

        resolve, done = asyncio.run(main())
        v.close()
    assert resolve < 0.5, resolve
    assert {p.subject for p in done} == {"svc-test"}
    assert len(threads) == 1 and threads[0].startswith("pangate-jwks")


def test_a_fetch_that_hangs_is_waited_on_for_a_bounded_time():
    release = threading.Event()
    with JwksIssuer(algs=("RS256",)) as idp:
        v = TokenVerifier([idp.issuer_config(jwks_uri="https://idp.invalid/jwks")],
                          fetch=lambda url, ca_file=None: release.wait(10) and idp.jwks())
        v.FETCH_WAIT = 0.3
        t0 = time.monotonic()
        assert _reason(v.averify(idp.mint())) == "keys_unavailable"
        assert time.monotonic() - t0 < 2
        release.set()
        v._state["idp"].future.result(5)
        assert asyncio.run(v.averify(idp.mint())).subject == "svc-test"  # the late answer is kept
        v.close()


def test_queue_of_fetches_is_bounded():
    release = threading.Event()
    from pangate.policy.model import Issuer
    cfgs = [Issuer(name=f"idp{i}", issuer=f"https://idp{i}.invalid", audience="pangate",
                   jwks_uri=f"https://idp{i}.invalid/jwks") for i in range(3)]

    def fetch(url, *, ca_file=None):
        release.wait(10)
        raise KeyFetchError("down")

    v = TokenVerifier(cfgs, fetch=fetch)
    v.MAX_QUEUED, v.FETCH_WAIT = 2, 0.2
    assert v._schedule("idp0") is not None and v._schedule("idp1") is not None
    assert v._schedule("idp0") is v._schedule("idp0")  # one per issuer
    assert v._schedule("idp2") is None  # full: refused at once, no thread, no queue growth
    release.set()
    v.close()


def _basic(identity: str, token: str) -> str:
    return "Basic " + base64.b64encode(f"{identity}:{token}".encode()).decode()


def test_slow_idp_does_not_stall_or_deny_other_identities(start_gateway, token_key, upstream, mint):
    with JwksIssuer(algs=("RS256",)) as slow, JwksIssuer(algs=("RS256",)) as flaky:
        gw = start_gateway(policy=POLICY.format(
            pubkey=token_key + ".pub", port=upstream.port,
            slow_iss=slow.issuer, slow_disc=slow.discovery_url, slow_ca=slow.ca_file,
            flaky_iss=flaky.issuer, flaky_disc=flaky.discovery_url, flaky_ca=flaky.ca_file))
        url = f"https://localhost:{upstream.port}/v1/charges"
        reader = mint("reader")

        # A slow IdP: its tokens wait for the fetch, and nothing else does.
        slow.delay = 1.5  # per document: discovery, then JWKS
        oidc_status = []

        def oidc_client():
            s = gw.session("svc-slow", slow.mint(sub="svc-slow"))
            try:
                oidc_status.append(s.get(url, timeout=30).status_code)
            except Exception as e:  # a refused CONNECT surfaces as a ProxyError
                oidc_status.append(repr(e))
            finally:
                s.close()

        clients = [threading.Thread(target=oidc_client) for _ in range(12)]
        for t in clients:
            t.start()
        deadline = time.monotonic() + 1.0
        while slow.hits["/.well-known/openid-configuration"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        worst, statuses = 0.0, []
        for _ in range(25):  # new connections of an unrelated identity, while the fetch hangs
            s = gw.session("reader", reader)
            t0 = time.monotonic()
            statuses.append(s.get(url, timeout=30).status_code)
            worst = max(worst, time.monotonic() - t0)
            s.close()
        for t in clients:
            t.join(30)
        assert statuses == [200] * 25, statuses  # no wrong denial ("localhost does not resolve")
        assert worst < 1.5, f"a new connection of another identity stalled {worst:.1f}s"
        assert oidc_status == [200] * 12, oidc_status  # and the slow IdP's own tokens got through
        assert slow.hits["/jwks.json"] == 1  # one fetch for all of them

        # An IdP outage: refused while down, accepted again within seconds of recovery.
        flaky.status = 503
        tok = flaky.mint(sub="svc-flaky")
        status, _, _, _ = raw_connect(gw, f"localhost:{upstream.port}", _basic("svc-flaky", tok))
        assert status == 407
        flaky.status = 200
        t0 = time.monotonic()
        while (status := raw_connect(gw, f"localhost:{upstream.port}", _basic("svc-flaky", tok))[0]) != 200:
            assert time.monotonic() - t0 < 5, "OIDC still refused 5s after the issuer recovered"
            time.sleep(0.2)
