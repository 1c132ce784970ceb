"""Approval bookkeeping, free of mitmproxy: which requests wait, who voted, which grants are open.

Pure so that the four-eyes and quorum rules can be tested directly; the
addon (approval.py) ties it to held flows and the control endpoint to signed
votes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from pangate.common.ids import hex_id
from pangate.policy.decide import Request, judged_method, path_triggers, query_triggers
from pangate.policy.model import Approval, Policy

UI_APPROVER = "mitmweb-ui"  # a plain mitmweb resume/kill: whoever had the UI, not a named person


class VoteRefused(Exception):
    """A vote that does not count; the message says why (sent back to the approver)."""


def rule_for(policy: Policy, req: Request, destination: str | None) -> Approval | None:
    """The first approval rule (in file order) this allowed request falls under, or None."""
    ident = policy.identities.get(req.identity)
    roles = set(ident.roles) if ident else set()
    # A destination that honors method overrides is asked for the overridden method: trigger on that.
    dest = policy.destinations.get(destination) if destination else None
    method = req.method
    if dest is not None:
        judged, problem = judged_method(policy, req, [dest])
        method = judged if problem is None else req.method
    for rule in policy.approvals.values():
        if rule.identities or rule.roles:
            if req.identity not in rule.identities and not roles & set(rule.roles):
                continue
        if rule.destination and rule.destination != destination:
            continue
        if (method in rule.methods and any(path_triggers(p, req.path) for p in rule.paths)
                and query_triggers(rule.query, req)):
            return rule
    return None


def eligible(policy: Policy, rule: Approval, approver: str) -> bool:
    """May this named approver decide requests under this rule?"""
    who = policy.approvers.get(approver)
    if who is None:
        return False
    return approver in rule.approvers or any(f"group:{g}" in rule.approvers for g in who.groups)


@dataclass
class Pending:
    """One request waiting for people: a held flow (hold) or a request for a grant (grant)."""

    id: str
    rule: Approval
    requester: str
    summary: dict  # method, host, path: masked, for lists and notifications
    request_id: str | None
    created: float
    votes: list[str] = field(default_factory=list)
    status: str = "pending"  # pending | granted | denied | timed_out
    decided_by: str | None = None
    reason: str | None = None
    owner: str | None = None  # the gateway instance holding the flow (hold mode), with shared state

    @property
    def expires(self) -> float:
        return self.created + self.rule.timeout

    def public(self, now: float | None = None) -> dict:
        """What the control endpoint lists: nothing secret, paths already masked."""
        now = time.time() if now is None else now
        return {"id": self.id, "rule": self.rule.name, "mode": self.rule.mode, "requester": self.requester,
                "request": self.summary, "request_id": self.request_id, "approvals": list(self.votes),
                "required": self.rule.required, "expires_in": max(0, round(self.expires - now, 1)),
                "status": self.status, **({"instance": self.owner} if self.owner else {})}

    def to_doc(self) -> str:
        """As kept in the shared state: the rule by name (each instance has the same policy)."""
        return json.dumps({"id": self.id, "rule": self.rule.name, "requester": self.requester,
                           "summary": self.summary, "request_id": self.request_id, "created": self.created,
                           "votes": self.votes, "status": self.status, "decided_by": self.decided_by,
                           "reason": self.reason, "owner": self.owner})

    @classmethod
    def from_doc(cls, text: str | None, policy: Policy) -> "Pending | None":
        """None when absent, unreadable, or its rule is no longer in the policy (nothing left to approve)."""
        if text is None:
            return None
        try:
            d = json.loads(text)
            rule = policy.approvals.get(d["rule"])
            if rule is None:
                return None
            return cls(d["id"], rule, d["requester"], d["summary"], d.get("request_id"), float(d["created"]),
                       list(d.get("votes") or []), d["status"], d.get("decided_by"), d.get("reason"),
                       d.get("owner"))
        except (ValueError, KeyError, TypeError):
            return None


def apply_vote(policy: Policy, p: Pending, approver: str, approve: bool, reason: str | None) -> None:
    """One person's decision on p (changed in place). Raises VoteRefused when it does not count."""
    if p.status != "pending":
        raise VoteRefused(f"no pending approval {p.id!r}")
    if approver == p.requester:
        raise VoteRefused(f"{approver} requested this and may not approve or deny it (four eyes)")
    if approver != UI_APPROVER and not eligible(policy, p.rule, approver):
        raise VoteRefused(f"{approver} is not an approver of rule {p.rule.name}")
    if not approve:
        p.status, p.decided_by, p.reason = "denied", approver, reason or "denied by reviewer"
        return
    if approver in p.votes:
        raise VoteRefused(f"{approver} has already approved {p.id}: "
                          f"{p.rule.required} distinct approvers are needed")
    p.votes.append(approver)
    if len(p.votes) >= p.rule.required:
        p.status, p.decided_by, p.reason = "granted", approver, reason


