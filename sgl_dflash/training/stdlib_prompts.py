"""Write training prompts cut from the standard library's source (train split) as JSONL.

    python -m sgl_dflash.training.stdlib_prompts OUT.jsonl --tokenizer TARGET [--n 3000] [--tokens 64]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from sgl_dflash.training.corpus import read_texts, stdlib_files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    rng = random.Random(args.seed)
    docs = [d for d in tok(read_texts(stdlib_files("train")), add_special_tokens=False)["input_ids"]
            if len(d) > args.tokens]
    with args.out.open("w") as f:
        for _ in range(args.n):
            d = rng.choice(docs)
            s = rng.randrange(0, len(d) - args.tokens)
            f.write(json.dumps({"prompt": tok.decode(d[s : s + args.tokens])}) + "\n")
    print(f"wrote {args.n} prompts to {args.out}")


if __name__ == "__main__":
    main()
