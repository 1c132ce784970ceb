"""Each sink's choke point, in process: the scrubber's additions, audit records and lines, the
recorded flow state, webhook payloads and exported lines."""

from __future__ import annotations

import gzip
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy.io import FlowReader, tnetstring
from mitmproxy.test import tflow
from mitmproxy.websocket import WebSocketMessage

import leakscan
from pangate.audit.log import AuditWriter, dumps_line, scrub_line, scrub_record
from pangate.common.webhook import Notifier
from pangate.credentials.forms import echo_forms
from pangate.recording.addon import WITHHELD, RecordingFiles, Scrubber, StateSeal, serialize
from pangate.sinks import scrubber as sc
from pangate.sinks.scrubber import SecretRegistry, SinkScrubber, generated_id

PAN = "4111111111111111"
SECRET = "sk_live/9fQ+x2Zk8wLmPq=="


@pytest.fixture
def sink():
    reg = SecretRegistry()
    reg.replace({"processor": (SECRET, None)})
    return SinkScrubber(secrets=reg)


# ---- the scrubber ----------------------------------------------------------------------------

ESCAPED = {
    "json": "".join(f"\\u{ord(c):04x}" for c in PAN),
    "json-upper": "".join(f"\\u{ord(c):04X}" for c in PAN),
    "python-bytes": "".join(f"\\x{ord(c):02x}" for c in PAN),
    "html-dec": "".join(f"&#{ord(c)};" for c in PAN),
    "html-hex": "".join(f"&#x{ord(c):x};" for c in PAN),
    "percent": "".join(f"%{ord(c):02X}" for c in PAN),
    "percent-lower-mixed": "4111" + "".join(f"%{ord(c):02x}" for c in PAN[4:]),
    "percent-of-entity": "".join(f"%26%23{ord(c[0]) // 10 + 48:02X}{ord(c[0]) % 10 + 48:02X}%3B" for c in PAN),
    "json-of-entity": "".join(f"\\u0026#{ord(c)};" for c in PAN),
    "double-json": "".join(f"\\\\u{ord(c):04x}" for c in PAN),
    "grouped-json": "".join(f"\\u{ord(c):04x}" for c in "4111 1111 1111 1111"),
    "utf16-repr": repr(PAN.encode("utf-16-le")),
    "utf32-repr": repr(PAN.encode("utf-32-le")),
}


@pytest.mark.parametrize("form", ESCAPED.values(), ids=ESCAPED.keys())
def test_escaped_card_numbers_are_starred(sink, form):
    out = sink.text(f'{{"note": "{form}", "n": 1}}')
    assert not leakscan.pans_in(out), out
    assert '"n": 1' in out
    assert not leakscan.pans_in(sink.data(f"x {form} y".encode()))


def test_utf16_and_utf32_bytes_are_starred(sink):
    for enc in ("utf-16-le", "utf-16-be", "utf-32-le"):
        raw = f"card {PAN} end".encode(enc)
        assert not leakscan.pans_in(sink.data(raw)), enc


def test_masking_keeps_lengths(sink):
    for form in ESCAPED.values():
        assert len(sink.text(form)) == len(form)


def test_authorization_inside_json_keeps_the_structure(sink):
    line = json.dumps({"reason": "no proxy-authorization", "code": "auth_missing", "status": 407})
    assert json.loads(sink.text(line)) == json.loads(line)
    out = sink.text('{"authorization": "Bearer abcdefghijklmnop", "x": 1}')
    assert "abcdefghijklmnop" not in out
    out = sink.text("Authorization: Digest username=x, response=0123456789abcdef")
    assert "Digest" not in out


