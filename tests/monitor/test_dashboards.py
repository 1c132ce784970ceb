"""The Grafana dashboard and the Prometheus alert rules: valid PromQL, and only metrics the gateway serves."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest

from pangate.monitor.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "pangate.json"
RULES = DEPLOY / "prometheus" / "alerts.yml"
METRIC = re.compile(r"\bpangate_[a-z_]+\b")


def served_names() -> set[str]:
    m = Metrics()
    m.flow("a", "b", "c", "allowed", 1, 0.1)
    m.held.set(0)
    m.event({"event": "token_refused", "code": "expired"})
    m.event({"event": "approval_pending", "approval_id": "x", "mode": "hold"})
    m.event({"event": "alert", "detector": "pan_volume", "severity": "critical"})
    m.audit_latency.observe(0.01)
    m.exporters({"x": 1})
    m.control_up.labels("audit").set(1)
    text = generate_latest(m.registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def dashboard_exprs() -> list[str]:
    d = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in d["panels"] for t in p["targets"]]


def promql(expr: str) -> str:
    """Grafana's variables replaced by what they stand for, so promtool can parse the expression."""
    return expr.replace("$__rate_interval", "5m").replace("$identity", ".*")


def test_dashboard_structure():
    d = json.loads(DASHBOARD.read_text())
    assert d["uid"] and d["title"] and d["schemaVersion"] >= 36
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)) and len(ids) >= 10
    cells = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"panel {p['title']} overlaps another"
        cells |= mine
        assert p["datasource"]["uid"] == "${datasource}" and p["targets"]
        assert all(t["refId"] and t["expr"] for t in p["targets"])
    names = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "identity"} <= names
    titles = " ".join(p["title"] for p in d["panels"]).lower()
    for what in ("identity", "decision", "pans", "token", "approvals", "alerts", "latency", "backlog", "held"):
        assert what in titles, what


def test_dashboard_and_rules_use_only_served_metrics():
    served = served_names()
    rules = yaml.safe_load(RULES.read_text())
    exprs = dashboard_exprs() + [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = {m for e in exprs for m in METRIC.findall(e)}
    assert used and used <= served, used - served
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    # One rule per detector of the gateway (and the ones only Prometheus can see).
    for name in ("PangateRefusalBurst", "PangatePanVolume", "PangateRequestRate", "PangateBadTokens",
                 "PangateApprovalTimeouts", "PangateControlDown", "PangateExportBacklog", "PangateAuditBacklog",
                 "PangateMetricsDown"):
        assert name in alerts


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)")
def test_promtool_checks_and_unit_tests_the_rules():
    res = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    res = subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yml"], cwd=RULES.parent, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0 and "SUCCESS" in res.stdout, res.stdout + res.stderr


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)")
def test_promtool_parses_every_dashboard_query(tmp_path):
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"pangate:dashboard_query_{i}", "expr": promql(e)} for i, e in enumerate(dashboard_exprs())]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    res = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
