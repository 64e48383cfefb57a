"""An offline text corpus every machine has: the Python standard library's source.

Files are split into train / held-out by a hash of their path, so the split is
the same on every machine with the same Python version.
"""

from __future__ import annotations

import hashlib
import random
import sysconfig
from pathlib import Path

SKIP_DIRS = {"site-packages", "test", "tests", "idlelib", "__pycache__", "lib2to3", "turtledemo"}


def stdlib_files(split: str = "train", max_bytes: int = 200_000) -> list[Path]:
    """Stdlib .py files of one split ("train": ~95%, "heldout": ~5%), sorted by path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if SKIP_DIRS & set(rel.parts[:-1]) or path.stat().st_size > max_bytes:
            continue
        bucket = int(hashlib.sha1(str(rel).encode()).hexdigest(), 16) % 20
        if (bucket == 0) == (split == "heldout"):
            out.append(path)
    if not out:
        raise RuntimeError(f"no Python standard library source found under {root}")
    return out


def read_texts(files: list[Path]) -> list[str]:
    return [f.read_text(encoding="utf-8", errors="replace") for f in files]


def heldout_prompts(tokenizer, n: int, length: int, seed: int = 0) -> list[list[int]]:
    """n token windows of the given length from held-out files (never trained on)."""
    rng = random.Random(seed)
    docs = tokenizer(read_texts(stdlib_files("heldout")), add_special_tokens=False)["input_ids"]
    docs = [d for d in docs if len(d) > length + 1]
    out = []
    for _ in range(n):
        d = rng.choice(docs)
        s = rng.randrange(0, len(d) - length)
        out.append(d[s : s + length])
    return out
