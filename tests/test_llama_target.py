"""A Llama-family target: SGL_DFLASH greedy output equals transformers' greedy output."""

from __future__ import annotations

import pytest
import torch

PROMPTS = [[104, 105, 32, 116], [49, 50, 51], list(b"def f(x):\n    return"), list(b"The end")]


@pytest.fixture(scope="module")
def setup(tiny_pair, start_servers):
    from transformers import AutoModelForCausalLM

    target, draft = tiny_pair("random", arch="llama")
    (spec,) = start_servers({"model": target, "draft": draft, "block_size": 4})
    return spec, AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)


def test_llama_target_matches_transformers(setup):
    spec, model = setup
    for prompt in PROMPTS:
        for n in (3, 10, 21):
            out = spec.generate(prompt, max_new_tokens=n, temperature=0, ignore_eos=True)
            ref = model.generate(
                torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                pad_token_id=0,
            )[0, len(prompt):].tolist()
            assert out["output_ids"] == ref
            assert out["meta_info"]["spec_verify_ct"] >= (1 if n > 1 else 0)
