"""The one error a policy raises: located, so an operator can go straight to the line."""

from __future__ import annotations


class PolicyError(ValueError):
    """A policy problem, located: str() gives `file:line: problem`."""

    def __init__(self, message: str, path: str = "<policy>", line: int | None = None):
        self.message = message
        self.path = path
        self.line = line
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {message}")
