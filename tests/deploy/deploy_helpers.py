"""Shared loaders for the deployment files' tests."""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = sorted(p.name for p in (DEPLOY / "k8s" / "overlays").iterdir() if p.is_dir())

# No cluster. Without a server in its kubeconfig kubectl (and the kubectl-dispatcher wrapper,
# which asks the server's version even for `version --client` and `kustomize`) probes
# http://localhost:8080 -- a live gateway's default port on this machine. A kubeconfig whose
# server is a loopback port nobody may listen on (1, privileged) makes every probe fail at once.
_KUBECONFIG = Path(tempfile.gettempdir()) / f"pangate-tests-kubeconfig-{os.getpid()}"
_KUBECONFIG.write_text(yaml.safe_dump({
    "apiVersion": "v1", "kind": "Config", "current-context": "none",
    "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:1"}}],
    "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}],
    "users": [{"name": "none", "user": {}}]}))
atexit.register(_KUBECONFIG.unlink, missing_ok=True)
KUBE_ENV = {**os.environ, "KUBECONFIG": str(_KUBECONFIG)}


def kustomize_version() -> tuple[int, ...] | None:
    """kubectl's embedded kustomize version, or None when there is no usable one."""
    if not shutil.which("kubectl"):
        return None
    res = subprocess.run(["kubectl", "version", "--client"], capture_output=True, text=True, timeout=30,
                         env=KUBE_ENV)
    m = re.search(r"Kustomize Version: v(\d+)\.(\d+)", res.stdout)
    return (int(m.group(1)), int(m.group(2))) if m else None


def need_kustomize() -> None:
    v = kustomize_version()
    if v is None:
        pytest.skip("kubectl with kustomize is not installed: `kubectl kustomize` not run")
    if v < (4, 0):
        # Debian's kubernetes-client (1.20) embeds kustomize 2.0, which predates `labels`, `replicas`
        # and inline `patches`: its failures would say nothing about these files.
        pytest.skip(f"kubectl's kustomize v{v[0]}.{v[1]} is older than v4")


def build(overlay: str) -> list[dict]:
    need_kustomize()
    res = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)], env=KUBE_ENV,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}
