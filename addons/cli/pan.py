"""`pangate mask` and `pangate scan`: the gateway's PAN engine on the command line.

    pangate mask [--policy FILE] [--mode MODE] < in > out
        Filters stdin to stdout with the engine and masking settings the
        gateway uses for a response body (PANs, SAD, track data), in chunks,
        in bounded memory. `--count` prints how many values were masked.

    pangate scan PATH... [--json] [--progress] [--mode MODE]
        Reports every PAN in files and folders as `file:line: brand masked`,
        never the PAN itself. Exit status: 0 none found, 1 found, 2 error
        (a file could not be read: the answer is incomplete).
"""

from __future__ import annotations

import json
import os
import sys

from pangate.cli.progress import Progress
from pangate.pan.engine import MODES, Masker, masker_from, url_view

CHUNK = 1 << 20


def register(sub) -> None:
    mask = sub.add_parser("mask", help="mask card numbers from stdin to stdout, as the gateway does")
    _engine_args(mask)
    mask.add_argument("--count", action="store_true", help="print the number of masked values to stderr")
    mask.add_argument("--content-type", default="", metavar="TYPE",
                      help="treat the input as a body of this type, as the gateway does "
                           "(application/x-www-form-urlencoded: read whole, `+`/%%xx decoded)")
    mask.set_defaults(func=mask_cmd)

    scan = sub.add_parser("scan", help="report card numbers in files and folders (exit 1 if any)")
    scan.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (recursively)")
    _engine_args(scan)
    scan.add_argument("--json", action="store_true", help="print one JSON document instead of lines")
    scan.add_argument("--progress", action="store_true", help="show a progress bar on stderr even if not a TTY")
    scan.add_argument("--url-decode", action="store_true",
                      help="read files as URL/form-encoded (`+`, %%xx); each file is read whole")
    scan.set_defaults(func=scan_cmd)


def _engine_args(p) -> None:
    p.add_argument("--policy", metavar="FILE", help="take the masking settings from this policy file")
    p.add_argument("--mode", choices=MODES, help="masking mode (overrides the policy)")
    p.add_argument("--hmac-key-env", metavar="VAR", help="environment variable with the hmac key (mode hmac)")


def build_masker(args, sad: bool = True) -> Masker:
    """The same Masker the gateway builds for the policy, with command-line overrides."""
    mode, key_env = "bin6last4", None
    if args.policy:
        from pangate.policy.model import load_policy
        policy = load_policy(args.policy)  # PolicyError names the file and line
        mode, key_env = policy.masking.mode, policy.masking.hmac_key_env
    mode = args.mode or mode
    key_env = args.hmac_key_env or key_env
    return masker_from(mode, key_env, os.environ, sad=sad)  # the gateway's factory: same checks


def _fail(msg: str) -> int:
    print(f"pangate: {msg}", file=sys.stderr)
    return 2


def mask_form(masker: Masker, body: bytes) -> tuple[bytes, int]:
    """A form body masked as the gateway masks it: as bytes, then as a server decodes it (`+`, %xx).

    The same two steps as the gateway's `mask_body` (pangate.masking.addon), written
    out here because that module imports mitmproxy and the CLI must not;
    tests/cli/test_cli_pan.py holds the two to the same output.
    """
    out, n = masker.mask(body)
    text, k = masker.mask_url(out.decode("latin-1"))
    return text.encode("latin-1"), n + k


# ---- mask ----------------------------------------------------------------------------------
def mask_cmd(args) -> int:
    try:
        masker = build_masker(args)
    except Exception as e:  # PolicyError, ValueError: say what is wrong
        return _fail(str(e))
    src, dst = sys.stdin.buffer, sys.stdout.buffer
    if "x-www-form-urlencoded" in args.content_type.lower():
        out, n = mask_form(masker, src.read())  # forms are small: read whole
        dst.write(out)
        dst.flush()
        if args.count:
            print(f"masked {n}", file=sys.stderr)
        return 0
    sm = masker.stream()
    read = getattr(src, "read1", src.read)
    while True:
        chunk = read(CHUNK)
        if not chunk:
            break
        dst.write(sm.feed(chunk))
    dst.write(sm.flush())
    dst.flush()
    if args.count:
        print(f"masked {sm.count}", file=sys.stderr)
    return 0


# ---- scan -----------------------------------------------------------------------------------
def iter_files(paths, errors: list):
    for p in paths:
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p, onerror=lambda e: errors.append((e.filename, e.strerror))):
                dirs.sort()
                for name in sorted(files):
                    path = os.path.join(root, name)
                    if os.path.isfile(path):  # skips sockets, fifos, dangling links
                        yield path
        elif os.path.exists(p):
            yield p
        else:
            errors.append((p, "no such file or directory"))


def scan_file(path: str, masker: Masker, on_bytes=None, url_decode: bool = False) -> list[dict]:
    """Findings of one file: {file, line, brand, masked}; raises OSError."""
    found: list[dict] = []
    line = [1]

    def on_pan(out: bytes, s: int, e: int, brand: str) -> None:
        found.append({"file": path, "line": line[0] + out.count(b"\n", 0, s), "brand": brand,
                      "masked": out[s:e].decode("ascii", "replace")})

    sm = masker.stream(on_pan)
    with open(path, "rb") as f:
        if url_decode:  # one byte per URL token, so lines and masked values stay readable
            chunks = iter([url_view(f.read().decode("latin-1"))])
        else:
            chunks = iter(lambda: f.read(CHUNK), b"")
        for chunk in chunks:
            line[0] += sm.feed(chunk).count(b"\n")
            if on_bytes:
                on_bytes(len(chunk))
        sm.flush()
    return found


def scan_cmd(args) -> int:
    try:
        masker = build_masker(args)  # reports PANs and track data (SAD values are masked, not reported)
    except Exception as e:
        return _fail(str(e))
    errors: list[tuple[str, str]] = []
    files = list(iter_files(args.paths, errors))
    total = 0
    for path in files:
        try:
            total += os.path.getsize(path)
        except OSError:
            pass
    progress = Progress("scanning", total, args.progress or sys.stderr.isatty())
    findings: list[dict] = []
    scanned = 0
    for path in files:
        try:
            found = scan_file(path, masker, progress.add, args.url_decode)
        except OSError as e:
            errors.append((path, e.strerror or str(e)))
            continue
        scanned += 1
        progress.suffix = f"{scanned} files"
        findings += found
        if not args.json and found:
            progress.clear()
            for f in found:
                print(f"{f['file']}:{f['line']}: {f['brand']} {f['masked']}", flush=progress.enabled)
    progress.end()
    for path, why in errors:
        print(f"pangate scan: {path}: {why}", file=sys.stderr)
    if args.json:
        print(json.dumps({"findings": findings, "files": scanned,
                          "errors": [{"file": p, "error": w} for p, w in errors]}, indent=1))
    return 2 if errors else 1 if findings else 0
