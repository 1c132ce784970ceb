"""Approval bookkeeping, free of mitmproxy: which requests wait, who voted, which grants are open.

Pure so that the four-eyes and quorum rules can be tested directly; the
addon (approval.py) ties it to held flows and the control endpoint to signed
votes.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

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

    @property
    def expires(self) -> float:
        return self.created + self.rule.timeout

    def public(self, now: float | None = None) -> dict:
        """What the control endpoint lists: nothing secret, paths already masked."""
        now = time.time() if now is None else now
        return {"id": self.id, "rule": self.rule.name, "mode": self.rule.mode, "requester": self.requester,
                "request": self.summary, "request_id": self.request_id, "approvals": list(self.votes),
                "required": self.rule.required, "expires_in": max(0, round(self.expires - now, 1)),
                "status": self.status}


class Ledger:
    """Pending approvals and open grants. Not thread-safe: used on the event loop only."""

    def __init__(self, clock=time.time):
        self.clock = clock
        self.pending: dict[str, Pending] = {}
        # (requester, rule) -> (grant expiry, the approval that opened it: who approved)
        self.grants: dict[tuple[str, str], tuple[float, Pending]] = {}

    def open(self, rule: Approval, requester: str, summary: dict, request_id: str | None) -> Pending:
        p = Pending("apr_" + secrets.token_hex(8), rule, requester, summary, request_id, self.clock())
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
        if approver == p.requester:
            raise VoteRefused(f"{approver} requested this and may not approve or deny it (four eyes)")
        if approver != UI_APPROVER and not eligible(policy, p.rule, approver):
            raise VoteRefused(f"{approver} is not an approver of rule {p.rule.name}")
        if not approve:
            return self.close(p, "denied", approver, reason or "denied by reviewer")
        if approver in p.votes:
            raise VoteRefused(f"{approver} has already approved {approval_id}: "
                              f"{p.rule.required} distinct approvers are needed")
        p.votes.append(approver)
        if len(p.votes) >= p.rule.required:
            self.close(p, "granted", approver, reason)
            if p.rule.mode == "grant":
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
