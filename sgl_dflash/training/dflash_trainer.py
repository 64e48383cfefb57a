"""DFlash drafter training: target-regenerated data, random anchors, block-wise loss.

For an anchor position a in a sequence x, the drafter sees the target's hidden
states of x[:a] as context and the block [x_a, MASK x (B-1)] at positions
a..a+B-1 (exactly what the SGL_DFLASH worker feeds it after committing x[:a+1]
with x_a as the bonus token), and must predict x_{a+k} at block position k.
Position k's cross entropy (by default against the target's own next-token
distribution there, which has the regenerated token as its argmax) is weighted
by exp(-(k-1)/gamma): early positions matter most, since a draft is only
useful up to its first mistake.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from tqdm import tqdm

from sgl_dflash.training.drafter import DFlashDrafter
from sgl_dflash.training.optim import lr_at, optimizer_step


class TrainingInputError(ValueError):
    """Bad training input: the message says what and how to fix it."""


# ----------------------------------------------------------------- target side


def check_target(target, layer_ids: list[int], block_size: int) -> None:
    n_layers = int(target.config.num_hidden_layers)
    if block_size < 2:
        raise TrainingInputError(f"block size must be >= 2 (bonus + at least one draft), got {block_size}.")
    bad = [i for i in layer_ids if not 0 <= i <= n_layers - 2]
    if not layer_ids or bad:
        raise TrainingInputError(
            f"target_layer_ids {layer_ids} invalid for a {n_layers}-layer target: ids must be in "
            f"0..{n_layers - 2} (SGLang captures the state entering layer id+1)."
        )
    probe = target(torch.zeros(1, 2, dtype=torch.long, device=target.device), output_hidden_states=True)
    hidden = getattr(probe, "hidden_states", None)
    if hidden is None or len(hidden) != n_layers + 1:
        raise TrainingInputError(
            f"target {type(target).__name__} does not return per-layer hidden states "
            "(output_hidden_states=True); DFlash drafters are conditioned on them."
        )


@torch.no_grad()
def target_pass(target, input_ids: torch.Tensor, layer_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One target forward without the lm_head: (hidden states after each layer in
    layer_ids, concatenated [S, T, len(ids) * H]; the final hidden state [S, T, H],
    whose product with the lm_head weight is the next-token logits)."""
    out = target.get_decoder()(input_ids, output_hidden_states=True)
    return torch.cat([out.hidden_states[i + 1] for i in layer_ids], dim=-1), out.last_hidden_state


def target_features(target, input_ids: torch.Tensor, layer_ids: list[int]) -> torch.Tensor:
    """Concatenated hidden states after each target layer in layer_ids: [S, T, len(ids) * H]."""
    return target_pass(target, input_ids, layer_ids)[0]


def right_padded(seqs: list[list[int]], device: Optional[torch.device | str] = None) -> torch.Tensor:
    """[S, longest] token ids, padded with 0 on the right: causal models and the
    DFlash loss never read a position after a sequence's end."""
    width = max(map(len, seqs))
    return torch.tensor([s + [0] * (width - len(s)) for s in seqs], device=device)


class TargetStates:
    """target_pass of every training sequence, computed once and kept in memory:
    the target is frozen, so each step only pads and stacks its rows (on a tiny
    target, 1.5x faster steps). Holds (len(layer_ids) + 1) * H values per token."""

    def __init__(self, target, seqs: list[list[int]], layer_ids: list[int], batch: int = 32) -> None:
        self.rows: list[tuple[torch.Tensor, torch.Tensor]] = []
        dev = target.device
        for i in tqdm(range(0, len(seqs), batch), desc="target states", unit="batch"):
            chunk = seqs[i : i + batch]
            feats, final = target_pass(target, right_padded(chunk, dev), layer_ids)
            self.rows += [(f[: len(s)], h[: len(s)]) for s, f, h in zip(chunk, feats, final)]

    def batch(self, picks: list[int], width: int) -> tuple[torch.Tensor, torch.Tensor]:
        pad = lambda t: F.pad(t, (0, 0, 0, width - t.shape[0]))  # noqa: E731
        return (torch.stack([pad(self.rows[i][0]) for i in picks]),
                torch.stack([pad(self.rows[i][1]) for i in picks]))


# ------------------------------------------------------------------- the loss


def position_weights(block_size: int, gamma: float) -> torch.Tensor:
    """w_0 = 0 (the bonus is given), w_k = exp(-(k-1)/gamma) for k >= 1."""
    k = torch.arange(block_size, dtype=torch.float32)
    return torch.where(k == 0, 0.0, torch.exp(-(k - 1) / gamma))


