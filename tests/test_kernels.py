"""Triton kernels run under TRITON_INTERPRET=1 on CPU and match their plain-torch references.

Tree build, its tables, the verify mask and tree accept are ours; KV compaction is our plan executed by
SGLang's in-place-safe all-layer copy kernel. Shapes include the adversarial
ones: K = 1 (chains), N = 1 (root only), N > B, deep narrow and wide shallow
trees, and probability ties (the tie-break order must agree everywhere).
"""

from __future__ import annotations

import heapq
import os
import subprocess
import sys

import torch

from sgl_dflash.kernels.tree_accept import tree_accept_torch
from sgl_dflash.kernels.tree_build import build_tree_torch, max_tree_nodes
from sgl_dflash.tree import make_tree

# (positions P = B - 1, K, N): chains, root only, N > B, deep narrow, wide shallow, mixed.
SHAPES = [(3, 1, 4), (15, 1, 16), (7, 1, 1), (3, 2, 1), (3, 4, 12), (15, 2, 32), (15, 1, 9),
          (2, 8, 17), (1, 16, 17), (7, 3, 40), (4, 4, 64)]


def random_topk(bs: int, positions: int, k: int, gen: torch.Generator, ties: bool):
    logits = torch.randn(bs, positions, 40, generator=gen) * 2
    if ties:  # coarse logits: many equal probabilities
        logits = logits.round()
    probs, ids = logits.softmax(-1).topk(k, dim=-1)
    return torch.randint(0, 40, (bs,), generator=gen), ids, probs


def heap_tree(root: int, ids: torch.Tensor, probs: torch.Tensor, n: int) -> list[tuple[int, int, int]]:
    """Best-first expansion written plainly: (token, parent, depth) per node."""
    positions, k = ids.shape
    max_depth = min(positions, n - 1)
    nodes = [(root, -1, 0)]
    frontier = [(-float(probs[0, 0]), 1, 0, 0, probs.new_tensor(1.0))]  # (-score, depth, parent, rank, parent score)
    while len(nodes) < n:
        _, depth, parent, rank, pscore = heapq.heappop(frontier)
        score = pscore * probs[depth - 1, rank]
        nodes.append((int(ids[depth - 1, rank]), parent, depth))
        if depth < max_depth:
            heapq.heappush(frontier, (-float(score * probs[depth, 0]), depth + 1, len(nodes) - 1, 0, score))
        if rank + 1 < k:
            heapq.heappush(frontier, (-float(pscore * probs[depth - 1, rank + 1]), depth, parent, rank + 1, pscore))
    return nodes


def test_tree_build_reference_is_best_first_expansion():
    gen = torch.Generator().manual_seed(0)
    for positions, k, n in SHAPES:
        for ties in (False, True):
            root, ids, probs = random_topk(4, positions, k, gen, ties)
            tokens, parents, depths, scores = build_tree_torch(root, ids, probs, n)
            for b in range(4):
                expected = heap_tree(int(root[b]), ids[b], probs[b], n)
                got = list(zip(tokens[b].tolist(), parents[b].tolist(), depths[b].tolist()))
                assert got == expected, (positions, k, n, ties)
            assert (parents[:, 1:] < torch.arange(1, n)).all()  # a parent precedes its children
            assert (scores[:, 1:] <= scores.gather(1, parents.clamp(min=0))[:, 1:]).all()


def test_max_tree_nodes():
    assert max_tree_nodes(1, 15, 32) == 16  # a chain is at most one block deep
    assert max_tree_nodes(2, 2, 32) == 7  # 1 + 2 + 4
    assert max_tree_nodes(4, 15, 32) == 32


def walk_plainly(tokens, parents, choices) -> list[int]:
    """The accepted path of one request, by following children one node at a time."""
    path = [0]
    while True:
        nxt = [i for i in range(len(tokens)) if parents[i] == path[-1] and tokens[i] == choices[path[-1]]]
        if not nxt:
            return path
        path.append(nxt[0])


def random_choices(tree, gen: torch.Generator) -> torch.Tensor:
    """Choices that mostly follow a random root-to-leaf path, sometimes leaving it."""
    bs, n = tree.tokens.shape
    choices = torch.randint(0, 40, (bs, n), generator=gen)
    for b in range(bs):
        for i in range(1, n):
            if torch.rand((), generator=gen) < 0.7:
                choices[b, tree.parents[b, i]] = tree.tokens[b, i]
    return choices


