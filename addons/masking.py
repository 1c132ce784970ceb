"""PAN masking in the data path: nothing readable leaves the gateway towards a workload.

Response bodies (decoded from any Content-Encoding, re-encoded after) and
headers are masked with the PAN engine; a body that cannot be decoded is
refused, never forwarded unread.
"""

from __future__ import annotations

import logging
import os

from .failsafe import Component, meta, refused
from .pan import Masker
from .policy import Policy

log = logging.getLogger("pangate")


def masker_for(policy: Policy) -> Masker:
    m = policy.masking
    key = None
    if m.mode == "hmac":
        key = os.environ.get(m.hmac_key_env or "", "").encode()
        if not key:
            raise ValueError(f"masking mode hmac needs the key in ${m.hmac_key_env}")
    return Masker(mode=m.mode, hmac_key=key)


class Masking(Component):
    """Masks PANs and strips sensitive authentication data from responses."""

    def __init__(self, store):
        self.store = store
        self.masker = Masker()
        store.subscribe(self._policy_changed)

    def _policy_changed(self, policy: Policy) -> None:
        self.masker = masker_for(policy)

    def response(self, flow):
        if flow.response is None or refused(flow):
            return
        count = self._mask_headers(flow.response.headers)
        body = flow.response.get_content(strict=True)  # raises on a body it cannot decode: refused
        if body:
            masked, n = self.masker.mask(body)
            if masked != body:
                flow.response.set_content(masked)
                count += n
        if count:
            meta(flow)["pans_masked"] = meta(flow).get("pans_masked", 0) + count

    def _mask_headers(self, headers) -> int:
        count = 0
        for name in list(headers.keys()):
            values = headers.get_all(name)
            out = []
            for v in values:
                masked, n = self.masker.mask_text(v)
                out.append(masked)
                count += n
            if count and out != values:
                headers.set_all(name, out)
        return count
