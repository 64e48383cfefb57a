"""The inflated twin of the shipped pair computes what the original computes.

A small inflation (2x wide, 2x deep, made through the CLI) keeps the tests
fast; the same code makes the benchmark's default twin. Small mixes of
unequal factors (hidden, heads, KV heads, head_dim padding, MLP) check each
degree of freedom the qwen3-8b preset uses, alone and together; the preset
itself is checked for shapes on the meta device (no 16 GB allocated).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import sgl_dflash.inflate as inflate
from sgl_dflash.draft_checkpoint import validate_draft
from sgl_dflash.inflate import (Dims, Factors, InflateError, build_pair, check_pair, inflate_pair,
                                param_count)
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


# ------------------------------------------------ unequal factors (what --like qwen3-8b combines)

MIXES = {
    "heads x4 over hidden x2": Factors(hidden=2, heads=4, kv_heads=4, head_dim=1, inter=2, depth=1),
    "kv x1 under heads x2": Factors(hidden=1, heads=2, kv_heads=1, head_dim=1, inter=1, depth=1),
    "head_dim pad 2": Factors(hidden=1, heads=1, kv_heads=1, head_dim=2, inter=1, depth=1),
    "head_dim pad 4": Factors(hidden=1, heads=1, kv_heads=1, head_dim=4, inter=1, depth=1),
    "MLP x3": Factors(hidden=1, heads=1, kv_heads=1, head_dim=1, inter=3, depth=1),
    # qwen3-8b's mix (heads x8, kv x4, pad 4, 9x deep over hidden x32) at a small hidden factor
    "together": Factors(hidden=2, heads=8, kv_heads=4, head_dim=4, inter=3, depth=3),
}


@pytest.fixture(scope="module")
def sources():
    (t0, tok), d0 = load_target(TARGET, "cpu"), DFlashDrafter.from_pretrained(DRAFT).eval()
    return tok, t0, d0


@pytest.mark.parametrize("mix", MIXES)
def test_unequal_factors_same_tokens(tmp_path, sources, mix):
    tok, t0, d0 = sources
    f = MIXES[mix]
    target, draft = inflate_pair(tmp_path, factors=f, progress=False)
    t1, d1 = load_target(target, "cpu")[0], DFlashDrafter.from_pretrained(draft).eval()
    src = json.loads((TARGET / "config.json").read_text())
    assert (t1.config.num_attention_heads, t1.config.num_key_value_heads, t1.config.head_dim) == (
        src["num_attention_heads"] * f.heads, src["num_key_value_heads"] * f.kv_heads, src["head_dim"] * f.head_dim)
    assert validate_draft(str(draft), str(target)).target_layer_ids == tuple(k * f.depth + f.depth - 1
                                                                           for k in d0.target_layer_ids)
    ids = torch.tensor(heldout_prompts(tok, 4, 48, seed=7))
    with torch.no_grad():
        l0, l1 = t0(ids).logits, t1(ids).logits
        g0, g1 = (t.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, min_new_tokens=24,
                             do_sample=False, pad_token_id=0) for t in (t0, t1))
    assert (l0 - l1).abs().max() < LOGIT_ATOL
    assert torch.equal(g1, g0)  # greedy tokens (HF generate, fp32)
    propose0, propose1 = dflash_proposer(t0, d0), dflash_proposer(t1, d1)
    for p in ids.tolist()[:2]:  # the drafter's block for the same context
        ids0, probs0 = propose0(p[:-1], p[-1], d0.block_size)
        ids1, probs1 = propose1(p[:-1], p[-1], d1.block_size)
        assert torch.equal(ids1, ids0)
        assert torch.allclose(probs1, probs0, atol=1e-4)


@pytest.mark.parametrize("heads,kv,fq,fkv", [(4, 2, 8, 4), (4, 2, 2, 1), (4, 2, 3, 2), (8, 2, 4, 4), (4, 4, 4, 2),
                                             (4, 1, 2, 1), (4, 2, 5, 5)])
def test_gqa_placement_keeps_each_query_head_on_its_kv_head(heads, kv, fq, fkv):
    lay = inflate._Layout(Dims(64, heads, kv, 16, 64), Factors(1, fq, fkv, 2, 1, 1))
    hd, group, big_group = lay.big.head_dim, heads // kv, lay.big.heads // lay.big.kv_heads
    q_heads = lay.q.view(heads, -1)[:, 0] // hd  # the new head of each original query head
    kv_heads = lay.kv.view(kv, -1)[:, 0] // hd
    assert len(set(q_heads.tolist())) == heads and int(q_heads.max()) < lay.big.heads
    for h in range(heads):  # SGLang and HF: query head h reads KV head h // group
        assert int(q_heads[h]) // big_group == int(kv_heads[h // group])


@pytest.mark.parametrize("pad", [1, 2, 3, 4])
def test_head_dim_padding_keeps_rotary_frequency_and_partner(pad):
    hd, theta = 32, 10000.0
    lay = inflate._Layout(Dims(128, 4, 2, hd, 384), Factors(1, 1, 1, pad, 1, 1))

    def inv_freq(dim):  # HF / SGLang default rope
        return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))

    dims = lay.dims.tolist()
    assert dims[: hd // 2] == [pad * i for i in range(hd // 2)]
    assert all(dims[i + hd // 2] == dims[i] + pad * hd // 2 for i in range(hd // 2))  # rotate_half partner
    # New dim P*i rotates at the padded head's frequency P*i: the original dim i's, bit for bit.
    assert torch.equal(inv_freq(pad * hd)[dims[: hd // 2]], inv_freq(hd))


def test_uniform_width_keeps_the_original_layout():
    """--width W puts every original row first, as before the factors could differ: the CPU
    twin's weights are unchanged (byte for byte, checked when the factors were split)."""
    lay = inflate._Layout(Dims(128, 4, 2, 32, 384), Factors.uniform(6, 7))
    assert torch.equal(lay.q, torch.arange(4 * 32)) and torch.equal(lay.kv, torch.arange(2 * 32))
    a = build_pair(width=2, depth=2)
    b = build_pair(factors=Factors(2, 2, 2, 1, 2, 2))
    assert a.target_config == b.target_config and a.draft_config == b.draft_config
    assert all(torch.equal(a.target[k], b.target[k]) for k in a.target)
    assert all(torch.equal(a.draft[k], b.draft[k]) for k in a.draft)


