"""`pangate doctor`: each problem it knows is found, said with its fix, and makes it exit 1."""

from __future__ import annotations

import socket

import pytest

from pangate.cli.main import main
from pangate.identity.tokens import keygen

POLICY = """
version: 1
issuers:
  pangate: {{type: pangate, public_key_file: {pub}}}
identities:
  demo-client: {{issuer: pangate, roles: [r]}}
roles:
  r: {{allow: [{{destination: d, methods: [GET], paths: ["/**"]}}]}}
destinations:
  d:
    host: localhost
    port: 9443
    credential: {{type: bearer, env: PANGATE_TEST_DOCTOR_KEY}}
approvers:
  alice: {{groups: [leads]}}
approvals:
  big: {{roles: [r], destination: d, paths: ["/**"], approvers: [alice]}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory):
    from mitmproxy.certs import CertStore  # the tests may use mitmproxy; the CLI never does

    d = tmp_path_factory.mktemp("ca")
    CertStore.from_store(str(d), "mitmproxy", 2048)
    return d


@pytest.fixture
def env(tmp_path, monkeypatch, ca_dir):
    key = tmp_path / "token-signing.key"
    keygen(key)
    pol = tmp_path / "policies.yaml"
    pol.write_text(POLICY.format(pub=f"{key}.pub"))
    monkeypatch.setenv("PANGATE_TEST_DOCTOR_KEY", "sk_test_doctor")
    monkeypatch.chdir(tmp_path)
    args = ["doctor", "--policy", str(pol), "--confdir", str(ca_dir), "--audit-dir", str(tmp_path / "audit"),
            "--audit-key", str(tmp_path / "audit.key"), "--token-key", str(key),
            "--port", str(_free_port()), "--control", f"127.0.0.1:{_free_port()}"]
    return args, tmp_path


def run(capsys, args):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out + out.err


def test_a_good_setup_passes(env, capsys):
    args, _ = env
    code, out = run(capsys, args)
    assert code == 0, out
    assert "all checks passed" in out and "PAN engine: " in out and "FAIL" not in out


def test_unset_credential_variable(env, capsys, monkeypatch):
    args, _ = env
    monkeypatch.delenv("PANGATE_TEST_DOCTOR_KEY")
    code, out = run(capsys, args)
    assert code == 1
    assert "FAIL  credential of d: $PANGATE_TEST_DOCTOR_KEY is not set" in out
    assert "fix: export PANGATE_TEST_DOCTOR_KEY=" in out


def test_token_key_that_does_not_match_the_policy(env, capsys):
    args, tmp = env
    other = tmp / "other.key"
    keygen(other)
    args[args.index("--token-key") + 1] = str(other)
    code, out = run(capsys, args)
    assert code == 1 and "does not match" in out and "unknown_key" in out


@pytest.mark.parametrize("which", ["--port", "--control"])
def test_port_in_use(env, capsys, which):
    args, _ = env
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        args[args.index(which) + 1] = str(port) if which == "--port" else f"127.0.0.1:{port}"
        code, out = run(capsys, args)
    assert code == 1 and f"127.0.0.1:{port}: in use" in out and "fix: stop what listens there" in out


def test_broken_policy_names_file_and_line(env, capsys):
    args, tmp = env
    bad = tmp / "bad.yaml"
    bad.write_text("version: 1\nidentities:\n  x: {roles: [nope]}\n")
    args[args.index("--policy") + 1] = str(bad)
    code, out = run(capsys, args)
    assert code == 1 and f"{bad}:" in out and "pangate policy check" in out


def test_missing_ca_and_audit_dir_that_is_a_file(env, capsys, tmp_path):
    args, tmp = env
    args[args.index("--confdir") + 1] = str(tmp / "no-ca")
    (tmp / "audit-file").write_text("")
    args[args.index("--audit-dir") + 1] = str(tmp / "audit-file")
    code, out = run(capsys, args)
    assert code == 1 and "no gateway CA" in out and "is not a directory" in out


def test_preflight_prints_only_the_policy_line_and_problems(env, capsys, monkeypatch):
    args, _ = env
    code, out = run(capsys, [*args, "--preflight"])
    assert code == 0 and out.count("\n") == 1 and out.startswith("ok    policy ")
    monkeypatch.delenv("PANGATE_TEST_DOCTOR_KEY")
    code, out = run(capsys, [*args, "--preflight"])
    assert code == 1 and "FAIL" in out and "PAN engine" not in out


def test_lost_audit_key_with_a_trail(env, capsys):
    args, tmp = env
    (tmp / "audit").mkdir()
    (tmp / "audit" / "audit-20260101-0001.jsonl").write_text("")
    code, out = run(capsys, args)
    assert code == 1 and "is missing but" in out and "rotate-key" in out
