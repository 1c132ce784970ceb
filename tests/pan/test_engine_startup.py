"""The gateway says at startup which PAN engine masks, and PANGATE_ENGINE chooses it."""

from __future__ import annotations

from pangate.pan import engine


def test_start_line_names_the_engine(gateway):
    line = gateway.log.wait_for(r"pangate PAN engine: (\w+) \((.*)\)")
    assert line.group(1) == engine.ENGINE
    if engine.ENGINE == "native":
        assert line.group(2).startswith("C, ")


def test_pangate_engine_python_is_honoured(start_gateway):
    gw = start_gateway(env={"PANGATE_ENGINE": "python"})
    assert gw.log.wait_for(r"pangate PAN engine: (.*)").group(1) == "python (PANGATE_ENGINE=python)"