def test_qwen3_8b_preset_shapes_on_meta_device(tmp_path, capsys):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    pair = build_pair(like="qwen3-8b", dtype=torch.bfloat16, device="meta")
    assert pair.factors == Factors(hidden=32, heads=8, kv_heads=4, head_dim=4, inter=32, depth=9)
    t, d = pair.target_config, pair.draft_config
    for cfg in (t, d):
        assert (cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"],
                cfg["intermediate_size"]) == (4096, 32, 8, 128, 12288)
        assert cfg["torch_dtype"] == "bfloat16" and cfg["rms_norm_eps"] == pytest.approx(1e-6 / 32)
    assert t["num_hidden_layers"] == 36 and d["num_hidden_layers"] == 4 and d["num_target_layers"] == 36
    assert d["dflash_config"]["target_layer_ids"] == [8, 17, 26]
    assert all(v.device.type == "meta" and v.dtype == torch.bfloat16 for v in (*pair.target.values(),
                                                                               *pair.draft.values()))
    # Every tensor has the shape the models built from these configs expect.
    with torch.device("meta"):
        hf = Qwen3ForCausalLM(Qwen3Config.from_dict(t)).state_dict()
        drafter = DFlashDrafter(d).state_dict()
    assert {k: tuple(v.shape) for k, v in pair.target.items()} == {
        k: tuple(v.shape) for k, v in hf.items() if k != "lm_head.weight"}  # tied to the embedding
    assert {k: tuple(v.shape) for k, v in pair.draft.items()} == {k: tuple(v.shape) for k, v in drafter.items()}
    n_target = sum(v.numel() for v in pair.target.values())
    assert 6.9e9 < n_target < 7.0e9  # Qwen3-8B's 36 layers (its 151936-token lm_head aside)
    # The server's own startup check accepts the pair.
    for name, cfg in (("target", t), ("draft", d)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(cfg))
    assert validate_draft(str(tmp_path / "draft"), str(tmp_path / "target")).target_layer_ids == (8, 17, 26)
    make_tiny_main(["inflate", str(tmp_path / "dry"), "--like", "qwen3-8b", "--dtype", "bfloat16", "--dry-run"])
    out = capsys.readouterr().out
    assert "target: hidden 4096, 32 heads, 8 kv heads, head_dim 128, intermediate 12288, 36 layers" in out
    assert "13.90 GB bfloat16" in out and not (tmp_path / "dry").exists()


def test_bf16_build_keeps_padding_exactly_zero():
    pair = build_pair(factors=Factors(2, 4, 2, 4, 2, 2), dtype=torch.bfloat16)
    assert pair.target_config["torch_dtype"] == "bfloat16"
    assert all(v.dtype == torch.bfloat16 for v in (*pair.target.values(), *pair.draft.values()))
    assert not pair.target["model.embed_tokens.weight"][:, 128:].any()
    q_norm = pair.target["model.layers.0.self_attn.q_norm.weight"]
    assert q_norm.shape == (128,) and not q_norm.view(2, 16, 4)[..., 1:].any()  # only dims 4i, 64 + 4i
    assert q_norm.count_nonzero() > 0


