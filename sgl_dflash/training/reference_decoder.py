"""Plain-torch speculative decoding, for evaluation and as the test reference.

Runs the same algorithm as the SGL_DFLASH worker without SGLang: context =
target hidden states of every committed token, block = [bonus, MASK...], one
non-causal draft pass, one target verify pass, then the accept rule (greedy:
longest matching prefix plus the target's bonus token; sampled: rejection
sampling with the drafts as point masses). Recomputes the target over the
whole sequence each step (fine for tiny models; it is a reference, not a server).
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
def speculative_decode(
    target,
    propose: Optional[Proposer],
    prompt: list[int],
    max_new_tokens: int,
    block_size: int,
    eos_token_id: Optional[int] = None,
    temperature: float = 0.0,
    generator: Optional[torch.Generator] = None,
) -> tuple[list[int], list[int]]:
    """Returns (generated tokens, drafts accepted per speculative step). No proposer: tau = 1.

    temperature 0: greedy, the longest prefix where the drafts equal the target argmax.
    temperature > 0: the drafts are point masses, as in the server's rejection
    sampling: draft d is kept with probability p(d), and the token after the last
    kept draft is sampled from p with the rejected draft removed, so the output is
    distributed exactly as the target's own samples at that temperature.
    """
    dev = target.device

    def sample(p: torch.Tensor) -> int:
        return int(torch.multinomial(p, 1, generator=generator))

    def next_dists(ids: list[int], start: int) -> torch.Tensor:
        logits = target(torch.tensor([ids], device=dev)).logits[0, start:].float().cpu()
        return logits if temperature == 0 else (logits / temperature).softmax(-1)

    committed = list(prompt)
    dist = next_dists(committed, -1)[0]
    bonus = int(dist.argmax()) if temperature == 0 else sample(dist)
    out, accepted = [bonus], []
    while len(out) < max_new_tokens and bonus != eos_token_id:
        drafts = [] if propose is None else propose(committed, bonus, block_size)
        dists = next_dists(committed + [bonus] + drafts, len(committed))
        committed.append(bonus)
        a = 0
        if temperature == 0:
            top1 = dists.argmax(-1).tolist()
            while a < len(drafts) and drafts[a] == top1[a]:
                a += 1
            bonus = top1[a]
        else:
            while a < len(drafts) and float(torch.rand((), generator=generator)) < dists[a, drafts[a]]:
                a += 1
            residual = dists[a].clone()
            if a < len(drafts):
                residual[drafts[a]] = 0.0
            bonus = sample(residual)
        committed += drafts[:a]
        out += drafts[:a] + [bonus]
        accepted.append(a)
    out = out[:max_new_tokens]
    if eos_token_id in out:
        out = out[: out.index(eos_token_id) + 1]
    return out, accepted
