"""What a new user trips over in the CLI: token issue's checks and output, audit show and
verify on a live log, scan's README line, the scripts/pangate shim."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pangate.cli.main import main
from pangate.identity.tokens import keygen

ROOT = Path(__file__).resolve().parents[2]
VENV_PANGATE = ROOT / ".venv" / "bin" / "pangate"

POLICY = """
version: 1
issuers:
  pangate: {{type: pangate, public_key_file: {pub}}}
  ext: {{type: oidc, issuer: "https://idp.example", audience: pangate, jwks_file: {pub}.jwks}}
identities:
  demo-client: {{issuer: pangate, roles: [r]}}
  ci-job: {{issuer: ext, subject: ci, roles: [r]}}
roles:
  r: {{allow: [{{destination: d, methods: [GET], paths: ["/**"]}}]}}
destinations:
  d: {{host: localhost, port: 9443}}
"""


@pytest.fixture
def setup(tmp_path, monkeypatch):
    key = tmp_path / "token-signing.key"
    keygen(key)
    (tmp_path / "token-signing.key.pub.jwks").write_text('{"keys": []}')
    pol = tmp_path / "policy.yaml"
    pol.write_text(POLICY.format(pub=f"{key}.pub"))
    monkeypatch.chdir(tmp_path)
    return key, pol


def issue(key, pol, *args):
    return main(["token", "issue", "--key", str(key), "--policy", str(pol), *args])


def test_issue_prints_the_token_on_stdout_and_its_id_and_expiry_on_stderr(setup, capsys):
    key, pol = setup
    assert issue(key, pol, "--identity", "demo-client", "--ttl", "15m") == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert token.count(".") == 2 and "\n" not in token
    import base64
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["exp"] - claims["iat"] == 900
    assert f"id (jti) {claims['jti']}" in err and "expires 20" in err


@pytest.mark.parametrize("identity,why", [("nobody", "has no identity 'nobody' (known: ci-job, demo-client)"),
                                          ("ci-job", "proven by issuer ext")])
def test_issue_refuses_an_identity_the_policy_would_refuse(setup, capsys, identity, why):
    key, pol = setup
    assert issue(key, pol, "--identity", identity) == 2
    out, err = capsys.readouterr()
    assert out == "" and why in err and "Traceback" not in err


@pytest.mark.parametrize("ttl,why", [("15", "with a unit"), ("abc", "with a unit"), ("0s", "positive"),
                                     ("25h", "at most 24h"), ("15 minutes", "with a unit")])
def test_issue_ttl_needs_a_unit_and_a_sane_value(setup, capsys, ttl, why):
    key, pol = setup
    assert issue(key, pol, "--identity", "demo-client", "--ttl", ttl) == 2
    out, err = capsys.readouterr()
    assert out == "" and why in err and err.count("\n") == 1


def test_issue_into_a_closed_pipe_says_nothing_about_the_key(setup):
    key, pol = setup
    r = subprocess.run(f"'{VENV_PANGATE}' token issue --key '{key}' --policy '{pol}' --identity demo-client "
                       "| head -c 0", shell=True, capture_output=True, text=True, timeout=60)
    assert "signing key" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "id (jti)" in r.stderr


# ---- audit --------------------------------------------------------------------------------

def _write_log(directory: Path, records: list[dict]) -> None:
    """A log as the writer leaves it: records chained by the real AuditWriter."""
    from pangate.audit.log import AuditWriter
    from pangate.audit.keys import load_or_create_signing_key

    key = load_or_create_signing_key(str(directory.parent / "audit.key"))
    log = AuditWriter(str(directory), key, fsync=False)
    for r in records:
        log.append(r)
    log.close()


def test_show_names_requester_and_approver_of_approval_events(tmp_path, capsys):
    d = tmp_path / "audit"
    _write_log(d, [{"event": "approval_granted", "requester": "writer", "approver": "alice",
                    "approvers": ["alice"], "rule": "refund-run", "approval_id": "apr_1", "request_id": "r1"}])
    assert main(["audit", "show", str(d), "--event", "approval_granted"]) == 0
    out = capsys.readouterr().out
    assert "requester=writer" in out and "approver=alice" in out and "rule=refund-run" in out
    assert "approval_id=apr_1" in out


def test_verify_on_a_live_log_needs_no_flag(tmp_path):
    """A running writer (here: a child process holding the AuditWriter open) is found from its audit_start pid."""
    d = tmp_path / "audit"
    code = ("import sys,time; from pangate.audit.log import AuditWriter; "
            "from pangate.audit.keys import load_or_create_signing_key as k; "
            f"log = AuditWriter({str(d)!r}, k({str(tmp_path / 'audit.key')!r}), "
            "fsync=False, checkpoint_interval=3600); "
            "log.wait_durable(log.append({'event': 'request', 'identity': {'name': 'x'}}), 10); "
            "print('ready', flush=True); sys.stdin.read(); log.close()")
    writer = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        r = subprocess.run([str(VENV_PANGATE), "audit", "verify", str(d), "--pubkey", str(tmp_path / "audit.key.pub")],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"(pid {writer.pid}) is writing this log" in r.stderr
    finally:
        writer.stdin.close()
        writer.wait(timeout=30)
    # Closed cleanly: verified as a finished log, no live note.
    r = subprocess.run([str(VENV_PANGATE), "audit", "verify", str(d), "--pubkey", str(tmp_path / "audit.key.pub")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "writing this log" not in r.stderr, r.stdout + r.stderr


def test_verify_of_a_dead_writers_log_still_says_truncated(tmp_path):
    d = tmp_path / "audit"
    code = ("import os; from pangate.audit.log import AuditWriter; "
            "from pangate.audit.keys import load_or_create_signing_key as k; "
            f"log = AuditWriter({str(d)!r}, k({str(tmp_path / 'audit.key')!r}), "
            "fsync=False, checkpoint_interval=3600); "
            "log.wait_durable(log.append({'event': 'request'}), 10); os._exit(0)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    r = subprocess.run([str(VENV_PANGATE), "audit", "verify", str(d), "--pubkey", str(tmp_path / "audit.key.pub")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "truncated" in r.stdout, r.stdout + r.stderr
    assert "no running gateway is writing this log" in r.stderr


# ---- README lines on a fresh clone ------------------------------------------------------

def test_readme_scan_line_works_on_a_fresh_clone(tmp_path, monkeypatch, capsys):
    """The README's `pangate scan` example, as written, on a tree with only var/ (no logs/)."""
    readme = (ROOT / "README.md").read_text()
    line = next(ln for ln in readme.splitlines() if "pangate scan " in ln and "exit 0 none" in ln)
    argv = line.split("#")[0].split()[1:]  # drop the program
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "notes.txt").write_text("nothing to see\n")
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 0, capsys.readouterr()


def test_scripts_pangate_shim_runs_the_venv_command():
    r = subprocess.run([str(ROOT / "scripts" / "pangate"), "token", "--help"], capture_output=True, text=True,
                       timeout=60, cwd="/")
    assert r.returncode == 0 and "issue" in r.stdout, r.stderr


def test_issue_without_a_policy_here_still_issues_and_says_so(setup, capsys):
    key, pol = setup
    pol.unlink()  # cwd is the tmp dir: no policies.yaml
    assert main(["token", "issue", "--key", str(key), "--identity", "anyone"]) == 0
    out, err = capsys.readouterr()
    assert out.count(".") == 2 and "not checked against a policy" in err


def test_issue_checks_policies_yaml_of_the_current_directory(setup, capsys):
    key, pol = setup
    pol.rename(pol.parent / "policies.yaml")
    assert main(["token", "issue", "--key", str(key), "--identity", "nobody"]) == 2
    assert "has no identity 'nobody'" in capsys.readouterr().err
