"""Shared loaders for the deployment files' tests."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = sorted(p.name for p in (DEPLOY / "k8s" / "overlays").iterdir() if p.is_dir())


def kustomize_version() -> tuple[int, ...] | None:
    """kubectl's embedded kustomize version, or None when there is no usable one."""
    if not shutil.which("kubectl"):
        return None
    res = subprocess.run(["kubectl", "version", "--client"], capture_output=True, text=True, timeout=30)
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
    res = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}
