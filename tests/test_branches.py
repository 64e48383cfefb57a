"""Trees accept through branches the chain never has (branchy tiny pair).

The branchy target's greedy output alternates a b a b ...; its drafter ranks
a first and b second at every masked position. The chain (top-k 1) keeps
missing; a top-2 tree holds the target's path to full depth, through a
non-top-1 branch every other token. Both equal plain decoding.
"""

from __future__ import annotations

import re

import pytest

BLOCK = 4
PROMPTS = ["abc", "hello world", "x = 1\ny = ", "The answer is"]


@pytest.fixture(scope="module")
def servers(tiny_pair, start_servers):
    target, draft = tiny_pair("branchy")
    return start_servers(
        {"model": target},
        {"model": target, "draft": draft, "block_size": BLOCK},
        {"model": target, "draft": draft, "block_size": 15, "extra": ("--speculative-eagle-topk", "2")},
    )


def test_tree_accepts_through_branches_where_the_chain_cannot(servers):
    plain, chain, tree = servers
    for prompt in PROMPTS:
        a = plain.generate(prompt, max_new_tokens=40, temperature=0)
        b = chain.generate(prompt, max_new_tokens=40, temperature=0)
        c = tree.generate(prompt, max_new_tokens=40, temperature=0)
        assert a["output_ids"] == b["output_ids"] == c["output_ids"]
        assert c["meta_info"]["spec_accept_length"] > 3.5  # blocks of 4, nearly all whole
        assert b["meta_info"]["spec_accept_length"] <= 2.0  # the top-1 draft is right at most once a step
    for _ in range(6):  # enough steps for the periodic log line
        tree.generate(PROMPTS[0], max_new_tokens=60, temperature=0)
    shares = [float(x) for x in re.findall(r"non-top-1 branch taken for ([\d.]+)%", tree.log())]
    assert shares and shares[-1] > 30.0  # every other accepted draft is the drafter's second choice
