"""The data path runs the stages in order, stops at a refusal, waits only when a stage waits."""

from __future__ import annotations

import asyncio
import json

from mitmproxy.test import taddons, tflow

from pangate.chain.context import FlowContext, is_refused, refuse, request_id
from pangate.chain.datapath import DataPath, Lifecycle
from pangate.chain.failsafe import Component
from pangate.chain.scrub import rewrite_body, rewrite_headers
from pangate.common.filewatch import WatchedFile


class Stage(Component):
    def __init__(self, name, seen, refuse_in=None, wait=False, sees=frozenset()):
        self.name, self.seen, self.refuse_in, self.wait = name, seen, refuse_in, wait
        self.sees_refused = sees

    def request(self, flow):
        self.seen.append(self.name)
        if self.refuse_in == "request":
            refuse(flow, 403, "forbidden", f"{self.name} says no", "no")
        if self.wait:
            return self._later(flow)
        return None

    async def _later(self, flow):
        await asyncio.sleep(0)
        self.seen.append(f"{self.name} done")

    def load(self, loader):
        self.seen.append(f"{self.name} load")


def test_a_refused_flow_reaches_only_the_stages_that_ask_for_it():
    seen = []
    path = DataPath([Stage("a", seen), Stage("b", seen, refuse_in="request"), Stage("c", seen),
                     Stage("audit", seen, sees=frozenset({"request"}))])
    f = tflow.tflow()
    assert path.request(f) is None  # all synchronous: nothing to await
    assert seen == ["a", "b", "audit"]
    assert f.response.status_code == 403 and FlowContext.of(f).refused["code"] == "no"


def test_a_waiting_stage_is_awaited_before_the_next_one_runs():
    seen = []
    path = DataPath([Stage("a", seen, wait=True), Stage("b", seen), Stage("c", seen, wait=True)])
    pending = path.request(tflow.tflow())
    assert seen == ["a"]  # b waits for a
    asyncio.run(pending)
    assert seen == ["a", "a done", "b", "c", "c done"]


class Broken(Component):
    async def request(self, flow):
        raise RuntimeError("boom")


def test_a_failing_waiting_stage_refuses_the_flow_and_the_rest_is_skipped():
    seen = []
    path = DataPath([Broken(), Stage("b", seen), Stage("audit", seen, sees=frozenset({"request"}))])
    f = tflow.tflow()
    asyncio.run(path.request(f))
    assert seen == ["audit"]
    assert f.response.status_code == 502 and json.loads(f.response.content)["code"] == "internal_error"
    assert FlowContext.of(f).failed_hook == "Broken.request"


def test_only_hooks_some_stage_has_are_shown_to_mitmproxy():
    path = DataPath([Stage("a", [])])
    assert callable(getattr(path, "request", None))
    assert getattr(path, "response", None) is None


def test_lifecycle_view_shows_mitmproxy_no_flow_hook():
    seen = []
    stage = Stage("a", seen)
    view = Lifecycle(stage)
    assert view.name == "a" and getattr(view, "request", None) is None
    with taddons.context(view):
        pass
    assert seen == ["a load"]


def test_flow_context_is_a_typed_view_of_a_plain_dict():
    f = tflow.tflow()
    fc = FlowContext.of(f)
    fc.target = {"scheme": "https", "host": "h", "port": 443}
    fc.add_pans_masked(2)
    fc.add_pans_masked(0)
    assert f.metadata["pangate"] == {"destination": {"scheme": "https", "host": "h", "port": 443}, "pans_masked": 2}
    del fc.target
    assert fc.target is None and not is_refused(f)
    rid = request_id(f)
    assert request_id(f) == rid
    refuse(f, 407, "proxy_auth_required", "why", "missing_token", {"Proxy-Authenticate": "Bearer"})
    assert json.loads(f.response.content) == {"error": "proxy_auth_required", "reason": "why",
                                               "code": "missing_token", "request_id": rid}
    assert f.metadata["pangate"]["refused"] == {"status": 407, "code": "missing_token", "reason": "why"}
    assert "error" not in f.metadata["pangate"]  # only a 5xx refusal is an error


def test_one_watcher_reloads_on_change_only(tmp_path):
    path = tmp_path / "watched"
    changes = []

    class Watch(WatchedFile):
        def watched_path(self):
            return str(path)

        def changed(self, p, stamp):
            changes.append(stamp)
            self.stamp = stamp

    w = Watch()
    w.poll()
    assert changes == []  # nothing read yet and nothing there: no change
    path.write_text("x")
    w.poll()
    w.poll()
    assert len(changes) == 1 and changes[0] is not None
    path.unlink()
    w.poll()
    assert changes[-1] is None  # gone is a change too


def test_scrub_rewrites_only_what_changed_and_withholds_what_cannot_be_read():
    f = tflow.tflow()
    f.request.headers["X-A"] = "secret"
    f.request.headers["Cookie"] = "c"
    rewrite_headers(f.request.headers, lambda v: v.replace("secret", "******"), drop={"cookie"})
    assert f.request.headers["X-A"] == "******" and "Cookie" not in f.request.headers
    f.request.headers["Content-Encoding"] = "gzip"
    f.request.raw_content = b"not gzip"
    withheld = []
    rewrite_body(f.request, lambda b: b.upper(), withheld.append)
    assert withheld == [f.request]
