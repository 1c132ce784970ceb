"""mitmproxy's own flow writer (save_stream_file, mitmweb's download) is a sealed sink too."""

from __future__ import annotations

import io as _io

from mitmproxy import io
from mitmproxy.test import tflow

from pangate.recording.addon import seal_flow_writers

PAN = "4242424242424242"


def test_flowwriter_output_holds_no_raw_pan_in_any_field():
    seal_flow_writers()
    seal_flow_writers()  # a script reload installs it again: still one seal
    f = tflow.tflow(resp=True)
    f.request.path = f"/v1/cards/{PAN}"
    f.request.headers[f"X-{PAN}"] = PAN
    f.response.content = f'{{"number": "{PAN}"}}'.encode()
    f.comment = f"card {PAN}"
    buf = _io.BytesIO()
    io.FlowWriter(buf).add(f)
    raw = buf.getvalue()
    assert PAN.encode() not in raw
    [back] = list(io.FlowReader(_io.BytesIO(raw)).stream())  # still a readable flow file
    assert back.request.path.startswith("/v1/cards/424242")
