"""Small shared pieces for addons that watch files or run a periodic job."""

from __future__ import annotations

import asyncio
import logging
import os

log = logging.getLogger("pangate")


def file_stamp(path: str):
    """Changes whenever the file is replaced or rewritten; None while it does not exist."""
    try:
        st = os.stat(path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)
    except OSError:
        return None


class Periodic:
    """Runs `self.tick()` every `period` seconds from `running` until `done` (a mixin for addons)."""

    period = 0.25
    _task = None

    async def _loop(self):
        while True:
            await asyncio.sleep(self.period)
            try:
                await self.tick()
            except Exception:  # one bad tick must not end the job for good
                log.exception("pangate: %s periodic job failed", type(self).__name__)

    async def tick(self):
        raise NotImplementedError

    def running(self):
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    def done(self):
        if self._task:
            self._task.cancel()
            self._task = None
