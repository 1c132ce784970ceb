"""Watching one file for changes: the policy and the revocation list both reload this way."""

from __future__ import annotations

from pangate.common.periodic import Periodic, file_stamp


class WatchedFile(Periodic):
    """Calls `changed(path, stamp)` from the periodic job whenever the watched file's stamp changes.

    `watched_path()` names the file (read on every poll: an option may change
    it). `stamp` is the stamp of what was last read; a subclass sets it when it
    has read the file, or resets it to None to read it again on the next poll.
    """

    stamp = None

    def watched_path(self) -> str:
        raise NotImplementedError

    def changed(self, path: str, stamp) -> None:
        raise NotImplementedError

    def poll(self) -> None:
        """Reload the file if it changed."""
        path = self.watched_path()
        stamp = file_stamp(path)
        if stamp != self.stamp:
            self.changed(path, stamp)

    async def tick(self):
        self.poll()
