"""Settling an event loop's future from a writer thread."""

from __future__ import annotations


def settle(loop, fut, value) -> None:
    """Set fut's result on its own loop, from any thread; a closed loop means nobody waits any more."""
    def _set():
        if not fut.done():
            fut.set_result(value)
    try:
        loop.call_soon_threadsafe(_set)
    except RuntimeError:
        pass
