"""Triton kernels run under TRITON_INTERPRET=1 on CPU and match their torch reference."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHECK = r"""
import torch
from sgl_dflash.kernels.greedy_accept import greedy_accept_torch, _greedy_accept_kernel
import triton

gen = torch.Generator().manual_seed(0)
for block in (2, 3, 4, 8, 16):
    for bs in (1, 5, 33):
        target = torch.randint(0, 7, (bs, block), generator=gen)
        cand = torch.randint(0, 7, (bs, block), generator=gen)
        # Force long agreeing prefixes, including full agreement.
        keep = torch.randint(0, block, (bs,), generator=gen)
        for i in range(bs):
            cand[i, 1 : 1 + keep[i]] = target[i, : keep[i]]
        accept = torch.empty(bs, dtype=torch.int32)
        bonus = torch.empty(bs, dtype=torch.int64)
        out = torch.empty(bs, block, dtype=torch.int64)
        _greedy_accept_kernel[(bs,)](cand, target, accept, bonus, out,
                                     BLOCK=block, BLOCK_POW2=triton.next_power_of_2(block))
        ra, rb, ro = greedy_accept_torch(cand, target)
        assert torch.equal(accept, ra), (block, bs, accept, ra)
        assert torch.equal(bonus, rb)
        assert torch.equal(out, ro)
print("ok")
"""


def test_greedy_accept_kernel_matches_reference_in_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}  # must be set before triton is imported
    out = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "ok"


def test_greedy_accept_reference_semantics():
    import torch

    from sgl_dflash.kernels.greedy_accept import greedy_accept_torch

    cand = torch.tensor([[9, 1, 2, 3], [9, 1, 5, 3], [9, 4, 2, 3]])
    top1 = torch.tensor([[1, 2, 3, 7], [1, 2, 3, 7], [1, 2, 3, 7]])
    accept, bonus, out = greedy_accept_torch(cand, top1)
    assert accept.tolist() == [3, 1, 0]
    assert bonus.tolist() == [7, 2, 1]
    assert out.tolist() == [[1, 2, 3, 7], [1, 2, 0, 0], [1, 0, 0, 0]]


@pytest.mark.parametrize("block", [2, 4])
def test_verify_block_attention_matches_dense_reference(block):
    import torch
    import torch.nn.functional as F

    from sgl_dflash.verify_attention import block_verify_attention

    gen = torch.Generator().manual_seed(block)
    hq, hk, d = 4, 2, 8
    prefix = [3, 0, 5]
    pool = torch.randn(64, hk, d, generator=gen), torch.randn(64, hk, d, generator=gen)
    req_to_token = torch.randperm(64, generator=gen)[: 3 * 16].view(3, 16)
    q = torch.randn(len(prefix) * block, hq, d, generator=gen)
    for causal in (True, False):
        out = block_verify_attention(
            q, pool[0], pool[1], req_to_token, torch.tensor([2, 0, 1]), torch.tensor(prefix),
            causal=causal, scaling=0.3,
        )
        for i, (row, p) in enumerate(zip([2, 0, 1], prefix)):
            locs = req_to_token[row, : p + block]
            k = pool[0][locs].repeat_interleave(hq // hk, 1).transpose(0, 1)
            v = pool[1][locs].repeat_interleave(hq // hk, 1).transpose(0, 1)
            qi = q[i * block : (i + 1) * block].transpose(0, 1)
            scores = qi @ k.transpose(1, 2) * 0.3
            if causal:
                allowed = torch.arange(p + block)[None, :] <= (p + torch.arange(block))[:, None]
                scores = scores.masked_fill(~allowed, float("-inf"))
            ref = (F.softmax(scores, -1) @ v).transpose(0, 1)
            torch.testing.assert_close(out[i * block : (i + 1) * block], ref)
