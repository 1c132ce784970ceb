"""Fail closed: a broken hook, script or reload never lets traffic through unchecked."""

from __future__ import annotations

import shutil

from mitmproxy.test import tflow

from pangate.chain.datapath import DataPath
from pangate.chain.failsafe import Component

from harness import ROOT


class Exploding(Component):
    def request(self, flow):
        raise ValueError("card 4111111111111111 broke it")

    def responseheaders(self, flow):
        raise RuntimeError("boom")

    def websocket_message(self, flow):
        raise RuntimeError("boom")


def test_hook_exception_refuses_the_flow_and_masks_the_log(caplog):
    f = tflow.tflow()
    DataPath([Exploding()]).request(f)
    assert f.response.status_code == 502
    assert b"internal_error" in f.response.content
    assert f.metadata["pangate"]["failed_hook"] == "Exploding.request"
    assert "4111111111111111" not in caplog.text and "411111******1111" in caplog.text


def test_responseheaders_failure_drops_the_upstream_body():
    f = tflow.tflow(resp=True)
    f.response.timestamp_end = None  # headers arrived, body not yet
    DataPath([Exploding()]).responseheaders(f)
    assert f.response.status_code == 502
    refusal = f.response.content
    assert f.response.stream(b"card 4111111111111111") == b""
    assert f.response.stream(b"") == refusal and b"internal_error" in refusal


def test_message_hook_failure_kills_the_flow():
    f = tflow.twebsocketflow()
    f.live = True
    DataPath([Exploding()]).websocket_message(f)
    assert f.error is not None and f.error.msg == "Connection killed."
    assert "error" in f.metadata["pangate"]


def _good_script(tmp_path):
    script = tmp_path / "gateway.py"
    shutil.copy(ROOT / "addons" / "gateway.py", script)
    return script


def test_script_that_fails_at_start_stops_the_gateway(start_gateway, tmp_path):
    """mitmdump exits when a script fails at startup: nothing is left listening unchecked."""
    script = tmp_path / "gateway.py"
    script.write_text("raise ImportError('simulated broken deploy')\n")
    gw = start_gateway(script=script, wait_live=False)
    gw.log.wait_for(r"simulated broken deploy")
    assert gw.proc.wait(20) != 0


def test_armed_block_refuses_everything_before_the_script_loads(start_gateway, upstream, mint, tmp_path):
    """The startup arm (block_list) alone refuses traffic, for the moment before the script runs."""
    script = tmp_path / "gateway.py"
    script.write_text("# loads nothing: stands for the time before the gateway script has run\n")
    gw = start_gateway(script=script, wait_live=False)
    before = len(upstream.received)
    r = gw.session("reader", mint("reader")).get(f"https://localhost:{upstream.port}/v1/charges")
    assert r.status_code == 503
    assert len(upstream.received) == before


def test_broken_reload_refuses_until_fixed(start_gateway, upstream, mint, tmp_path):
    script = _good_script(tmp_path)
    gw = start_gateway(script=script)
    s = gw.session("reader", mint("reader"))
    url = f"https://localhost:{upstream.port}/v1/charges"
    assert s.get(url).status_code == 200
    mark = gw.log.mark()
    good = script.read_text()
    script.write_text(good + "\nthis is not python\n")
    gw.log.wait_for(r"error in script", start=mark)
    before = len(upstream.received)
    r = s.get(url)
    assert r.status_code == 503
    assert r.json()["code"] == "gateway_not_ready"
    assert len(upstream.received) == before
    mark = gw.log.mark()
    script.write_text(good + "\n# fixed\n")
    gw.log.wait_for(r"pangate gateway live", start=mark)
    assert s.get(url).status_code == 200