@dataclass
class BlockBatch:
    ids: torch.Tensor  # [S, M*B] block inputs: x_a then MASK
    positions: torch.Tensor  # [S, M*B]
    labels: torch.Tensor  # [S, M*B] x_{a+k}; -100 where not trained
    weights: torch.Tensor  # [S, M*B]
    mask: torch.Tensor  # [S, M*B, T + M*B] attention allow-mask


def build_blocks(
    input_ids: torch.Tensor, anchors: torch.Tensor, block_size: int, mask_token_id: int, gamma: float
) -> BlockBatch:
    """anchors: [S, M] with 1 <= a and a + B <= length of that sequence."""
    s, m = anchors.shape
    t = input_ids.shape[1]
    dev = input_ids.device
    k = torch.arange(block_size, device=dev)
    pos = anchors[:, :, None] + k  # [S, M, B]
    labels = input_ids.gather(1, pos.flatten(1)).view(s, m, block_size)
    ids = torch.full_like(labels, mask_token_id)
    ids[:, :, 0] = labels[:, :, 0]
    labels = labels.masked_fill(k == 0, -100)
    weights = position_weights(block_size, gamma).to(dev).expand(s, m, block_size)
    # Context: block m sees target positions < a_m. Block: only its own tokens, all of them.
    ctx_ok = torch.arange(t, device=dev)[None, None, :] < anchors[:, :, None]  # [S, M, T]
    blk_ok = torch.eye(m, dtype=torch.bool, device=dev)[None, :, :, None].expand(s, m, m, block_size)
    mask = torch.cat([ctx_ok, blk_ok.flatten(2)], dim=-1)  # [S, M, T + M*B]
    mask = mask[:, :, None, :].expand(s, m, block_size, t + m * block_size)
    return BlockBatch(
        ids.flatten(1), pos.flatten(1), labels.flatten(1), weights.flatten(1), mask.flatten(1, 2)
    )


def dflash_loss(
    drafter: DFlashDrafter,
    embed: torch.Tensor,  # target embedding weight [V, H] (frozen)
    lm_head: torch.Tensor,  # target lm_head weight [V, H] (frozen)
    features: torch.Tensor,  # [S, T, n*H] target hidden states
    input_ids: torch.Tensor,  # [S, T]
    anchors: torch.Tensor,  # [S, M]
    gamma: float,
    teacher_hidden: Optional[torch.Tensor] = None,  # [S, T, H] target final hidden: distill instead
) -> torch.Tensor:
    """Weighted block cross entropy against the sequence's tokens, or, with
    teacher_hidden, against the target's whole next-token distribution (same
    argmax on greedy data, far more signal per block)."""
    blocks = build_blocks(input_ids, anchors, drafter.block_size, drafter.mask_token_id, gamma)
    ctx = drafter.project_context(features)
    ctx_pos = torch.arange(input_ids.shape[1], device=input_ids.device).expand(input_ids.shape)
    hidden = drafter(F.embedding(blocks.ids, embed), blocks.positions, ctx, ctx_pos, blocks.mask)
    logp = (hidden @ lm_head.T).float().log_softmax(-1)
    if teacher_hidden is None:
        ce = F.nll_loss(logp.flatten(0, 1), blocks.labels.flatten(), reduction="none")
    else:
        # The target's distribution for x_{a+k} is its output at position a+k-1.
        rows = (blocks.positions - 1).clamp(min=0)[..., None].expand(-1, -1, teacher_hidden.shape[-1])
        teacher = (teacher_hidden.gather(1, rows) @ lm_head.T).float().softmax(-1)
        ce = -(teacher * logp).sum(-1).flatten()
    w = blocks.weights.flatten() * (blocks.labels.flatten() != -100)
    return (ce * w).sum() / w.sum()


def sample_anchors(
    lengths: torch.Tensor, starts: torch.Tensor, block_size: int, per_seq: int, gen: torch.Generator
) -> torch.Tensor:
    """per_seq random anchors per sequence in [start, length - B]; needs length >= B + 1.

    A response shorter than a block anchors at the latest valid position instead.
    """
    hi = lengths - block_size
    lo = torch.minimum(starts.clamp(min=1), hi)
    u = torch.rand(len(lengths), per_seq, generator=gen)
    return (lo[:, None] + (u * (hi - lo + 1)[:, None]).long()).clamp(max=hi[:, None])


# ------------------------------------------------------------- data and loop


def load_prompts(path: Path) -> list[str]:
    """JSONL with a "prompt" (or "text") field per line, or plain text with one prompt per line."""
    if not path.is_file():
        raise TrainingInputError(f"prompts file {path} does not exist.")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix == ".jsonl":
        prompts = []
        for i, line in enumerate(lines):
            rec = json.loads(line)
            if not isinstance(rec, dict) or not isinstance(rec.get("prompt", rec.get("text")), str):
                raise TrainingInputError(f"{path}:{i + 1}: expected an object with a string 'prompt'.")
            prompts.append(rec.get("prompt", rec.get("text")))
    else:
        prompts = lines
    if not prompts:
        raise TrainingInputError(f"prompts file {path} has no prompts.")
    return prompts


