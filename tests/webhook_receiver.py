"""A webhook receiver on loopback for tests: keeps every JSON body posted to it."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    """A webhook receiver: keeps every JSON body posted to it."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with outer.cond:
                    outer.bodies.append(json.loads(body))
                    outer.cond.notify_all()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"

    def wait(self, n: int, timeout: float = 20) -> list[dict]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.bodies) < n and (left := deadline - time.monotonic()) > 0:
                self.cond.wait(left)
            return list(self.bodies)
