"""A clean Ctrl-C: asyncio's report of client tasks cancelled at shutdown is not an error."""

from __future__ import annotations

import asyncio
import logging


class _ClosedClientFilter:
    """Drops asyncio's "Exception in callback StreamReaderProtocol..." CancelledError report.

    On Ctrl-C mitmproxy stops, then asyncio cancels the tasks of client connections
    still open; in early Python 3.12 releases (3.12.1 here) the stream protocol's
    done-callback calls task.exception() on such a cancelled task, and the default
    handler prints that CancelledError as a traceback. Nothing failed.
    """

    def filter(self, record) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, asyncio.CancelledError)
                    and str(record.msg).startswith("Exception in callback StreamReaderProtocol"))


def done():
    # After our done() mitmproxy restores the loop's default exception handler, which
    # logs through the "asyncio" logger: the filter has to sit there.
    logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _ClosedClientFilter) for f in logger.filters):
        logger.addFilter(_ClosedClientFilter())
