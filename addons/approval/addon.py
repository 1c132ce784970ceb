"""Human approval of high-risk requests (PCI DSS 7.2.3): held in the proxy, decided by named people.

Runs after Authorize allowed a request and before Credentials injects the
secret, so a held flow never carries the backend credential. In `hold` mode
the flow is intercepted and waits here until it is approved (`pangate
approve`, or a mitmweb resume where the rule allows `ui_resume`), denied
(`pangate deny`, a mitmweb kill), or times out; the client is answered in
every case. In `grant` mode the request is refused at once with an approval
id, and once approved the same identity may repeat that kind of request
within the grant window.

While held, mitmweb shows a masked copy of the request; the real one is kept
here in memory (never in metadata) and restored only if the copy shown was
not edited.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
from dataclasses import dataclass, field

from mitmproxy import ctx, exceptions, hooks

from pangate.common import events
from pangate.approval.model import UI_APPROVER, LocalLedger, Pending, SharedLedger, VoteRefused, rule_for
from pangate.authorize.addon import request_facts
from pangate.credentials.addon import CLIENT_CREDENTIAL_HEADERS
from pangate.policy.decide import decide
from pangate.chain.context import ApprovalNote, FlowContext, refuse, request_id
from pangate.chain.failsafe import Component
from pangate.chain.scrub import rewrite_body, rewrite_headers
from pangate.chain.wire import may_stream
from pangate.masking.addon import masker_for
from pangate.pan.engine import Masker
from pangate.common.periodic import Periodic
from pangate.policy.model import Policy
from pangate.common.webhook import Notifier, check_url, message
from pangate.state.store import StateUnavailable

log = logging.getLogger("pangate")
POLL_SECONDS = 0.1  # how soon a mitmweb resume/kill is noticed: mitmproxy signals neither to a hook
REFRESH_SECONDS = 1.0  # with shared state: how often a hold re-reads its approval, announced or not
CLI = "pangate"
EDITED = "the held request was edited in mitmweb; an edited request is never forwarded"


@dataclass
class Held:
    flow: object
    pending: Pending
    real: dict  # the request as the client sent it: restored on approval
    masked: dict  # what mitmweb sees, while held and after
    digest: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    refresh: bool = False  # the shared approval changed: read it again


def _withhold(req) -> None:
    req.headers.pop("Content-Encoding", None)
    req.content = b"(withheld by pangate: the body could not be decoded for masking)"


def request_digest(req) -> str:
    """What a reviewer could change in mitmweb: any difference means the request was edited."""
    state = [req.method, req.scheme, req.host, req.port, req.path, req.http_version,
             list(req.headers.items(multi=True)), (req.raw_content or b"").hex(),
             list(req.trailers.items(multi=True)) if req.trailers else None]
    return hashlib.sha256(json.dumps(state).encode()).hexdigest()


class ApprovalHold(Periodic, Component):
    """Holds or refuses requests under an approval rule until named approvers decide."""

    # Whatever became of the flow, mitmweb and flow files keep the masked copy.
    sees_refused = frozenset({"response", "error"})

    def __init__(self, store, state=None):
        self.store = store
        self.state = state  # SharedState: approvals, grants and who holds what, for every instance
        self.local = LocalLedger()
        self.shared = SharedLedger(lambda: self.state.store, lambda: self.store.policy)
        self.held: dict[str, Held] = {}  # approval id -> held flow
        self.after: dict[str, dict] = {}  # flow id -> masked request, put back once the flow completed
        self.masker = Masker()
        self.notifier = Notifier()
        store.subscribe(self._policy_changed)
        events.subscribe(self._event)
        if state is not None:
            state.listen(self._announced)

    @property
    def ledger(self):
        return self.shared if self.state is not None and self.state.store.shared else self.local

    def _announced(self, message: dict) -> None:
        """An approval changed on some instance: wake the flow held here for it (or all, after an outage)."""
        if message.get("kind") == "approval":
            h = self.held.get(message.get("id"))
            if h is not None:
                h.refresh = True
                h.wake.set()
        elif message.get("kind") == "resync":
            for h in self.held.values():
                h.refresh = True
                h.wake.set()

    def load(self, loader):
        loader.add_option("pangate_approval_webhook", str, "",
                          "URL notified (Slack-compatible JSON) of every new pending approval; "
                          "https, or http to loopback only. Empty: no notification.")

    def configure(self, updated):
        if "pangate_approval_webhook" in updated:
            url = ctx.options.pangate_approval_webhook
            problem = check_url(url)
            if problem:
                raise exceptions.OptionsError(f"pangate_approval_webhook: {problem}")
            self.notifier.url = url

    def _policy_changed(self, policy: Policy) -> None:
        self.masker = masker_for(policy)

    period = 0.5

    def done(self):
        super().done()
        events.unsubscribe(self._event)

    async def tick(self):
        """Grants and grant requests past their time end here (holds time out in their own wait)."""
        try:
            expired = await self.ledger.expire()
        except StateUnavailable:
            return  # SharedState refuses traffic meanwhile; expiry catches up when it answers
        for p in expired:
            self._emit("approval_timed_out", p)

    # ------------------------------------------------------------------ data path

    def requestheaders(self, flow):
        """A streamed body leaves before `request`, where holds happen: such a request cannot wait."""
        if not (flow.request.stream or may_stream(flow)):
            return
        fc = FlowContext.of(flow)
        who, decision = fc.caller, fc.decision or {}
        if who is None or decision.get("outcome") not in ("allowed", "report_only"):
            return
        rule = rule_for(self.store.policy, request_facts(flow, who), decision.get("destination"))
        if rule is not None:
            refuse(flow, 403, "forbidden", f"this request needs approval ({rule.name}) and its body would be "
                   "streamed past the hold: send it with a Content-Length under stream_large_bodies",
                   "approval_needs_buffering")

    def request(self, flow):
        fc = FlowContext.of(flow)
        who, decision = fc.caller, fc.decision or {}
        if who is None or decision.get("outcome") not in ("allowed", "report_only"):
            return None
        rule = rule_for(self.store.policy, request_facts(flow, who), decision.get("destination"))
        if rule is None:
            return None
        if rule.mode == "grant":
            return self._guarded(flow, self._grant(flow, rule, who))
        # The data path waits for it before the credential is added.
        return self._guarded(flow, self._hold(flow, rule, who))

    async def _guarded(self, flow, step) -> None:
        """A decision that needs the shared state it cannot reach is refused, not guessed."""
        try:
            await step
        except StateUnavailable as e:
            refuse(flow, 503, "unavailable", f"{e}; the approval cannot be checked", StateUnavailable.code)

    async def _grant(self, flow, rule, who: str) -> None:
        opened = await self.ledger.granted(who, rule.name)
        if opened is not None:
            FlowContext.of(flow).approval = self._note(opened, "granted")
            return
        p = await self.ledger.find_open(who, rule.name) or await self._open(flow, rule, who)
        FlowContext.of(flow).approval = self._note(p, "pending")
        refuse(flow, 403, "approval_required",
               f"rule {rule.name} needs approval {p.id} by {rule.required} approver(s) "
               f"(`{CLI} approve {p.id}`); once approved, repeat the request within "
               f"{int(rule.grant_window)}s", "approval_required", {"X-Pangate-Approval-Id": p.id})

    async def _open(self, flow, rule, who: str) -> Pending:
        req = flow.request
        summary = {"method": req.method, "host": req.pretty_host, "port": req.port,
                   "path": self.masker.mask_url(req.path)[0]}
        owner = self.state.instance if self.state is not None and self.ledger.shared else None
        p = await self.ledger.open(rule, who, summary, request_id(flow), owner)
        self._emit("approval_pending", p, request=summary)
        self.notifier.send(message(p, CLI))
        return p

    async def _hold(self, flow, rule, who: str) -> None:
        real = flow.request.get_state()
        self._mask(flow.request)  # refused or held, what stays visible is the masked copy
        p = await self._open(flow, rule, who)
        h = Held(flow, p, real, flow.request.get_state(), request_digest(flow.request))
        self.held[p.id] = h
        flow.intercept()
        flow.marked = ":hourglass_flowing_sand:"
        flow.comment = (f"pangate approval {p.id}: rule {rule.name}, requested by {who}; "
                        f"{CLI} approve {p.id}" + (" or resume here" if rule.ui_resume else ""))
        FlowContext.of(flow).approval = self._note(p, "pending")
        self._update(flow)
        log.info("pangate approval held id=%s request_id=%s requester=%s rule=%s",
                 p.id, p.request_id, who, rule.name)
        try:
            await self._wait(h)
        finally:
            self.held.pop(p.id, None)
        await self._release(h)

    async def _wait(self, h: Held) -> None:
        flow = h.flow
        loop = asyncio.get_running_loop()
        deadline = loop.time() + h.pending.rule.timeout
        last_read = loop.time()
        while h.pending.status == "pending":
            if flow.error is not None or not flow.live:  # killed in mitmweb
                await self._local_vote(h, False, "killed in mitmweb")
                break
            if not flow.intercepted:  # resumed in mitmweb
                await self._ui_resume(h)
                continue
            left = deadline - loop.time()
            if left <= 0:
                await self._close(h, "timed_out", None, "approval timed out")
                break
            h.wake.clear()
            try:
                await asyncio.wait_for(h.wake.wait(), min(POLL_SECONDS, left))
            except TimeoutError:
                pass
            if self.ledger.shared and (h.refresh or loop.time() - last_read >= REFRESH_SECONDS):
                h.refresh, last_read = False, loop.time()
                await self._reread(h)

    async def _reread(self, h: Held) -> None:
        """The approval as the shared state has it now (a vote through another instance, a revocation)."""
        try:
            fresh = await self.ledger.get(h.pending.id)
        except StateUnavailable:
            return  # keep holding; the flow times out here if the state does not come back in time
        if fresh is None:  # lost (the store was emptied) or its rule left the policy
            p = h.pending
            p.status, p.decided_by, p.reason = "denied", None, "the approval's shared record was lost"
        else:
            h.pending = fresh
            if fresh.status == "pending":
                FlowContext.of(h.flow).approval = self._note(fresh, "pending")

    async def _close(self, h: Held, status: str, by: str | None, reason: str, force: bool = False) -> None:
        try:
            h.pending = await self.ledger.close(h.pending, status, by, reason, force)
        except StateUnavailable:
            # Not forwarded either way: the decision stands here, whatever the shared record says.
            p = h.pending
            p.status, p.decided_by, p.reason = status, by, reason

    async def _local_vote(self, h: Held, approve: bool, reason: str) -> None:
        """A mitmweb resume/kill on this instance."""
        try:
            await self._vote(h, UI_APPROVER, approve, reason)
        except StateUnavailable:
            if not approve:
                await self._close(h, "denied", UI_APPROVER, reason)
            else:
                raise VoteRefused("the shared state cannot be reached") from None

    async def _ui_resume(self, h: Held) -> None:
        p, flow = h.pending, h.flow
        if p.rule.ui_resume:
            try:
                await self._local_vote(h, True, "resumed in mitmweb")
            except VoteRefused as e:  # e.g. a second UI resume where two approvers are needed
                log.warning("pangate approval %s: mitmweb resume not counted: %s", p.id, e)
            p = h.pending
        else:
            events.emit("approval_ui_resume_refused", alert=True, approval_id=p.id, rule=p.rule.name,
                        requester=p.requester, request_id=p.request_id,
                        reason=f"rule {p.rule.name} does not allow a mitmweb resume: use `{CLI} approve`")
            log.warning("pangate approval %s: mitmweb resume ignored (rule %s needs a named approver)",
                        p.id, p.rule.name)
        if p.status == "pending":  # not (yet) approved: back on hold
            flow.intercept()
            self._update(flow)

    async def _release(self, h: Held) -> None:
        """Answer the held flow: forward the real request, or refuse with why."""
        flow = h.flow
        if flow.error is not None or not flow.live:
            # A mitmweb kill drops the client's connection unanswered (mitmproxy #8045):
            # take the flow back so the client gets a 403 that says why.
            flow.error, flow.live = None, True
        flow.resume()  # a no-op unless still intercepted (approved through the CLI)
        if h.pending.status == "granted":
            await self._check_unchanged(h)
        p = h.pending
        self.after[flow.id] = h.masked
        if p.status == "granted":
            flow.marked = ":white_check_mark:"
            self._emit("approval_granted", p)
        elif p.status == "timed_out":
            flow.marked = ":no_entry:"
            refuse(flow, 403, "forbidden", f"approval {p.id} timed out after {int(p.rule.timeout)}s",
                   "approval_timed_out")
            self._emit("approval_timed_out", p)
        else:
            flow.marked = ":no_entry:"
            refuse(flow, 403, "forbidden", f"denied by reviewer {p.decided_by or 'pangate'}: {p.reason}",
                   "approval_denied")
            self._emit("approval_denied", p)
        FlowContext.of(flow).approval = self._note(p, p.status)
        flow.comment = f"{flow.comment} -> {p.status}" + (f" by {p.decided_by}" if p.decided_by else "")
        self._update(flow)

    async def _check_unchanged(self, h: Held) -> None:
        """Forward the real request only if the copy shown was not edited and the policy still allows it."""
        p, flow = h.pending, h.flow
        if request_digest(flow.request) != h.digest:
            await self._close(h, "denied", p.decided_by, EDITED, force=True)
            return
        flow.request.set_state(copy.deepcopy(h.real))
        if not decide(self.store.policy, request_facts(flow, p.requester)).allowed:
            flow.request.set_state(copy.deepcopy(h.masked))
            await self._close(h, "denied", p.decided_by, "the policy no longer allows this request", force=True)

    def response(self, flow):
        self._put_back(flow)

    def error(self, flow):
        self._put_back(flow)

    def _put_back(self, flow) -> None:
        # The request has gone; what stays in mitmweb and flow files is the masked copy
        # (without the injected credential, which Credentials added after the hold).
        masked = self.after.pop(flow.id, None)
        if masked is not None:
            flow.request.set_state(copy.deepcopy(masked))

    # ------------------------------------------------------------------ decisions

    async def resolve(self, approval_id: str, approver: str, approve: bool, reason: str | None = None) -> dict:
        """One approver's vote, from the control endpoint (of any instance). Raises VoteRefused,
        or StateUnavailable when the shared approvals cannot be reached."""
        h = self.held.get(approval_id)
        p = h.pending if h is not None else await self.ledger.get(approval_id)
        if p is not None and approver == p.requester:
            events.emit("approval_self_refused", alert=True, approval_id=approval_id, approver=approver,
                        requester=p.requester, rule=p.rule.name, request_id=p.request_id)
        if h is not None and approve and request_digest(h.flow.request) != h.digest:
            await self._vote(h, approver, False, EDITED)
            raise VoteRefused(f"{approval_id} was edited in mitmweb while held: it is denied")
        if h is not None:
            await self._vote(h, approver, approve, reason)
            p = h.pending
        else:
            p = await self.ledger.vote(self.store.policy, approval_id, approver, approve, reason)
            # A flow held by another instance is answered (and its outcome recorded) there.
            held_elsewhere = p.rule.mode == "hold"
            self._emit("approval_vote" if held_elsewhere or p.status == "pending" else
                       "approval_granted" if p.status == "granted" else "approval_denied", p, voter=approver)
        return p.public()

    async def _vote(self, h: Held, approver: str, approve: bool, reason: str | None) -> None:
        p = await self.ledger.vote(self.store.policy, h.pending.id, approver, approve, reason)
        h.pending = p
        if p.status == "pending":
            self._emit("approval_vote", p, voter=approver)
            FlowContext.of(h.flow).approval = self._note(p, "pending")
        h.wake.set()

    async def pending(self) -> list[dict]:
        return [p.public() for p in await self.ledger.listing()]

    def _event(self, record: dict) -> None:
        """A revoked identity (or token) gets nothing it was waiting for."""
        if record.get("event") != "revoked":
            return
        try:
            asyncio.get_running_loop().create_task(self._revoked(record))
        except RuntimeError:  # no event loop (a revocation at load time): nothing is held yet
            pass

    async def _revoked(self, record: dict) -> None:
        try:
            if record.get("identity"):
                closed = await self.ledger.revoke(record["identity"])
            else:
                jti = record.get("jti")
                closed = []
                for h in list(self.held.values()):
                    if jti and (FlowContext.of(h.flow).identity or {}).get("token_id") == jti:
                        await self._close(h, "denied", None, "the requester's token was revoked")
                        closed.append(h.pending)
        except StateUnavailable as e:
            log.warning("pangate approvals of a revoked requester not closed yet: %s", e)
            return
        for p in closed:
            h = self.held.get(p.id)
            if h is not None:
                h.pending = p
                h.wake.set()  # the waiting hold answers with the denial
            else:
                self._emit("approval_denied", p)

    # ------------------------------------------------------------------ helpers

    def _mask(self, req) -> None:
        """Make the request mitmweb shows card-number free (the real one stays in `Held.real`)."""
        req.path = self.masker.mask_url(req.path)[0]
        for name in CLIENT_CREDENTIAL_HEADERS:  # the client's own secrets are not for reviewers either
            if name in req.headers:
                req.headers[name] = "(redacted by pangate)"
        rewrite_headers(req.headers, lambda v: self.masker.mask_text(v)[0])

        def masked(body: bytes) -> bytes | None:
            out, n = self.masker.mask(body)
            return out if n else None

        rewrite_body(req, masked, _withhold)

    def _note(self, p: Pending, status: str) -> ApprovalNote:
        return {"id": p.id, "rule": p.rule.name, "mode": p.rule.mode, "status": status,
                "requester": p.requester, "approvers": list(p.votes), "decided_by": p.decided_by,
                "reason": p.reason}

    def _emit(self, kind: str, p: Pending, **extra) -> None:
        events.emit(kind, alert=kind == "approval_denied", requester=p.requester,
                    approver=p.decided_by if kind != "approval_pending" else None,
                    approvers=list(p.votes), rule=p.rule.name, approval_id=p.id, mode=p.rule.mode,
                    request_id=p.request_id, reason=p.reason, **extra)

    def _update(self, flow) -> None:
        """Tell mitmweb the flow changed (marks, comment, intercepted) while our hook still runs."""
        ctx.master.addons.trigger(hooks.UpdateHook([flow]))
