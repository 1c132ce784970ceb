#!/usr/bin/env python3
"""A 1 GB streamed response through a real gateway: every PAN masked, memory bounded.

The upstream makes the body on the fly (a repeating ~4 KB unit holding one
PAN among log-like lines, written in 65537-byte pieces so PANs straddle write boundaries); the
client counts masked and raw PANs as the bytes arrive; the gateway's peak
resident memory (VmHWM of the mitmdump process) is read from /proc.

    scripts/stream_1gb.py [--mb 1024] [--json]

Prints one line (and with --json one JSON line) and exits 1 if a raw PAN got
through, a PAN was not masked, the length changed, or VmHWM >= --max-rss-mb.
tests/test_masking_e2e.py runs the same check on 64 MB.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

RAW = b"4111 1111 1111 1111"
MASKED = b"4111 11** **** 1111"
UNIT = (b"card " + RAW + b" paid\n"
        + b"".join(b"%06d ts 1732800000 order ord_5f0c9a7e amount 12.50 EUR status captured ok\n" % k
                   for k in range(48)))
WRITE = 65537
PATH = "/stream-1gb"


def body_size(mb: float) -> int:
    units = max(1, int(mb * 1e6) // len(UNIT))
    return units * len(UNIT)


def route(size: int):
    """Upstream handler: Content-Length `size`, body generated as it is written."""
    def handler(req, sock):
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % size)
        big = UNIT * (WRITE // len(UNIT) + 2)
        sent = 0
        while sent < size:
            off = sent % len(UNIT)
            n = min(WRITE, size - sent)
            sock.sendall(big[off:off + n])
            sent += n
    return handler


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def stream_check(gw, up, token: str, mb: float) -> dict:
    """Stream `mb` MB from `up` through `gw` (which must stream large bodies); returns the figures."""
    size = body_size(mb)
    up.routes[PATH] = route(size)
    session = gw.session("app", token)
    t0 = time.perf_counter()
    r = session.get(f"https://localhost:{up.port}{PATH}", stream=True, timeout=60)
    masked = raw = total = 0
    tail = b""
    keep = len(RAW) - 1
    for chunk in r.iter_content(1 << 20):
        buf = tail + chunk
        masked += buf.count(MASKED)
        raw += buf.count(RAW)
        total += len(chunk)
        tail = buf[-keep:]
    secs = time.perf_counter() - t0
    return {"mb": round(size / 1e6, 1), "seconds": round(secs, 2), "mb_per_s": round(size / 1e6 / secs, 1),
            "status": r.status_code, "bytes_ok": total == size, "pans": size // len(UNIT),
            "masked": masked, "raw": raw, "vm_hwm_mb": round(vm_hwm_mb(gw.proc.pid), 1)}


def ok(res: dict, max_rss_mb: float) -> bool:
    return (res["status"] == 200 and res["bytes_ok"] and res["raw"] == 0 and res["masked"] == res["pans"]
            and res["vm_hwm_mb"] < max_rss_mb)


POLICY = """
version: 1
issuers:
  pangate: {{type: pangate, public_key_file: {pubkey}}}
identities:
  app: {{issuer: pangate, roles: [app]}}
roles:
  app:
    allow:
      - {{destination: cards, methods: [GET], paths: ["/**"]}}
destinations:
  cards: {{host: localhost, port: {port}, card_data: true, addresses: [127.0.0.1/32]}}
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=1024, help="body size in MB (default 1024)")
    ap.add_argument("--max-rss-mb", type=float, default=250, help="fail at this gateway VmHWM (default 250)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import tempfile

    from harness import Gateway
    from mitmproxy.certs import CertStore
    from pan_upstream import PanUpstream
    from pangate.dev.pki import make_ca, make_leaf
    from pangate.identity.tokens import issue, keygen

    with tempfile.TemporaryDirectory(prefix="pangate-1gb-") as tmp:
        t = Path(tmp)
        (t / "ca").mkdir()
        (t / "gw").mkdir()
        ca = make_ca(str(t / "ca"), "stream-test-ca")
        cert, key = make_leaf(ca, str(t / "ca"), ["localhost", "127.0.0.1"], "upstream")
        CertStore.from_store(str(t / "ca"), "mitmproxy", 2048)
        keygen(str(t / "token.key"))
        up = PanUpstream(cert, key)
        gw = Gateway(t / "gw", POLICY.format(pubkey=t / "token.key.pub", port=up.port), t / "ca", ca[0],
                     options={"stream_large_bodies": "1m"})
        try:
            res = stream_check(gw, up, issue(str(t / "token.key"), "app", 600), args.mb)
        finally:
            gw.stop()
            up.close()
    good = ok(res, args.max_rss_mb)
    print(f"stream {res['mb']} MB in {res['seconds']} s ({res['mb_per_s']} MB/s): pans {res['pans']} "
          f"masked {res['masked']} raw {res['raw']} length {'ok' if res['bytes_ok'] else 'CHANGED'}; "
          f"gateway VmHWM {res['vm_hwm_mb']} MB (limit {args.max_rss_mb}): {'PASS' if good else 'FAIL'}")
    if args.json:
        print(json.dumps({"bench": "stream_1gb", **res, "pass": good}))
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
