"""The Store interface, the same behaviour in process and on a real Redis."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from pangate.approval.model import LocalLedger, SharedLedger, VoteRefused
from pangate.policy.model import parse_policy
from pangate.state import revocations as shared
from pangate.state.store import MemoryStore, RedisStore, StateUnavailable, check_url, open_store, read_password

from redisproc import RedisServer

POLICY = """
version: 1
identities:
  writer: {roles: [], static_key: {sha256: "sha256:%s", reason: test}}
approvers:
  alice: {groups: [leads]}
  bob: {groups: [leads]}
approvals:
  two:
    identities: [writer]
    methods: [POST]
    paths: ["/x"]
    approvers: ["group:leads"]
    required: 2
    timeout: 20s
  burst:
    identities: [writer]
    methods: [GET]
    paths: ["/y"]
    approvers: [alice]
    mode: grant
    grant_window: 30s
    timeout: 20s
""" % ("0" * 64)


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server per test: some tests stop it."""
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def _run(coro):
    return asyncio.run(coro)


def _stores(redis_server):
    return [("memory", lambda: MemoryStore()),
            ("redis", lambda: RedisStore(redis_server.url, redis_server.password))]


def test_url_checks():
    assert check_url("redis://127.0.0.1:6379/0") is None and check_url("rediss://r.example:6380/1") is None
    assert "never inline" in check_url("redis://:hunter2@127.0.0.1:6379/0")
    assert "redis://" in check_url("http://127.0.0.1:6379")
    assert "not a redis:// URL" in check_url("redis://127.0.0.1:99999")
    assert isinstance(open_store(""), MemoryStore)


def test_password_from_env_or_file(tmp_path, monkeypatch):
    monkeypatch.setenv("PG_TEST_PW", "s3cret")
    assert read_password("PG_TEST_PW", "") == "s3cret"
    f = tmp_path / "pw"
    f.write_text("fromfile\n")
    assert read_password("", str(f)) == "fromfile"
    with pytest.raises(ValueError, match="not set"):
        read_password("PG_TEST_MISSING", "")
    with pytest.raises(ValueError, match="not both"):
        read_password("PG_TEST_PW", str(f))


def test_store_operations_agree(redis_server):
    async def scenario(store):
        await store.set("pangate:t:a", "1")
        assert await store.get("pangate:t:a") == "1"
        assert await store.update("pangate:t:a", lambda old: (str(int(old) + 1), int(old) + 1)) == 2
        assert await store.update("pangate:t:b", lambda old: ("x" if old is None else old, old)) is None
        assert await store.scan("pangate:t:") == {"pangate:t:a": "2", "pangate:t:b": "x"}
        await store.delete("pangate:t:a")
        assert await store.get("pangate:t:a") is None
        assert [await store.hit("pangate:fail:1.2.3.4", 60) for _ in range(3)] == [1, 2, 3]
        got = []
        store.listen(got.append)
        await store.start()
        if store.shared:
            assert await store.wait_listening(5)
        await store.publish({"kind": "test"})
        for _ in range(100):
            if {"kind": "test"} in got:
                break
            await asyncio.sleep(0.02)
        assert {"kind": "test"} in got
        await store.close()

    for _name, make in _stores(redis_server):
        _run(scenario(make()))


def test_unreachable_redis_raises_state_unavailable(redis_server):
    failures = []

    async def scenario():
        store = RedisStore(redis_server.url, redis_server.password, on_failure=failures.append)
        await store.ping()
        redis_server.stop()
        with pytest.raises(StateUnavailable):
            await store.get("pangate:x")
        await store.close()

    _run(scenario())
    assert failures and "cannot be reached" in failures[0]


def test_wrong_password_is_unavailable_not_open(redis_server):
    async def scenario():
        store = RedisStore(redis_server.url, "wrong")
        with pytest.raises(StateUnavailable):
            await store.ping()
        await store.close()

    _run(scenario())


def test_ledgers_agree_on_four_eyes_quorum_and_grants(redis_server):
    policy = parse_policy(POLICY, "p.yaml")

    async def scenario(ledger):
        p = await ledger.open(policy.approvals["two"], "writer", {"path": "/x"}, "rid", "gw-a")
        with pytest.raises(VoteRefused, match="four eyes"):
            await ledger.vote(policy, p.id, "writer", True)
        assert (await ledger.vote(policy, p.id, "alice", True)).status == "pending"
        with pytest.raises(VoteRefused, match="already approved"):
            await ledger.vote(policy, p.id, "alice", True)
        assert (await ledger.vote(policy, p.id, "bob", True)).status == "granted"
        assert [q.id for q in await ledger.listing()] == []
        g = await ledger.open(policy.approvals["burst"], "writer", {}, None)
        assert (await ledger.find_open("writer", "burst")).id == g.id
        assert await ledger.granted("writer", "burst") is None
        await ledger.vote(policy, g.id, "alice", True)
        assert (await ledger.granted("writer", "burst")).id == g.id
        h = await ledger.open(policy.approvals["two"], "writer", {}, None)
        assert [q.id for q in await ledger.revoke("writer")] == [h.id]
        assert await ledger.granted("writer", "burst") is None

    _run(scenario(LocalLedger()))
    store = RedisStore(redis_server.url, redis_server.password)
    _run(scenario(SharedLedger(lambda: store, lambda: policy)))


def test_shared_vote_is_seen_by_another_ledger(redis_server):
    """Two instances' ledgers on one Redis: a vote through one is what the other reads."""
    policy = parse_policy(POLICY, "p.yaml")

    async def scenario():
        a, b = (RedisStore(redis_server.url, redis_server.password) for _ in range(2))
        la, lb = SharedLedger(lambda: a, lambda: policy), SharedLedger(lambda: b, lambda: policy)
        heard = []
        a.listen(heard.append)
        await a.start()
        assert await a.wait_listening(5)
        p = await la.open(policy.approvals["two"], "writer", {}, None, "gw-a")
        await lb.vote(policy, p.id, "alice", True)
        await lb.vote(policy, p.id, "bob", True)
        assert (await la.get(p.id)).status == "granted" and (await la.get(p.id)).owner == "gw-a"
        for _ in range(100):
            if any(m.get("id") == p.id and m.get("status") == "granted" for m in heard):
                break
            await asyncio.sleep(0.02)
        assert any(m.get("id") == p.id and m.get("status") == "granted" for m in heard)
        # Closing a decided approval keeps the decision made first.
        closed = await la.close(p, "timed_out", None, "late")
        assert closed.status == "granted"
        await a.close()
        await b.close()

    _run(scenario())


def test_cli_revocations_round_trip(redis_server):
    client = shared.cli_client(redis_server.url, "PG_TEST_REDIS_PW", "") if os.environ.setdefault(
        "PG_TEST_REDIS_PW", redis_server.password) else None
    assert shared.cli_set(client, "identities", "svc", {"at": 1, "reason": "test"})
    assert not shared.cli_set(client, "identities", "svc", {"at": 2, "reason": "again"})
    lst = shared.cli_list(client)
    assert lst.identities == {"svc": {"at": 1, "reason": "test"}}
    assert shared.cli_set(client, "identities", "svc", None)
    assert shared.cli_list(client).identities == {}
    assert json.loads(json.dumps(shared.ANNOUNCE)) == {"kind": "revocations"}
