"""Every sampling parameter of a request gives SGL_DFLASH exactly plain decoding's output.

Shipped tiny pair, greedy, held-out prompts; cases in request_surface.py
(penalties, min_new_tokens, logit bias, stops with and without trimming,
ignore_eos, n > 1, logprobs, regex / JSON schema / EBNF, a custom logit
processor, OpenAI streaming), on conftest's shared SHIPPED servers. The
reference is plain decoding with ``--disable-overlap-schedule``: with overlap
scheduling SGLang's plain decoding applies penalties one token late (it
counts the prompt's last token and misses the newest output), which
SGL_DFLASH does not reproduce.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from request_surface import NEWLINE, Case, cases, differences, run
from transformers import AutoTokenizer

from sgl_dflash.training.corpus import heldout_prompts

ASSETS = Path(__file__).resolve().parent.parent / "sgl_dflash" / "assets"
TARGET = ASSETS / "tiny-target"
SPEC = ("chain", "tree k4 n32")  # conftest's SHIPPED servers


@pytest.fixture(scope="module")
def servers(shipped_servers):
    return shipped_servers["plain"], {name: shipped_servers[name] for name in SPEC}


@pytest.fixture(scope="module")
def prompts():
    tokenizer = AutoTokenizer.from_pretrained(TARGET)
    assert tokenizer("\n")["input_ids"] == [NEWLINE]
    return heldout_prompts(tokenizer, 3, 40, seed=4)


@pytest.mark.parametrize("case", cases(), ids=lambda c: c.name)
def test_request_parameter_matches_plain(servers, prompts, case: Case):
    plain, spec = servers
    changed = False
    for prompt in prompts:
        expected = run(plain.url, case, prompt)
        changed |= bool(differences(expected, run(plain.url, Case("greedy"), prompt)))
        for name, server in spec.items():
            diff = differences(expected, run(server.url, case, prompt))
            assert not diff, (name, case.name, diff[:4])
    # Each parameter really changes the output somewhere (the case is not vacuous).
    assert changed or case.name in ("greedy", "ignore_eos", "openai completions stream", "openai chat stream")
