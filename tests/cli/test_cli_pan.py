"""`pangate mask` and `pangate scan`: the same answers as the gateway, on the same corpus."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from pan_corpus import FALSE_POSITIVES, carrier_docs, corpus_pans, raw_pans_in
from pangate.cli.pan import CHUNK

from harness import VENV_BIN

DOCS = carrier_docs()
PANS = corpus_pans()
FORM = "application/x-www-form-urlencoded"


def pangate(*args, stdin: bytes = b"", env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "pangate"), *args], input=stdin, capture_output=True,
                          timeout=60, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def gateway_bodies(gateway, upstream, mint):
    """doc -> (body the gateway sends the client, its audit record)."""
    s = gateway.session("reader", mint("reader"))
    out = {}
    for name, (ctype, body) in DOCS.items():
        upstream.routes[f"/public/cli/{name}"] = lambda h, seen, b=body, c=ctype: (200, b, c, {})
        r = s.get(f"https://localhost:{upstream.port}/public/cli/{name}")
        assert r.status_code == 200
        out[name] = (r.content, gateway.records_for(r.headers["X-Pangate-Request-Id"])[0])
    return out


@pytest.mark.parametrize("doc", list(DOCS))
def test_mask_equals_gateway(gateway_bodies, doc):
    ctype, body = DOCS[doc]
    res = pangate("mask", "--count", "--content-type", ctype, stdin=body)
    assert res.returncode == 0, res.stderr
    got, record = gateway_bodies[doc]
    assert res.stdout == got and raw_pans_in(got) == []
    assert res.stderr.decode().strip() == f"masked {record['pans_masked'] + record['sad_masked']}"


@pytest.mark.parametrize("doc", list(DOCS))
def test_scan_equals_gateway(gateway_bodies, tmp_path, doc):
    ctype, body = DOCS[doc]
    f = tmp_path / f"{doc}.txt"
    f.write_bytes(body)
    args = ["scan", "--json", str(f)] + (["--url-decode"] if ctype == FORM else [])
    res = pangate(*args)
    assert res.returncode == 1, res.stderr
    report = json.loads(res.stdout)
    got, record = gateway_bodies[doc]
    assert len(report["findings"]) == record["pans_masked"] >= len(PANS)
    masked_text = got.decode().replace("+", " ").replace("%20", " ")
    for finding in report["findings"]:
        assert finding["masked"] in masked_text  # the same masked value the client got
        assert finding["line"] >= 1 and finding["brand"]
    assert raw_pans_in(res.stdout) == [] and raw_pans_in(res.stderr) == []


def test_scan_text_lines_exit_codes_and_progress(tmp_path):
    d = tmp_path / "tree" / "sub"
    d.mkdir(parents=True)
    (d / "a.log").write_text("ok\nfirst 4111 1111 1111 1111\n\n%B5500000000000004^DOE/J^2512101?\n")
    (tmp_path / "tree" / "clean.txt").write_text("\n".join(FALSE_POSITIVES.values()))
    res = pangate("scan", "--progress", str(tmp_path / "tree"))
    assert res.returncode == 1
    lines = res.stdout.decode().splitlines()
    assert lines == [f"{d / 'a.log'}:2: visa 4111 11** **** 1111",
                     f"{d / 'a.log'}:4: mastercard track1 %" + "*" * 31 + "?"]
    assert "scanning [" in res.stderr.decode() and "100%" in res.stderr.decode()
    assert "4111111111111111" not in res.stdout.decode().replace(" ", "")
    clean = pangate("scan", str(tmp_path / "tree" / "clean.txt"))
    assert (clean.returncode, clean.stdout) == (0, b"")
    missing = pangate("scan", str(tmp_path / "nope"), str(tmp_path / "tree"))
    assert missing.returncode == 2 and b"no such file" in missing.stderr


def test_scan_finds_pans_across_read_chunks(tmp_path):
    f = tmp_path / "big.txt"
    pan = b"4111 1111 1111 1111"
    data = b"x" * (CHUNK - 8) + b" " + pan + b"\n" + b"y" * 100 + b"\n" + pan + b"\n"
    f.write_bytes(data)
    report = json.loads(pangate("scan", "--json", str(f)).stdout)
    assert [x["line"] for x in report["findings"]] == [1, 3]


def test_mask_streams_large_input_in_bounded_memory():
    body = b"row 4111 1111 1111 1111 ts 1732800000000\n" + b"row ok, nothing to see here\n" * 200_000  # ~4 MB
    res = subprocess.run(["/bin/sh", "-c", f'"{VENV_BIN / "python"}" -c "import resource, sys; '
                          f'from pangate.cli.main import main; r = main([\'mask\']); '
                          f'print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)"'],
                         input=body * 10, capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    want = b"row 4111 11** **** 1111 ts 1732800000000\n" + b"row ok, nothing to see here\n" * 200_000
    assert res.stdout == want * 10
    assert int(res.stderr.split()[-1]) < 120_000  # KB: ~60 MB in, far less resident


def test_mask_modes_and_policy(tmp_path):
    assert pangate("mask", "--mode", "last4", stdin=b"4111111111111111").stdout == b"************1111"
    out = pangate("mask", "--mode", "hmac", "--hmac-key-env", "K", stdin=b"4111111111111111",
                  env={"K": "k" * 32}).stdout
    assert out.endswith(b"1111") and not raw_pans_in(out)
    pol = tmp_path / "p.yaml"
    pol.write_text("version: 1\nsettings:\n  masking:\n    mode: last4\n")
    assert pangate("mask", "--policy", str(pol), stdin=b"4111111111111111").stdout == b"************1111"
    bad = pangate("mask", "--mode", "hmac", stdin=b"")
    assert bad.returncode == 2 and b"hmac" in bad.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 2\n")
    res = pangate("mask", "--policy", str(broken), stdin=b"")
    assert res.returncode == 2 and b"broken.yaml" in res.stderr