def test_tree_accept_reference_walks_the_tree():
    gen = torch.Generator().manual_seed(1)
    for positions, k, n in SHAPES:
        root, ids, probs = random_topk(5, positions, k, gen, ties=False)
        tree = make_tree(root, ids, probs, n, torch.arange(5) * 7)
        choices = random_choices(tree, gen)
        accept_len, path = tree_accept_torch(
            tree.tokens, tree.parents, tree.depths, choices, tree.ancestors, tree.path_table
        )
        for b in range(5):
            expected = walk_plainly(tree.tokens[b].tolist(), tree.parents[b].tolist(), choices[b].tolist())
            assert int(accept_len[b]) == len(expected) - 1
            assert path[b].tolist() == expected + [-1] * (tree.max_depth + 1 - len(expected))


KERNEL_CHECK = r"""
import sys, torch
sys.path.insert(0, {tests!r})
from test_kernels import SHAPES, random_topk, random_choices
from sgl_dflash.kernels.tree_build import build_tree_torch, build_tree_triton
from sgl_dflash.kernels.tree_accept import tree_accept_torch, tree_accept_triton
from sgl_dflash.kernels.tree_tables import tree_tables_torch, tree_tables_triton
from sgl_dflash.kernels.custom_mask import custom_mask_torch, custom_mask_triton
from sgl_dflash.commit import compaction_plan
from sgl_dflash.tree import make_tree
from sglang.kernels.ops.kvcache.cache_move import copy_all_layer_kv_cache_tiled
import triton

gen = torch.Generator().manual_seed(2)
for positions, k, n in SHAPES:
    for ties in (False, True):
        root, ids, probs = random_topk(3, positions, k, gen, ties)
        built = build_tree_torch(root, ids, probs, n)
        for ref, got in zip(built, build_tree_triton(root, ids, probs, n)):
            assert torch.equal(ref, got), ("build", positions, k, n, ties)
        prefix, depth = torch.tensor([0, 5, 1030]), min(positions, n - 1)
        for ref, got in zip(tree_tables_torch(*built[:3], ids[:, :, 0], prefix, depth),
                            tree_tables_triton(*built[:3], ids[:, :, 0], prefix, depth)):
            assert torch.equal(ref, got), ("tables", positions, k, n, ties)
        tree = make_tree(root, ids, probs, n, torch.tensor([0, 5, 9]))
        for view in (tree, tree.prefix(max(1, n // 2))):  # a controller budget's tree is a view
            total = sum(view.num_nodes * (p + view.num_nodes) for p in prefix.tolist())
            assert torch.equal(custom_mask_torch(view.ancestors, prefix, total),
                               custom_mask_triton(view.ancestors, prefix, total)), ("mask", positions, k, n)
        choices = random_choices(tree, gen)
        ref = tree_accept_torch(tree.tokens, tree.parents, tree.depths, choices, tree.ancestors, tree.path_table)
        got = tree_accept_triton(tree.tokens, tree.parents, choices, tree.max_depth)
        assert torch.equal(ref[0], got[0]) and torch.equal(ref[1], got[1]), ("accept", positions, k, n)

        # KV compaction: node path[d] -> slot d, sources and targets overlapping, all layers.
        slots = torch.randperm(256, generator=gen)[: 3 * n].view(3, n)
        layers = [torch.randn(256, 2, 4, generator=gen) for _ in range(3)]
        before = [t.clone() for t in layers]
        targets, sources = compaction_plan(slots, ref[1])
        ptrs = torch.tensor([t.data_ptr() for t in layers], dtype=torch.uint64)
        strides = torch.tensor([t[0].nbytes for t in layers], dtype=torch.int64)
        copy_all_layer_kv_cache_tiled[(len(layers), 1)](
            ptrs, strides, targets, sources, targets.numel(), triton.next_power_of_2(targets.numel()),
            BYTES_PER_TILE=32)
        for b in range(3):  # slot d now holds what node path[d]'s slot held
            for d, node in enumerate(ref[1][b].tolist()):
                if node >= 0:
                    for new, old in zip(layers, before):
                        assert torch.equal(new[slots[b, d]], old[slots[b, node]]), ("compact", positions, k, n)
print("ok")
"""


def test_kernels_match_references_in_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}  # must be set before triton is imported
    code = KERNEL_CHECK.format(tests=os.path.dirname(__file__))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
