"""Train the tiny real target: a byte-level BPE tokenizer and a small Qwen3 LM
on CPython's standard library source (offline on every machine).

    python -m sgl_dflash.training.train_target OUT_DIR [--steps 3600]

About 16 minutes on 2 CPU cores with the defaults. Checkpoints every 200 steps
to OUT_DIR/train_state.pt and resumes from it when rerun; the final model is
saved in Hugging Face format (config.json, model.safetensors, tokenizer).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from sgl_dflash.tiny_models import CHAT_TEMPLATE, EOS, MASK
from sgl_dflash.training.corpus import read_texts, stdlib_files
from sgl_dflash.training.optim import lr_at, optimizer_step

SEQ_LEN = 128


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, MASK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, mask_token=MASK)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def encode_corpus(tokenizer, texts: list[str]) -> torch.Tensor:
    eos = tokenizer.convert_tokens_to_ids(EOS)
    ids: list[int] = []
    for enc in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def model_config(vocab_size: int, eos_id: int) -> dict:
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": vocab_size,
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "hidden_act": "silu",
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "torch_dtype": "float32",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--steps", type=int, default=3600)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    if (args.out / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(args.out)
    else:
        print("[target] training the tokenizer on the stdlib source ...", flush=True)
        tokenizer = train_tokenizer(read_texts(stdlib_files("train")), args.vocab)
        tokenizer.save_pretrained(args.out)
    data = encode_corpus(tokenizer, read_texts(stdlib_files("train")))
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    cfg = model_config(len(tokenizer), eos_id)
    print(f"[target] corpus: {data.numel():,} tokens; vocab {len(tokenizer)}", flush=True)

    model = Qwen3ForCausalLM(Qwen3Config(**cfg))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    state_path = args.out / "train_state.pt"
    step = 0
    if state_path.is_file():
        state = torch.load(state_path, weights_only=True)  # a resume file is data, not code
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        torch.set_rng_state(state["rng"])
        print(f"[target] resumed at step {step}", flush=True)

    model.train()
    bar = tqdm(total=args.steps, initial=step, desc="target", unit="step")
    while step < args.steps:
        t0 = time.perf_counter()
        starts = torch.randint(0, data.numel() - SEQ_LEN - 1, (args.batch,))
        batch = torch.stack([data[s : s + SEQ_LEN + 1] for s in starts.tolist()])
        loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1].clone()).loss
        optimizer_step(opt, loss, lr_at(step, args.steps, args.lr, warmup=100))
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{batch.numel() / (time.perf_counter() - t0):.0f}")
        if step % 200 == 0 or step == args.steps:
            torch.save(
                {"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "rng": torch.get_rng_state()},
                state_path,
            )
    bar.close()

    model.save_pretrained(args.out, safe_serialization=True)
    (args.out / "config.json").write_text(json.dumps(cfg, indent=2))
    (args.out / "generation_config.json").write_text(json.dumps({"eos_token_id": eos_id, "bos_token_id": eos_id}))
    state_path.unlink()
    print(f"[target] saved to {args.out}", flush=True)


if __name__ == "__main__":
    main()