def test_sharded_checkpoint_loads(tmp_path, sources, monkeypatch):
    tok, t0, _ = sources
    monkeypatch.setattr(inflate, "SHARD_BYTES", 2 << 20)
    target, _ = inflate_pair(tmp_path, factors=Factors(2, 2, 2, 2, 2, 1), progress=False)
    shards = sorted(target.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and (target / "model.safetensors.index.json").is_file()
    assert not (target / "model.safetensors").exists()
    index = json.loads((target / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {f.name for f in shards}
    assert param_count(target) == sum(v.numel() for v in build_pair(factors=Factors(2, 2, 2, 2, 2, 1)).target.values())
    ids = torch.tensor(heldout_prompts(tok, 2, 32, seed=3))
    with torch.no_grad():
        assert (t0(ids).logits - load_target(target, "cpu")[0](ids).logits).abs().max() < LOGIT_ATOL


def test_check_reports_the_same_tokens(tmp_path):
    target, draft = inflate_pair(tmp_path / "fp32", factors=Factors(2, 4, 2, 2, 2, 2), progress=False)
    report = check_pair(target, draft, prompts=2, new_tokens=8)
    assert list(report["vs_source_float32"]) == ["twin float32"]
    assert report["vs_source_float32"]["twin float32"] == pytest.approx(
        {"identical_continuations": 2, "tokens_before_first_divergence": 1.0,
         "prompt_logits_max_abs_diff": 0.0, "prompt_argmax_agree": 1.0, "draft_tokens_equal": 1.0}, abs=LOGIT_ATOL)
    # bf16: the twin is compared with the source in fp32, next to the source's own bf16 drift.
    target, draft = inflate_pair(tmp_path / "bf16", factors=Factors(1, 1, 1, 2, 1, 1), dtype=torch.bfloat16,
                                 progress=False)
    report = check_pair(target, draft, prompts=2, new_tokens=8)
    assert list(report["vs_source_float32"]) == ["twin bfloat16", "source bfloat16"]
    for r in report["vs_source_float32"].values():
        assert 0 <= r["tokens_before_first_divergence"] <= 1 and r["draft_tokens_equal"] > 0.5


def test_bad_factor_mixes_fail_clearly(tmp_path):
    with pytest.raises(InflateError, match=r"--kv-heads-factor 4 > --heads-factor 2 .* splitting its GQA groups"):
        inflate_pair(tmp_path, factors=Factors(2, 2, 4, 1, 2, 1))
    with pytest.raises(InflateError, match=r"4 heads x 5 = 20 query heads are not a multiple of 2 KV heads x 3 = 6"):
        inflate_pair(tmp_path, factors=Factors(1, 5, 3, 1, 1, 1))
    with pytest.raises(InflateError, match=r"--head-dim-factor must be an integer >= 1, got 0"):
        Factors(1, 1, 1, 0, 1, 1)
    odd = {"hidden_size": 12, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 3,
           "intermediate_size": 8, "num_hidden_layers": 2}
    with pytest.raises(InflateError, match=r"head_dim=3 is odd"):
        Factors(1, 1, 1, 2, 1, 1).check(odd, "x")
    with pytest.raises(InflateError, match=r"qwen3-8b: its hidden_size=4096 is not a multiple of the source's "
                                           r"hidden_size=12"):
        Factors.like("qwen3-8b", odd)
    with pytest.raises(InflateError, match=r"'qwen3-9b' is not a preset; presets: qwen3-8b"):
        inflate_pair(tmp_path, like="qwen3-9b")
    with pytest.raises(InflateError, match=r"drop --width/--depth"):
        inflate_pair(tmp_path, like="qwen3-8b", width=2)
    with pytest.raises(InflateError, match=r"meta device holds no values"):
        inflate_pair(tmp_path, width=2, device="meta")
    assert not any(tmp_path.iterdir())  # nothing written


def test_bad_factor_mixes_on_command_line(tmp_path, capsys):
    for argv, message in [
        (["--like", "qwen3-8b", "--width", "2"], "--like sets every factor"),
        (["--head-dim-factor", "0"], "--head-dim-factor: must be an integer >= 1, got '0'"),
        (["--heads-factor", "2", "--kv-heads-factor", "4"], "--kv-heads-factor 4 > --heads-factor 2"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            make_tiny_main(["inflate", str(tmp_path / "out"), *argv])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
