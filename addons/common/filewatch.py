"""Watching one file for changes: the policy and the revocation list both reload this way."""

from __future__ import annotations

from pangate.common.periodic import Periodic, file_stamp


class WatchedFile(Periodic):
    """Calls `changed(path, stamp)` from the periodic job whenever the watched file's stamp changes.

    `watched_path()` names the file (read on every poll: an option may change
    it). `stamp` is the stamp of what was last read; a subclass sets it when it
    has read the file, or resets it to None to read it again on the next poll.

    With `settle` set, a change is acted on only once the file has the same
    stamp (mtime, size, inode) on two polls in a row: a file written in place
    is otherwise read half-written, and a half file is either refused (a false
    alert) or, worse, a valid policy that lacks its second half. A complete
    rename (write to a temporary file, then rename over) settles on the next
    poll. `unsettled(path, stamp)` is told once per change it waits for.
    """

    stamp = None
    settle = False
    _settling = False  # a change was seen and has not settled yet
    _seen = None  # the stamp of the last poll while it settles

    def watched_path(self) -> str:
        raise NotImplementedError

    def changed(self, path: str, stamp) -> None:
        raise NotImplementedError

    def unsettled(self, path: str, stamp) -> None:
        """The file changed and is not settled yet (settle mode): nothing is read until it is."""

    def due(self) -> tuple[str, object] | None:
        """(path, stamp) when the watched file changed (and, with `settle`, has settled), else None."""
        path = self.watched_path()
        stamp = file_stamp(path)
        if stamp == self.stamp:
            self._settling = False
            return None
        if self.settle and not (self._settling and stamp == self._seen):
            if not self._settling:
                self.unsettled(path, stamp)
            self._settling, self._seen = True, stamp
            return None
        self._settling = False
        return path, stamp

    def poll(self) -> None:
        """Reload the file if it changed."""
        due = self.due()
        if due is not None:
            self.changed(*due)

    async def tick(self):
        self.poll()
