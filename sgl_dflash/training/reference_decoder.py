"""Plain-torch greedy speculative decoding, for evaluation and as the test reference.

Runs the same algorithm as the SGL_DFLASH worker without SGLang: context =
target hidden states of every committed token, block = [bonus, MASK...], one
non-causal draft pass, one target verify pass, longest matching prefix plus
the target's bonus token. Recomputes the target over the whole sequence each
step (fine for tiny models; it is a reference, not a server).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from sgl_dflash.training.dflash_trainer import target_features
from sgl_dflash.training.drafter import DFlashDrafter

# (committed tokens, bonus token, block size) -> B-1 draft tokens
Proposer = Callable[[list[int], int, int], list[int]]


def dflash_proposer(target, drafter: DFlashDrafter) -> Proposer:
    embed = target.get_input_embeddings().weight
    lm_head = target.get_output_embeddings().weight

    @torch.no_grad()
    def propose(committed: list[int], bonus: int, block_size: int) -> list[int]:
        t = len(committed)
        dev = embed.device
        feats = target_features(target, torch.tensor([committed], device=dev), drafter.target_layer_ids)
        block = torch.tensor([[bonus] + [drafter.mask_token_id] * (block_size - 1)], device=dev)
        hidden = drafter(
            torch.nn.functional.embedding(block, embed),
            torch.arange(t, t + block_size, device=dev)[None],
            drafter.project_context(feats),
            torch.arange(t, device=dev)[None],
            torch.ones(1, block_size, t + block_size, dtype=torch.bool, device=dev),
        )
        return (hidden[0, 1:] @ lm_head.T).argmax(-1).tolist()

    return propose


def ngram_proposer(max_n: int = 3) -> Proposer:
    """Prompt lookup: continue the most recent earlier occurrence of the longest matching suffix."""

    def propose(committed: list[int], bonus: int, block_size: int) -> list[int]:
        seq = committed + [bonus]
        for n in range(min(max_n, len(seq) - 1), 0, -1):
            suffix = seq[-n:]
            for start in range(len(seq) - n - 1, -1, -1):
                if seq[start : start + n] == suffix:
                    cont = seq[start + n : start + n + block_size - 1]
                    return (cont + [cont[-1]] * block_size)[: block_size - 1]
        return [bonus] * (block_size - 1)

    return propose


@torch.no_grad()
def speculative_greedy(
    target,
    propose: Optional[Proposer],
    prompt: list[int],
    max_new_tokens: int,
    block_size: int,
    eos_token_id: Optional[int] = None,
) -> tuple[list[int], list[int]]:
    """Returns (generated tokens, drafts accepted per speculative step). No proposer: tau = 1."""
    dev = target.device
    committed = list(prompt)
    bonus = int(target(torch.tensor([committed], device=dev)).logits[0, -1].argmax())
    out, accepted = [bonus], []
    while len(out) < max_new_tokens and bonus != eos_token_id:
        if propose is None:
            drafts: list[int] = []
        else:
            drafts = propose(committed, bonus, block_size)
        verify = torch.tensor([committed + [bonus] + drafts], device=dev)
        top1 = target(verify).logits[0, len(committed) :].argmax(-1).tolist()
        a = 0
        while a < len(drafts) and drafts[a] == top1[a]:
            a += 1
        committed += [bonus] + drafts[:a]
        bonus = top1[a]
        out += drafts[:a] + [bonus]
        accepted.append(a)
    out = out[:max_new_tokens]
    if eos_token_id in out:
        out = out[: out.index(eos_token_id) + 1]
    return out, accepted
