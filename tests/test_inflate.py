"""The inflated twin of the shipped pair computes what the original computes.

A small inflation (2x wide, 2x deep, made through the CLI) keeps the tests
fast; the same code makes the benchmark's default twin.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sgl_dflash.draft_checkpoint import validate_draft
from sgl_dflash.inflate import InflateError, inflate_pair
from sgl_dflash.tiny_models import main as make_tiny_main
from sgl_dflash.training.corpus import heldout_prompts
from sgl_dflash.training.dflash_trainer import load_target, target_features
from sgl_dflash.training.drafter import DFlashDrafter
from sgl_dflash.training.reference_decoder import dflash_proposer, speculative_decode

ASSETS = Path(__file__).resolve().parent.parent / "sgl_dflash" / "assets"
TARGET, DRAFT = ASSETS / "tiny-target", ASSETS / "tiny-draft"
WIDTH, DEPTH = 2, 2
# fp32 sums over more (zero) terms round differently; logits here reach ~17.
LOGIT_ATOL = 1e-3


@pytest.fixture(scope="module")
def twin(tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("twin")
    make_tiny_main(["inflate", str(out), "--width", str(WIDTH), "--depth", str(DEPTH)])
    return out / "target", out / "draft"


@pytest.fixture(scope="module")
def models(twin):
    (t0, tok), (t1, _) = load_target(TARGET, "cpu"), load_target(twin[0], "cpu")
    d0, d1 = (DFlashDrafter.from_pretrained(p).eval() for p in (DRAFT, twin[1]))
    return tok, t0, t1, d0, d1


def test_twin_shapes_and_checkpoint(twin):
    tcfg = json.loads((twin[0] / "config.json").read_text())
    src = json.loads((TARGET / "config.json").read_text())
    assert tcfg["hidden_size"] == WIDTH * src["hidden_size"]
    assert tcfg["num_hidden_layers"] == DEPTH * src["num_hidden_layers"]
    assert tcfg["num_attention_heads"] == WIDTH * src["num_attention_heads"]
    assert tcfg["head_dim"] == src["head_dim"]
    spec = validate_draft(str(twin[1]), str(twin[0]))  # the server's own startup check
    assert spec.num_layers == json.loads((DRAFT / "config.json").read_text())["num_hidden_layers"]
    assert list(spec.target_layer_ids) == [1, 3, 5]  # [0, 1, 2] -> k * DEPTH + DEPTH - 1
    assert (twin[0] / "tokenizer.json").is_file()


def test_logits_and_captured_states_match(models):
    tok, t0, t1, d0, d1 = models
    ids = torch.tensor(heldout_prompts(tok, 4, 64, seed=7))
    with torch.no_grad():
        l0, l1 = t0(ids).logits, t1(ids).logits
    assert (l0 - l1).abs().max() < LOGIT_ATOL
    assert torch.equal(l0.argmax(-1), l1.argmax(-1))
    # The drafter's context: the remapped layers hold the original states, padding exactly zero.
    f0 = target_features(t0, ids, d0.target_layer_ids)
    f1 = target_features(t1, ids, d1.target_layer_ids).unflatten(-1, (len(d1.target_layer_ids), -1))
    h = t0.config.hidden_size
    assert torch.allclose(f1[..., :h].flatten(-2), f0, atol=1e-4)
    assert not f1[..., h:].any()


def test_same_drafts_in_reference_decoder(models):
    tok, t0, t1, d0, d1 = models
    prompts = heldout_prompts(tok, 4, 48, seed=8)
    propose0, propose1 = dflash_proposer(t0, d0), dflash_proposer(t1, d1)
    for p in prompts:  # one draft block for the same context
        ids0, probs0 = propose0(p[:-1], p[-1], d0.block_size)
        ids1, probs1 = propose1(p[:-1], p[-1], d1.block_size)
        assert torch.equal(ids1, ids0)
        assert torch.allclose(probs1, probs0, atol=1e-4)
    # A whole decode: the same tokens and the same drafts accepted at every step.
    ref = speculative_decode(t0, propose0, prompts[0], 32, d0.block_size)
    assert speculative_decode(t1, propose1, prompts[0], 32, d1.block_size) == ref


def test_same_greedy_tokens_in_server(twin, shipped_servers, start_servers):
    from transformers import AutoTokenizer

    original, (inflated,) = shipped_servers["plain"], start_servers({"model": twin[0]})
    prompts = heldout_prompts(AutoTokenizer.from_pretrained(TARGET), 8, 48, seed=9)
    outs = [s.generate(prompts, max_new_tokens=32, temperature=0, ignore_eos=True) for s in (original, inflated)]
    assert [o["output_ids"] for o in outs[1]] == [o["output_ids"] for o in outs[0]]


@pytest.mark.parametrize("factor", [0, -2, 1.5, True, "2"])
def test_bad_factor_fails_clearly(tmp_path, factor):
    with pytest.raises(InflateError, match=r"--width must be an integer >= 1"):
        inflate_pair(tmp_path, width=factor, depth=2)
    with pytest.raises(InflateError, match=r"--depth must be an integer >= 1"):
        inflate_pair(tmp_path, width=2, depth=factor)


def test_bad_factor_on_command_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        make_tiny_main(["inflate", str(tmp_path), "--depth", "0.5"])
    assert exit_info.value.code == 2
    assert "--depth: must be an integer >= 1, got '0.5'" in capsys.readouterr().err


def test_non_qwen3_source_fails_clearly(tmp_path, tiny_pair):
    target, draft = tiny_pair("random", arch="llama")
    with pytest.raises(InflateError, match=r"Qwen3 targets only.*LlamaForCausalLM"):
        inflate_pair(tmp_path, width=2, depth=2, source_target=target, source_draft=draft)
    with pytest.raises(SystemExit, match="2"):
        make_tiny_main(["inflate", str(tmp_path), "--source-target", str(target), "--source-draft", str(draft)])


def test_broken_gqa_source_fails_clearly(tmp_path, tiny_pair):
    target, draft = tiny_pair("random")
    bad = tmp_path / "bad-target"
    bad.mkdir()
    cfg = json.loads((target / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "num_key_value_heads": 3}))
    (bad / "model.safetensors").write_bytes((target / "model.safetensors").read_bytes())
    with pytest.raises(InflateError, match=r"num_attention_heads=4 is not a multiple of num_key_value_heads=3"):
        inflate_pair(tmp_path / "out", source_target=bad, source_draft=draft)
