"""Query names are judged as servers read them: no spelling gets past a constraint or a trigger."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pangate.policy import query as q
from pangate.policy.decide import Request, decide, query_ok, query_triggers
from pangate.policy.model import QueryRule, parse_policy
from pangate.policy.yamlpos import PolicyError

POLICY = """version: 1
settings:
  method_override: {global_mode}
issuers:
  pangate: {{type: pangate, public_key_file: k.pub}}
identities:
  svc: {{issuer: pangate, roles: [r]}}
roles:
  r:
    allow:
      - destination: api
        methods: [GET]
        paths: ["/v1/charges"]
        query: {{limit: "<= 100"}}
      - destination: api
        methods: [GET]
        paths: ["/v1/lists"]
        query: {{"expand[]": "in [card, customer]"}}
      - destination: api
        methods: [GET]
        paths: ["/v1/pages"]
        query: {{"page[size]": "<= 50", version: present}}
      - destination: legacy
        methods: [GET, DELETE]
        paths: ["/v1/charges/*"]
destinations:
  api: {{host: api.example.com}}
  legacy: {{host: legacy.example.com, method_override: {legacy_mode}}}
"""


def policy(global_mode="refuse", legacy_mode="honor"):
    return parse_policy(POLICY.format(global_mode=global_mode, legacy_mode=legacy_mode), "p.yaml")


@pytest.fixture(scope="module")
def pol():
    return policy()


def req(query=(), raw=None, path="/v1/charges", method="GET", host="api.example.com", **kw) -> Request:
    return Request(identity="svc", scheme="https", host=host, port=443, method=method, path=path,
                   query=tuple(query), raw_query=raw, host_header=host, sni=host, **kw)


# --- how names are read -------------------------------------------------------

@pytest.mark.parametrize("name", [
    "limit", "Limit", "LIMIT", "limit[]", "limit[0]", "limit[ 7 ]", "limit.", "limit..", "limit ",
    " limit", "limit[].", "\uff4c\uff49\uff4d\uff49\uff54",  # fullwidth
    "LIM\u0130T".replace("\u0130", "I"),
])
def test_spellings_read_as_the_name(name):
    assert q.binding(("limit",), q.param(name, "1")) == {"exact"}


@pytest.mark.parametrize("name", ["page[limit]", "page.limit", "a[0][limit]", "PAGE[LIMIT]", "page[limit][]",
                                  "page[limit.]", "x.y[limit]"])
def test_nested_spellings_bind_the_name(name):
    assert q.binding(("limit",), q.param(name, "1")) == {"nested"}


@pytest.mark.parametrize("name", ["limit[max]", "limit[0][max]", "limit.max"])
def test_keys_under_the_name_make_it_an_object(name):
    assert "object" in q.binding(("limit",), q.param(name, "1"))


@pytest.mark.parametrize("name", ["per.page", "per page", "Per.Page", "per_page"])
def test_php_reads_dots_and_spaces_as_underscores(name):
    assert q.binding(("per_page",), q.param(name, "1")) == {"exact"}


@pytest.mark.parametrize("name", ["limit\x00", "li\x00mit", "limit\t", "limit%00", "limit%2e", "limit%u0000",
                                  "li\u200bmit", "limit\u202e", "limit[", "limit]", "limit[a]b", "limit[[0]]",
                                  "limit\udcff", "limit\ufffd"])
def test_unreadable_names(name):
    with pytest.raises(q.Unreadable):
        q.name_readings(name)
    assert q.param(name, "1").readings is None


@pytest.mark.parametrize("name", ["limitx", "xlimit", "lim", "limits", "page", "_limit", "limit_"])
def test_other_names_are_not_bound(name):
    assert not q.binding(("limit",), q.param(name, "1"))


def test_rule_names():
    assert q.rule_name("Limit") == (("limit",), False)
    assert q.rule_name("expand[]") == (("expand",), True)
    assert q.rule_name("page[size]") == q.rule_name("page.size") == (("page", "size"), False)
    for bad in ("limit[0]", "a[][b]", "", "[]", "li\x00mit", "limit%00", "limit["):
        with pytest.raises(q.Unreadable):
            q.rule_name(bad)


@pytest.mark.parametrize("query,error", [
    ('{"limit[0]": "<= 1"}', "only a final"),
    ('{limit: "<= 1", Limit: "<= 2"}', "same parameter"),
    ('{"page.size": "<= 1", "page[size]": "<= 2"}', "same parameter"),
    ('{"lim%00it": "<= 1"}', "percent-encoded"),
])
def test_the_loader_refuses_rule_names_decide_cannot_mean(query, error):
    text = POLICY.format(global_mode="refuse", legacy_mode="honor").replace(
        'query: {limit: "<= 100"}', f"query: {query}")
    with pytest.raises(PolicyError, match=error):
        parse_policy(text, "p.yaml")


# --- the decision ---------------------------------------------------------------

@pytest.mark.parametrize("pairs,allowed,reason", [
    ([("limit", "100")], True, "allowed"),
    ([], True, "allowed"),
    ([("limit", "1000")], False, "no_rule"),
    ([("limit[0]", "1000")], False, "no_rule"),
    ([("limit[]", "1000")], False, "no_rule"),
    ([("Limit", "1000")], False, "no_rule"),
    ([("LIMIT", "1000")], False, "no_rule"),
    ([("limit.", "1000")], False, "no_rule"),
    ([("limit ", "1000")], False, "no_rule"),
    ([("page[limit]", "1000")], False, "no_rule"),
    ([("page.limit", "1000")], False, "no_rule"),
    ([("limit[0]", "10")], True, "allowed"),
    ([("Limit", "10")], True, "allowed"),
    ([("limit\x00", "1000")], False, "unsafe_query"),
    ([("limit%00", "1000")], False, "unsafe_query"),  # %2500 decoded once
    ([("limit[", "1000")], False, "unsafe_query"),
    ([("limit", "10"), ("limit", "10")], False, "ambiguous_query"),
    ([("limit", "10"), ("Limit", "1000")], False, "ambiguous_query"),
    ([("limit", "10"), ("page[limit]", "1000")], False, "ambiguous_query"),
    ([("limit[0]", "10"), ("limit[1]", "1000")], False, "ambiguous_query"),
    ([("limit[max]", "1000")], False, "ambiguous_query"),
    ([("limit", "10\x00")], False, "ambiguous_query"),
    ([("limit", "10%00")], False, "ambiguous_query"),
    ([("limit", "1e3")], False, "no_rule"),
    ([("limit", "0x10")], False, "no_rule"),
    ([("limit", "1_0")], False, "no_rule"),
    ([("limit", " 10")], False, "no_rule"),
    ([("limit", "010")], False, "no_rule"),
    ([("limit", "nan")], False, "no_rule"),
    ([("limit", "9.5")], True, "allowed"),
    ([("limitx", "1000")], True, "allowed"),  # another parameter: not constrained
])
def test_limit_spellings(pol, pairs, allowed, reason):
    d = decide(pol, req(pairs))
    assert (d.allowed, d.reason) == (allowed, reason), d.detail


@pytest.mark.parametrize("raw,allowed,reason", [
    ("limit=100", True, "allowed"),
    ("limit%5B0%5D=1000", False, "no_rule"),
    ("limit[0]=1000", False, "no_rule"),
    ("Limit=1000", False, "no_rule"),
    ("limit%00=1000", False, "unsafe_query"),
    ("limit%2500=1000", False, "unsafe_query"),
    ("limit+=1000", False, "no_rule"),
    ("limit%C0%AE=1000", False, "unsafe_query"),  # invalid UTF-8
    ("x=1;limit=1000", False, "no_rule"),  # servers that split on ; see limit=1000
    ("limit=10;limit=1000", False, "ambiguous_query"),
    ("limit=10&x=a;b", True, "allowed"),
    ("limit=5&&x", True, "allowed"),
])
def test_the_raw_query_is_split_and_decoded_by_decide(pol, raw, allowed, reason):
    d = decide(pol, req(query=[("ignored", "x")], raw=raw))
    assert (d.allowed, d.reason) == (allowed, reason), d.detail


@pytest.mark.parametrize("pairs,allowed", [
    ([("expand[]", "card"), ("expand[]", "customer")], True),  # a declared list: every value judged
    ([("expand[]", "card"), ("expand", "customer")], True),
    ([("expand[]", "card"), ("Expand[]", "secret")], False),
    ([("expand[0]", "secret")], False),
    ([], False),
])
def test_declared_lists(pol, pairs, allowed):
    assert decide(pol, req(pairs, path="/v1/lists")).allowed is allowed


@pytest.mark.parametrize("pairs,allowed,reason", [
    ([("version", "1"), ("page[size]", "50")], True, "allowed"),
    ([("version", "1"), ("page.size", "50")], True, "allowed"),
    ([("version", "1"), ("Page[Size]", "51")], False, "no_rule"),
    ([("version", "1"), ("page.size", "51")], False, "no_rule"),
    ([("version", "1"), ("x[page][size]", "51")], False, "no_rule"),
    ([("version", "1"), ("page[size]", "5"), ("page.size", "500")], False, "ambiguous_query"),
    ([("page[size]", "50")], False, "no_rule"),  # version must be present
    ([("x[version]", "1")], False, "no_rule"),  # a nested spelling does not make it present
    ([("Version[]", "1")], True, "allowed"),
])
def test_nested_rule_names(pol, pairs, allowed, reason):
    d = decide(pol, req(pairs, path="/v1/pages"))
    assert (d.allowed, d.reason) == (allowed, reason), d.detail


def test_decision_names_the_rule_and_why_others_missed(pol):
    d = decide(pol, req([("version", "1")], path="/v1/pages"))
    assert d.allowed and (d.role, d.index, d.rule, d.method) == ("r", 2, "r/2", "GET")
    assert [(m.rule, m.reason) for m in d.misses] == [("r/0", "path"), ("r/1", "path")]
    d = decide(pol, req([("limit", "5000")]))
    assert not d.allowed and d.rule is None
    assert [(m.rule, m.reason) for m in d.misses] == [
        ("r/0", "query"), ("r/1", "path"), ("r/2", "path"), ("r/3", "other_destination")]
    assert "limit='5000' does not satisfy limit <= 100.0" in d.misses[0].detail


# --- the body -------------------------------------------------------------------

@pytest.mark.parametrize("ctype,body,allowed,reason", [
    ("application/x-www-form-urlencoded", b"limit=1000", False, "no_rule"),
    (None, b"limit=1000", False, "no_rule"),  # Rack reads a body without a type as a form
    ("application/x-www-form-urlencoded", b"Limit%5B%5D=1000", False, "no_rule"),
    ("application/json", b'{"limit": 1000}', False, "no_rule"),
    ("application/json", b'{"page": {"limit": 1000}}', False, "no_rule"),
    ("application/json", b'{"limit": 5, "limit": 50}', False, "ambiguous_query"),
    ("application/json", b'{"limit": 1e2}', False, "no_rule"),
    ("application/json", b'{"limit": 5}', True, "allowed"),
    ("application/json", b'[{"limit": 5000}]', True, "allowed"),  # no named members
    ("text/plain", b"limit=1000", True, "allowed"),
    ("multipart/form-data; boundary=XyZ",
     b'--XyZ\r\nContent-Disposition: form-data; name="LIMIT"\r\n\r\n1000\r\n--XyZ--\r\n', False, "no_rule"),
])
def test_body_parameters_are_parameters_too(pol, ctype, body, allowed, reason):
    d = decide(pol, req(content_type=ctype, body=body))
    assert (d.allowed, d.reason) == (allowed, reason), d.detail


def test_a_body_limit_beside_a_query_limit_is_ambiguous(pol):
    d = decide(pol, req([("limit", "5")], content_type="application/x-www-form-urlencoded", body=b"limit=5000"))
    assert d.reason == "ambiguous_query"


# --- method overrides -------------------------------------------------------------

@pytest.mark.parametrize("kw", [
    {"headers": (("X-HTTP-Method-Override", "DELETE"),)},
    {"headers": (("x-method-override", "DELETE"),)},
    {"headers": (("X-HTTP-Method", "DELETE"),)},
    {"headers": (("X_HTTP_Method_Override", "DELETE"),)},
    {"query": (("_method", "DELETE"),)},
    {"query": (("_METHOD[]", "DELETE"),)},
    {"raw": "_method=DELETE"},
    {"raw": "limit=1;_method=DELETE"},
    {"content_type": "application/x-www-form-urlencoded", "body": b"_method=DELETE"},
    {"content_type": "application/json", "body": b'{"_method": "DELETE"}'},
    {"content_type": "multipart/form-data; boundary=b",
     "body": b'--b\r\nContent-Disposition: form-data; name="_method"\r\n\r\nDELETE\r\n--b--\r\n'},
])
def test_method_overrides_are_refused_by_default(pol, kw):
    d = decide(pol, req(**kw))
    assert (d.allowed, d.reason) == (False, "method_override"), d.detail


def test_path_override_headers_are_refused(pol):
    for name in ("X-Original-URL", "x-rewrite-url", "X_Original_URL"):
        d = decide(pol, req(headers=((name, "/admin"),)))
        assert (d.allowed, d.reason) == (False, "path_override")


@pytest.mark.parametrize("method,kw,allowed,reason,judged", [
    ("POST", {"headers": (("X-HTTP-Method-Override", "delete"),)}, True, "allowed", "DELETE"),
    ("POST", {"query": (("_method", "GET"),)}, True, "allowed", "GET"),
    ("POST", {"headers": (("X-HTTP-Method-Override", "PATCH"),)}, False, "no_rule", "PATCH"),
    ("POST", {}, False, "no_rule", "POST"),
    ("GET", {"headers": (("X-HTTP-Method-Override", "DELETE"),)}, False, "method_override", None),
    ("POST", {"headers": (("X-HTTP-Method-Override", "DELETE"), ("X-HTTP-Method", "GET"))},
     False, "method_override", None),
    ("POST", {"headers": (("X-HTTP-Method-Override", "PURGE"),)}, False, "method_override", None),
])
def test_a_destination_may_honor_overrides(pol, method, kw, allowed, reason, judged):
    d = decide(pol, req(host="legacy.example.com", path="/v1/charges/ch_1", method=method, **kw))
    assert (d.allowed, d.reason) == (allowed, reason), d.detail
    if judged:
        assert d.method == judged


def test_settings_set_the_default_and_a_destination_its_own():
    honor_all = policy(global_mode="honor", legacy_mode="refuse")
    assert honor_all.method_override == "honor"
    d = decide(honor_all, req(host="legacy.example.com", path="/v1/charges/x", method="POST",
                              headers=(("X-HTTP-Method-Override", "DELETE"),)))
    assert d.reason == "method_override"
    d = decide(honor_all, req(method="POST", headers=(("X-HTTP-Method-Override", "GET"),)))
    assert d.allowed and d.method == "GET"
    with pytest.raises(PolicyError, match="expected one of refuse, honor"):
        policy(global_mode="maybe")


# --- approval triggers ------------------------------------------------------------

BIG = (QueryRule("limit", ">", 50.0, 1),)


@pytest.mark.parametrize("pairs", [
    [("limit[0]", "1000")], [("limit[]", "1000")], [("Limit", "1000")], [("limit.", "1000")],
    [("page[limit]", "1000")], [("limit\x00", "1000")], [("limit%00", "1000")], [("limit[max]", "1")],
    [("limit", "1"), ("LIMIT", "1000")], [("limit", "1e9")], [("limit", "10\x00")], [("x[", "1")],
])
def test_triggers_cannot_be_spelled_around(pairs):
    assert query_triggers(BIG, tuple(pairs))


def test_triggers_read_the_raw_query_and_body_of_a_request():
    assert query_triggers(BIG, req(raw="x=1;limit=1000"))
    assert query_triggers(BIG, req(content_type="application/json", body=b'{"limit": 1000}'))
    assert not query_triggers(BIG, req(raw="limit=10"))
    absent = (QueryRule("confirm", "absent", None, 1),)
    assert query_triggers(absent, (("x[confirm]", "1"),))  # only an exact spelling counts as given
    assert not query_triggers(absent, (("Confirm", "1"),))


# --- properties ---------------------------------------------------------------------

def _spellings(name: str):
    """Ways a client may spell `name` for some server to read it as `name` (or as nested under it)."""
    cased = st.lists(st.booleans(), min_size=len(name), max_size=len(name)).map(
        lambda ups: "".join(c.upper() if u else c for c, u in zip(name, ups, strict=True)))
    prefix = st.sampled_from(["", " ", "page[", "a.", "x[0]["])
    suffix = st.sampled_from(["", "[]", "[0]", "[12]", ".", "..", " ", "[].", "[ ]", "\x00", "%00", "%2e",
                              "[", "]", "[max]", "\u200b", "\t"])
    return st.tuples(prefix, cased, suffix).map(
        lambda t: t[0] + t[1] + ("]" if t[0].endswith("[") else "") + t[2])


@settings(max_examples=400, deadline=None)
@given(spelling=_spellings("limit"), value=st.sampled_from(["101", "1000", "5000", "1e3", "x"]))
def test_no_spelling_passes_an_upper_bound(spelling, value):
    rules = (QueryRule("limit", "<=", 100.0, 1),)
    assert not query_ok(rules, ((spelling, value),))
    assert query_triggers((QueryRule("limit", ">", 100.0, 1),), ((spelling, value),))


@settings(max_examples=400, deadline=None)
@given(spelling=_spellings("limit"), value=st.integers(0, 100).map(str))
def test_every_spelling_is_judged_as_the_name_or_refused(spelling, value):
    """A spelling of limit is either unreadable (refused), or bound to limit and judged by its value."""
    p = q.param(spelling, value)
    if p.readings is None:
        assert not query_ok((QueryRule("limit", "<=", 100.0, 1),), ((spelling, value),))
        return
    kinds = q.binding(("limit",), p)
    assert kinds, f"{spelling!r} escaped the limit rule"
    ok = query_ok((QueryRule("limit", "<=", 100.0, 1),), ((spelling, value),))
    assert ok == ("object" not in kinds)
    # and with a second spelling next to it, never allowed
    assert not query_ok((QueryRule("limit", "<=", 100.0, 1),), ((spelling, value), ("limit", value)))


@settings(max_examples=300, deadline=None)
@given(name=st.text(st.characters(codec="utf-8"), max_size=12), value=st.text(max_size=8))
def test_arbitrary_names_never_crash_and_unreadable_ones_are_refused(name, value):
    p = q.param(name, value)
    d = decide(policy(), req([(name, value)]))
    if p.readings is None:
        assert d.reason == "unsafe_query"
    json.dumps(d.detail)  # a plain sentence for the refusal body


@settings(max_examples=200, deadline=None)
@given(body=st.recursive(st.one_of(st.integers(0, 10**6), st.text(max_size=5), st.booleans(), st.none()),
                         lambda kids: st.lists(kids, max_size=3)
                         | st.dictionaries(st.sampled_from(["limit", "Limit", "page", "x"]), kids, max_size=3),
                         max_leaves=8))
def test_a_json_limit_over_the_bound_is_never_allowed(body):
    raw = json.dumps(body).encode()
    d = decide(policy(), req(content_type="application/json", body=raw))
    if d.allowed:
        for p in q._json(raw):
            if q.binding(("limit",), p):
                assert q.number(p.value) is not None and float(p.value) <= 100
