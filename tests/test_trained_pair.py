"""The shipped trained tiny pair in the real server: same trees as the reference, real acceptance.

The plain-torch reference decoder (sgl_dflash.training.reference_decoder) and
the SGL_DFLASH server run the same greedy algorithm with the trainer's
checkpoint, for the chain (top-k 1, the block of 16) and a tree with more
nodes than the block (top-k 4, 32 nodes); if their drafts and trees agree,
every request has the same number of speculative steps and the same
histogram of accepted drafts per step.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sgl_dflash.training.corpus import heldout_prompts
from sgl_dflash.training.dflash_trainer import load_target
from sgl_dflash.training.drafter import DFlashDrafter
from sgl_dflash.training.reference_decoder import dflash_proposer, speculative_decode

ASSETS = Path(__file__).resolve().parent.parent / "sgl_dflash" / "assets"
TARGET, DRAFT = ASSETS / "tiny-target", ASSETS / "tiny-draft"
MAX_NEW = 40


SETTINGS = {"chain": (1, 16), "tree k4 n32": (4, 32)}  # conftest's SHIPPED servers: (top-k, nodes)


@pytest.fixture(scope="module")
def servers(shipped_servers):
    return {name: shipped_servers[name] for name in SETTINGS}


@pytest.fixture(scope="module", params=list(SETTINGS))
def setup(servers, request):
    target, tokenizer = load_target(TARGET, "cpu")
    drafter = DFlashDrafter.from_pretrained(DRAFT).eval()
    topk, num_nodes = SETTINGS[request.param]
    return servers[request.param], target, drafter, heldout_prompts(tokenizer, 12, 48, seed=1), topk, num_nodes


def histogram(accepted: list[int]) -> list[int]:
    return torch.bincount(torch.tensor(accepted)).tolist()


def test_server_trees_match_reference_decoder(setup):
    spec, target, drafter, prompts, topk, num_nodes = setup
    propose = dflash_proposer(target, drafter, topk)
    for prompt in prompts:
        out = spec.generate(prompt, max_new_tokens=MAX_NEW, temperature=0, ignore_eos=True)
        ref_tokens, ref_accepted = speculative_decode(
            target, propose, prompt, MAX_NEW, drafter.block_size, num_nodes=num_nodes
        )
        assert out["output_ids"] == ref_tokens
        meta = out["meta_info"]
        assert meta["spec_verify_ct"] == len(ref_accepted)
        assert meta.get("spec_correct_drafts_histogram", [meta["spec_verify_ct"]]) == histogram(ref_accepted)


def test_trained_drafter_is_accepted(setup):
    spec, _, _, prompts, _, _ = setup
    outs = spec.generate(prompts, max_new_tokens=MAX_NEW, temperature=0, ignore_eos=True)
    tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
    steps = sum(o["meta_info"]["spec_verify_ct"] for o in outs)
    assert tokens / steps > 1.5  # a random drafter gets ~1.0
