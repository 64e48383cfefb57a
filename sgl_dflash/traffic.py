"""A user's traffic for the profiler: JSONL requests, read and checked line by line.

One JSON object per line with either ``prompt`` (a string) or ``messages``
(OpenAI-style ``[{"role": ..., "content": ...}]``, rendered with the target
tokenizer's chat template), and optionally ``category`` (a string, default
"all") and ``max_tokens`` (an integer >= 1). Other keys (model, temperature,
...) are ignored, so logged OpenAI requests can be used as they are. Blank
lines are skipped. A malformed line stops the read with its line number, or
is skipped with the same message kept for the report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

DEFAULT_CATEGORY = "all"
DEFAULT_MAX_TOKENS = 128
ON_BAD_LINE = ("stop", "skip")


class TrafficError(ValueError):
    """The traffic file cannot be used: no requests, or a bad line under ``on_bad_line="stop"``."""


class _BadLine(ValueError):
    pass


@dataclass(frozen=True)
class TrafficRequest:
    line: int  # 1-based line number in the file
    category: str
    prompt_ids: list[int]
    max_tokens: int


@dataclass
class Traffic:
    path: Path
    requests: list[TrafficRequest]
    skipped: list[str] = field(default_factory=list)  # one message per bad line skipped

    def categories(self) -> dict[str, list[TrafficRequest]]:
        """Requests by category, in the order categories first appear."""
        out: dict[str, list[TrafficRequest]] = {}
        for req in self.requests:
            out.setdefault(req.category, []).append(req)
        return out


def read_traffic(
    path: Path,
    tokenizer: Any,
    on_bad_line: str = "stop",
    max_requests: Optional[int] = None,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
) -> Traffic:
    """The first ``max_requests`` good requests of the file (all by default)."""
    if on_bad_line not in ON_BAD_LINE:
        raise ValueError(f"on_bad_line must be one of {ON_BAD_LINE}, got {on_bad_line!r}")
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TrafficError(f"{path}: cannot read the traffic file ({e}).") from None
    traffic = Traffic(path, [])
    for number, text in enumerate(lines, start=1):
        if max_requests is not None and len(traffic.requests) >= max_requests:
            break
        if not text.strip():
            continue
        try:
            traffic.requests.append(_parse(number, text, tokenizer, default_max_tokens))
        except _BadLine as e:
            message = f"{path} line {number}: {e}"
            if on_bad_line == "stop":
                raise TrafficError(f"{message} (--on-bad-line skip leaves such lines out)") from None
            traffic.skipped.append(message)
    if not traffic.requests:
        why = f"; all {len(traffic.skipped)} non-blank lines were bad" if traffic.skipped else ""
        raise TrafficError(f"{path}: no requests{why}. Expected one JSON object per line with "
                           '"prompt" (a string) or "messages" (a list of {"role", "content"}).')
    return traffic


def _parse(number: int, text: str, tokenizer: Any, default_max_tokens: int) -> TrafficRequest:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise _BadLine(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(row, dict):
        raise _BadLine(f"expected a JSON object, got {type(row).__name__}")
    if ("prompt" in row) == ("messages" in row):
        raise _BadLine('needs exactly one of "prompt" (a string) or "messages" (a list)')
    category = row.get("category", DEFAULT_CATEGORY)
    if not isinstance(category, str) or not category:
        raise _BadLine(f'"category" must be a non-empty string, got {category!r}')
    max_tokens = row.get("max_tokens", default_max_tokens)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise _BadLine(f'"max_tokens" must be an integer >= 1, got {max_tokens!r}')
    ids = _prompt_ids(row, tokenizer)
    if not ids:
        raise _BadLine("the prompt is empty after tokenization")
    return TrafficRequest(number, category, ids, max_tokens)


def _prompt_ids(row: dict, tokenizer: Any) -> list[int]:
    if "prompt" in row:
        if not isinstance(row["prompt"], str):
            raise _BadLine(f'"prompt" must be a string, got {type(row["prompt"]).__name__}')
        return tokenizer(row["prompt"])["input_ids"]
    messages = row["messages"]
    if not isinstance(messages, list) or not messages or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    ):
        raise _BadLine('"messages" must be a non-empty list of {"role": str, "content": str}')
    if not getattr(tokenizer, "chat_template", None):
        raise _BadLine('"messages" need a chat template, and the target tokenizer has none (use "prompt")')
    # The template writes the special tokens itself, as the server's chat endpoint does.
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]
