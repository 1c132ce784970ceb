"""A real 4 MB filesystem holding the audit trail and the recordings, filled, then partly freed."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from conftest import UPSTREAM_SECRET, policy_text
from harness import VENV_BIN, Gateway


def _mount(path) -> str | None:
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)], capture_output=True, text=True)
    return None if r.returncode == 0 else (r.stderr.strip() or f"mount exited {r.returncode}")


def test_full_disk_refuses_then_recovers_losing_nothing_answered(tmp_path, confdir, pki, token_key, upstream, mint):
    disk = tmp_path / "disk"
    why = _mount(disk)
    if why:
        pytest.skip(f"cannot mount a small tmpfs here: {why}")
    gw = None
    try:
        for d in ("audit", "rec"):
            (disk / d).mkdir()
        # The harness names the audit dir (workdir/audit): the small disk's audit dir is bound there.
        (tmp_path / "audit").mkdir()
        subprocess.run(["mount", "--bind", str(disk / "audit"), str(tmp_path / "audit")], check=True)
        gw = Gateway(tmp_path, policy_text(token_key, upstream.port), confdir, pki.ca_cert,
                     env={"UPSTREAM_KEY": UPSTREAM_SECRET}, options={"pangate_recordings_dir": str(disk / "rec")})
        s = gw.session("reader", mint("reader"))
        ok, codes, stop = [], [], threading.Event()

        def loop():
            while not stop.is_set():
                try:
                    r = s.get(f"https://localhost:{upstream.port}/v1/charges", timeout=20)
                except Exception as e:
                    codes.append(type(e).__name__)
                    continue
                codes.append(r.status_code if r.status_code == 200 else r.json().get("code"))
                if r.status_code == 200:
                    ok.append(r.headers["X-Pangate-Request-Id"])

        t = threading.Thread(target=loop)
        t.start()
        try:
            deadline = time.monotonic() + 60
            while len(ok) < 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            mark = gw.log.mark()
            filler = disk / "filler"
            with open(filler, "wb") as fh:  # fill the disk to the last block
                try:
                    while True:
                        fh.write(b"\0" * 65536)
                        fh.flush()
                except OSError:
                    pass
            gw.log.wait_for(r"pangate ALERT (audit|recording)_write_failed", timeout=60, start=mark)
            n = len(codes)
            deadline = time.monotonic() + 30
            while not any(c in ("audit_unavailable", "recording_unavailable") for c in codes[n:]):
                assert time.monotonic() < deadline, f"no refusal while full: {codes[n:][-20:]}"
                time.sleep(0.05)
            with open(filler, "r+b") as fh:  # free part of it: 2.5 of the ~4 MB
                fh.truncate(max(0, filler.stat().st_size - (5 << 19)))
            n = len(codes)
            deadline = time.monotonic() + 60
            while codes[n:][-3:] != [200, 200, 200]:
                assert time.monotonic() < deadline, f"did not recover after space was freed: {codes[-20:]}"
                time.sleep(0.1)
        finally:
            stop.set()
            t.join(30)
        assert gw.stop() == 0
        refused = {c for c in codes if c != 200}
        records = gw.audit_records()
        events = {r.get("event") for r in records}
        assert refused & {"audit_unavailable", "recording_unavailable"}
        assert {"audit_write_failed", "audit_recovered"} <= events or \
            {"recording_write_failed", "recording_write_recovered"} <= events
        logged = {r.get("request_id") for r in records}
        lost = [rid for rid in ok if rid not in logged]
        assert not lost, f"{len(lost)} of {len(ok)} answered requests have no audit record"
        res = subprocess.run([str(VENV_BIN / "pangate"), "audit", "verify", str(gw.audit_dir),
                              "--pubkey", str(tmp_path / "audit-signing.key.pub"), "--recordings", str(disk / "rec")],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and "OK" in res.stdout, res.stdout + res.stderr
        assert len(list((disk / "rec").glob("*.mitm"))) <= 3  # not one file per retry
    finally:
        if gw is not None:
            gw.stop()
        subprocess.run(["umount", "-l", str(tmp_path / "audit")], capture_output=True)
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
