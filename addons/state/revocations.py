"""Revocations in the shared state: one key per revoked identity or token id, announced on change.

`pangate revoke --state URL` writes here (sync client: a CLI has no event
loop to share); every gateway writes what its own revocation file adds or
lifts, and reads the whole set again whenever a change is announced, so an
identity revoked anywhere is refused everywhere within a round trip.
"""

from __future__ import annotations

import json

from pangate.identity.revocation import RevocationList
from pangate.state.store import CHANNEL, PREFIX, Store, read_password

KEYS = PREFIX + "rev:"
EPOCH = PREFIX + "epoch"  # absent after Redis lost its data: the instances put back what they know
ANNOUNCE = {"kind": "revocations"}
KINDS = ("identities", "jtis")


def key(kind: str, name: str) -> str:
    return f"{KEYS}{kind}:{name}"


def from_keys(items: dict[str, str]) -> RevocationList:
    out: dict[str, dict] = {k: {} for k in KINDS}
    for k, v in items.items():
        kind, _, name = k[len(KEYS):].partition(":")
        if kind not in out or not name:
            continue
        try:
            entry = json.loads(v)
        except ValueError:
            entry = {}
        out[kind][name] = entry if isinstance(entry, dict) else {}
    return RevocationList(out["identities"], out["jtis"])


async def pull(store: Store) -> RevocationList:
    return from_keys(await store.scan(KEYS))


async def push(store: Store, add: RevocationList, lift: RevocationList | None = None) -> bool:
    """Write additions and lifted entries; announce if anything was written."""
    wrote = False
    for kind in KINDS:
        for name, entry in getattr(add, kind).items():
            await store.set(key(kind, name), json.dumps(entry, sort_keys=True))
            wrote = True
        for name in getattr(lift, kind, {}) if lift else ():
            await store.delete(key(kind, name))
            wrote = True
    if wrote:
        await store.publish(ANNOUNCE)
    return wrote


def diff(old: RevocationList, new: RevocationList) -> tuple[RevocationList, RevocationList]:
    """(what new adds, what new lifts) relative to old."""
    added = RevocationList(*({n: e for n, e in getattr(new, k).items() if n not in getattr(old, k)} for k in KINDS))
    lifted = RevocationList(*({n: e for n, e in getattr(old, k).items() if n not in getattr(new, k)} for k in KINDS))
    return added, lifted


def union(a: RevocationList, b: RevocationList) -> RevocationList:
    return RevocationList({**b.identities, **a.identities}, {**b.jtis, **a.jtis})


# ------------------------------------------------------------------ the CLI's side (synchronous)

def cli_client(url: str, password_env: str = "", password_file: str = "", ca_file: str = ""):
    """A synchronous redis-py client for `pangate revoke --state`; ValueError says what is wrong."""
    import redis

    from pangate.state.store import TIMEOUT, check_url

    problem = check_url(url)
    if problem:
        raise ValueError(problem)
    kw = {"ssl_ca_certs": ca_file} if url.startswith("rediss:") and ca_file else {}
    return redis.Redis.from_url(url, password=read_password(password_env, password_file), decode_responses=True,
                                socket_timeout=TIMEOUT * 3, socket_connect_timeout=TIMEOUT * 3, **kw)


def cli_set(client, kind: str, name: str, entry: dict | None) -> bool:
    """Revoke (entry) or lift (None) one name; returns whether it changed. Announced to every gateway."""
    if entry is None:
        changed = bool(client.delete(key(kind, name)))
    else:
        changed = bool(client.set(key(kind, name), json.dumps(entry, sort_keys=True), nx=True))
    client.publish(CHANNEL, json.dumps(ANNOUNCE))
    return changed


def cli_list(client) -> RevocationList:
    keys = list(client.scan_iter(match=KEYS + "*", count=500))
    values = client.mget(keys) if keys else []
    return from_keys({k: v for k, v in zip(keys, values, strict=True) if v is not None})
