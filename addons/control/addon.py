"""The approval control endpoint's listener: `pangate approve|deny|approvals` reach held flows here.

The signed-call format and its verification are in calls.py (shared with the CLI).
"""

from __future__ import annotations

import asyncio
import json
import logging

from mitmproxy import ctx, exceptions

from pangate.approval.model import VoteRefused
from pangate.chain.failsafe import Component
from pangate.control.calls import MAX_BODY, CallRefused, CallVerifier, approver_keys, parse_listen
from pangate.policy.model import Policy
from pangate.state.store import StateUnavailable

log = logging.getLogger("pangate")


# ---------------------------------------------------------------- the endpoint

class Control(Component):
    """A tiny HTTP endpoint on loopback: POST /v1/approvals with a signed call."""

    def __init__(self, store, approval):
        self.store = store
        self.approval = approval
        self.verifier = CallVerifier({})
        self.listen: tuple[str, int] | None = None
        self.server: asyncio.Server | None = None
        self._running = False
        self._has_rules = False
        store.subscribe(self._policy_changed)

    def load(self, loader):
        loader.add_option("pangate_control_listen", str, "127.0.0.1:8089",
                          "Loopback HOST:PORT of the approval control endpoint (pangate approve/deny); "
                          "empty disables it.")

    def configure(self, updated):
        if "pangate_control_listen" in updated:
            try:
                self.listen = parse_listen(ctx.options.pangate_control_listen)
            except ValueError as e:
                raise exceptions.OptionsError(str(e)) from None
            self._restart()

    def _policy_changed(self, policy: Policy) -> None:
        self.verifier.keys = approver_keys(policy)  # a bad key refuses the policy
        self._has_rules = bool(policy.approvals)
        self._restart()

    def running(self):
        self._running = True
        self._restart()

    def done(self):
        self._running = False
        if self.server:
            self.server.close()
            self.server = None

    def _restart(self) -> None:
        if not self._running:
            return
        want = self.listen if self._has_rules else None
        if self.server and want and self.server.pangate_listen == want:
            return
        if self.server:
            self.server.close()
            self.server = None
        if want:
            asyncio.get_running_loop().create_task(self._start(want))

    async def _start(self, listen: tuple[str, int]) -> None:
        try:
            server = await asyncio.start_server(self._serve, listen[0], listen[1])
        except OSError as e:
            log.error("pangate control endpoint cannot listen on %s:%s: %s; approvals can only time out "
                      "(or be given in mitmweb where allowed)", listen[0], listen[1], e.strerror)
            return
        server.pangate_listen = listen
        self.server = server
        host, port = server.sockets[0].getsockname()[:2]
        log.info("pangate control endpoint listening at http://%s:%s", host, port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, doc = await asyncio.wait_for(self._handle(reader), 10)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, ConnectionError):
            status, doc = 400, {"error": "bad_request", "reason": "could not read the request"}
        body = json.dumps(doc, indent=1).encode() + b"\n"
        reasons = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 409: "Conflict",
                   503: "Service Unavailable"}
        writer.write(f"HTTP/1.1 {status} {reasons.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        try:
            await writer.drain()
        finally:
            writer.close()

    async def _handle(self, reader) -> tuple[int, dict]:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > 8192:
            return 400, {"error": "bad_request", "reason": "headers too large"}
        lines = head.decode("latin-1").split("\r\n")
        method, path = (lines[0].split(" ") + ["", ""])[:2]
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if (method, path) != ("POST", "/v1/approvals"):
            return 404, {"error": "not_found", "reason": "POST /v1/approvals with a signed call"}
        length = int(headers.get("content-length", "0"))
        if not 0 < length <= MAX_BODY:
            return 400, {"error": "bad_request", "reason": "a signed JSON body is required"}
        body = await reader.readexactly(length)
        try:
            call = self.verifier.check(body, headers.get("authorization"))
        except CallRefused as e:
            log.warning("pangate control call refused: %s", e)
            return e.status, {"error": "refused", "reason": str(e)}
        # The reason is free text that lands in the audit trail: card numbers masked.
        reason = self.approval.masker.mask_text(str(call.get("reason") or "")[:500])[0] or None
        try:
            if call["action"] == "list":
                return 200, {"pending": await self.approval.pending()}
            result = await self.approval.resolve(call["id"], call["approver"], call["action"] == "approve", reason)
        except VoteRefused as e:
            log.warning("pangate approval vote by %s refused: %s", call["approver"], e)
            return 409, {"error": "refused", "reason": str(e)}
        except StateUnavailable as e:
            # Nothing was decided: the approver may try again once the shared state answers.
            log.warning("pangate control call by %s not decided: %s", call["approver"], e)
            return 503, {"error": StateUnavailable.code, "reason": f"{e}; nothing was decided, try again"}
        return 200, {"approval": result}
