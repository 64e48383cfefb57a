"""The request surface checked against plain decoding: one case per sampling parameter.

Shared by tests/test_request_surface.py (asserts SGL_DFLASH equals plain
decoding) and bench/request_surface.py (the matrix over plain, built-in
DFLASH and SGL_DFLASH). Every case is greedy, so "equal" means identical
output ids, text and finish reason (logprobs: within LOGPROB_TOL).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import requests

# fp32 on CPU: the verify pass and plain decoding reduce in different orders.
LOGPROB_TOL = 1e-4
NEWLINE = 200  # the shipped tiny tokenizer's "\n" (checked by the test)


@dataclass(frozen=True)
class Case:
    name: str
    sampling: dict[str, Any] = field(default_factory=dict)  # /generate sampling_params
    top: dict[str, Any] = field(default_factory=dict)  # other /generate fields
    route: str = "/generate"  # or an OpenAI route, with `top` as the body


def cases() -> list[Case]:
    from sglang.srt.sampling.custom_logit_processor import DisallowedTokensLogitsProcessor

    return [
        Case("greedy"),
        Case("frequency_penalty", {"frequency_penalty": 1.0}),
        Case("presence_penalty", {"presence_penalty": 1.0}),
        Case("repetition_penalty", {"repetition_penalty": 1.3}),
        Case("all penalties", {"frequency_penalty": 0.5, "presence_penalty": 0.5, "repetition_penalty": 1.2}),
        Case("min_new_tokens", {"min_new_tokens": 12, "stop_token_ids": [NEWLINE]}),
        Case("min_new_tokens + penalty", {"min_new_tokens": 9, "stop_token_ids": [NEWLINE], "frequency_penalty": 0.7}),
        Case("logit_bias", {"logit_bias": {str(NEWLINE): -100.0, "222": 2.0}}),
        Case("stop string", {"stop": ["\n"]}),
        Case("stop string, no_stop_trim", {"stop": ["\n"], "no_stop_trim": True}),
        Case("stop_token_ids", {"stop_token_ids": [NEWLINE]}),
        Case("stop_token_ids, no_stop_trim", {"stop_token_ids": [NEWLINE], "no_stop_trim": True}),
        Case("ignore_eos", {"ignore_eos": True}),
        Case("n=3", {"n": 3}),
        Case("logprobs", top={"return_logprob": True, "top_logprobs_num": 3, "logprob_start_len": 0}),
        Case("logprobs + penalty", {"frequency_penalty": 0.8}, {"return_logprob": True, "top_logprobs_num": 2}),
        Case("regex", {"regex": r"(import|from) [a-z_]+( import [a-z_]+)?\n"}),
        Case("json_schema", {"json_schema": json.dumps(
            {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}}, "required": ["name"]})}),
        Case("ebnf", {"ebnf": 'root ::= "def " [a-z_]+ "(" [a-z, ]* "):"'}),
        Case("custom logit processor", {"custom_params": {"token_ids": [NEWLINE, 222]}},
             {"custom_logit_processor": DisallowedTokensLogitsProcessor().to_str()}),
        Case("openai completions stream", route="/v1/completions",
             top={"max_tokens": 24, "temperature": 0, "stream": True, "frequency_penalty": 0.5}),
        Case("openai chat stream", route="/v1/chat/completions",
             top={"max_tokens": 24, "temperature": 0, "stream": True, "presence_penalty": 0.5}),
    ]


def run(url: str, case: Case, prompt: list[int], max_new_tokens: int = 32) -> Any:
    """One request; returns what must match across servers."""
    if case.route == "/generate":
        body = {"input_ids": prompt, "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0,
                                                          **case.sampling}, **case.top}
        r = requests.post(url + "/generate", json=body, timeout=300)
        r.raise_for_status()
        outs = r.json() if isinstance(r.json(), list) else [r.json()]
        return [_generate_view(o) for o in outs]
    text = _decode_prompt(url, prompt)
    body = dict(case.top, model="default")
    if case.route == "/v1/completions":
        body["prompt"] = text
    else:
        body["messages"] = [{"role": "user", "content": text}]
    r = requests.post(url + case.route, json=body, timeout=300, stream=True)
    r.raise_for_status()
    pieces = []
    for line in r.iter_lines():
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            choice = json.loads(line[6:])["choices"][0]
            pieces.append(choice.get("text") or (choice.get("delta") or {}).get("content") or "")
    return ["".join(pieces)]


def _generate_view(out: dict) -> dict:
    meta = out["meta_info"]
    view = {"ids": out["output_ids"], "text": out["text"], "finish": meta["finish_reason"]}
    for key in ("output_token_logprobs", "input_token_logprobs", "output_top_logprobs"):
        if meta.get(key) is not None:
            view[key] = meta[key]
    return view


def _decode_prompt(url: str, prompt: list[int]) -> str:
    from transformers import AutoTokenizer

    path = requests.get(url + "/model_info", timeout=30).json()["model_path"]
    return AutoTokenizer.from_pretrained(path).decode(prompt)


def differences(a: Any, b: Any, tol: float = LOGPROB_TOL) -> list[str]:
    """What differs between two results of `run` ([] if equal; logprobs within tol)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"keys {sorted(a)} != {sorted(b)}"]
        return [f"{k}: {d}" for k in a for d in differences(a[k], b[k], tol)]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"length {len(a)} != {len(b)}"]
        return [d for x, y in zip(a, b) for d in differences(x, y, tol)]
    if isinstance(a, float) and isinstance(b, float):
        return [] if abs(a - b) <= tol else [f"{a} != {b}"]
    return [] if a == b else [f"{a!r} != {b!r}"]
