"""Who is calling: a short-lived token in Proxy-Authorization, bound to the connection.

The identity proven at CONNECT applies to every request in that tunnel and is
re-checked on each of them (expiry, revocation). The token itself is never
stored: not in flow metadata, not in records, not in memory past the check.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

from mitmproxy import ctx, exceptions

from pangate.common import events

from pangate.chain import veil
from pangate.chain.context import FlowContext, refuse
from pangate.chain.failsafe import Component
from pangate.policy.model import Policy
from pangate.common.filewatch import WatchedFile
from pangate.common.periodic import file_stamp
from pangate.identity.revocation import DEFAULT_PATH, RevocationList, read
from pangate.state import revocations as shared_revocations
from pangate.state.store import StateUnavailable
from pangate.policy.schema import parse_duration
from pangate.identity.tokens import Principal, TokenError, TokenVerifier, parse_proxy_authorization

log = logging.getLogger("pangate")
PROXY_AUTH = "Proxy-Authorization"
# One Proxy-Authenticate header per scheme, Basic first: RFC 9110 allows a
# comma-joined list, but Java's HttpClient (17) reads only the first scheme of
# a header and gives up on anything but Basic, and curl/requests pick Basic too.
CHALLENGES = ('Basic realm="pangate"', 'Bearer realm="pangate"')
# client connection id -> Caller. Module-level so it outlives a reload of the
# gateway script: open tunnels keep their (re-checked) identity.
_BOUND: dict[str, "Caller"] = {}


@dataclass(frozen=True)
class Caller:
    """A proven identity, as recorded: how it was proven, never with what."""

    identity: str
    principal: Principal

    def record(self) -> dict:
        p = self.principal
        return {"name": self.identity, "issuer": p.issuer, "subject": p.subject, "method": p.method,
                "token_id": p.token_id, "expires_at": p.expires_at, "static_key": p.static}


def identity_for(policy: Policy, principal: Principal) -> str | None:
    """Map verified claims to one policy identity, or None (an index lookup, not a scan)."""
    if principal.static:
        ident = policy.identities.get(principal.subject)
        return ident.name if ident and ident.static_key_sha256 else None
    ident = policy.identity_index.match(principal.issuer, principal.subject, principal.claims)
    return ident.name if ident else None


def verifier_inputs(policy: Policy) -> tuple:
    """What a TokenVerifier is built from: equal inputs, same verifier (and its cached JWKS)."""
    issuers = list(policy.issuers.values())  # the policy's issuers are the verifier's configuration
    static = {i.name: f"sha256:{i.static_key_sha256}" for i in policy.static_key_identities()}
    # A key file replaced under the same name is a change too.
    files = tuple((f, file_stamp(f)) for i in issuers
                  for f in (i.jwks_file, i.public_key_file, i.ca_file, i.metadata_file) if f)
    return issuers, static, files


class Throttle:
    """Slows down a source that keeps presenting bad tokens: exponential delay, capped.

    Per source IP, failures within WINDOW seconds are counted; after `free`
    of them every further refusal waits 0.25 s, 0.5 s, 1 s ... up to
    `max_delay` before it is answered. The wait is an asyncio sleep: only that
    source's refusal waits, never the event loop.
    """

    WINDOW = 60.0
    BASE = 0.25
    MAX_SOURCES = 10000

    def __init__(self, free: int = 5, max_delay: float = 10.0, clock=time.monotonic):
        self.free, self.max_delay, self.clock = free, max_delay, clock
        self._failures: OrderedDict[str, deque] = OrderedDict()

    def failed(self, source: str) -> tuple[int, float]:
        """Count one failure of source; returns (failures in the window, delay to apply)."""
        now = self.clock()
        times = self._failures.pop(source, None) or deque()
        while times and now - times[0] > self.WINDOW:
            times.popleft()
        times.append(now)
        self._failures[source] = times  # most recent last: the oldest sources are forgotten first
        while len(self._failures) > self.MAX_SOURCES:
            self._failures.popitem(last=False)
        return len(times), self.delay_for(len(times))

    def delay_for(self, n: int) -> float:
        """The wait before answering the n-th failure of a source within the window."""
        if n <= self.free:
            return 0.0
        return min(self.BASE * 2 ** (n - self.free - 1), self.max_delay)


class Identify(Component):
    """Authenticates CONNECT and plain proxy requests; binds identities to connections."""

    def __init__(self, store, revocations=None, state=None):
        self.store = store
        self.revocations = revocations  # anything with is_revoked(caller) -> str | None
        self.state = state  # SharedState: with a shared store, the bad-token counts are every instance's
        self.verifier: TokenVerifier | None = None
        self._verifier_inputs = None
        self.bound = _BOUND
        self.throttle = Throttle()
        store.subscribe(self._policy_changed)

    def load(self, loader):
        loader.add_option("pangate_auth_free_failures", int, 5,
                          "Bad tokens a source may present per minute before its refusals are slowed down.")
        loader.add_option("pangate_auth_max_delay", str, "10s",
                          "Longest delay (e.g. 10s, 500ms) before answering a source that keeps presenting bad tokens.")

    def configure(self, updated):
        if {"pangate_auth_free_failures", "pangate_auth_max_delay"} & set(updated):
            free = ctx.options.pangate_auth_free_failures
            try:
                delay = parse_duration(ctx.options.pangate_auth_max_delay)
            except ValueError as e:
                raise exceptions.OptionsError(f"pangate_auth_max_delay: {e}") from None
            if free < 0 or not 0 <= delay <= 60:
                raise exceptions.OptionsError("pangate_auth_free_failures must be >= 0 and "
                                              "pangate_auth_max_delay between 0 and 60 seconds")
            self.throttle.free, self.throttle.max_delay = free, delay

    def _policy_changed(self, policy: Policy) -> None:
        # Building the verifier loads key files: a bad one refuses the new policy.
        # Unchanged issuers keep their verifier, so cached JWKS survive a reload.
        inputs = verifier_inputs(policy)
        if self.verifier is None or inputs != self._verifier_inputs:
            self.verifier = TokenVerifier(inputs[0], inputs[1])
            self._verifier_inputs = inputs
            for ident in policy.static_key_identities():  # a declared exception stays visible
                log.warning("pangate RISK: identity %s uses a static key (%s)", ident.name, ident.static_key_reason)

    async def _authenticate(self, flow) -> Caller | None:
        header = veil.take_proxy_authorization(flow)
        # Whatever happens next, the credential goes no further than this hook.
        flow.request.headers.pop(PROXY_AUTH, None)
        if header is None:
            # Not a failure: clients that wait for the challenge start this way.
            self._refuse(flow, "missing_token", "send a token in Proxy-Authorization "
                         "(HTTPS_PROXY=http://NAME:TOKEN@gateway:8080 or Bearer TOKEN)")
            return None
        try:
            claimed, token = parse_proxy_authorization(header)
            FlowContext.of(flow).claimed = claimed if claimed in self.store.policy.identities else None
            principal = await self.verifier.averify(token)
        except TokenError as e:
            await self._refuse_bad(flow, e.reason, str(e))
            return None
        policy = self.store.policy
        name = identity_for(policy, principal)
        if name is None:
            await self._refuse_bad(flow, "unknown_identity", f"the token of {principal.subject!r} "
                                   f"(issuer {principal.issuer}) maps to no identity in the policy")
            return None
        if claimed and claimed != name and not principal.static:
            await self._refuse_bad(flow, "identity_mismatch",
                                   f"the user name {claimed!r} is not the token's identity {name!r}")
            return None
        return Caller(name, principal)

    async def _refuse_bad(self, flow, code: str, reason: str) -> None:
        """A bad token: refused, and its source slowed down when it keeps trying."""
        source = (flow.client_conn.peername or ("unknown",))[0]
        store = self.state.store if self.state is not None else None
        if store is not None and store.shared:
            try:
                count = await store.hit(f"pangate:fail:{source}", Throttle.WINDOW)
            except StateUnavailable as e:
                # Refused either way; the 503 says why it is not the usual 407.
                refuse(flow, 503, "unavailable", str(e), StateUnavailable.code)
                return
            delay = self.throttle.delay_for(count)
        else:
            count, delay = self.throttle.failed(source)
        if delay:
            if count == self.throttle.free + 1 or count & (count - 1) == 0:  # first, then at powers of two
                events.emit("auth_throttled", alert=True, source=source, failures=count,
                            window_seconds=Throttle.WINDOW, delay_seconds=delay)
            await asyncio.sleep(delay)
        self._refuse(flow, code, reason)

    def _refuse(self, flow, code: str, reason: str) -> None:
        refuse(flow, 407, "proxy_auth_required", reason, code)
        if flow.response is not None and flow.response.status_code == 407:
            flow.response.headers.set_all("Proxy-Authenticate", list(CHALLENGES))
        events.emit("token_refused", code=code, reason=reason, request_id=FlowContext.of(flow).request_id,
                    client=_peer(flow))

    def _still_valid(self, flow, caller: Caller) -> bool:
        p = caller.principal
        if p.expires_at is not None and time.time() > p.expires_at + self._leeway(p):
            self._refuse(flow, "expired", "the token of this connection has expired: reconnect with a new one")
            return False
        revoked = self.revocations.is_revoked(caller) if self.revocations else None
        if revoked:
            self._refuse(flow, "revoked", revoked)
            return False
        if identity_for(self.store.policy, p) != caller.identity:
            self._refuse(flow, "unknown_identity", f"identity {caller.identity!r} is no longer in the policy")
            return False
        return True

    def _leeway(self, p: Principal) -> float:
        if p.method == "exchange":  # the gateway's own token, on its own clock: it never outlives its source
            return 0.0
        issuer = self.store.policy.issuers.get(p.issuer)
        return issuer.leeway if issuer else 0.0

    def _bind(self, flow, caller: Caller) -> None:
        FlowContext.of(flow).identity = caller.record()

    async def http_connect(self, flow):
        caller = await self._authenticate(flow)
        if caller and self._still_valid(flow, caller):
            self.bound[flow.client_conn.id] = caller
            self._bind(flow, caller)

    def requestheaders(self, flow):
        # A replay (e.g. started in mitmweb) is someone else's request: it never
        # inherits the identity of the connection it was captured on.
        caller = None if flow.is_replay else self.bound.get(flow.client_conn.id)
        if caller is None:
            return self._authenticate_request(flow)  # plain-HTTP proxy request: each one carries it
        # Inside a tunnel the identity was proven at CONNECT: re-checked here, no waiting.
        veil.take_proxy_authorization(flow)
        flow.request.headers.pop(PROXY_AUTH, None)
        if self._still_valid(flow, caller):
            self._bind(flow, caller)
        return None

    async def _authenticate_request(self, flow) -> None:
        caller = await self._authenticate(flow)
        if caller is not None and self._still_valid(flow, caller):
            self._bind(flow, caller)

    def client_disconnected(self, client):
        self.bound.pop(client.id, None)


def _peer(flow) -> str | None:
    addr = flow.client_conn.peername
    return f"{addr[0]}:{addr[1]}" if addr else None


class Revocations(WatchedFile, Component):
    """Loads `pangate_revocations`, reloads it on change, and answers is_revoked()."""

    _had_file = False  # once a list was read, a missing file is a failure, not "nothing revoked"

    def __init__(self, state=None):
        self.current = RevocationList()
        self.problem_code = "revocations_unavailable"
        # With a shared store: what every instance (and `pangate revoke --state`) revoked.
        self.state = state
        self.shared = RevocationList()
        self._pushed = RevocationList()  # what this instance's file put in the shared store
        self._syncing: asyncio.Task | None = None
        self._again = False
        if state is not None:
            state.listen(self._announced)

    def load(self, loader):
        loader.add_option("pangate_revocations", str, DEFAULT_PATH,
                          "Revoked identities and token ids (written by `pangate revoke`), reloaded on change.")

    def configure(self, updated):
        if "pangate_revocations" in updated:
            try:
                self._load(ctx.options.pangate_revocations, announce=False)
            except ValueError as e:
                raise exceptions.OptionsError(f"pangate revocations: {e}") from None

    def is_revoked(self, caller) -> str | None:
        """Why the caller's identity or token is revoked, or None."""
        for lst in (self.current, self.shared):
            hit = lst.identities.get(caller.identity)
            if hit is not None:
                return f"identity {caller.identity!r} is revoked: {hit.get('reason', 'revoked')}"
            jti = caller.principal.token_id
            if jti and jti in lst.jtis:
                return f"this token (id {jti}) is revoked: {lst.jtis[jti].get('reason', 'revoked')}"
        return None

    # -- the shared list ------------------------------------------------------

    def _announced(self, message: dict) -> None:
        if message.get("kind") in ("revocations", "resync"):
            self._sync(resync=message.get("kind") == "resync")

    def _sync(self, resync: bool = False) -> None:
        """Push this file's changes and pull everyone's, in one task at a time (a change during it runs again)."""
        if self.state is None or not self.state.store.shared:
            return
        if self._syncing is not None and not self._syncing.done():
            self._again = True
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._syncing = loop.create_task(self._run_sync(resync))

    async def _run_sync(self, resync: bool) -> None:
        while True:
            self._again = False
            try:
                await self._exchange(resync)
            except StateUnavailable as e:
                log.warning("pangate shared revocations not synchronized: %s", e)
                return  # SharedState refuses traffic meanwhile; its recovery announces a resync
            if not self._again:
                return
            resync = False

    async def _exchange(self, resync: bool) -> None:
        store = self.state.store
        if resync and await store.get(shared_revocations.EPOCH) is None:
            # The store lost its data (a restart without persistence): put back what this instance knew.
            await store.set(shared_revocations.EPOCH, self.state.instance)
            await shared_revocations.push(store, shared_revocations.union(self.current, self.shared))
            self._pushed = self.current
        added, lifted = shared_revocations.diff(self._pushed, self.current)
        if resync:
            added = self.current  # whatever the file holds is (again) in the shared list
        if added.identities or added.jtis or lifted.identities or lifted.jtis:
            await shared_revocations.push(store, added, lifted)
        self._pushed = self.current
        new = await shared_revocations.pull(store)
        old, self.shared = self.shared, new
        for name in new.identities.keys() - old.identities.keys() - self.current.identities.keys():
            events.emit("revoked", alert=True, identity=name, jti=None, reason=new.identities[name].get("reason"),
                        via="shared")
        for jti in new.jtis.keys() - old.jtis.keys() - self.current.jtis.keys():
            events.emit("revoked", alert=True, identity=None, jti=jti, reason=new.jtis[jti].get("reason"),
                        via="shared")
        for name in old.identities.keys() - new.identities.keys() - self.current.identities.keys():
            events.emit("unrevoked", identity=name, jti=None, via="shared")
        for jti in old.jtis.keys() - new.jtis.keys() - self.current.jtis.keys():
            events.emit("unrevoked", identity=None, jti=jti, via="shared")

    def _load(self, path: str, announce: bool = True) -> None:
        stamp = file_stamp(path)
        if stamp is None and self._had_file:
            # A list that existed and vanished would silently lift every revocation.
            raise ValueError(f"{path} disappeared")
        self._had_file = self._had_file or stamp is not None  # even if it does not parse
        new = read(path)
        old, self.current, self.stamp = self.current, new, stamp
        self.healthy, self.problem = True, ""
        log.info("pangate revocation list loaded from %s: %d identities, %d token ids",
                 path, len(new.identities), len(new.jtis))
        self._sync()  # with a shared store, every instance learns of it
        if not announce:
            return
        # Held flows (approvals) subscribe to these and end the revoked ones.
        for name in new.identities.keys() - old.identities.keys():
            events.emit("revoked", alert=True, identity=name, jti=None, reason=new.identities[name].get("reason"))
        for jti in new.jtis.keys() - old.jtis.keys():
            events.emit("revoked", alert=True, identity=None, jti=jti, reason=new.jtis[jti].get("reason"))
        for name in old.identities.keys() - new.identities.keys():
            events.emit("unrevoked", identity=name, jti=None)
        for jti in old.jtis.keys() - new.jtis.keys():
            events.emit("unrevoked", identity=None, jti=jti)

    async def tick(self):
        self._ticks = getattr(self, "_ticks", 0) + 1
        if self._ticks % 20 == 0:  # every few seconds: a missed announcement is caught up
            self._sync()
        try:
            self.poll()
        except Exception as e:  # the watcher must outlive any surprise: fail closed, keep watching
            self.healthy, self.stamp = False, None
            self.problem = f"the revocation list could not be checked ({type(e).__name__})"
            log.exception("pangate revocation watcher")

    def watched_path(self) -> str:
        return ctx.options.pangate_revocations

    def changed(self, path: str, stamp) -> None:
        try:
            self._load(path)
        except ValueError as e:
            # An unreadable list may hide a revocation: refuse all traffic until it reads again.
            self.stamp = stamp
            self.healthy = False
            self.problem = f"the revocation list cannot be read ({e}); requests are refused until it can"
            log.error("pangate %s", self.problem)
            events.emit("revocations_rejected", alert=True, path=path, error=str(e))


