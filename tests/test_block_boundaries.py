"""Full-block acceptance, KV commit at block boundaries, EOS inside an accepted block.

* zero_head target: lm_head all zeros, so the target always emits token 0 and
  every draft token (argmax through the same head) is accepted.
* chain target: greedy continuation is D, EOS, EOS, ...; the drafter proposes
  EOS at every masked position, so the first speculative step accepts a full
  block that starts with EOS: everything after the EOS must be dropped.
* zero_head with a 4-ary tree of 85 nodes (N > B): the all-zero path is one
  of 64 leaves, far from the diagonal, so every step moves its KV.
Each is compared with a plain server on the same target; the server-wide accept length
(GET /server_info: SGLang's own and the worker's) is whole blocks.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from sgl_dflash.algorithm import STATE_KEY
from sgl_dflash.tiny_models import CHAIN_D_ID, EOS_ID

BLOCK = 4
PROMPTS = ["abc", "hello world", "x = 1\ny = ", "The answer is"]


def tree(k: int, n: int) -> dict:
    return {"block_size": n, "extra": ("--speculative-eagle-topk", str(k))}


@pytest.fixture(scope="module")
def servers(tiny_pair, start_servers):
    zero_t, zero_d = tiny_pair("zero_head")
    chain_t, chain_d = tiny_pair("chain")
    started = start_servers(
        {"model": zero_t},
        {"model": zero_t, "draft": zero_d, "block_size": BLOCK},
        {"model": zero_t, "draft": zero_d, **tree(4, 85)},
        {"model": chain_t},
        {"model": chain_t, "draft": chain_d, "block_size": BLOCK},
    )
    plain_zero, spec_zero, tree_zero, plain_chain, spec_chain = started
    return {"zero": (plain_zero, spec_zero), "zero tree": (plain_zero, tree_zero), "chain": (plain_chain, spec_chain)}


@pytest.mark.parametrize("max_tokens", [1, 2, 4, 5, 6, 8, 9, 13, 31])
@pytest.mark.parametrize("shape", ["zero", "zero tree"])
def test_full_acceptance_any_length(servers, max_tokens, shape):
    plain, spec = servers[shape]
    for prompt in PROMPTS:
        a = plain.generate(prompt, max_new_tokens=max_tokens, temperature=0)
        b = spec.generate(prompt, max_new_tokens=max_tokens, temperature=0)
        assert b["output_ids"] == a["output_ids"] == [0] * max_tokens
        meta = b["meta_info"]
        if max_tokens > BLOCK + 1:
            # Every step but possibly the last commits a whole block.
            steps = meta["spec_verify_ct"]
            assert steps == -(-(max_tokens - 1) // BLOCK)
            assert meta["spec_accept_length"] > 2.0


def test_full_acceptance_concurrent_and_stop_string(servers):
    plain, spec = servers["zero"]
    jobs = [(p, n) for p in PROMPTS for n in (7, 10, 15, 22)]

    def run(server, **extra):
        with ThreadPoolExecutor(16) as pool:
            return list(
                pool.map(lambda j: server.generate(j[0], max_new_tokens=j[1], temperature=0, **extra), jobs)
            )

    for a, b in zip(run(plain), run(spec)):
        assert a["output_ids"] == b["output_ids"]
    stop = "\x00" * 6  # token 0 decodes to NUL: stops after the 6th token, mid-block
    for a, b in zip(run(plain, stop=stop), run(spec, stop=stop)):
        assert a["output_ids"] == b["output_ids"]
        assert a["meta_info"]["finish_reason"] == b["meta_info"]["finish_reason"]


def test_eos_inside_accepted_block(servers):
    plain, spec = servers["chain"]
    for prompt in PROMPTS:
        a = plain.generate(prompt, max_new_tokens=20, temperature=0)
        b = spec.generate(prompt, max_new_tokens=20, temperature=0)
        assert a["output_ids"] == b["output_ids"]
        assert b["output_ids"][0] == CHAIN_D_ID
        assert b["meta_info"]["finish_reason"]["type"] == "stop"
        assert b["meta_info"]["completion_tokens"] == a["meta_info"]["completion_tokens"] == 2
        assert b["meta_info"]["spec_verify_ct"] == 1


def test_ignore_eos_continues_after_full_blocks(servers):
    plain, spec = servers["chain"]
    for n in (3, 6, 11):
        a = plain.generate(PROMPTS[0], max_new_tokens=n, temperature=0, ignore_eos=True)
        b = spec.generate(PROMPTS[0], max_new_tokens=n, temperature=0, ignore_eos=True)
        assert a["output_ids"] == b["output_ids"] == [CHAIN_D_ID] + [EOS_ID] * (n - 1)


@pytest.mark.parametrize("shape", ["zero", "zero tree"])
def test_server_wide_accept_length_is_whole_blocks(servers, shape):
    """Every draft of the zero_head pair is accepted, so every request-step commits a whole block:
    B tokens. SGLang's own running figure (GET /server_info's avg_spec_accept_length, the mean
    behind its periodic "accept len" log; it takes in a decode log interval of 40 batches at a
    time) and the worker's totals (committed tokens per request-step) must both say so."""
    _, spec = servers[shape]
    for prompt in PROMPTS[:3]:  # 3 x 15 steps: past a decode log interval on their own
        spec.generate(prompt, max_new_tokens=60, temperature=0)
    r = requests.get(f"{spec.url}/server_info", timeout=60)
    r.raise_for_status()
    state = r.json()["internal_states"][0]
    assert state["avg_spec_accept_length"] == BLOCK
    accept = state[STATE_KEY]["accept"]
    assert accept["request_steps"] > 0
    assert accept["committed_tokens"] == BLOCK * accept["request_steps"]
