"""Greedy SGL_DFLASH output equals plain decoding token for token, with real acceptance.

The shipped trained pair (sgl_dflash/assets: a tiny Qwen3 target and its DFlash drafter, block
16) on the session's shared servers (tests/conftest.py): plain decoding, the chain (top-k 1, 16
nodes) and a tree with more nodes than the block (top-k 4, 32 nodes). Its drafts are accepted
(about one per step on these prompts, up to whole blocks), so the accept walk, the KV
compaction of accepted tree nodes and the commit run on real paths, non-top-1 branches
included. Every test sends the same requests to plain and SGL_DFLASH servers and compares
output ids, text and finish reasons: single and 16 concurrent requests, shared prefixes (radix
hits), max_tokens ending mid-block and inside an accepted path, stop strings, natural EOS, the
OpenAI API and SGLang frontend programs. Acceptance is read from SGLang's own per-request
record (meta_info's histogram of accepted drafts per step) and the worker's server-wide totals
in GET /server_info (accepted drafts that were not their position's top-1 draft).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from sgl_dflash.algorithm import STATE_KEY

BLOCK = 16  # the shipped drafter's block size
PREFIXES = [
    "def fibonacci(n):\n    ",
    "The quick brown fox ",
    "import numpy as np\nx = ",
    "Once upon a time, in a land far away, ",
    "SELECT name FROM users WHERE ",
    "1, 2, 3, 5, 8, ",
]
SUFFIXES = ["", "a", "return", " the", "# comment\n", "0", "zz", "\t", "Hello, world"]
# 54 prompts; every prefix is shared by 9 prompts (radix cache hits).
PROMPTS = [p + s for p in PREFIXES for s in SUFFIXES]
# Lengths 1..27, most not a multiple of the block: max_tokens ends mid-block.
MAX_TOKENS = [1 + (7 * i) % 27 for i in range(len(PROMPTS))]


SPEC = {"chain": 1, "tree k4 n32": 4}  # the shared SGL_DFLASH servers and their top-k


@pytest.fixture(scope="module")
def all_servers(shipped_servers):
    return AskedOnce(shipped_servers["plain"]), {name: shipped_servers[name] for name in SPEC}


class AskedOnce:
    """The plain server, each distinct /generate request sent once for all tree shapes (greedy is
    deterministic, so asking again would only spend CI time)."""

    def __init__(self, server) -> None:
        self.url = server.url
        self._server = server
        self._answers: dict[str, Any] = {}

    def generate(self, prompt: Any, **sampling: Any) -> Any:
        key = json.dumps([prompt, sampling], sort_keys=True)
        if key not in self._answers:
            self._answers[key] = self._server.generate(prompt, **sampling)
        return self._answers[key]


@pytest.fixture(scope="module", params=list(SPEC))
def spec_name(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def servers(all_servers, spec_name):
    plain, spec = all_servers
    return plain, spec[spec_name]


def same(a: dict, b: dict) -> None:
    assert a["output_ids"] == b["output_ids"]
    assert a["text"] == b["text"]
    assert a["meta_info"]["finish_reason"] == b["meta_info"]["finish_reason"]


def accept_totals(server) -> dict:
    """The worker's running totals (GET /server_info): steps, request_steps, committed_tokens,
    branches_taken (accepted drafts that were not their position's top-1 draft)."""
    r = requests.get(f"{server.url}/server_info", timeout=60)
    r.raise_for_status()
    return r.json()["internal_states"][0][STATE_KEY]["accept"]


def check_acceptance(spec, topk: int, outs: list[dict], before: dict) -> None:
    """Drafts were accepted, deep paths too, and (trees) through non-top-1 branches.

    SGLang's per-request record (meta_info: verify steps, histogram of accepted drafts per step)
    and the worker's server-wide totals must agree for the requests in ``outs`` (the only ones
    sent to ``spec`` since ``before``). The worker also counts the one step that overlap
    scheduling may run on a request after its last token, which SGLang does not record.
    """
    after = accept_totals(spec)
    steps = sum(o["meta_info"].get("spec_verify_ct", 0) for o in outs)
    histogram = [0] * BLOCK
    for o in outs:
        for drafts, count in enumerate(o["meta_info"].get("spec_correct_drafts_histogram", [])):
            histogram[drafts] += count
    accepted = sum(d * c for d, c in enumerate(histogram))
    assert sum(histogram) == steps
    worker_steps = after["request_steps"] - before["request_steps"]
    assert steps <= worker_steps <= steps + len(outs)
    # Each request-step commits its accepted drafts and the bonus token.
    assert after["committed_tokens"] - before["committed_tokens"] >= accepted + steps
    assert accepted > steps / 2, histogram  # a random drafter keeps next to none
    assert max(d for d, c in enumerate(histogram) if c) >= 4, histogram  # deep paths, not just the first draft
    branches = after["branches_taken"] - before["branches_taken"]
    if topk == 1:
        assert branches == 0  # a chain has no other branch
    else:
        assert branches > 0, "no accepted draft was off the top-1 path"


def test_single_requests_match(servers, spec_name):
    plain, spec = servers
    before, outs = accept_totals(spec), []
    for prompt, n in zip(PROMPTS, MAX_TOKENS):
        a = plain.generate(prompt, max_new_tokens=n, temperature=0)
        b = spec.generate(prompt, max_new_tokens=n, temperature=0)
        same(a, b)
        assert len(b["output_ids"]) <= n
        outs.append(b)
    check_acceptance(spec, SPEC[spec_name], outs, before)


def test_sixteen_concurrent_requests_match(servers, spec_name):
    plain, spec = servers
    jobs = list(zip(PROMPTS, [n + 9 for n in MAX_TOKENS]))

    def run(server):
        with ThreadPoolExecutor(16) as pool:
            return list(pool.map(lambda j: server.generate(j[0], max_new_tokens=j[1], temperature=0), jobs))

    expected = run(plain)
    before = accept_totals(spec)
    got = run(spec)
    for a, b in zip(expected, got):
        same(a, b)
    check_acceptance(spec, SPEC[spec_name], got, before)


def test_batched_request_matches(servers):
    plain, spec = servers
    a = plain.generate(PROMPTS[:16], max_new_tokens=19, temperature=0)
    b = spec.generate(PROMPTS[:16], max_new_tokens=19, temperature=0)
    for x, y in zip(a, b):
        same(x, y)


def _stop_strings(text: str) -> list[str]:
    """Two-character printable stop strings taken from the middle of a greedy output."""
    out = []
    for k in range(3, len(text) - 2):
        piece = text[k : k + 2]
        if piece.isprintable() and piece.isascii() and piece not in text[:k] + text[k + 1 : k + 2]:
            out.append(piece)
    return out[:2]


def test_stop_strings_match(servers):
    plain, spec = servers
    checked = 0
    for prompt in PROMPTS[::3]:
        full = plain.generate(prompt, max_new_tokens=40, temperature=0)
        for stop in _stop_strings(full["text"]):
            a = plain.generate(prompt, max_new_tokens=40, temperature=0, stop=stop)
            b = spec.generate(prompt, max_new_tokens=40, temperature=0, stop=stop)
            same(a, b)
            assert a["meta_info"]["finish_reason"]["type"] == "stop"
            checked += 1
    assert checked >= 5


def test_stop_token_ids_and_eos_match(servers):
    plain, spec = servers
    for prompt in PROMPTS[::5]:
        full = plain.generate(prompt, max_new_tokens=30, temperature=0)["output_ids"]
        stop_id = full[len(full) // 2]  # stops mid-generation, usually mid-block
        a = plain.generate(prompt, max_new_tokens=30, temperature=0, stop_token_ids=[stop_id])
        b = spec.generate(prompt, max_new_tokens=30, temperature=0, stop_token_ids=[stop_id])
        same(a, b)
        assert a["output_ids"][-1] == stop_id


def test_meta_info_reports_accept_length(servers):
    _, spec = servers
    meta = spec.generate(PROMPTS[0], max_new_tokens=20, temperature=0)["meta_info"]
    assert meta["spec_verify_ct"] >= 1
    assert meta["spec_accept_length"] == pytest.approx(
        meta["completion_tokens"] / meta["spec_verify_ct"]
    )
    assert 1.0 <= meta["spec_accept_length"] <= BLOCK


def test_openai_api_matches(servers):
    plain, spec = servers
    for route, body in [
        ("/v1/completions", {"prompt": PROMPTS[7], "max_tokens": 17, "temperature": 0}),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": PROMPTS[12]}], "max_tokens": 13, "temperature": 0},
        ),
    ]:
        outs = []
        for server in (plain, spec):
            r = requests.post(server.url + route, json={"model": "default", **body}, timeout=60)
            r.raise_for_status()
            choice = r.json()["choices"][0]
            outs.append(choice.get("text") or choice["message"]["content"])
        assert outs[0] == outs[1]


def test_frontend_program_matches(servers):
    import sglang as sgl

    @sgl.function
    def two_steps(s, topic):
        s += "Topic: " + topic + "\n"
        s += "First: " + sgl.gen("first", max_tokens=9, temperature=0) + "\n"
        s += "Second: " + sgl.gen("second", max_tokens=11, temperature=0)

    results = []
    for server in servers:
        state = two_steps.run(topic="speculative decoding", backend=sgl.RuntimeEndpoint(server.url))
        results.append((state["first"], state["second"]))
    assert results[0] == results[1]
