"""Every RFC 4475/5118 torture message against the live proxy, in a network
namespace of its own (the messages name documentation addresses)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
CORPUS = HERE.parent / "data" / "torture"

# What a proxy/registrar must answer: the acceptable final codes.  None: a
# response sent to a proxy, which must be dropped (no answer) without harm.
# "not400": any final answer except 400 and 500 (a valid message).
EXPECT: dict[str, object] = {
    "badinv01": {400}, "ncl": {400}, "mcl01": {400}, "mismatch01": {400}, "insuf": {400},
    "ltgtruri": {400}, "lwsstart": {400}, "escruri": {400}, "regbadct": {400}, "baddn": {400},
    "noreason": None, "scalarlg": None, "bigcode": None,
    "novelsc": {416}, "bext01": {420}, "zeromf": {483},
    "regaut01": {200}, "cparam02": {200},
    "sdp01": "not400",
}


@pytest.fixture(scope="module")
def live_results(tmp_path_factory):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to make a loopback-only network namespace")
    out = tmp_path_factory.mktemp("torture") / "results.json"
    proc = subprocess.run(
        ["unshare", "-n", sys.executable, str(HERE / "ns_torture.py"), str(CORPUS), str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text())


def _names():
    return [e["name"] for e in json.loads((CORPUS / "manifest.json").read_text())]


@pytest.mark.parametrize("name", _names())
def test_live_answer(live_results, name):
    got = live_results[name]
    assert got["alive"], f"proxy stopped answering after {name}"
    expect = EXPECT.get(name, "not400")
    finals = [code for code, _ in got["answers"] if code >= 200]
    if expect is None:
        assert finals == [], f"{name} is a response: a proxy must not answer it"
        return
    if expect == "not400" and got.get("forwarded") and not finals:
        return  # accepted and passed on; its next hop did not answer
    assert len(finals) >= 1, f"no final answer to {name}"
    code, reason = next((c, r) for c, r in got["answers"] if c >= 200)
    if expect == "not400":
        # Accepted and routed; where the next hop named by the message cannot
        # be resolved or reached in the namespace, a 503 says which.
        assert code not in (400, 500), (code, reason)
    else:
        assert code in expect, (code, reason)
    if code == 400:
        assert reason and reason != "Bad Request", "a 400 says what is wrong"


def test_proxy_survived_the_corpus(live_results):
    assert live_results["_still_running"]["alive"]