class Ledger:
    """Pending approvals and open grants. Not thread-safe: used on the event loop only."""

    def __init__(self, clock=time.time):
        self.clock = clock
        self.pending: dict[str, Pending] = {}
        # (requester, rule) -> (grant expiry, the approval that opened it: who approved)
        self.grants: dict[tuple[str, str], tuple[float, Pending]] = {}

    def open(self, rule: Approval, requester: str, summary: dict, request_id: str | None) -> Pending:
        p = Pending("apr_" + hex_id(16), rule, requester, summary, request_id, self.clock())
        self.pending[p.id] = p
        return p

    def find_open(self, requester: str, rule: str) -> Pending | None:
        """A grant request still waiting for this requester and rule (not asked twice)."""
        for p in self.pending.values():
            if p.status == "pending" and p.requester == requester and p.rule.name == rule:
                return p
        return None

    def vote(self, policy: Policy, approval_id: str, approver: str, approve: bool,
             reason: str | None = None) -> Pending:
        """Record one person's decision. Raises VoteRefused when it does not count."""
        p = self.pending.get(approval_id)
        if p is None or p.status != "pending":
            raise VoteRefused(f"no pending approval {approval_id!r}")
        apply_vote(policy, p, approver, approve, reason)
        if p.status != "pending":
            self.pending.pop(p.id, None)
        if p.status == "granted" and p.rule.mode == "grant":
            self.grants[(p.requester, p.rule.name)] = (self.clock() + p.rule.grant_window, p)
        return p

    def close(self, p: Pending, status: str, by: str | None, reason: str | None) -> Pending:
        p.status, p.decided_by, p.reason = status, by, reason
        self.pending.pop(p.id, None)
        return p

    def granted(self, requester: str, rule: str) -> Pending | None:
        """The approval of an open just-in-time grant for this requester and rule, if any."""
        entry = self.grants.get((requester, rule))
        if entry is None:
            return None
        if self.clock() > entry[0]:
            del self.grants[(requester, rule)]
            return None
        return entry[1]

    def expire(self) -> list[Pending]:
        """Close grant requests past their timeout (held flows time out in their own wait)."""
        now = self.clock()
        out = [p for p in self.pending.values() if p.rule.mode == "grant" and now > p.expires]
        for p in out:
            self.close(p, "timed_out", None, "approval timed out")
        return out

    def revoke(self, requester: str) -> list[Pending]:
        """An identity was revoked: its grants end and its waiting requests are denied."""
        for key in [k for k in self.grants if k[0] == requester]:
            del self.grants[key]
        out = [p for p in self.pending.values() if p.requester == requester]
        for p in out:
            self.close(p, "denied", None, f"identity {requester} was revoked")
        return out


# ---------------------------------------------------------------------------- one interface, two homes


class LocalLedger:
    """The async face of a Ledger in this process (no pangate_state): what ApprovalHold uses."""

    shared = False

    def __init__(self, ledger: Ledger | None = None):
        self.ledger = ledger or Ledger()

    async def open(self, rule, requester, summary, request_id, owner=None) -> Pending:
        return self.ledger.open(rule, requester, summary, request_id)

    async def find_open(self, requester, rule) -> Pending | None:
        return self.ledger.find_open(requester, rule)

    async def vote(self, policy, approval_id, approver, approve, reason=None) -> Pending:
        return self.ledger.vote(policy, approval_id, approver, approve, reason)

    async def close(self, p, status, by, reason, force=False) -> Pending:
        if p.status == "pending" or force:
            self.ledger.close(p, status, by, reason)
        return p

    async def get(self, approval_id) -> Pending | None:
        return self.ledger.pending.get(approval_id)

    async def granted(self, requester, rule) -> Pending | None:
        return self.ledger.granted(requester, rule)

    async def expire(self) -> list[Pending]:
        return self.ledger.expire()

    async def revoke(self, requester) -> list[Pending]:
        return self.ledger.revoke(requester)

    async def listing(self) -> list[Pending]:
        return list(self.ledger.pending.values())