@torch.no_grad()
def regenerate(
    target, tokenizer, prompts: list[str], out: Path, *, max_new_tokens: int, temperature: float,
    batch: int, max_prompt_tokens: int = 128,
) -> None:
    """Append the target's own responses to out (JSONL of token ids); resumes where it stopped."""
    done = sum(1 for _ in out.open()) if out.is_file() else 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    dev = target.device
    with out.open("a") as f, tqdm(total=len(prompts), initial=done, desc="regenerate", unit="prompt") as bar:
        for i in range(done, len(prompts), batch):
            enc = [tokenizer(p, add_special_tokens=False)["input_ids"][-max_prompt_tokens:] or [pad]
                   for p in prompts[i : i + batch]]
            width = max(map(len, enc))
            ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc], device=dev)
            attn = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc], device=dev)
            gen = target.generate(
                input_ids=ids, attention_mask=attn, max_new_tokens=max_new_tokens,
                do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
                top_k=None, top_p=None, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id,
            )[:, width:]
            for e, g in zip(enc, gen.tolist()):
                if tokenizer.eos_token_id in g:
                    g = g[: g.index(tokenizer.eos_token_id) + 1]
                f.write(json.dumps({"prompt_ids": e, "response_ids": g}) + "\n")
            f.flush()
            bar.update(len(enc))


@dataclass
class TrainConfig:
    steps: int = 1500
    batch: int = 16
    anchors: int = 8
    lr: float = 6e-4
    gamma: float = 7.0
    max_len: int = 256
    seed: int = 0
    checkpoint_every: int = 100
    distill: bool = True  # soft labels: the target's next-token distribution
    cache_target_states: bool = False  # TargetStates: one target pass per sequence, not per step


def train_drafter(
    target, drafter: DFlashDrafter, data: Path, out: Path, cfg: TrainConfig
) -> DFlashDrafter:
    """Train on regenerated sequences; checkpoints to out/train_state.pt and resumes from it."""
    records = [json.loads(line) for line in data.open()]
    seqs = [(r["prompt_ids"] + r["response_ids"])[: cfg.max_len] for r in records]
    starts = [min(len(r["prompt_ids"]), cfg.max_len) for r in records]
    keep = [i for i, s in enumerate(seqs) if len(s) >= drafter.block_size + 1]
    if not keep:
        raise TrainingInputError(
            f"no training sequence has at least block_size + 1 = {drafter.block_size + 1} tokens."
        )
    dev = target.device
    embed = target.get_input_embeddings().weight.detach()
    lm_head = target.get_output_embeddings().weight.detach()
    opt = torch.optim.AdamW(drafter.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.01)
    gen = torch.Generator().manual_seed(cfg.seed)
    state_path = out / "train_state.pt"
    step = 0
    if state_path.is_file():
        state = torch.load(state_path, weights_only=True)  # a resume file is data, not code
        drafter.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        step = state["step"]
    states = TargetStates(target, seqs, drafter.target_layer_ids) if cfg.cache_target_states else None

    bar = tqdm(total=cfg.steps, initial=step, desc="drafter", unit="step")
    while step < cfg.steps:
        t0 = time.perf_counter()
        pick = [keep[i] for i in torch.randint(len(keep), (cfg.batch,), generator=gen).tolist()]
        ids = right_padded([seqs[i] for i in pick], dev)
        lengths = torch.tensor([len(seqs[i]) for i in pick])
        anchors = sample_anchors(lengths, torch.tensor([starts[i] for i in pick]), drafter.block_size,
                                 cfg.anchors, gen).to(dev)
        if states is not None:
            feats, final = states.batch(pick, ids.shape[1])
        else:
            feats, final = target_pass(target, ids, drafter.target_layer_ids)
        loss = dflash_loss(drafter, embed, lm_head, feats, ids, anchors, cfg.gamma,
                           final if cfg.distill else None)
        optimizer_step(opt, loss, lr_at(step, cfg.steps, cfg.lr, warmup=50))
        step += 1
        bar.update(1)
        tokens = cfg.batch * cfg.anchors * drafter.block_size
        bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tokens / (time.perf_counter() - t0):.0f}")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            torch.save({"model": drafter.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                        "step": step}, state_path)
    bar.close()
    return drafter


def load_target(path: Path, device: Optional[str] = None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (Path(path) / "config.json").is_file():
        raise TrainingInputError(f"target path {path} has no config.json (a local Hugging Face model).")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    target = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
    for p in target.parameters():
        p.requires_grad_(False)
    return target, AutoTokenizer.from_pretrained(path)
