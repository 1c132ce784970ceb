"""Alert sinks: what reaches a receiver is scrubbed; the webhook and syslog really get it."""

from __future__ import annotations

import json
import socket

import pytest

import leakscan
from pangate.monitor.detectors import Alert
from pangate.monitor.sinks import AlertSinks, check_syslog, payload, scrubbed

from webhook_receiver import Receiver

JWT = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJjaSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


def _alert() -> Alert:
    return Alert("pan_volume", "critical", "ci got 4111 1111 1111 1111 back", "ci",
                 {"count": 3, "sample": "card=4111111111111111", "auth": f"Bearer {JWT}", "nested": [JWT]},
                 "ci", 1_700_000_000.0, "alr_1")


def test_alert_text_and_evidence_are_scrubbed():
    body = json.dumps(payload(scrubbed(_alert())))
    assert not leakscan.pans_in(body), body
    assert JWT not in body and "eyJ" not in body
    assert '"count": 3' in body and "pan_volume" in body and body.count("[redacted]") >= 2


def test_webhook_and_syslog_receive_the_alert():
    hook = Receiver()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(10)
    sinks = AlertSinks()
    sinks.configure(hook.url, f"syslog+udp://127.0.0.1:{udp.getsockname()[1]}")
    sinks.send(scrubbed(_alert()))
    got = hook.wait(1)
    assert got and got[0]["text"].startswith(":rotating_light: pangate critical alert pan_volume")
    assert got[0]["evidence"]["count"] == 3 and got[0]["identity"] == "ci"
    datagram = udp.recv(65536)
    assert datagram.startswith(b"<36>1 ")  # facility auth, severity warning
    rec = json.loads(datagram[datagram.index(b"{"):])
    assert rec["event"] == "alert" and rec["detector"] == "pan_volume" and not leakscan.pans_in(datagram)
    sinks.close()
    hook.server.shutdown()
    udp.close()


@pytest.mark.parametrize("url,ok", [("", True), ("syslog+tcp://127.0.0.1:514", True),
                                    ("http://127.0.0.1:514", False), ("syslog+udp://nohostport", False)])
def test_syslog_urls(url, ok):
    assert (check_syslog(url) is None) == ok
