"""One way to rewrite what a message carries: every header value, and the decoded body.

Response masking, approval holds, recordings and credential redaction each scrub
messages with their own rule (mask card numbers, star a secret, drop a
header); the walk over headers and body, and what happens to a body that
cannot be decoded, is here once.
"""

from __future__ import annotations

from collections.abc import Callable


def rewrite_headers(headers, fn: Callable[[str], str], drop: frozenset[str] | set[str] = frozenset()) -> None:
    """Each header value through fn(value) -> value, set only where it changed; names in `drop` (lower case) removed."""
    for name in list(headers.keys()):
        if drop and name.lower() in drop:
            del headers[name]
            continue
        values = headers.get_all(name)
        new = [fn(v) for v in values]
        if new != values:
            headers.set_all(name, new)


def rewrite_body(msg, fn: Callable[[bytes], bytes | None], undecodable: Callable[[object], None]) -> None:
    """The decoded body through fn(body) -> new body, or None to leave it; re-encoded per Content-Encoding.

    A body that cannot be decoded cannot be vouched for: `undecodable(msg)` decides what is kept instead.
    """
    try:
        body = msg.get_content(strict=True)
    except ValueError:
        undecodable(msg)
        return
    if body:
        new = fn(body)
        if new is not None:
            msg.content = new
