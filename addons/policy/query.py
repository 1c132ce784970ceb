"""Request parameters as servers may read them, so a constraint cannot be spelled around.

A rule `limit: "<= 100"` is about what the backend will read as `limit`, and
backends read names loosely: PHP, Rails and qs make `limit[]`, `limit[0]` and
`page[limit]` arrays or nested keys, PHP turns `per.page` and `per page` into
`per_page`, qs/Spring split `page.limit` into nesting, C code stops at a NUL,
some frameworks fold case. So a parameter name is read into canonical
*readings* (segment paths) and a constraint binds every parameter one of whose
readings contains the constrained name. Names that cannot be read at all are
refused outright (decide: `unsafe_query`).

How a name is read (after percent-decoding once, as the query parser does):

- Unicode NFKC, then case-folded: `Limit`, `LIMIT`, fullwidth `ｌｉｍｉｔ` are `limit`.
- Leading whitespace and trailing whitespace and dots are dropped: `limit.`,
  `limit `, `limit+` (a `+` is a space) are `limit`.
- `[]` and `[n]` (digits) are list markers: `limit[]`, `limit[0]` are `limit`,
  judged as its value (and counted: two of them are two values).
- `[key]` is a nested key: `page[limit]` is the path page > limit, and so is
  `page.limit` (dots split segments, the qs/Spring reading); PHP's reading of
  the first segment (`.` and space become `_`) is a second reading.
- Refused as unreadable: a control, format (zero-width, bidi) or undecodable
  character anywhere; a `%XX` or `%uXXXX` escape left after decoding (a second
  decoder would read it); brackets that do not pair up (`limit[`, `limit]x`,
  `limit[a]b`).

How a constraint on NAME (itself a path: `limit`, `page[limit]`, `page.limit`)
binds a parameter:

- exact: a reading is NAME (list markers ignored): `limit`, `Limit`, `limit[]`,
  `limit[0]`, `limit.`.
- nested: NAME ends a longer reading: `page[limit]`, `a[0][limit]`,
  `page.limit` bind `limit`. Fail-closed: a backend that reads `page[limit]`
  as its page size is held to the `limit` rule; the value is judged.
- object: NAME is inside a reading with keys after it: `limit[max]` makes
  `limit` a mapping, which no comparison can judge.

A constraint then holds (allow rules, query_ok) only when: at most one
parameter binds it (unless the rule's name ends in `[]`, which declares a
list: every value must hold), none binds it as an object, every bound value is
readable (no controls, no leftover escapes), and the value passes; `present`
needs an exact spelling; `absent` fails on any binding. Approval triggers bind
the same way with the opposite lean: any bound value that matches, or cannot
be judged, triggers.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote

LIST = "[]"  # the segment a list marker ([] or [n]) becomes
_ESCAPE = re.compile(r"%(?:[0-9a-f]{2}|u[0-9a-f]{4})", re.IGNORECASE)
_NAME = re.compile(r"([^\[\]]*)((?:\[[^\[\]]*\])*)")
_INNER = re.compile(r"\[([^\[\]]*)\]")
_TRAILING = re.compile(r"[\s.]+$")
_NUMBER = re.compile(r"[+-]?(?:0|[1-9][0-9]{0,17})(?:\.[0-9]{1,17})?")
MAX_BODY = 8 * 1024 * 1024  # bodies read for parameters; larger ones are not parsed (see body_params)


class Unreadable(ValueError):
    """A parameter name no reading can be trusted for; the message says why."""


@dataclass(frozen=True)
class Param:
    name: str  # as received, decoded once: for messages
    value: str
    readings: frozenset[tuple[str, ...]] | None  # None: unreadable (see `problem`)
    source: str = "query"  # query | body
    problem: str | None = None


def _bad_char(text: str) -> str | None:
    for ch in text:
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cf", "Cs", "Co") or ch == "\ufffd":
            return f"{ch!r}"
    return None


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def _check(name: str, folded: str) -> None:
    bad = _bad_char(name) or _bad_char(folded)
    if bad:
        raise Unreadable(f"the parameter name {name[:60]!r} has the character {bad}, which servers read differently")
    if _ESCAPE.search(folded):
        raise Unreadable(f"the parameter name {name[:60]!r} is still percent-encoded after decoding")


def _split(folded: str, name: str) -> tuple[str, list[str]]:
    folded = _TRAILING.sub("", folded.lstrip())
    m = _NAME.fullmatch(folded)
    if m is None:
        raise Unreadable(f"the parameter name {name[:60]!r} has unpaired brackets, which servers read differently")
    return m.group(1), _INNER.findall(m.group(2))


def _seg(text: str) -> str:
    return _TRAILING.sub("", text.strip())


@lru_cache(maxsize=8192)
def name_readings(name: str) -> frozenset[tuple[str, ...]]:
    """The canonical readings of one received parameter name; raises Unreadable."""
    folded = _fold(name)
    _check(name, folded)
    base, inner = _split(folded, name)
    keys: list[str] = []
    for part in inner:
        part = _seg(part)
        keys.append(LIST if part == "" or part.isascii() and part.isdigit() else part)
    dotted_keys: list[str] = []
    for k in keys:  # qs allowDots / Spring: dots nest inside brackets too
        if k == LIST:
            dotted_keys.append(k)
        else:
            dotted_keys.extend(_seg(s) for s in k.split(".") if _seg(s))
    dotted = tuple(_seg(s) for s in base.split(".") if _seg(s)) + tuple(dotted_keys)
    php_base = re.sub(r"[ .]", "_", _seg(base))  # PHP: "per.page" and "per page" arrive as per_page
    php = ((php_base,) if php_base else ()) + tuple(keys)
    return frozenset({dotted, php})


@lru_cache(maxsize=4096)
def rule_name(param: str) -> tuple[tuple[str, ...], bool]:
    """A policy's parameter name as a path, and whether it declares a list (`expand[]`).

    Raises Unreadable for names a rule cannot mean: empty, unreadable, or with
    an index or `[]` anywhere but at the end.
    """
    folded = _fold(param)
    _check(param, folded)
    base, inner = _split(folded, param)
    many = bool(inner) and _seg(inner[-1]) == ""
    if many:
        inner = inner[:-1]
    path: list[str] = [_seg(s) for s in base.split(".") if _seg(s)]
    for part in inner:
        part = _seg(part)
        if part == "" or part.isdigit():
            raise Unreadable(f"{param!r}: only a final [] may mark a list; name keys, not indexes")
        path.extend(_seg(s) for s in part.split(".") if _seg(s))
    if not path:
        raise Unreadable(f"{param!r} names no parameter")
    return tuple(path), many


def param(name: str, value: str, source: str = "query") -> Param:
    try:
        return Param(name, value, name_readings(name), source)
    except Unreadable as e:
        return Param(name, value, None, source, str(e))


def from_pairs(pairs, source: str = "query") -> tuple[Param, ...]:
    return tuple(param(k, v, source) for k, v in pairs)


def parse(raw: str, separators: str = "&", source: str = "query") -> tuple[Param, ...]:
    """A form-encoded string as servers split it; `+` is a space, escapes decoded once."""
    out = []
    for piece in re.split(f"[{re.escape(separators)}]", raw):
        if not piece:
            continue
        k, _, v = piece.partition("=")
        out.append(param(_decode(k), _decode(v), source))
    return tuple(out)


def _decode(text: str) -> str:
    # surrogateescape keeps invalid UTF-8 visible (as Cs characters), so it is refused, not guessed
    return unquote(text.replace("+", " "), errors="surrogateescape")


def readings_of(raw: str, source: str = "query") -> list[tuple[Param, ...]]:
    """Both ways a query may be split: `&` (today's servers) and `&` plus `;` (older ones)."""
    out = [parse(raw, "&", source)]
    if ";" in raw:
        out.append(parse(raw, "&;", source))
    return out


def body_params(content_type: str | None, body: bytes | None) -> list[tuple[Param, ...]]:
    """Parameters a server may read from the body: form fields, multipart fields, JSON members.

    Rails, PHP's $_REQUEST and Laravel merge these with the query, and
    Rack/Symfony/Laravel take `_method` from them. A body with no content type
    is read as a form (Rack does, on POST). Other types, and bodies over
    MAX_BODY, give no parameters. JSON members are flattened into paths
    (`{"page": {"limit": 5}}` is page[limit]), numbers kept as written.
    """
    if not body or len(body) > MAX_BODY:
        return [()]
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype in ("", "application/x-www-form-urlencoded"):
        text = body.decode("utf-8", "surrogateescape")
        return readings_of(text, "body")
    if ctype == "multipart/form-data":
        return [_multipart(content_type or "", body)]
    if ctype == "application/json" or ctype.endswith("+json"):
        return [_json(body)]
    return [()]


def _multipart(content_type: str, body: bytes) -> tuple[Param, ...]:
    m = re.search(r'boundary=(?:"([^"]+)"|([^;\s]+))', content_type, re.IGNORECASE)
    if not m:
        return ()
    boundary = b"--" + (m.group(1) or m.group(2)).encode("latin-1", "replace")
    out = []
    for part in body.split(boundary)[1:]:
        head, sep, content = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        disp = re.search(rb'(?im)^content-disposition:.*?\bname="([^"]*)"', head)
        if disp is None:
            disp = re.search(rb"(?im)^content-disposition:.*?\bname=([^;\s]+)", head)
        if disp is None:
            continue
        name = disp.group(1).decode("utf-8", "surrogateescape")
        value = content.removesuffix(b"\r\n").decode("utf-8", "surrogateescape")
        out.append(param(name, value, "body"))
    return tuple(out)


def _json(body: bytes) -> tuple[Param, ...]:
    try:
        doc = json.loads(body, object_pairs_hook=list, parse_float=str, parse_int=str,
                         parse_constant=str)
    except (ValueError, RecursionError):
        return ()  # the backend cannot read it either
    if not isinstance(doc, list) or doc and not isinstance(doc[0], tuple):
        return ()  # a top-level array or scalar has no named members
    out: list[Param] = []

    def walk(node, path: list[str], depth: int) -> None:
        if depth > 32:
            return
        if isinstance(node, list) and node and isinstance(node[0], tuple):  # an object's members
            for k, v in node:
                walk(v, path + [f"[{k}]" if path else k], depth + 1)
        elif isinstance(node, list):
            for v in node:
                walk(v, path + ["[]"], depth + 1)
        else:
            value = "" if node is None else "true" if node is True else "false" if node is False else str(node)
            out.append(param("".join(path), value, "body"))

    walk(doc, [], 0)
    return tuple(out)


def value_problem(value: str) -> str | None:
    bad = _bad_char(value)
    if bad:
        return f"has the character {bad}"
    if _ESCAPE.search(value):
        return "is still percent-encoded after decoding"
    return None


def number(value: str) -> float | None:
    """A plain decimal, or None: servers read 1e3, 0x10, 1_000, 010, ' 5' and nan their own ways."""
    if not _NUMBER.fullmatch(value):
        return None
    return float(value)


def binding(path: tuple[str, ...], p: Param) -> set[str]:
    """How the rule name `path` binds parameter `p`: a subset of {exact, nested, object}."""
    kinds: set[str] = set()
    n = len(path)
    for reading in p.readings or ():
        segs = tuple(s for s in reading if s != LIST)
        for i in range(len(segs) - n + 1):
            if segs[i:i + n] == path:
                if i + n < len(segs):
                    kinds.add("object")
                else:
                    kinds.add("exact" if i == 0 else "nested")
    return kinds


def first_unreadable(params: tuple[Param, ...]) -> Param | None:
    return next((p for p in params if p.readings is None), None)