# Strings on the cheap path: few digits and no anchor word. The full path must leave them as
# they are, or the cheap path would be wrong.
_ALPHABET = "0123456789abcdefxu%&#;\\ -_./:+\"'*ABCDEF=\u00a0\u200b"


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=_ALPHABET, max_size=60))
def test_the_cheap_path_skips_only_what_the_full_path_leaves_alone(value):
    full = sc._mask_text(sc.Masker(sad=True), sc.TOKEN_TEXT.sub(sc.REDACTED, value))
    digits = sum(c.isascii() and c.isdigit() for c in value)
    if value.isascii() and digits < sc._MIN_DIGITS and not sc._hint(value.lower()):
        assert full == value
    assert SinkScrubber(secrets=SecretRegistry()).text(value) == full


def test_a_clean_string_is_remembered_until_the_secrets_change():
    reg = SecretRegistry()
    s = SinkScrubber(secrets=reg)
    assert s.text("rotate-me-now-please") == "rotate-me-now-please"
    assert "rotate-me-now-please" in s.known_clean()
    reg.replace({"d": ("rotate-me-now-please", None)})
    assert "rotate-me" not in s.text("rotate-me-now-please")


def test_labels_are_scrubbed_then_bounded(sink):
    assert sink.label(f"/v1/cards/{PAN}") == "/v1/cards/411111******1111"
    long = sink.label("x" * 200 + PAN)
    assert len(long) == sc.LABEL_MAX and PAN[:12] not in long and long.endswith("\u2026")
    cut = sink.label("y" * 60 + PAN)  # scrubbed before the cut: no partial number survives
    assert "411111111" not in cut
    assert sink.label("a\nb\x00c") == "a?b?c"
    assert sink.label(SECRET) == "*" * len(SECRET)
    assert sink.label(404) == "404"


def test_generated_ids_keep_their_shape_and_nothing_else_passes():
    assert generated_id("request_id", uuid.uuid4().hex[:20])
    assert generated_id("connection", str(uuid.uuid4())) and generated_id("id", str(uuid.uuid4()))
    assert generated_id("approval_id", "apr_0123456789abcdef")
    assert not generated_id("request_id", PAN + "0000")  # digits only: scrubbed like anything else
    assert not generated_id("path", uuid.uuid4().hex[:20])
    assert not generated_id("request_id", f"{PAN} x")


# ---- audit records --------------------------------------------------------------------------

def test_every_string_of_a_record_is_scrubbed_keys_and_nesting_included(sink):
    rid = "41111111111111117abc"  # generated shape: kept, though its digits look like a card
    rec = {"event": "request", "request_id": rid, "reason": f"no rule for /pay/{PAN}",
           "destination": {"host": f"{PAN}.example", "port": 443, "path": ["/a", (f"x{PAN}",)]},
           PAN: {"nested": {"deeper": f"echo {SECRET}"}}, "n": 1.5, "ok": True, "none": None}
    out = scrub_record(rec, sink)
    flat = json.dumps(out)
    assert not leakscan.pans_in(flat.replace(rid, "")) and SECRET not in flat
    assert out["request_id"] == rid and out["n"] == 1.5 and out["ok"] is True and out["none"] is None
    assert out["destination"]["host"] == "411111******1111.example"
    assert rec["destination"]["host"] == f"{PAN}.example"  # the caller's dict is not changed


def test_the_writer_scrubs_every_record_before_hashing(tmp_path, sink):
    w = AuditWriter(str(tmp_path), Ed25519PrivateKey.generate(), fsync=False, scrubber=sink)
    seq, written = w.add({"event": "alert", "reason": f"Host {PAN}.example refused", "detail": {"q": SECRET}})
    w.append({"event": "x", "items": [f"card={PAN}"]})
    w.close()
    text = "".join(p.read_text() for p in tmp_path.glob("*.jsonl"))
    assert not leakscan.pans_in(text) and not leakscan.secrets_in(text, [SECRET])
    assert written["reason"] == "Host 411111******1111.example refused" and seq > 0
    assert written["reason"] in text


