"""deploy/compose: valid for docker-compose (checked offline: no engine runs, no image is built),
and wired so the workload's only way out is the gateway."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess

import pytest
import yaml

from deploy_helpers import DEPLOY

COMPOSE = DEPLOY / "compose" / "docker-compose.yml"


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_docker_compose_config_validates():
    exe = shutil.which("docker-compose")
    if not exe:
        pytest.skip("docker-compose is not installed (scripts/test installs Debian's): not validated")
    res = subprocess.run([exe, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, timeout=120,
                         cwd=COMPOSE.parent)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([exe, "-f", str(COMPOSE), "config"], capture_output=True, text=True, timeout=120,
                         cwd=COMPOSE.parent)
    resolved = yaml.safe_load(res.stdout)
    # $$ reached the shell as $: the token is read when the loop runs, not when compose parses.
    script = "\n".join(resolved["services"]["workload"]["command"])
    assert "$(cat /tokens/demo-workload.token)" in script


def test_services_and_hardening():
    doc = compose()
    svc = doc["services"]
    assert {"init", "gateway", "redis", "workload", "upstream"} <= set(svc)
    for name, s in svc.items():
        assert s.get("read_only") is True, name
        assert s.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in s.get("security_opt", []), name
        assert not s.get("privileged"), name
    assert svc["gateway"]["build"]["dockerfile"] == "deploy/Dockerfile"


def test_gateway_wiring():
    svc = compose()["services"]
    gw = svc["gateway"]
    env = gw["environment"]
    assert env["PANGATE_STATE"] == "redis://redis:6379/0"
    assert gw["depends_on"]["redis"]["condition"] == "service_healthy"
    assert gw["depends_on"]["init"]["condition"] == "service_completed_successfully"
    assert "redis-cli" in svc["redis"]["healthcheck"]["test"]
    assert set(gw["networks"]) >= set(svc["redis"]["networks"])
    assert "pangate-var:/var/lib/pangate" in gw["volumes"]
    assert all(v.endswith(":ro") for v in gw["volumes"] if ":/etc/pangate" in v)
    assert env["DEMO_PROCESSOR_KEY"].startswith("${DEMO_PROCESSOR_KEY")  # from the environment, never the image
    assert gw["ports"] == ["127.0.0.1:8080:8080"]
    assert "health" in gw["healthcheck"]["test"]


def test_workload_has_no_way_out_but_the_gateway():
    doc = compose()
    svc = doc["services"]
    wl = svc["workload"]
    assert wl["depends_on"]["gateway"]["condition"] == "service_healthy"
    [net] = wl["networks"]
    assert doc["networks"][net]["internal"] is True
    assert net in svc["gateway"]["networks"] and net not in svc["upstream"]["networks"]
    script = "\n".join(wl["command"])
    assert 'export HTTPS_PROXY="http://demo-workload:$$(cat /tokens/demo-workload.token)@gateway:8080"' in script
    assert wl["environment"]["CURL_CA_BUNDLE"] == "/ca/pangate-ca.pem"
    assert "pangate-ca:/ca:ro" in wl["volumes"]
    # The CA volume is filled by init with `pangate ca export`: the certificate only.
    assert svc["init"]["environment"]["PANGATE_CA_OUT"] == "/ca/pangate-ca.pem"
    assert "pangate-etc:/etc/pangate" not in wl.get("volumes", []) and not any(
        "pangate-etc" in v for v in wl["volumes"])


def test_policy_matches_the_compose_network():
    doc = compose()
    policy = yaml.safe_load((DEPLOY / "compose" / "policies.yaml").read_text())
    dest = policy["destinations"]["processor"]
    assert dest["host"] == "upstream" and dest["card_data"] is True
    subnet = ipaddress.ip_network(doc["networks"]["egress"]["ipam"]["config"][0]["subnet"])
    assert [ipaddress.ip_network(a) for a in dest["addresses"]] == [subnet]
    assert "egress" in doc["services"]["upstream"]["networks"]
    assert doc["services"]["init"]["environment"]["PANGATE_DEMO_TOKEN_FOR"] in policy["identities"]
