"""A real redis-server for tests: a free loopback port, a temp dir, no persistence, a password."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

from harness import LogWatcher, free_port


class RedisServer:
    def __init__(self, directory: Path, password: str | None = None):
        self.dir = directory
        self.port = free_port()
        self.password = password if password is not None else secrets.token_hex(12)
        self.proc = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no", "--loglevel", "notice"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        LogWatcher(self.proc.stdout).wait_for(r"Ready to accept connections", 15)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password or None, decode_responses=True)
