"""Exhaustion: a small compressed body that inflates past 256 MiB must not take the gateway down.

A gateway that inflates a bomb to scan or mask it either runs out of memory
(and every workload loses its egress) or stalls its event loop (and every
other flow waits). Both bombs, a request to `plain` and a response from a
card-data destination, must be refused with a code (413 or 502); ordinary
traffic through the same gateway keeps its latency while they are handled,
and the gateway's peak memory stays bounded. This module has its own gateway,
so the peak it reads is this module's.
"""

from __future__ import annotations

import threading
import time
import zlib

import pytest

from leakkit import Rest, assert_refusal, cards, plain
from pan_upstream import send

pytest_plugins = ["leakkit"]  # fixtures up, up2, lgw: one gateway for this module

INFLATED_MIB = 300  # past the 256 MiB the issue names


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """gzip of 300 MiB of zeros, built once, in bounded memory: about 300 KB."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    parts = [c.compress(zeros) for _ in range(INFLATED_MIB)]
    parts.append(c.flush())
    data = b"".join(parts)
    assert len(data) < 1 << 20
    return data


def _p95(samples: list[float]) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * 0.95))]


class Loop:
    """Ordinary small requests, one after another, timing each."""

    def __init__(self, gw, up, token):
        self.s = gw.session("app", token)
        self.url = cards(up, "/ping")
        self.samples: list[float] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def one(self):
        t = time.perf_counter()
        try:
            r = self.s.get(self.url, timeout=30)
            if r.status_code != 200:
                self.errors.append(str(r.status_code))
        except Exception as e:  # a dropped connection counts, and is reported
            self.errors.append(type(e).__name__)
        self.samples.append(time.perf_counter() - t)

    def run(self):
        while not self.stop.is_set():
            self.one()


def test_compression_bombs_are_refused_without_stalling_or_bloating(lgw, up, mint, bomb):
    token = mint("app")
    base = Loop(lgw, up, token)
    for _ in range(40):
        base.one()
    assert not base.errors, base.errors
    base_p95 = _p95(base.samples[5:])  # the first requests open connections

    up.routes["/c/bomb"] = lambda req, s: send(s, 200, bomb, {"Content-Type": "text/plain",
                                                             "Content-Encoding": "gzip"})
    loop = Loop(lgw, up, token)
    t = threading.Thread(target=loop.run, daemon=True)
    results = {}
    with Rest(lgw) as rest:
        rest.rid = []
        t.start()
        try:
            s = lgw.session("app", token)
            r = s.post(plain(up, "/bomb"), data=bomb, timeout=120,
                       headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
            results["request"] = (r.status_code, r.content)
            rest.rid.append(r.headers.get("X-Pangate-Request-Id"))
            r = s.get(cards(up, "/bomb"), timeout=120, stream=True, headers={"Accept-Encoding": "identity"})
            body = r.raw.read(1 << 16, decode_content=False)
            results["response"] = (r.status_code, body if r.status_code != 200 else b"")
            rest.rid.append(r.headers.get("X-Pangate-Request-Id"))
            r.close()
            n = len(loop.samples)
            deadline = time.monotonic() + 10
            while len(loop.samples) < n + 5 and time.monotonic() < deadline:  # a few samples after, too
                time.sleep(0.01)
        finally:
            loop.stop.set()
            t.join(60)
        hwm_kib = int(next(ln.split()[1] for ln in open(f"/proc/{lgw.proc.pid}/status") if ln.startswith("VmHWM")))
        # Every property is checked and reported together: which of them fail says what to fix.
        problems = []
        if lgw.proc.poll() is not None:
            problems.append("the gateway died")
        if [q for q in up.received if q.path.startswith("/p/bomb")]:
            problems.append("the request bomb was forwarded to the non-card upstream")
        for which in ("request", "response"):
            status, body = results[which]
            try:
                assert_refusal(status, body, None, statuses=(413, 502))
            except (AssertionError, ValueError) as e:
                problems.append(f"{which} bomb not refused with a code: {status} {body[:160]!r} ({e})"[:400])
        during = _p95(loop.samples)
        if loop.errors:
            problems.append(f"ordinary requests failed during the bombs: {loop.errors[:10]}")
        if during > 5 * max(base_p95, 0.005):
            problems.append(f"p95 latency {during * 1000:.0f} ms during the bombs vs {base_p95 * 1000:.0f} ms "
                            f"before ({len(loop.samples)} samples, max {max(loop.samples) * 1000:.0f} ms)")
        if hwm_kib >= 1 << 20:
            problems.append(f"gateway peak memory {hwm_kib // 1024} MiB")
        assert not problems, "\n".join(problems) + f"\n(peak memory {hwm_kib // 1024} MiB)"
