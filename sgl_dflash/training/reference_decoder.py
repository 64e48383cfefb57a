"""Plain-torch speculative decoding over draft trees, for evaluation and as the test reference.

Runs the same algorithm as the SGL_DFLASH worker without SGLang and without
its code: context = target hidden states of every committed token, block =
[bonus, MASK...], one non-causal draft pass giving each block position's
top-K, a best-first tree of ``num_nodes`` nodes (heapq, same order and
tie-breaks as the server), one target pass over the tree (each node sees the
context and its ancestors), then the walk: at each node the target's argmax
(greedy) or a sample at ``temperature``; descend to the child holding it
while one exists; that token at the last node is the bonus. A chain is
``topk=1``. Recomputes the target over the whole sequence each step (fine for
tiny models; it is a reference, not a server).
"""

from __future__ import annotations

import heapq
from typing import Callable, Optional

import torch

from sgl_dflash.training.dflash_trainer import target_features
from sgl_dflash.training.drafter import DFlashDrafter

# (committed tokens, bonus token, block size) -> (ids [B-1, K], probs [B-1, K]), most likely first
Proposer = Callable[[list[int], int, int], tuple[torch.Tensor, torch.Tensor]]


def dflash_proposer(target, drafter: DFlashDrafter, topk: int = 1) -> Proposer:
    embed = target.get_input_embeddings().weight
    lm_head = target.get_output_embeddings().weight

    @torch.no_grad()
    def propose(committed: list[int], bonus: int, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
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
        probs, ids = (hidden[0, 1:] @ lm_head.T).float().softmax(-1).topk(topk, dim=-1)
        return ids.cpu(), probs.cpu()

    return propose


def ngram_proposer(max_n: int = 3) -> Proposer:
    """Prompt lookup: continue the most recent earlier occurrence of the longest matching suffix."""

    def drafts(committed: list[int], bonus: int, block_size: int) -> list[int]:
        seq = committed + [bonus]
        for n in range(min(max_n, len(seq) - 1), 0, -1):
            suffix = seq[-n:]
            for start in range(len(seq) - n - 1, -1, -1):
                if seq[start : start + n] == suffix:
                    cont = seq[start + n : start + n + block_size - 1]
                    return (cont + [cont[-1]] * block_size)[: block_size - 1]
        return [bonus] * (block_size - 1)

    def propose(committed: list[int], bonus: int, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.tensor(drafts(committed, bonus, block_size))[:, None]
        return ids, torch.ones(ids.shape)

    return propose


def best_first_tree(root: int, ids: torch.Tensor, probs: torch.Tensor, num_nodes: int) -> list[tuple[int, int, int]]:
    """(token, parent, depth) of each node, best-first by path probability; ties: lower
    depth, then parent's order, then rank. Node 0 is the root."""
    positions, k = ids.shape
    max_depth = min(positions, num_nodes - 1)
    nodes = [(root, -1, 0)]
    one = torch.tensor(1.0)  # fp32 products, multiplied in the server's order
    frontier = [(-float(probs[0, 0]), 1, 0, 0, one)] if max_depth else []
    while len(nodes) < num_nodes and frontier:
        _, depth, parent, rank, parent_score = heapq.heappop(frontier)
        score = parent_score * probs[depth - 1, rank]
        nodes.append((int(ids[depth - 1, rank]), parent, depth))
        if depth < max_depth:
            heapq.heappush(frontier, (-float(score * probs[depth, 0]), depth + 1, len(nodes) - 1, 0, score))
        if rank + 1 < k:
            sibling = parent_score * probs[depth - 1, rank + 1]
            heapq.heappush(frontier, (-float(sibling), depth, parent, rank + 1, parent_score))
    return nodes


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
    num_nodes: Optional[int] = None,
) -> tuple[list[int], list[int]]:
    """Returns (generated tokens, drafts accepted per speculative step). No proposer: tau = 1.

    ``num_nodes`` (default: the block size) is the tree's node budget, root
    included; the proposer's K sets the branching. temperature 0: greedy;
    > 0: the target samples at every node (softmax(logits / T)), so every
    committed token is the target's own sample given the ones before it.
    """
    dev = target.device
    num_nodes = num_nodes or block_size

    def pick(logits: torch.Tensor) -> int:
        if temperature == 0:
            return int(logits.argmax())
        return int(torch.multinomial((logits / temperature).softmax(-1), 1, generator=generator))

    def tree_logits(committed: list[int], nodes: list[tuple[int, int, int]]) -> torch.Tensor:
        """Target logits after each node: the context causally, each node over its ancestors."""
        p, n = len(committed), len(nodes)
        mask = torch.ones(p + n, p + n, dtype=torch.bool).tril()
        mask[p:, p:] = False
        for i in range(n):
            j = i
            while j >= 0:
                mask[p + i, p + j] = True
                j = nodes[j][1]
        ids = torch.tensor([committed + [t for t, _, _ in nodes]], device=dev)
        positions = torch.tensor([list(range(p)) + [p + d for _, _, d in nodes]], device=dev)
        bias = torch.zeros(mask.shape, device=dev).masked_fill(~mask.to(dev), float("-inf"))
        out = target(ids, attention_mask=bias[None, None], position_ids=positions)
        return out.logits[0, p:].float().cpu()

    committed = list(prompt)
    bonus = pick(target(torch.tensor([committed], device=dev)).logits[0, -1].float().cpu())
    out, accepted = [bonus], []
    while len(out) < max_new_tokens and bonus != eos_token_id:
        if propose is None:
            nodes = [(bonus, -1, 0)]
        else:
            nodes = best_first_tree(bonus, *propose(committed, bonus, block_size), num_nodes)
        logits = tree_logits(committed, nodes)
        path, node = [], 0
        while True:  # walk: the target's token at this node; descend if a child holds it
            token = pick(logits[node])
            child = next((i for i, (t, parent, _) in enumerate(nodes) if parent == node and t == token), None)
            if child is None:
                break
            path.append(token)
            node = child
        committed += [bonus] + path
        bonus = token
        out += path + [bonus]
        accepted.append(len(path))
    out = out[:max_new_tokens]
    if eos_token_id in out:
        out = out[: out.index(eos_token_id) + 1]
    return out, accepted
