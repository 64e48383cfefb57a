"""Penalties at every tree node equal plain decoding's for that node's own output history."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from sgl_dflash.penalties import PenaltyState
from sgl_dflash.tree import make_tree

VOCAB, EOS = 12, 11


def request(freq=0.0, pres=0.0, rep=1.0, min_new=0, output_ids=()):
    params = SimpleNamespace(frequency_penalty=freq, presence_penalty=pres, repetition_penalty=rep,
                             min_new_tokens=min_new, stop_token_ids={7})
    tokenizer = SimpleNamespace(eos_token_id=EOS, additional_stop_token_ids=None)
    return SimpleNamespace(sampling_params=params, tokenizer=tokenizer, eos_token_ids={EOS},
                           output_ids=list(output_ids))


def plain_penalized(logits: torch.Tensor, history: list[int], req) -> torch.Tensor:
    """SGLang's penalizers for one decode step, after `history` output tokens, written plainly."""
    p = req.sampling_params
    out = logits.clone()
    for tok in set(history):
        out[tok] -= p.frequency_penalty * history.count(tok) + p.presence_penalty
    if len(history) < p.min_new_tokens:
        out[[7, EOS]] = float("-inf")
    for tok in set(history):
        out[tok] = out[tok] * p.repetition_penalty if out[tok] < 0 else out[tok] / p.repetition_penalty
    return out


def test_each_node_is_penalized_by_its_own_path():
    gen = torch.Generator().manual_seed(0)
    reqs = [request(freq=0.7, min_new=5, output_ids=[3, 3]), request(pres=1.1, rep=1.4, output_ids=[1]),
            request(rep=1.3, freq=0.2, pres=0.3), request()]  # the last uses none: untouched
    bs, n = len(reqs), 14
    slots = torch.tensor([4, 0, 2, 1])
    state = PenaltyState(slots=6, vocab_size=VOCAB, device=torch.device("cpu"))
    first = torch.tensor([2, 5, 3, 9])
    state.start(reqs, slots, first)
    # Small vocabulary and coarse drafts: paths repeat tokens and hit committed ones.
    probs, ids = (torch.randn(bs, 5, VOCAB, generator=gen) * 0.5).softmax(-1).topk(3, dim=-1)
    committed = [torch.tensor(r.output_ids + [int(t)]) for r, t in zip(reqs, first)]
    step_tokens = torch.tensor([[3, 4, 0], [5, 0, 0], [3, 3, 3], [1, 0, 0]])
    state.commit(slots, step_tokens, torch.tensor([2, 1, 3, 1]))
    committed = [torch.cat([c, step_tokens[b, :k]]) for b, (c, k) in enumerate(zip(committed, [2, 1, 3, 1]))]
    tree = make_tree(torch.tensor([c[-1] for c in committed]), ids, probs, n, torch.full((bs,), 9))
    logits = torch.randn(bs * n, VOCAB, generator=gen) * 3
    got = logits.clone()
    state.apply(got, reqs, slots, tree)

    for b, req in enumerate(reqs):
        for i in range(n):
            path = [int(tree.tokens[b, j]) for j in tree.path_table[b, i, 1:].tolist() if j >= 0]
            expected = plain_penalized(logits[b * n + i], committed[b].tolist() + path, req)
            torch.testing.assert_close(got[b * n + i], expected, msg=f"request {b} node {i}")
