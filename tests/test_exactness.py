"""Greedy SGL_DFLASH output equals plain decoding token for token (random tiny Qwen3).

One plain server and SGL_DFLASH servers (block 4) on the same target, one per
tree shape: the chain (top-k 1, 4 nodes), a binary tree (top-k 2, 7 nodes,
every path to full depth) and a wide tree with more nodes than the block
(top-k 4, 10 nodes). Every test sends the same requests to all and compares
output ids, text and finish reasons. Covers single and 16 concurrent
requests, shared prefixes (radix hits), max_tokens ending mid-block and
inside an accepted path, stop strings, natural EOS, the OpenAI API and
SGLang frontend programs.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

BLOCK = 4
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


TREES = {"chain k1 n4": (1, 4), "tree k2 n7": (2, 7), "tree k4 n10": (4, 10)}


@pytest.fixture(scope="module")
def all_servers(tiny_pair, start_servers):
    target, draft = tiny_pair("random")
    specs = [
        {"model": target, "draft": draft, "block_size": n, "extra": ("--speculative-eagle-topk", str(k))}
        for k, n in TREES.values()
    ]
    plain, *spec = start_servers({"model": target}, *specs)
    return AskedOnce(plain), dict(zip(TREES, spec))


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


@pytest.fixture(scope="module", params=list(TREES))
def servers(all_servers, request):
    plain, spec = all_servers
    return plain, spec[request.param]


def same(a: dict, b: dict) -> None:
    assert a["output_ids"] == b["output_ids"]
    assert a["text"] == b["text"]
    assert a["meta_info"]["finish_reason"] == b["meta_info"]["finish_reason"]


def test_single_requests_match(servers):
    plain, spec = servers
    spec_steps = 0
    for prompt, n in zip(PROMPTS, MAX_TOKENS):
        a = plain.generate(prompt, max_new_tokens=n, temperature=0)
        b = spec.generate(prompt, max_new_tokens=n, temperature=0)
        same(a, b)
        assert len(b["output_ids"]) <= n
        spec_steps += b["meta_info"].get("spec_verify_ct", 0)
    assert spec_steps > len(PROMPTS)  # speculative steps really ran


def test_sixteen_concurrent_requests_match(servers):
    plain, spec = servers
    jobs = list(zip(PROMPTS, [n + 9 for n in MAX_TOKENS]))

    def run(server):
        with ThreadPoolExecutor(16) as pool:
            return list(pool.map(lambda j: server.generate(j[0], max_new_tokens=j[1], temperature=0), jobs))

    for a, b in zip(run(plain), run(spec)):
        same(a, b)


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
