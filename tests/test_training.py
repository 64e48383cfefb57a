"""The DFlash training recipe: loss and masking, learning, input validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sgl_dflash.train import main as train_main
from sgl_dflash.training.corpus import heldout_prompts
from sgl_dflash.training.dflash_trainer import (
    TargetStates,
    TrainConfig,
    TrainingInputError,
    check_target,
    dflash_loss,
    load_prompts,
    load_target,
    position_weights,
    right_padded,
    sample_anchors,
    target_features,
    target_pass,
    train_drafter,
)
from sgl_dflash.training.drafter import DFlashDrafter
from sgl_dflash.training.reference_decoder import dflash_proposer, speculative_decode

BLOCK = 4
MAX_NEW = 32
ASSETS = Path(__file__).resolve().parent.parent / "sgl_dflash" / "assets"
SHIPPED_TARGET, SHIPPED_DRAFT = ASSETS / "tiny-target", ASSETS / "tiny-draft"


@pytest.fixture(scope="module")
def target_path(tiny_pair):
    return tiny_pair("random")[0]


@pytest.fixture(scope="module")
def target(target_path):
    model, _ = load_target(target_path, "cpu")
    return model


def make_drafter(target_path, block=BLOCK, seed=0) -> DFlashDrafter:
    torch.manual_seed(seed)
    return DFlashDrafter.from_target_config(
        json.loads((target_path / "config.json").read_text()), num_layers=2, block_size=block, target_layer_ids=[1, 2], mask_token_id=257
    )


def reference_loss(drafter, embed, lm_head, feats, ids, anchors, gamma, teacher=None) -> torch.Tensor:
    """One block at a time, with only its own context: no batching, no attention mask."""
    w = position_weights(drafter.block_size, gamma)
    total, norm = 0.0, 0.0
    for s in range(ids.shape[0]):
        for a in anchors[s].tolist():
            b = drafter.block_size
            block = torch.tensor([ids[s, a].item()] + [drafter.mask_token_id] * (b - 1))
            ctx = drafter.project_context(feats[s, :a])
            hidden = drafter(
                embed[block][None], torch.arange(a, a + b)[None], ctx[None], torch.arange(a)[None],
                torch.ones(1, b, a + b, dtype=torch.bool),
            )[0]
            labels = ids[s, a : a + b] if teacher is None else teacher[s, a - 1 : a + b - 1].softmax(-1)
            ce = F.cross_entropy(hidden @ lm_head.T, labels, reduction="none")
            total = total + (ce[1:] * w[1:]).sum()
            norm += float(w[1:].sum())
    return total / norm


def test_loss_and_masking_match_per_block_reference(target, target_path):
    drafter = make_drafter(target_path)
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 256, (3, 20), generator=gen)
    anchors = torch.tensor([[1, 5, 16], [3, 3, 9], [10, 2, 7]])  # includes a repeated anchor
    feats, final = target_pass(target, ids, drafter.target_layer_ids)
    embed = target.get_input_embeddings().weight
    lm_head = target.get_output_embeddings().weight
    got = dflash_loss(drafter, embed, lm_head, feats, ids, anchors, gamma=7.0)
    ref = reference_loss(drafter, embed, lm_head, feats, ids, anchors, gamma=7.0)
    torch.testing.assert_close(got, ref)
    # Distillation: soft labels from the target's logits one position earlier.
    got = dflash_loss(drafter, embed, lm_head, feats, ids, anchors, gamma=7.0, teacher_hidden=final)
    with torch.no_grad():
        logits = target(ids).logits
    ref = reference_loss(drafter, embed, lm_head, feats, ids, anchors, gamma=7.0, teacher=logits)
    torch.testing.assert_close(got, ref)


def test_cached_target_states_equal_a_fresh_target_pass(target):
    gen = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 256, (n,), generator=gen).tolist() for n in (7, 12, 5, 9)]
    states = TargetStates(target, seqs, [1, 2], batch=3)  # chunks of different widths
    picks = [3, 0, 2]
    ids = right_padded([seqs[i] for i in picks])
    fresh_feats, fresh_final = target_pass(target, ids, [1, 2])
    feats, final = states.batch(picks, ids.shape[1])
    for k, i in enumerate(picks):  # padded rows are never read by the loss
        n = len(seqs[i])
        torch.testing.assert_close(feats[k, :n], fresh_feats[k, :n])
        torch.testing.assert_close(final[k, :n], fresh_final[k, :n])


@pytest.fixture(scope="module")
def shipped():
    target, tokenizer = load_target(SHIPPED_TARGET, "cpu")
    return target, tokenizer, DFlashDrafter.from_pretrained(SHIPPED_DRAFT).eval()


@pytest.mark.parametrize("topk,num_nodes", [(1, 16), (4, 32)])
def test_reference_decoder_is_exact(shipped, topk, num_nodes):
    """On the shipped trained pair (its drafts are accepted, whole blocks included), greedy
    chain and tree decoding reproduce transformers' greedy generate on the target; sampling near
    temperature 0 (a sample at every node) reproduces greedy decoding."""
    target, tokenizer, drafter = shipped
    propose = dflash_proposer(target, drafter, topk)
    accepted = []
    for prompt in heldout_prompts(tokenizer, 2, 32, seed=7):
        ids = torch.tensor([prompt])
        with torch.no_grad():
            plain = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW,
                                    do_sample=False, pad_token_id=tokenizer.eos_token_id)[0, len(prompt):].tolist()
        greedy = speculative_decode(target, propose, prompt, MAX_NEW, drafter.block_size,
                                    tokenizer.eos_token_id, num_nodes=num_nodes)
        sampled = speculative_decode(target, propose, prompt, MAX_NEW, drafter.block_size, tokenizer.eos_token_id,
                                     temperature=1e-6, generator=torch.Generator().manual_seed(0), num_nodes=num_nodes)
        assert greedy[0] == plain
        assert sampled == greedy
        accepted += greedy[1]
    assert sum(accepted) > len(accepted)  # more than one accepted draft per step on average
    assert max(accepted) >= drafter.block_size // 2  # deep paths too (whole blocks, on these prompts)


def test_position_weights_and_anchor_range():
    w = position_weights(5, gamma=2.0)
    expected = torch.tensor([0.0, 1.0, *torch.tensor([-0.5, -1.0, -1.5]).exp().tolist()])
    torch.testing.assert_close(w, expected)  # w_0 = 0, w_k = exp(-(k-1)/gamma)
    gen = torch.Generator().manual_seed(0)
    lengths, starts = torch.tensor([10, 30, 5]), torch.tensor([0, 12, 4])
    a = sample_anchors(lengths, starts, 4, 200, gen)
    assert (a >= 1).all() and (a[0] <= 6).all() and (a[1] >= 12).all() and (a[1] <= 26).all()
    assert (a[2] == 1).all()  # response shorter than a block: the latest valid anchor


def test_few_steps_reduce_loss(target, target_path, tmp_path):
    gen = torch.Generator().manual_seed(0)
    # Target-regenerated data: the target's own greedy continuations of random prompts.
    prompts = torch.randint(0, 256, (24, 8), generator=gen)
    seqs = target.generate(prompts, max_new_tokens=24, do_sample=False, pad_token_id=0)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(
        json.dumps({"prompt_ids": s[:8].tolist(), "response_ids": s[8:].tolist()}) + "\n" for s in seqs
    ))
    drafter = make_drafter(target_path)
    embed, lm_head = target.get_input_embeddings().weight, target.get_output_embeddings().weight
    ids = seqs[:8]
    anchors = sample_anchors(torch.full((8,), ids.shape[1]), torch.full((8,), 8), BLOCK, 6, gen)
    feats = target_features(target, ids, drafter.target_layer_ids)
    with torch.no_grad():
        before = dflash_loss(drafter, embed, lm_head, feats, ids, anchors, 7.0).item()
    train_drafter(target, drafter, data, tmp_path,
                  TrainConfig(steps=40, batch=8, anchors=6, lr=3e-3, cache_target_states=True))
    with torch.no_grad():
        after = dflash_loss(drafter, embed, lm_head, feats, ids, anchors, 7.0).item()
    assert after < 0.8 * before, (before, after)
    # The checkpoint is plain data: it resumes under weights_only=True (no code runs on load).
    assert torch.load(tmp_path / "train_state.pt", weights_only=True)["step"] == 40
    train_drafter(target, drafter, data, tmp_path,
                  TrainConfig(steps=42, batch=8, anchors=6, lr=3e-3, cache_target_states=True))
    assert torch.load(tmp_path / "train_state.pt", weights_only=True)["step"] == 42


def test_init_from_target_copies_the_top_layers(target, target_path):
    drafter = make_drafter(target_path)
    layers = target.get_decoder().layers
    assert drafter.init_from_target(layers) == [len(layers) - 2, len(layers) - 1]
    for mine, theirs in zip(drafter.layers, layers[-2:]):
        for name, value in theirs.state_dict().items():
            torch.testing.assert_close(mine.state_dict()[name], value)


def test_input_validation(target, tmp_path):
    with pytest.raises(TrainingInputError, match="block size must be >= 2"):
        check_target(target, [1, 2], 1)
    with pytest.raises(TrainingInputError, match=r"ids must be in 0\.\.2"):
        check_target(target, [1, 3], 4)

    class NoHidden(torch.nn.Module):
        config = target.config
        device = torch.device("cpu")

        def forward(self, ids, output_hidden_states=False):
            return type("Out", (), {"logits": torch.zeros(1, 2, 258), "hidden_states": None})()

    with pytest.raises(TrainingInputError, match="does not return per-layer hidden states"):
        check_target(NoHidden(), [1, 2], 4)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(TrainingInputError, match="has no prompts"):
        load_prompts(empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x"}\n')
    with pytest.raises(TrainingInputError, match="string 'prompt'"):
        load_prompts(bad)


def test_cli_end_to_end_writes_a_dflash_checkpoint(tiny_pair, tmp_path, capsys):
    target_path, _ = tiny_pair("random")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("def f(x):\nclass A:\nimport os\nfor i in range(3):\n")
    out = tmp_path / "draft"
    train_main(["--target", str(target_path), "--prompts", str(prompts), "--out", str(out),
                "--block-size", "4", "--target-layer-ids", "1,2", "--steps", "3", "--batch", "2",
                "--anchors", "2", "--max-new-tokens", "12", "--device", "cpu"])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["DFlashDraftModel"] and cfg["block_size"] == 4
    assert cfg["dflash_config"] == {"mask_token_id": 257, "target_layer_ids": [1, 2]}
    assert len((out / "regenerated.jsonl").read_text().splitlines()) == 4
    with pytest.raises(SystemExit, match="ids must be in"):
        train_main(["--target", str(target_path), "--prompts", str(prompts), "--out", str(out),
                    "--target-layer-ids", "0,3", "--device", "cpu"])
