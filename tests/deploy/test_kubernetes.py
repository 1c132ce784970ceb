"""deploy/k8s: each overlay builds with `kubectl kustomize`, and what it builds is safe to run.

The structural checks read the built manifests: probes on the health port,
resources, a restricted securityContext on every container, and each gateway
wired to the Redis Service that exists beside it.
"""

from __future__ import annotations

import re

import pytest
import yaml

from deploy_helpers import DEPLOY, OVERLAYS, build, by_kind

GATEWAY_IMAGE = re.compile(r"^pangate(:|$)")


def test_there_are_the_two_modes():
    assert {"central", "sidecar"} <= set(OVERLAYS)


def pods(docs: list[dict]) -> list[tuple[str, dict]]:
    return [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in docs
            if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]


def containers(spec: dict) -> list[dict]:
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def gateway_containers(spec: dict) -> list[dict]:
    """Long-running gateways: regular containers or native sidecars (restartPolicy: Always)."""
    return [c for c in containers(spec) if GATEWAY_IMAGE.match(c["image"]) and "gateway" in c.get("args", [])
            and (c in spec["containers"] or c.get("restartPolicy") == "Always")]


def env_of(c: dict) -> dict:
    return {e["name"]: e.get("value") for e in c.get("env", [])}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds(overlay):
    docs = build(overlay)
    assert docs and all(d.get("kind") and d.get("metadata", {}).get("name") for d in docs)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_locked_down_and_bounded(overlay):
    for name, spec in pods(build(overlay)):
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec.get("automountServiceAccountToken") is False, name
        for c in containers(spec):
            sc = c["securityContext"]
            where = f"{name}/{c['name']}"
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), where
            assert sc.get("privileged") is not True, where
            res = c["resources"]
            assert res["requests"]["cpu"] and res["requests"]["memory"] and res["limits"]["memory"], where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateways_have_probes_on_the_health_port_and_redis(overlay):
    docs = build(overlay)
    services = by_kind(docs, "Service")
    gateways = [(n, s, c) for n, s in pods(docs) for c in gateway_containers(s)]
    assert gateways, "no gateway container"
    for name, spec, c in gateways:
        where = f"{name}/{c['name']}"
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        env = env_of(c)
        assert env["PANGATE_HEALTH_LISTEN"].endswith(f":{ports['health']}"), where
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
            got = c[probe]["httpGet"]
            assert got["path"] == path and got["port"] in ("health", ports["health"]), (where, probe)
        # Redis: the URL names a Service of this build, on the port it serves.
        m = re.fullmatch(r"redis://([a-z0-9-]+):(\d+)/\d+", env["PANGATE_STATE"])
        assert m, env["PANGATE_STATE"]
        svc = services[m.group(1)]
        assert int(m.group(2)) in [p["port"] for p in svc["spec"]["ports"]]
        redis_pods = [d for d in docs if d["kind"] == "Deployment"
                      and all(d["spec"]["template"]["metadata"]["labels"].get(k) == v
                              for k, v in svc["spec"]["selector"].items())]
        assert redis_pods and redis_pods[0]["spec"]["template"]["spec"]["containers"][0]["image"].startswith("redis:")
        # One audit chain per pod; the credentials from a Secret, never inline.
        assert any(e["name"] == "PANGATE_INSTANCE" and e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
                   for e in c["env"]), where
        assert {"secretRef": {"name": "pangate-credentials"}} in c.get("envFrom", []), where
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        read_only = ("/etc/pangate/certs", "/etc/pangate/keys", "/etc/pangate/policy")
        assert {*read_only, "/var/lib/pangate", "/tmp"} <= set(mounts)
        assert all(mounts[p].get("readOnly") for p in read_only)
        vols = {v["name"]: v for v in spec["volumes"]}
        assert vols[mounts["/etc/pangate/certs"]["name"]]["secret"]["secretName"] == "pangate-ca"
        assert env["PANGATE_POLICY"].startswith(mounts["/etc/pangate/policy"]["mountPath"] + "/")


def test_redis_is_reachable_only_from_gateways():
    for overlay in OVERLAYS:
        docs = build(overlay)
        np = by_kind(docs, "NetworkPolicy")["pangate-redis"]
        assert np["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "pangate-redis"
        allowed = [f["podSelector"]["matchLabels"] for f in np["spec"]["ingress"][0]["from"]]
        for d in docs:
            if d["kind"] == "Deployment" and gateway_containers(d["spec"]["template"]["spec"]):
                labels = d["spec"]["template"]["metadata"]["labels"]
                assert any(all(labels.get(k) == v for k, v in sel.items()) for sel in allowed), d["metadata"]["name"]


def test_central_runs_replicas_behind_a_service():
    docs = build("central")
    dep = by_kind(docs, "Deployment")["pangate"]
    assert dep["spec"]["replicas"] >= 2 and dep["metadata"]["namespace"] == "pangate"
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    svc = by_kind(docs, "Service")["pangate"]
    assert [p["port"] for p in svc["spec"]["ports"]] == [8080]  # the health port stays off the Service
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert by_kind(docs, "PodDisruptionBudget")["pangate"]["spec"]["minAvailable"] >= 1
    gw = gateway_containers(dep["spec"]["template"]["spec"])[0]
    assert gw["image"] == "pangate:0.1.0"


def test_sidecar_runs_beside_the_workload_with_a_projected_token():
    docs = build("sidecar")
    deps = by_kind(docs, "Deployment")
    assert "pangate" not in deps and "pangate" not in by_kind(docs, "Service")  # no central gateway
    spec = deps["settlement"]["spec"]["template"]["spec"]
    [gw] = gateway_containers(spec)
    assert gw["restartPolicy"] == "Always" and gw["image"] == "pangate:0.1.0"
    assert env_of(gw)["PANGATE_LISTEN_HOST"] == "127.0.0.1"  # nothing outside the Pod can use it
    [app] = spec["containers"]
    script = "\n".join(app["args"])
    vols = {v["name"]: v for v in spec["volumes"]}
    token_mount = next(m for m in app["volumeMounts"] if "projected" in vols[m["name"]])
    src = vols[token_mount["name"]]["projected"]["sources"][0]["serviceAccountToken"]
    assert f'$(cat {token_mount["mountPath"]}/{src["path"]})@127.0.0.1:8080' in script
    assert 600 <= src["expirationSeconds"] <= 24 * 3600
    assert not any(m["mountPath"].startswith("/etc/pangate/") for m in app["volumeMounts"])  # no gateway secrets
    # The policy the sidecar loads knows this exact service account, for this audience.
    [cm] = [d for n, d in by_kind(docs, "ConfigMap").items() if n.startswith("pangate-policy")]
    policy = yaml.safe_load(cm["data"]["policies.yaml"])
    ns = deps["settlement"]["metadata"]["namespace"]
    ident = next(i for i in policy["identities"].values() if i.get("issuer") == "k8s")
    assert ident["subject"] == f"system:serviceaccount:{ns}:{spec['serviceAccountName']}"
    assert src["audience"] == policy["issuers"]["k8s"]["audience"]


def test_base_holds_no_secret():
    for f in (DEPLOY / "k8s").rglob("*"):
        if f.is_file():
            text = f.read_text()
            assert "PRIVATE KEY" not in text and "kind: Secret\n" not in text, f
