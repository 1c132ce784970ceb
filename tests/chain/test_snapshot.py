"""A flow's snapshot is its get_state() (pangate's notes only), and stays so as the flow changes."""

from __future__ import annotations

from mitmproxy.test import tflow
from mitmproxy.websocket import WebSocketMessage

from pangate.chain.snapshot import Snapshots, plain_copy


def expected(flow) -> dict:
    state = flow.get_state()
    state["metadata"] = {"pangate": state["metadata"].get("pangate", {})}
    return state


def _flow():
    f = tflow.tflow(resp=True, ws=True)
    f.metadata["pangate"] = {"request_id": "r1", "decision": {"rule": "a/0", "tags": ["x"]}}
    f.metadata["other"] = {"raw": "4111111111111111"}
    f.websocket.messages.append(WebSocketMessage(1, True, b"hi"))
    return f


def test_snapshot_equals_get_state():
    snaps = Snapshots()
    for f in (_flow(), tflow.tflow(), tflow.tflow(err=True), tflow.ttcpflow()):
        assert snaps.flow(f) == expected(f)


def test_a_changed_connection_is_taken_again():
    snaps, f = Snapshots(), _flow()
    assert snaps.flow(f) == expected(f)
    # Same connection objects, later state: each kind of change must show.
    f.server_conn.sni = "changed.example"
    assert snaps.flow(f) == expected(f)
    f.server_conn.alpn_offers.append(b"h3")  # a list changed in place
    assert snaps.flow(f) == expected(f)
    f.client_conn.timestamp_end = 123.0
    f.server_conn.error = "connection reset"
    assert snaps.flow(f) == expected(f)


def test_connections_are_shared_and_notes_are_copied():
    snaps, a = Snapshots(), _flow()
    b = _flow()
    b.client_conn, b.server_conn = a.client_conn, a.server_conn  # two requests on one connection
    sa, sb = snaps.flow(a), snaps.flow(b)
    assert sa["server_conn"] is sb["server_conn"]
    a.metadata["pangate"]["decision"]["tags"].append("later")
    assert sa["metadata"]["pangate"]["decision"]["tags"] == ["x"]


def test_plain_copy_is_deep():
    notes = {"a": [1, {"b": (2, [3])}], "c": b"x"}
    out = plain_copy(notes)
    assert out == notes and out["a"] is not notes["a"] and out["a"][1]["b"][1] is not notes["a"][1]["b"][1]
