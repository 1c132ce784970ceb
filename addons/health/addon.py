"""Liveness and readiness over HTTP (`pangate_health_listen`): GET /healthz and GET /readyz, JSON.

For orchestrators (Kubernetes probes, compose health checks). Off by
default; the container image listens on 0.0.0.0:8090. Nothing secret is
served: stage names and their one-line problems.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from mitmproxy import ctx, exceptions

from pangate.chain import failsafe
from pangate.chain.failsafe import Component
from pangate.health.report import liveness, parse_listen, readiness

log = logging.getLogger("pangate")
REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class Health(Component):
    """Serves /healthz and /readyz from the stages' own health."""

    def __init__(self, store, components: list, state=None):
        self.store = store
        self.components = components
        self.state = state
        self.started = time.time()
        self.listen: tuple[str, int] | None = None
        self.server: asyncio.Server | None = None
        self._running = False

    def load(self, loader):
        loader.add_option("pangate_health_listen", str, "",
                          "HOST:PORT serving GET /healthz (liveness) and /readyz (readiness) as JSON; "
                          "empty disables it.")

    def configure(self, updated):
        if "pangate_health_listen" in updated:
            try:
                self.listen = parse_listen(ctx.options.pangate_health_listen)
            except ValueError as e:
                raise exceptions.OptionsError(str(e)) from None
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
        if self.server and self.listen and self.server.pangate_listen == self.listen:
            return
        if self.server:
            self.server.close()
            self.server = None
        if self.listen:
            asyncio.get_running_loop().create_task(self._start(self.listen))

    async def _start(self, listen: tuple[str, int]) -> None:
        try:
            server = await asyncio.start_server(self._serve, listen[0], listen[1])
        except OSError as e:
            log.error("pangate health endpoint cannot listen on %s:%s: %s", listen[0], listen[1], e.strerror)
            return
        server.pangate_listen = listen
        self.server = server
        host, port = server.sockets[0].getsockname()[:2]
        log.info("pangate health endpoint listening at http://%s:%s", host, port)

    def checks(self) -> dict[str, tuple[bool, str]]:
        out = {"gateway": (failsafe.STATE.live, "" if failsafe.STATE.live else failsafe.STATE.problem),
               "policy": (self.store.policy is not None, "no policy is loaded")}
        for c in self.components:
            if c is self:
                continue
            name = type(c).__name__
            out[name] = (bool(c.healthy), c.problem or f"{name} is not ready")
        return out

    def _instance(self) -> str | None:
        return self.state.instance if self.state is not None else None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            method, path = (head.split(b"\r\n", 1)[0].decode("latin-1").split(" ") + ["", ""])[:2]
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        path = path.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            status, doc = 405, {"error": "method_not_allowed", "reason": "GET /healthz or /readyz"}
        elif path in ("/healthz", "/livez"):
            status, doc = liveness(self.started, self._instance())
        elif path == "/readyz":
            status, doc = readiness(self.checks(), self._instance())
        else:
            status, doc = 404, {"error": "not_found", "reason": "GET /healthz or /readyz"}
        body = json.dumps(doc, indent=1).encode() + b"\n"
        writer.write(f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n".encode()
                     + (body if method != "HEAD" else b""))
        try:
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
