"""The credential kinds, one row each: how it is injected, what of the client's is stripped,
how it can come back (its echo forms), and what the flow keeps in its place at rest. Pure.

| kind   | injected as                        | client's stripped (besides       | echo forms of                |
|        |                                    | CLIENT_CREDENTIAL_HEADERS)       |                              |
|--------|------------------------------------|----------------------------------|------------------------------|
| header | `NAME: value`                      | NAME                             | value                        |
| bearer | `Authorization: Bearer value`      | NAME, if the credential names it | value                        |
| basic  | `Authorization: Basic b64(u:p)`    | NAME, if the credential names it | u:p, p, b64(u:p)             |
| query  | `?NAME=value`                      | the query parameter NAME         | value                        |
| mtls   | client certificate in the handshake| (nothing more)                   | none: nothing secret is sent |

At rest the injected header (or query value) reads PLACEHOLDER. The functions
take a request with mitmproxy's shape (`.headers` mapping, `.query` multidict)
but import nothing from it.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from pangate.credentials.forms import echo_forms

PLACEHOLDER = "[injected by pangate]"
# What a client may carry as its own credential: never forwarded where the gateway injects one.
CLIENT_CREDENTIAL_HEADERS = ("Authorization", "Cookie", "X-Api-Key", "Api-Key")


@dataclass(frozen=True)
class Kind:
    name: str
    default_header: str | None  # where the value goes when the credential names none
    scheme: str = ""  # "Bearer " / "Basic " before the value on the wire
    in_query: bool = False
    sent: bool = True  # False: presented in the handshake, nothing in the request

    def header(self, cred) -> str | None:
        return None if self.in_query or not self.sent else (cred.name or self.default_header)

    def wire_value(self, value: str) -> str:
        if self.name == "basic":
            return self.scheme + base64.b64encode(value.encode()).decode()
        return self.scheme + value

    def stripped(self, cred) -> tuple[str, ...]:
        """Client headers removed before the credential goes in."""
        own = self.header(cred)
        return CLIENT_CREDENTIAL_HEADERS + ((own,) if own and own not in CLIENT_CREDENTIAL_HEADERS else ())

    def echo_forms(self, value: str) -> tuple[str, ...]:
        if not self.sent:
            return ()
        forms = set(echo_forms(value))
        if self.name == "basic" and ":" in value:
            user, password = value.split(":", 1)
            forms |= set(echo_forms(password, user))
        forms.add(self.wire_value(value))
        return tuple(sorted(forms, key=len, reverse=True))

    # -- on a request
    def strip(self, req, cred) -> None:
        for name in self.stripped(cred):
            req.headers.pop(name, None)
        if self.in_query:
            req.query.pop(cred.name, None)

    def inject(self, req, cred, value: str) -> None:
        if self.in_query:
            req.query[cred.name] = value
        elif self.sent:
            req.headers[self.header(cred)] = self.wire_value(value)

    def scrub(self, req, cred) -> None:
        """The flow keeps a placeholder where the secret was sent."""
        if self.in_query:
            if cred.name in req.query:
                req.query[cred.name] = PLACEHOLDER
        elif self.sent and self.header(cred) in req.headers:
            req.headers[self.header(cred)] = PLACEHOLDER


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("header", None),
    Kind("bearer", "Authorization", scheme="Bearer "),
    Kind("basic", "Authorization", scheme="Basic "),
    Kind("query", None, in_query=True),
    Kind("mtls", None, sent=False),
)}


def kind_of(cred) -> Kind:
    """The row for a policy credential (its type was validated when the policy loaded)."""
    return KINDS[cred.type]
