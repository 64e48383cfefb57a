"""Sampling stays lossless on the real server: spec next-token frequencies vs the target.

Target: the tiny "chain" model (greedy D, EOS, EOS, ...; sampled distributions
are peaked but have full support), drafter proposing EOS everywhere, so both
the accept and the reject/resample paths run often. For many sampled
3-token continuations of one prompt, the token at depth 2 (given depth 1 = D)
and at depth 3 (given D, EOS) are produced by the first speculative step;
their frequencies must match the target's sampling distribution computed with
transformers under the same temperature / top-k / top-p. Which step produced
each token is checked on every request of every batch from SGLang's own
per-request record (meta_info's verify steps), against what the drafts imply.
"""

from __future__ import annotations

import pytest
import torch
from sampling_reference import grouped_counts, reference_probs
from scipy.stats import chisquare

from sgl_dflash.tiny_models import CHAIN_D_ID, EOS_ID

PROMPT = [97, 98, 99]  # "abc"
REQUESTS, PER_CALL = 1600, 100
CONFIGS = [
    dict(temperature=0.5),
    dict(temperature=0.7, top_k=8),
    dict(temperature=0.6, top_p=0.9),
]


@pytest.fixture(scope="module")
def setup(tiny_pair, start_servers):
    from transformers import AutoModelForCausalLM

    target, draft = tiny_pair("chain")
    (spec,) = start_servers({"model": target, "draft": draft, "block_size": 4})
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
    return spec, model


@pytest.mark.parametrize("params", CONFIGS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
def test_spec_sampling_matches_target_distribution(setup, params):
    spec, model = setup
    outs, kept = [], 0
    for _ in range(REQUESTS // PER_CALL):
        res = spec.generate([PROMPT] * PER_CALL, max_new_tokens=3, ignore_eos=True, **params)
        batch = [r["output_ids"] for r in res]
        # The drafts are EOS at every depth, and a draft is kept when the target's sample at its
        # parent equals it. Token 1 is the prefill's; the first step commits token 2 and, when
        # token 2 is EOS (the depth-1 draft kept), token 3 too: one step. Otherwise token 3 needs
        # a second step.
        steps = [r["meta_info"].get("spec_verify_ct", 0) for r in res]
        assert steps == [1 if o[1] == EOS_ID else 2 for o in batch]
        outs += batch
        kept += steps.count(1)
    assert 0 < kept < len(outs)  # drafts kept and drafts rejected, both

    ref_kwargs = {k: v for k, v in params.items()}
    with torch.no_grad():
        logits = model(torch.tensor([PROMPT + [CHAIN_D_ID, EOS_ID]])).logits[0]
    for depth, context in ((1, [CHAIN_D_ID]), (2, [CHAIN_D_ID, EOS_ID])):
        samples = [o[depth] for o in outs if o[:depth] == context]
        assert len(samples) > REQUESTS // 3
        probs = reference_probs(logits[len(PROMPT) + depth - 1], **ref_kwargs)
        obs, exp, outside_support = grouped_counts(samples, probs)
        assert outside_support == 0, "sampled a token the target's sampler can never emit"
        assert chisquare(obs, exp).pvalue > 1e-4, (depth, obs.tolist(), exp.tolist())


@pytest.fixture(scope="module")
def branchy(tiny_pair, start_servers):
    from transformers import AutoModelForCausalLM

    target, draft = tiny_pair("branchy")
    (tree,) = start_servers(
        {"model": target, "draft": draft, "block_size": 7, "extra": ("--speculative-eagle-topk", "2")}
    )
    return tree, AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)


def penalized(logits: torch.Tensor, history: list[int], params: dict) -> torch.Tensor:
    """SGLang's frequency and presence penalties after the output tokens `history`."""
    out = logits.clone()
    for tok in set(history):
        out[tok] -= params.get("frequency_penalty", 0.0) * history.count(tok) + params.get("presence_penalty", 0.0)
    return out


# Temperatures near 1: colder, the target's continuations are near-certain and test nothing.
@pytest.mark.parametrize(
    "params",
    [dict(temperature=1.0), dict(temperature=0.9, top_k=8),
     dict(temperature=1.0, frequency_penalty=0.6, presence_penalty=0.4)],
    ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()),
)
def test_tree_sampling_through_branches_matches_target(branchy, params):
    """Through a top-2 tree: the drafter ranks a first and b second at every depth,
    the target mostly continues a -> b -> a. Given committed (a, b), the next
    token comes out of node b, a non-top-1 branch at depth 1; given (a, b, a),
    out of the depth-2 node below it. Both must follow the target's distribution,
    penalized (when asked) by the output so far, the path inside the tree included."""
    from sgl_dflash.tiny_models import BRANCHY_A as A, BRANCHY_B as B

    server, model = branchy
    prompt = list(b"hello ")
    outs, through_b = [], 0
    for _ in range(REQUESTS // PER_CALL):
        res = server.generate([prompt] * PER_CALL, max_new_tokens=4, ignore_eos=True, **params)
        batch = [r["output_ids"] for r in res]
        steps = [r["meta_info"].get("spec_verify_ct", 0) for r in res]
        for out, n in zip(batch, steps):
            assert n in tree_steps(out, A, B), (out, n)
        outs += batch
        through_b += sum(o[1] == B for o in batch)
    # Node b, the drafter's second choice at depth 1, was kept (tree_steps: one step for a b a).
    assert through_b > 100
    for context in ([A, B], [A, B, A]):
        samples = [o[len(context)] for o in outs if o[: len(context)] == context]
        assert len(samples) > 100, (context, len(samples))
        with torch.no_grad():
            logits = model(torch.tensor([prompt + context])).logits[0, -1]
        sampler = {k: v for k, v in params.items() if not k.endswith("_penalty")}
        probs = reference_probs(penalized(logits, context, params), **sampler)
        obs, exp, outside_support = grouped_counts(samples, probs)
        assert outside_support == 0, "sampled a token the target's sampler can never emit"
        assert chisquare(obs, exp).pvalue > 1e-4, (context, obs.tolist(), exp.tolist())


def tree_steps(out: list[int], a: int, b: int) -> set[int]:
    """The speculative steps a 4-token output takes through the 7-node top-2 tree (block 4).

    The tree holds the root's children a and b, and at depth 2 at least aa, ab and ba (path
    probabilities ~.16-.25 and ~.12-.17; the 7th node, aaa or bb, depends on the exact draft
    probabilities). The walk keeps a child when the target's sample at its parent equals it;
    each step commits the kept drafts and the target's next sample. Token 1 is the prefill's.
    """
    children = {a, b}
    if out[1] in children:  # kept at depth 1: the first step commits tokens 2 and 3 at least
        if (out[1], out[2]) in {(a, a), (a, b), (b, a)}:
            return {1}  # kept at depth 2 as well: the first step reaches token 4
        return {1, 2} if (out[1], out[2]) == (b, b) else {2}
    # Nothing kept: the first step commits token 2 alone; the second keeps token 3 as a draft
    # (and so commits token 4 too) exactly when token 3 is a child of the root.
    return {2} if out[2] in children else {3}