def test_an_exported_line_is_the_same_bytes_unless_it_must_change(sink):
    clean = dumps_line({"event": "request", "seq": 7, "prev": "0" * 64, "reason": "fine"})
    assert scrub_line(clean, sink) is clean
    raw = dumps_line({"event": "request", "seq": 8, "prev": "4111111111111111" + "0" * 48, "reason": f"x {PAN}"})
    out = scrub_line(raw, sink)
    assert json.loads(out)["prev"] == "4111111111111111" + "0" * 48  # the chain stays checkable
    assert "411111******1111" in json.loads(out)["reason"]
    assert not leakscan.pans_in(scrub_line(b"not json " + PAN.encode(), sink))


def test_the_exporter_hands_the_transport_scrubbed_lines(tmp_path):
    from pangate.export.addon import Exporter

    line = dumps_line({"event": "legacy", "seq": 1, "prev": "0" * 64, "reason": f"card {PAN}"})
    (tmp_path / "audit-20260101-0001.jsonl").write_bytes(line + b"\n")
    got, done = [], threading.Event()

    class Sink:
        def send(self, lines):
            got.extend(lines)
            done.set()

        def close(self):
            pass

    exp = Exporter("test:", str(tmp_path), Sink()).start()
    try:
        assert done.wait(10)
    finally:
        exp.stop()
    assert got and not leakscan.pans_in(b"\n".join(got))


# ---- recordings ----------------------------------------------------------------------------

def _flow():
    f = tflow.tflow(resp=True, ws=True, err=True)
    f.request.headers[f"X-Card-{PAN}"] = "header name carries it"
    f.request.path = f"/ok?ref={ESCAPED['percent']}"
    f.response.reason = f"Card {PAN}"
    f.response.headers["Content-Encoding"] = "gzip"
    f.response.raw_content = gzip.compress(f'{{"card": "{ESCAPED["json"]}", "echo": "{SECRET}"}}'.encode())
    f.websocket.messages.append(WebSocketMessage(1, True, ESCAPED["html-dec"].encode()))
    f.websocket.close_reason = f"bye {PAN}"
    f.error.msg = f"upstream said {PAN}"
    f.comment = ESCAPED["utf16-repr"]
    f.metadata["pangate"] = {"request_id": "r1", "refused": {"reason": f"no rule for /{PAN}"}}
    return f


def test_the_sealed_state_holds_nothing_and_reads_back(tmp_path):
    f = _flow()
    state = serialize(f.copy(), Scrubber(secrets=[SECRET]))
    path = tmp_path / "x.mitm"
    with open(path, "wb") as fh:
        tnetstring.dump(state, fh)
    data = path.read_bytes()
    assert not leakscan.pans_in(data) and not leakscan.secrets_in(data, [SECRET])
    with open(path, "rb") as fh:
        (read,) = list(FlowReader(fh).stream())
    assert read.response.reason == "Card 411111******1111"
    assert read.websocket.close_reason == "bye 411111******1111"
    body = read.response.get_text()
    assert body.startswith('{"card": "\\u0034') and "*****" in body and "content-encoding" not in read.response.headers


def test_a_body_the_seal_cannot_decode_is_withheld():
    f = tflow.tflow(resp=True)
    f.response.headers["Content-Encoding"] = "gzip"
    f.response.raw_content = b"not gzip " + PAN.encode()
    state = StateSeal().state(f.get_state())
    assert state["response"]["content"] == WITHHELD


def test_an_unchanged_encoded_body_is_kept_as_it_was():
    f = tflow.tflow(resp=True)
    f.response.headers["Content-Encoding"] = "gzip"
    f.response.raw_content = body = gzip.compress(b'{"fine": true}')
    assert StateSeal().state(f.get_state())["response"]["content"] == body


