"""Every policy shipped with the deployment files passes `pangate policy check`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from deploy_helpers import DEPLOY

POLICIES = sorted(DEPLOY.rglob("policies.yaml"))


def test_there_are_recipes():
    assert {p.parent.name for p in POLICIES} >= {"compose", "base", "github"}


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_policy_check_passes(path):
    res = subprocess.run([str(Path(sys.executable).parent / "pangate"), "policy", "check", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
