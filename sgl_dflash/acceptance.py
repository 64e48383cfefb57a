"""Accept stage: which path of the verified tree is committed, and the bonus token.

One policy, greedy or sampled, lossless by construction: at every node the
target picks the token it would emit there (``target_choices``: its argmax,
or a sample with SGLang's own sampler semantics, temperature, top-k, top-p,
min-p and the per-request seed); the walk then descends from the root to the
child equal to the current node's choice while one exists
(kernels.tree_accept), and the last node's choice is the bonus. Every
committed token is the target's own choice given the tokens before it, so
the output is exactly what the target alone would produce: token for token
when greedy, in distribution when sampled (the children are deterministic,
so no draft probabilities enter). For a chain (K = 1) this is the usual
rejection rule with the draft as a point mass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from sglang.srt.layers.sampler import (
    sampling_from_probs_torch,
    top_k_top_p_min_p_sampling_from_probs_torch,
)

from sgl_dflash.kernels.tree_accept import tree_accept_torch, tree_accept_triton
from sgl_dflash.step import DraftTree


@dataclass(frozen=True)
class Acceptance:
    choices: torch.Tensor  # [bs, N] int64: the target's token after each node
    accept_len: torch.Tensor  # [bs] int32: drafted tokens kept = depth of the last accepted node
    path: torch.Tensor  # [bs, D+1] int64: accepted node at each depth, -1 past the last
    bonus: torch.Tensor  # [bs] int64: the target's token after the last accepted node
    out_tokens: torch.Tensor  # [bs, D+1] int64: kept drafts, the bonus, then 0

    @property
    def commit_lens(self) -> torch.Tensor:
        """Tokens committed to the sequence this step (kept drafts + bonus), [bs] int32."""
        return self.accept_len + 1


def target_choices(logits: torch.Tensor, sampling_info: Any, positions: torch.Tensor) -> torch.Tensor:
    """The target's token at every node: logits [bs * N, V] (penalties, grammar and
    biases applied), positions [bs * N] -> [bs, N].

    Mirrors sglang.srt.layers.sampler for one decode step per row: argmax when
    the batch is greedy; otherwise softmax(logits / T) then SGLang's torch
    sampler, seeded per request and position when deterministic inference is
    on (so a seeded request samples exactly what plain decoding would).
    """
    bs = len(sampling_info) if sampling_info is not None else positions.shape[0]
    if sampling_info is None or sampling_info.is_all_greedy:
        return logits.argmax(dim=-1).view(bs, -1)
    nodes = logits.shape[0] // bs

    def rows(t: torch.Tensor) -> torch.Tensor:  # per request -> per node row
        return t.view(bs, -1)[:, :1].repeat_interleave(nodes, dim=0).view(-1)

    probs = torch.softmax(logits.float() / rows(sampling_info.temperatures)[:, None], dim=-1)
    seed = None if sampling_info.sampling_seed is None else rows(sampling_info.sampling_seed)
    if not (
        sampling_info.need_top_k_sampling
        or sampling_info.need_top_p_sampling
        or sampling_info.need_min_p_sampling
    ):
        picked = sampling_from_probs_torch(probs, sampling_seed=seed, positions=positions)
    else:
        picked = top_k_top_p_min_p_sampling_from_probs_torch(
            probs,
            rows(sampling_info.top_ks),
            rows(sampling_info.top_ps),
            rows(sampling_info.min_ps),
            sampling_info.need_min_p_sampling,
            seed,
            positions,
        )
    return picked.long().view(bs, -1)


def walk_tree(tree: DraftTree, choices: torch.Tensor, root_only: Optional[torch.Tensor] = None) -> Acceptance:
    """``root_only [bs]`` (optional): requests that commit only the root's choice this step."""
    if choices.is_cuda:
        accept_len, path = tree_accept_triton(tree.tokens, tree.parents, choices, tree.max_depth)
    else:
        accept_len, path = tree_accept_torch(
            tree.tokens, tree.parents, tree.depths, choices, tree.ancestors, tree.path_table
        )
    if root_only is not None:
        accept_len = torch.where(root_only, 0, accept_len)
        path = torch.cat([path[:, :1], torch.where(root_only[:, None], -1, path[:, 1:])], dim=1)
    last = path.gather(1, accept_len.long()[:, None]).squeeze(1)
    bonus = choices.gather(1, last[:, None]).squeeze(1)
    # Committed tokens: the choice at each accepted node is the next path token, then the bonus.
    on_path = path >= 0
    out_tokens = torch.where(on_path, choices.gather(1, path.clamp(min=0)), 0)
    return Acceptance(choices, accept_len, path, bonus, out_tokens)
