"""The process's own output passes the sink scrubber: log records, stdout and stderr.

mitmproxy prints raw bytes in places pangate does not control: its flow
lines (URLs, status lines), websocket ping payloads and close reasons,
"Unexpected data from server", CONNECT lines, and tracebacks quoting data.
Two choke points catch all of it, whoever prints:

- a LogRecord factory: every record any logger creates has its message (and
  its formatted traceback) scrubbed before a handler sees it;
- stdout and stderr are replaced by line-buffered writers that scrub each
  line before it reaches the real stream (termlog, the flow dumper, print(),
  asyncio's "Task exception was never retrieved").

Installed once per process (script reloads find it in place) and pure Python:
it needs no mitmproxy import.
"""

from __future__ import annotations

import io
import logging
import sys
import threading

from pangate.sinks.scrubber import SinkScrubber, default

_INSTALLED = {"factory": None, "streams": False}


class ScrubbedStream(io.TextIOBase):
    """A text stream that scrubs whole lines before writing them to `target`."""

    def __init__(self, target, scrubber: SinkScrubber):
        self.target = target
        self.scrubber = scrubber
        self._buf = ""
        self._lock = threading.Lock()
        self._binary: ScrubbedBuffer | None = None

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        with self._lock:
            self._buf += s
            if "\n" not in self._buf:
                if len(self._buf) < 65536:
                    return len(s)
                head, self._buf = self._buf, ""  # a huge unterminated write: scrub it whole
            else:
                head, _, self._buf = self._buf.rpartition("\n")
                head += "\n"
            self.target.write(self._scrub(head))
        return len(s)

    def _scrub(self, text: str) -> str:
        if "{" not in text:
            return self.scrubber.text(text)
        return "".join(self.scrubber.line(ln) for ln in text.splitlines(keepends=True))

    def flush(self) -> None:
        with self._lock:
            if self._buf:
                self.target.write(self._scrub(self._buf))
                self._buf = ""
            self.target.flush()

    def isatty(self) -> bool:
        return self.target.isatty()

    def fileno(self) -> int:
        return self.target.fileno()

    @property
    def encoding(self):
        return getattr(self.target, "encoding", "utf-8")

    @property
    def buffer(self):
        # Writers of bytes (the stdout export, click) must not bypass the scrubber: theirs scrubs too.
        target = getattr(self.target, "buffer", None)
        if target is None:
            raise AttributeError("buffer")
        if self._binary is None or self._binary.target is not target:
            self._binary = ScrubbedBuffer(target, self.scrubber, self)
        return self._binary


class ScrubbedBuffer(io.RawIOBase):
    """The bytes side of a ScrubbedStream: whole lines scrubbed (JSON lines value by value)."""

    def __init__(self, target, scrubber: SinkScrubber, text: ScrubbedStream):
        self.target, self.scrubber, self.text = target, scrubber, text
        self._buf = b""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        b = bytes(b)
        with self._lock:
            self._buf += b
            if b"\n" not in self._buf and len(self._buf) < 65536:
                return len(b)
            if b"\n" in self._buf:
                head, _, self._buf = self._buf.rpartition(b"\n")
                lines = (head + b"\n").splitlines(keepends=True)
            else:
                lines, self._buf = [self._buf], b""
            self.text.flush()  # what was printed as text first comes out first
            self.target.write(b"".join(self.scrubber.line_data(ln) for ln in lines))
        return len(b)

    def flush(self) -> None:
        with self._lock:
            if self._buf:
                self.text.flush()
                self.target.write(self.scrubber.line_data(self._buf))
                self._buf = b""
            self.target.flush()

    def fileno(self) -> int:
        return self.target.fileno()


def _factory(base, scrubber: SinkScrubber):
    def make(*args, **kwargs):
        record = base(*args, **kwargs)
        try:
            msg = record.getMessage()
        except Exception:  # a bad format string: keep what can be shown, scrubbed
            msg = f"{record.msg!r} {record.args!r}"
        record.msg, record.args = scrubber.text(msg), None
        if record.exc_info:
            record.exc_text = scrubber.text(logging.Formatter().formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = scrubber.text(record.stack_info)
        return record
    make.pangate_scrubbed = True
    return make


def install(scrubber: SinkScrubber | None = None, also=()) -> None:
    """Route every log record and every line on stdout/stderr through the scrubber. Idempotent.

    `also`: objects that captured sys.stdout/stderr before this ran (mitmproxy's dumper).
    """
    scrubber = scrubber or default()
    current = logging.getLogRecordFactory()
    if not getattr(current, "pangate_scrubbed", False):
        logging.setLogRecordFactory(_factory(current, scrubber))
    if not isinstance(sys.stdout, ScrubbedStream):
        sys.stdout = ScrubbedStream(sys.stdout, scrubber)
    if not isinstance(sys.stderr, ScrubbedStream):
        sys.stderr = ScrubbedStream(sys.stderr, scrubber)
    # Handlers and writers created before now hold the old streams: point them at the scrubbed ones.
    loggers = [logging.getLogger(), *[lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger)]]
    for obj in [h for lg in loggers for h in lg.handlers] + list(also):
        retarget(obj)


def retarget(obj) -> None:
    """Point an object's output attribute (stream, file, outfp) at the scrubbed stdout/stderr."""
    for attr in ("stream", "file", "outfp"):
        current = getattr(obj, attr, None)
        for scrubbed in (sys.stdout, sys.stderr):
            if isinstance(scrubbed, ScrubbedStream) and current is scrubbed.target:
                setattr(obj, attr, scrubbed)
