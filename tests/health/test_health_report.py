"""What /healthz and /readyz answer, without a gateway (the e2e path is in tests/scale)."""

import pytest

from pangate.health.report import liveness, parse_listen, readiness


def test_liveness_always_answers_ok():
    status, doc = liveness(100.0, "gw-1", now=112.34)
    assert status == 200 and doc == {"status": "ok", "instance": "gw-1", "uptime_seconds": 12.3}


def test_readiness_names_what_fails():
    status, doc = readiness({"policy": (True, ""), "SharedState": (False, "redis down"), "Audit": (True, "")}, "a")
    assert status == 503 and doc["status"] == "not_ready"
    assert doc["checks"] == {"policy": "ok", "SharedState": "failing", "Audit": "ok"}
    assert doc["problems"] == {"SharedState": "redis down"}
    status, doc = readiness({"policy": (True, "")}, "a")
    assert status == 200 and doc["status"] == "ready" and "problems" not in doc


def test_listen_values():
    assert parse_listen("") is None
    assert parse_listen("0.0.0.0:8090") == ("0.0.0.0", 8090)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("8090", "host.example:8090", "0.0.0.0:99999"):
        with pytest.raises(ValueError, match="pangate_health_listen"):
            parse_listen(bad)