class SharedLedger:
    """Approvals and grants in the shared state: a vote through any instance counts on every one.

    Each approval is one key, changed only by atomic read-modify-write; every
    change is announced (`{"kind": "approval", "id": ...}`) so the instance
    holding the flow releases it at once. A decided approval stays readable
    for a while so its owner learns the outcome even if it missed the
    announcement. Grants are keys that expire with their window.
    """

    shared = True
    PREFIX = "pangate:apr:"
    GRANT = "pangate:grant:"
    OPEN = "pangate:open:"
    KEEP = 300.0  # seconds past its timeout an approval stays readable
    LONGEST = 86400.0  # ...and at most this long once changed

    def __init__(self, store, policy, clock=time.time):
        self.store = store  # callable: the current pangate.state.store.Store
        self.policy = policy  # callable: the current Policy (rules are looked up by name)
        self.clock = clock

    def _s(self):
        return self.store()

    def _load(self, text: str | None) -> Pending | None:
        return Pending.from_doc(text, self.policy())

    def _ttl(self, p: Pending) -> float:
        return max(1.0, p.expires - self.clock()) + self.KEEP

    @staticmethod
    def _pair(requester: str, rule: str) -> str:
        return f"{requester}:{rule}"

    async def _announce(self, p: Pending) -> None:
        await self._s().publish({"kind": "approval", "id": p.id, "status": p.status})

    async def open(self, rule, requester, summary, request_id, owner=None) -> Pending:
        p = Pending("apr_" + hex_id(16), rule, requester, summary, request_id, self.clock(), owner=owner)
        await self._s().set(self.PREFIX + p.id, p.to_doc(), self._ttl(p))
        if rule.mode == "grant":
            await self._s().set(self.OPEN + self._pair(requester, rule.name), p.id, rule.timeout)
        return p

    async def get(self, approval_id) -> Pending | None:
        return self._load(await self._s().get(self.PREFIX + approval_id))

    async def find_open(self, requester, rule) -> Pending | None:
        approval_id = await self._s().get(self.OPEN + self._pair(requester, rule))
        if approval_id is None:
            return None
        p = await self.get(approval_id)
        return p if p is not None and p.status == "pending" and self.clock() <= p.expires else None

    async def vote(self, policy, approval_id, approver, approve, reason=None) -> Pending:
        def change(text):
            p = Pending.from_doc(text, policy)
            if p is None:
                raise VoteRefused(f"no pending approval {approval_id!r}")
            if p.status == "pending" and p.rule.mode == "grant" and self.clock() > p.expires:
                raise VoteRefused(f"approval {approval_id} timed out")
            apply_vote(policy, p, approver, approve, reason)
            return p.to_doc(), p

        p = await self._s().update(self.PREFIX + approval_id, change, self.LONGEST)
        if p.status == "granted" and p.rule.mode == "grant":
            await self._s().set(self.GRANT + self._pair(p.requester, p.rule.name), p.to_doc(), p.rule.grant_window)
        await self._announce(p)
        return p

    async def _close(self, p, status, by, reason, force=False) -> tuple[Pending, bool]:
        """Decide p unless someone decided it first (then their decision, as stored, is returned)."""
        def change(text):
            stored = self._load(text) or p
            if stored.status != "pending" and not force:
                return text, (stored, False)
            stored.status, stored.decided_by, stored.reason = status, by, reason
            return stored.to_doc(), (stored, True)

        out, changed = await self._s().update(self.PREFIX + p.id, change, self.LONGEST)
        if changed:
            await self._announce(out)
        return out, changed

    async def close(self, p, status, by, reason, force=False) -> Pending:
        return (await self._close(p, status, by, reason, force))[0]

    async def granted(self, requester, rule) -> Pending | None:
        return self._load(await self._s().get(self.GRANT + self._pair(requester, rule)))

    async def listing(self) -> list[Pending]:
        docs = await self._s().scan(self.PREFIX)
        out = [self._load(v) for v in docs.values()]
        return sorted((p for p in out if p is not None and p.status == "pending"), key=lambda p: p.created)

    async def expire(self) -> list[Pending]:
        now = self.clock()
        out = []
        for p in await self.listing():
            if p.rule.mode == "grant" and now > p.expires:
                q, changed = await self._close(p, "timed_out", None, "approval timed out")
                if changed:  # every instance tries; the one that closed it reports it
                    out.append(q)
        return out

    async def revoke(self, requester) -> list[Pending]:
        store = self._s()
        for key in await store.scan(self.GRANT + requester + ":"):
            await store.delete(key)
        out = []
        for p in await self.listing():
            if p.requester == requester:
                q, changed = await self._close(p, "denied", None, f"identity {requester} was revoked")
                if changed:
                    out.append(q)
        return out
