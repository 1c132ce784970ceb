"""A finished flow's state, taken on the event loop for a writer thread, at a fraction of get_state().

The recorder hands each flow to its writer thread as `flow.get_state()`, a deep
snapshot the loop may take safely while the flow lives on. Most of what that
costs is not the messages (a microsecond each) but the two connections:
mitmproxy serializes each dataclass field by its type hints on every call, and
re-encodes every certificate to PEM -- about 0.2 ms a flow, for state that is
the same for every request of a keep-alive connection. `Snapshots` keeps each
connection's last state with the field values it was made from, and makes it
again only when one of them changed.

The result equals `flow.get_state()` (tests hold it to that), except that
metadata keeps pangate's notes only: the recording drops the rest unvetted.
Connection states are shared between snapshots: readers must not modify them.
"""

from __future__ import annotations

import copy
import dataclasses
import operator

from mitmproxy import http, version

from pangate.chain.context import KEY

CONNECTIONS_KEPT = 4096  # connections whose state is remembered, then forgotten all at once


def plain_copy(obj):
    """A deep copy of JSON-like notes (dicts, lists, tuples, scalars), several times faster
    than copy.deepcopy; anything else is left to deepcopy."""
    if isinstance(obj, dict):
        return {k: plain_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain_copy(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(plain_copy(v) for v in obj)
    if obj is None or isinstance(obj, (str, bytes, int, float, bool)):
        return obj
    return copy.deepcopy(obj)


def _frozen(values: tuple) -> tuple:
    # Lists (certificate_list, alpn_offers, cipher_list) are compared by content: a list
    # changed in place must not look unchanged.
    return tuple(tuple(v) if isinstance(v, list) else v for v in values)


class Snapshots:
    """Takes snapshots of HTTP flows on the event loop (one instance per recorder; not thread-safe)."""

    def __init__(self):
        self._conns: dict[int, tuple[tuple, dict]] = {}
        self._fields: dict[type, operator.attrgetter] = {}

    def connection(self, conn) -> dict:
        getter = self._fields.get(type(conn))
        if getter is None:
            getter = self._fields[type(conn)] = operator.attrgetter(*(f.name for f in dataclasses.fields(conn)))
        values = _frozen(getter(conn))
        hit = self._conns.get(id(conn))
        if hit is not None and hit[0] == values:
            return hit[1]
        state = conn.get_state()
        if len(self._conns) >= CONNECTIONS_KEPT:
            self._conns.clear()
        self._conns[id(conn)] = (values, state)  # values hold the id: a reused address never matches
        return state

    def flow(self, flow) -> dict:
        if not isinstance(flow, http.HTTPFlow):
            state = flow.get_state()
            state["metadata"] = {KEY: state["metadata"].get(KEY, {})}
            return state
        state = {
            "version": version.FLOW_FORMAT_VERSION,
            "type": flow.type,
            "id": flow.id,
            "error": flow.error.get_state() if flow.error else None,
            "client_conn": self.connection(flow.client_conn),
            "server_conn": self.connection(flow.server_conn),
            "intercepted": flow.intercepted,
            "is_replay": flow.is_replay,
            "marked": flow.marked,
            "metadata": {KEY: plain_copy(flow.metadata.get(KEY, {}))},
            "comment": flow.comment,
            "timestamp_created": flow.timestamp_created,
        }
        # As Flow.get_state does it: an edited flow keeps what it was.
        state["backup"] = copy.deepcopy(flow._backup) if flow._backup != state else None
        state["request"] = flow.request.get_state()
        state["response"] = flow.response.get_state() if flow.response else None
        state["websocket"] = flow.websocket.get_state() if flow.websocket else None
        return state
