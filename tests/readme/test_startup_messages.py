"""A problem that stops the gateway at start is said as such ("exiting:"), with its fix: mitmproxy
exits on any error logged while starting, so "its requests are refused" would be untrue there."""

from __future__ import annotations

import socket

from conftest import policy_text

APPROVAL = """
approvers:
  alice: {groups: [leads]}
approvals:
  any: {identities: [writer], methods: [PUT], paths: ["/**"], approvers: [alice]}
"""


def test_missing_credential_at_start(start_gateway, token_key, upstream):
    gw = start_gateway(env={"UPSTREAM_KEY": ""}, wait_live=False)
    assert gw.proc.wait(60) == 1
    gw.log.wait_for(r"pangate exiting: no credential for destination upstream: environment variable "
                    r"UPSTREAM_KEY is not set; export UPSTREAM_KEY=\.\.\. in the gateway's environment")
    assert "its requests are refused" not in gw.log.text()


def test_control_port_in_use_at_start(start_gateway, token_key, upstream):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        gw = start_gateway(policy=policy_text(token_key, upstream.port, APPROVAL), wait_live=False,
                           options={"pangate_control_listen": f"127.0.0.1:{port}"})
        assert gw.proc.wait(60) == 1
    gw.log.wait_for(rf"pangate exiting: the approval control endpoint cannot listen on 127\.0\.0\.1:{port}: .*"
                    r"give it a free port \(--set pangate_control_listen=127\.0\.0\.1:PORT")
    assert "approvals can only time out" not in gw.log.text()