def test_certificates_naming_a_card_number_are_dropped():
    import tempfile

    from mitmproxy import certs

    store = certs.CertStore.from_store(tempfile.mkdtemp(), "mitmproxy", 2048)
    entry = store.get_cert(f"{PAN}.localhost", [])
    clean = store.get_cert("localhost", [])
    st = {"client_conn": {"mitmcert": entry.cert.get_state(), "certificate_list": [clean.cert.get_state()]}}
    out = StateSeal().state(st)
    assert out["client_conn"]["mitmcert"] is None
    assert out["client_conn"]["certificate_list"] == [clean.cert.get_state()]


def test_the_writer_thread_writes_sealed_flows(tmp_path):
    files = RecordingFiles(str(tmp_path), Ed25519PrivateKey.generate(), 1 << 20, 3600)
    files.put((_flow(), Scrubber(secrets=[SECRET])))
    files.close()
    (path,) = tmp_path.glob("*.mitm")
    assert not leakscan.pans_in(path.read_bytes()) and not leakscan.secrets_in(path.read_bytes(), [SECRET])


# ---- webhooks --------------------------------------------------------------------------------

def test_a_webhook_payload_leaves_scrubbed():
    got, done = [], threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            got.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()
            done.set()

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        n = Notifier()
        n.url = f"http://127.0.0.1:{server.server_port}/hook"
        n.send({"text": f"approve GET /v1/cards/{PAN}", "request": {"path": f"/v1/cards/{PAN}"}})
        assert done.wait(10)
    finally:
        server.shutdown()
    assert not leakscan.pans_in(got[0]) and "411111******1111" in got[0].decode()


def test_registered_secrets_cover_every_echo_form():
    reg = SecretRegistry()
    reg.replace({"d": (SECRET, None), "b#password": ("hunter2hunter2", "svc")})
    s = SinkScrubber(secrets=reg)
    for form in echo_forms(SECRET) + echo_forms("hunter2hunter2", "svc"):
        assert form not in s.text(f"echo {form} end")


def test_secret_forms_match_in_any_letter_case():
    from urllib.parse import quote

    reg = SecretRegistry()
    reg.replace({"d": (SECRET, None)})
    s = SinkScrubber(secrets=reg)
    mixed = "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(quote(SECRET, safe="")))
    assert set(s.text(f"x {mixed} y")[2:-2]) == {"*"}
    assert set(s.data(f"x {mixed} y".encode())[2:-2]) == {ord("*")}
    assert s.text("nothing secret here") == "nothing secret here"


# ---- process output ----------------------------------------------------------------------------

def test_bytes_written_to_stdout_buffer_are_scrubbed_and_json_lines_stay_verifiable(sink):
    import io

    from pangate.sinks.output import ScrubbedStream

    raw = io.BytesIO()
    target = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)
    out = ScrubbedStream(target, sink)
    prev = "4111111111111111" + "ab" * 24  # a chain hash whose digits happen to look like a card
    line = dumps_line({"event": "request", "prev": prev, "reason": f"card {PAN}", "seq": 3})
    print("text first", file=out)
    out.buffer.write(line + b"\n" + f"plain {PAN} ".encode())
    out.buffer.write(b"tail\n")
    out.flush()
    first, second, third = raw.getvalue().decode().splitlines()
    assert first == "text first"
    rec = json.loads(second)
    assert rec["prev"] == prev and rec["reason"] == "card 411111******1111" and rec["seq"] == 3
    assert third == "plain 411111******1111 tail"
    clean = dumps_line({"event": "x", "prev": prev, "n": 1})
    out.buffer.write(clean + b"\n")
    out.flush()
    assert raw.getvalue().splitlines()[-1] == clean  # untouched bytes, byte for byte


def test_a_printed_json_line_keeps_its_structure(sink):
    import io

    from pangate.sinks.output import ScrubbedStream

    target = io.StringIO()
    out = ScrubbedStream(target, sink)
    print(json.dumps({"reason": "missing authorization", "code": "x", "path": f"/{PAN}"}), file=out)
    rec = json.loads(target.getvalue())
    assert rec["reason"] == "missing authorization" and rec["path"] == "/411111******1111"
