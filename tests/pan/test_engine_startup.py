"""The gateway says at startup which PAN engine masks, and PANGATE_ENGINE chooses it."""

from __future__ import annotations

import os

import pytest

from pangate.pan import engine


def test_native_engine_is_built():
    """CI (.ci/run) sets PANGATE_REQUIRE_NATIVE=1: the install must have built the engine."""
    if os.environ.get("PANGATE_REQUIRE_NATIVE") == "1" and os.environ.get("PANGATE_ENGINE", "auto") == "auto":
        assert engine.ENGINE == "native", engine.ENGINE_DETAIL


def test_start_line_names_the_engine(gateway):
    line = gateway.log.wait_for(r"pangate PAN engine: (\w+) \((.*)\)")
    assert line.group(1) == engine.ENGINE
    if engine.ENGINE == "native":
        assert line.group(2).startswith("C, ")


def test_pangate_engine_python_is_honoured(start_gateway):
    gw = start_gateway(env={"PANGATE_ENGINE": "python"})
    assert gw.log.wait_for(r"pangate PAN engine: (.*)").group(1) == "python (PANGATE_ENGINE=python)"


def test_choice_without_the_native_engine(monkeypatch):
    from pangate.pan import native
    monkeypatch.setattr(native, "_MOD", None)
    monkeypatch.setattr(native, "_WHY", "not built (test)")
    assert native.choose(engine._reference, {}) == ("python", "python (native engine unavailable: not built (test))")
    with pytest.raises(native.EngineUnavailable, match="not built"):
        native.choose(engine._reference, {"PANGATE_ENGINE": "native"})


def test_a_failed_self_check_means_python(monkeypatch):
    from pangate.pan import native
    if native._MOD is None:
        pytest.skip("native engine not built")
    monkeypatch.setattr(native, "_self_check", lambda reference, modes=(): "self-check failed in mode last4")
    assert native.choose(engine._reference, {"PANGATE_ENGINE": "auto"})[0] == "python"
    with pytest.raises(native.EngineUnavailable):
        native.choose(engine._reference, {"PANGATE_ENGINE": "native"})
