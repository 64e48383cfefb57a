"""Bad input fails with a message that says what is wrong, and never takes the server down.

Bad launches fail at startup. Bad requests get an HTTP 4xx from a running
plain or SGL_DFLASH server, which then keeps serving: PROBES lists every
request shape checked with what both servers answer, and, where it differed
before sgl_dflash.sglang_patches, the old answer (a crashed scheduler, a 200
computed from another request's logits, a 500).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import requests

from sgl_dflash.config import SpecConfig
from sgl_dflash.draft_checkpoint import DraftConfigError, validate_draft, validate_tree
from sgl_dflash.launcher import CPU_ENV, Server, free_port, server_command


def draft_variant(draft: Path, tmp: Path, name: str, edit) -> Path:
    out = tmp / name
    shutil.copytree(draft, out)
    cfg = json.loads((out / "config.json").read_text())
    edit(cfg)
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def cases(target: Path, draft: Path, tmp: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (extra launch args, text the error must contain)."""

    def variant(name, edit):
        return ["--speculative-draft-model-path", str(draft_variant(draft, tmp, name, edit))]

    ok = ["--speculative-draft-model-path", str(draft)]
    return {
        "no_draft_arg": ([], "needs a draft checkpoint"),
        "missing_draft_dir": (["--speculative-draft-model-path", str(tmp / "nope")], "does not exist"),
        "hidden_mismatch": (variant("hidden", lambda c: c.update(hidden_size=32)), "hidden_size=32 does not match"),
        "vocab_mismatch": (variant("vocab", lambda c: c.update(vocab_size=999)), "vocab_size=999 does not match"),
        "layer_out_of_range": (
            variant("layers", lambda c: c["dflash_config"].update(target_layer_ids=[1, 3])),
            "valid ids are 0..2",
        ),
        "mask_out_of_vocab": (
            variant("mask", lambda c: c["dflash_config"].update(mask_token_id=5000)),
            "mask_token_id=5000 is not a token id",
        ),
        "not_a_dflash_draft": (variant("arch", lambda c: c.update(architectures=["LlamaForCausalLM"])), "DFlashDraftModel"),
        "block_size_1": (variant("block1", lambda c: c.update(block_size=1)), "block_size=1 is impossible"),
        "node_budget_over_a_chain": (ok + ["--speculative-num-draft-tokens", "8"], "more than a top-1 tree can hold"),
        "cpu_bf16": (ok + ["--dtype", "bfloat16"], "float32 only"),
    }


def command(target: Path, extra: list[str]) -> list[str]:
    return server_command(target, free_port()) + ["--speculative-algorithm", "SGL_DFLASH"] + extra


def launch_args(cmd: list[str]) -> list[str]:
    """The arguments after ``-m sglang.launch_server``."""
    return cmd[cmd.index("sglang.launch_server") + 1:]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env={**os.environ, **CPU_ENV}, capture_output=True, text=True, timeout=300)


# Launched for real: the command exits with the error. Every case (these too) is also resolved in
# one process by resolve_launch.py, SGLang's own argument path without a start per case.
REAL_LAUNCHES = ("missing_draft_dir", "cpu_bf16")


def test_bad_launches_fail_fast_with_clear_errors(tiny_pair, tmp_path):
    target, draft = tiny_pair("random")
    table = cases(target, draft, tmp_path)
    argv = {name: launch_args(command(target, extra)) for name, (extra, _) in table.items()}
    (tmp_path / "cases.json").write_text(json.dumps(argv))
    resolver = [sys.executable, str(Path(__file__).parent / "resolve_launch.py"),
                str(tmp_path / "cases.json"), str(tmp_path / "errors.json")]
    with ThreadPoolExecutor(len(REAL_LAUNCHES) + 1) as pool:
        resolving = pool.submit(run, resolver)
        launched = dict(zip(REAL_LAUNCHES, pool.map(lambda name: run(command(target, table[name][0])), REAL_LAUNCHES)))
        resolved = resolving.result()
    assert resolved.returncode == 0, resolved.stderr[-3000:]
    errors = json.loads((tmp_path / "errors.json").read_text())
    for name, (_, expected) in table.items():
        assert errors[name] is not None, f"{name}: resolved without an error"
        assert expected in errors[name], f"{name}: {errors[name]}"
    for name, res in launched.items():
        assert res.returncode != 0, f"{name}: server started"
        assert table[name][1] in res.stdout + res.stderr, f"{name}:\n{(res.stdout + res.stderr)[-2000:]}"


def test_validate_draft_resolves_block_size_from_checkpoint(tiny_pair):
    target, draft = tiny_pair("random")
    spec = validate_draft(str(draft), str(target))
    assert spec.block_size == 4 and spec.target_layer_ids == (1, 2) and spec.mask_token_id == 257
    assert validate_tree(spec, None, None) == SpecConfig(block_size=4, topk=1, node_budget=4)
    with pytest.raises(DraftConfigError, match="more than a top-1 tree can hold"):
        validate_tree(spec, 1, 8)


# --- Bad requests on a running server ---------------------------------------

HELLO = {"text": "Hello world", "sampling_params": {"max_new_tokens": 8}}
NORMAL = {"text": "The server still works", "sampling_params": {"max_new_tokens": 8, "temperature": 0}}
KINDS = ("plain", "sgl_dflash")


class Probe(NamedTuple):
    body: dict[str, Any]
    status: int  # the HTTP status both servers answer with
    message: str = ""  # text the answer must contain
    before: str = "same"  # the answer before sgl_dflash's patches, where it differed
    path: str = "/generate"


def sampling(status: int, message: str = "", before: str = "same", **params: Any) -> Probe:
    return Probe({**HELLO, "sampling_params": {"max_new_tokens": 8, **params}}, status, message, before)


def logprobs(status: int, message: str = "", before: str = "same", **fields: Any) -> Probe:
    return Probe({**HELLO, "return_logprob": True, **fields}, status, message, before)


def completions(status: int, message: str = "", before: str = "same", **body: Any) -> Probe:
    return Probe({"model": "m", "prompt": "hi", "max_tokens": 4, **body}, status, message, before, "/v1/completions")


def chat(status: int, message: str = "", before: str = "same", **body: Any) -> Probe:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **body}
    return Probe(body, status, message, before, "/v1/chat/completions")


EMPTY = "The prompt is empty"
OOV = "outside the vocabulary; valid range is [0, 1024)"
CRASH = "scheduler crashed"
GARBAGE = "200 with another request's logits"

PROBES: dict[str, Probe] = {
    # prompts
    "empty_text": Probe({"text": "", "sampling_params": {"max_new_tokens": 4}}, 400, EMPTY, CRASH),
    # a stream reports errors as an event of a 200 response
    "empty_text_stream": Probe({"text": "", "stream": True}, 200, EMPTY, CRASH),
    "empty_input_ids": Probe({"input_ids": []}, 400, "input_ids cannot be empty"),
    "batch_text_with_an_empty_one": Probe({"text": ["Hello", ""]}, 400, EMPTY, GARBAGE),
    "batch_ids_with_an_empty_one": Probe({"input_ids": [[5, 6], []]}, 400, EMPTY, GARBAGE),
    "empty_text_n2": Probe({"text": "", "sampling_params": {"n": 2, "temperature": 1}}, 400, EMPTY, CRASH),
    "input_id_out_of_vocab": Probe({"input_ids": [5, 5000]}, 400, OOV, CRASH),
    "input_id_negative": Probe({"input_ids": [5, -3]}, 400, OOV, CRASH),
    "input_ids_strings": Probe({"input_ids": ["a", "b"]}, 400, "elements must be int or list"),
    "input_ids_floats": Probe({"input_ids": [1.5, 2.0]}, 400, "elements must be int or list"),
    "no_prompt": Probe({"sampling_params": {}}, 400, "Either text, input_ids or input_embeds"),
    "text_and_input_ids": Probe({"text": "hi", "input_ids": [5], "sampling_params": {"max_new_tokens": 4}}, 200),
    "prompt_longer_than_context": Probe({"input_ids": [5] * 3000}, 400, "longer than the model's context length"),
    "prompt_plus_max_new_over_context": Probe(
        {"input_ids": [5] * 2047, "sampling_params": {"max_new_tokens": 4}}, 400, "maximum context length"
    ),
    "image_on_a_text_model": Probe({**HELLO, "image_data": "https://example.invalid/x.png"}, 200),
    "unknown_session_empty_ids": Probe(
        {"input_ids": [], "session_params": {"id": "nope"}}, 400, "session id nope does not exist"
    ),
    "batch_duplicate_rid": Probe({"text": ["a", "b"], "rid": ["x", "x"]}, 400, "Duplicate request IDs"),
    "batch_mixing_valid_and_invalid": Probe(
        {"text": ["a", "b"], "sampling_params": [{"max_new_tokens": 4}, {"top_p": 0.0}]}, 400, "top_p must be in (0, 1]"
    ),
    # sampling parameters
    "max_new_tokens_0": sampling(200, max_new_tokens=0),
    "max_new_tokens_negative": sampling(400, "max_new_tokens must be at least 0", max_new_tokens=-1),
    "max_new_tokens_huge": sampling(400, "maximum context length", max_new_tokens=10**9),
    "max_new_tokens_float": sampling(400, "expected i64", max_new_tokens=4.5),
    "n_0": sampling(200, n=0),
    "n_3": sampling(200, n=3, temperature=1.0),
    "top_k_0": sampling(400, "top_k must be -1 (disable) or at least 1", top_k=0),
    "top_k_negative": sampling(400, "top_k must be -1 (disable) or at least 1", top_k=-5),
    "top_k_above_vocab": sampling(200, top_k=10**6, temperature=1.0),
    "top_p_0": sampling(400, "top_p must be in (0, 1]", top_p=0.0),
    "top_p_above_1": sampling(400, "top_p must be in (0, 1]", top_p=1.5),
    "temperature_negative": sampling(400, "temperature must be a non-negative", temperature=-1.0),
    "temperature_huge": sampling(200, temperature=1e6),
    "min_p_above_1": sampling(400, "min_p must be in [0, 1]", min_p=1.5),
    "min_p_negative": sampling(400, "min_p must be in [0, 1]", min_p=-0.5),
    "repetition_penalty_0": sampling(400, "repetition_penalty must be in (0, 2]", repetition_penalty=0.0),
    "frequency_penalty_huge": sampling(400, "frequency_penalty must be in [-2, 2]", frequency_penalty=100.0),
    "presence_penalty_huge": sampling(400, "presence_penalty must be in [-2, 2]", presence_penalty=-100.0),
    "penalties_valid": sampling(200, frequency_penalty=1.0, presence_penalty=0.5, repetition_penalty=1.3),
    "min_new_tokens_above_max": sampling(400, "min_new_tokens must be in [0, max_new_tokens(8)]", min_new_tokens=20),
    "min_new_tokens_negative": sampling(400, "min_new_tokens must be in", min_new_tokens=-2),
    "stop_token_id_out_of_vocab": sampling(200, stop_token_ids=[5000]),
    "stop_token_id_negative": sampling(200, stop_token_ids=[-1]),
    "stop_token_ids_whole_vocab": sampling(200, stop_token_ids=list(range(1024))),
    "stop_empty_string": sampling(200, stop=[""]),
    "stop_too_many": sampling(400, "at most 32 stop strings", stop=["x"] * 1000),
    "stop_regex_unparsable": sampling(400, "stop_regex '((' is not a valid regular expression", "500", stop_regex="(("),
    "stop_regex_parses_but_does_not_compile": sampling(400, "look-behind requires fixed-width", stop_regex="(?<=a+)b"),
    "logit_bias_out_of_vocab": sampling(400, "logit_bias must has keys in [0, 1023]", logit_bias={"5000": 10.0}),
    "logit_bias_negative_id": sampling(400, "logit_bias must has keys in [0, 1023]", logit_bias={"-1": 10.0}),
    "logit_bias_not_an_id": sampling(400, "invalid literal for int()", logit_bias={"abc": 10.0}),
    "regex_matches_nothing": sampling(200, regex="[^\\s\\S]"),
    "regex_invalid": sampling(400, "Failed to compile regex grammar", regex="(("),
    "json_schema_not_json": sampling(400, "Failed to compile json grammar", json_schema="{not json"),
    "json_schema_unknown_type": sampling(400, "Failed to compile json grammar", json_schema='{"type": "nosuchtype"}'),
    "json_schema_valid": sampling(200, json_schema='{"type": "object", "properties": {"a": {"type": "integer"}}}'),
    "ebnf_invalid": sampling(400, "Failed to compile ebnf grammar", ebnf="root ::= ("),
    "sampling_seed_too_big": sampling(400, "expected i64", sampling_seed=2**70, temperature=1.0),
    "sampling_seed_negative": sampling(200, sampling_seed=-1, temperature=1.0),
    # log probabilities
    "logprob_start_len_past_the_prompt": logprobs(
        400, "is higher than the number of input tokens", logprob_start_len=1000
    ),
    "logprob_start_len_below_minus_1": logprobs(400, "logprob_start_len must be -1", CRASH, logprob_start_len=-5),
    "logprob_start_len_below_minus_1_without_logprob": Probe({**HELLO, "logprob_start_len": -5}, 200),
    "input_logprobs": logprobs(200, logprob_start_len=0, top_logprobs_num=5),
    "top_logprobs_num_vocab": logprobs(200, top_logprobs_num=1024),
    "top_logprobs_num_above_vocab": logprobs(400, "at most the vocabulary size 1024", CRASH, top_logprobs_num=1025),
    "top_logprobs_num_negative": logprobs(200, top_logprobs_num=-3),
    "top_logprobs_num_huge_without_logprob": Probe({**HELLO, "top_logprobs_num": 100000}, 200),
    "token_ids_logprob_out_of_vocab": logprobs(400, "out-of-vocabulary token id 5000", token_ids_logprob=[5000]),
    "token_ids_logprob_negative": logprobs(400, "out-of-vocabulary token id -7", token_ids_logprob=[-7]),
    # OpenAI API
    "completions_empty_prompt": completions(400, "Prompt cannot be empty", prompt=""),
    "completions_empty_ids": completions(400, "Prompt cannot be empty", prompt=[]),
    "completions_batch_with_an_empty_prompt": completions(400, EMPTY, GARBAGE, prompt=["hi", ""]),
    "completions_batch_with_empty_ids": completions(400, EMPTY, GARBAGE, prompt=[[5, 6], []]),
    "completions_ids_out_of_vocab": completions(400, OOV, CRASH, prompt=[5, 99999]),
    "completions_max_tokens_0": completions(400, "max_tokens must be positive", max_tokens=0),
    "completions_max_tokens_huge": completions(400, "maximum context length", max_tokens=10**9),
    "completions_n_0": completions(400, "range() arg 3 must not be zero", n=0),
    "completions_best_of": completions(200, best_of=3),
    "completions_logprobs_huge": completions(400, "at most the vocabulary size", CRASH, logprobs=100000),
    "completions_echo_logprobs": completions(200, logprobs=3, echo=True),
    "completions_logit_bias_out_of_vocab": completions(400, "logit_bias must has keys", logit_bias={"99999": 5}),
    "chat_no_messages": chat(400, "Messages cannot be empty", messages=[]),
    # the tiny model's template renders "user: \nassistant:" for an empty message
    "chat_empty_content": chat(200, messages=[{"role": "user", "content": ""}]),
    "chat_continue_empty_assistant": chat(
        400, "Cannot apply chat template to an empty conversation",
        messages=[{"role": "assistant", "content": ""}], continue_final_message=True, add_generation_prompt=False,
    ),
    "chat_n_0": chat(400, "range() arg 3 must not be zero", n=0),
    "chat_top_logprobs_huge": chat(400, "at most the vocabulary size", CRASH, logprobs=True, top_logprobs=100000),
    "chat_response_format_bad_schema": chat(
        400, "Failed to compile json grammar",
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nosuch"}}},
    ),
    # SGLang answers 500 (IndexError in GenerateReqInput.__getitem__); the server is unaffected
    "batch_with_fewer_sampling_params": Probe({"text": ["a", "b"], "sampling_params": [{"max_new_tokens": 4}]}, 500),
}


@pytest.fixture(scope="module")
def servers(shipped_servers) -> dict[str, Server]:
    """The shipped pair (vocab 1024, context 2048), plain and the chain of 16."""
    return {"plain": shipped_servers["plain"], "sgl_dflash": shipped_servers["chain"]}


@pytest.fixture(scope="module")
def reference(servers) -> dict[str, list[int]]:
    """Each server's greedy answer to NORMAL before any bad request."""
    return {kind: post(server, NORMAL).json()["output_ids"] for kind, server in servers.items()}


def post(server: Server, body: dict[str, Any], path: str = "/generate") -> requests.Response:
    return requests.post(server.url + path, json=body, timeout=120)


def assert_still_serving(server: Server, expected: list[int]) -> None:
    assert server.proc.poll() is None, server.log()[-3000:]
    assert post(server, NORMAL).json()["output_ids"] == expected
    assert "Scheduler hit an exception" not in server.log()


@pytest.mark.parametrize("name", PROBES)
@pytest.mark.parametrize("kind", KINDS)
def test_bad_request_gets_a_clear_answer_and_the_server_keeps_serving(servers, reference, kind, name):
    probe = PROBES[name]
    r = post(servers[kind], probe.body, probe.path)
    assert (r.status_code, probe.message in r.text) == (probe.status, True), r.text[:500]
    assert_still_serving(servers[kind], reference[kind])


@pytest.mark.parametrize("kind", KINDS)
def test_bad_requests_among_good_ones_fail_alone(servers, reference, kind):
    """Bad requests arriving with good ones fail without touching the good ones' output."""
    server = servers[kind]
    good = [{"text": t, "sampling_params": {"max_new_tokens": 24, "temperature": 0}} for t in ("Hello", "def f(x):")]
    alone = [post(server, body).json()["output_ids"] for body in good]
    bad = [{"text": ""}, {"input_ids": [5, 99999]}, {**HELLO, "return_logprob": True, "top_logprobs_num": 5000}]
    with ThreadPoolExecutor(len(good) + len(bad)) as pool:
        answers = list(pool.map(lambda body: post(server, body), good + bad))
    assert [a.json()["output_ids"] for a in answers[: len(good)]] == alone
    assert [a.status_code for a in answers[len(good):]] == [400] * len(bad)
    assert_still_serving(server, reference[kind])


# (prompt tokens, max_new_tokens) up to the 2048-token context
NEAR_CONTEXT = [(1980, 68), (2009, 39), (2010, 38), (2012, 36), (2033, 15), (2040, 8), (2047, 1)]


@pytest.mark.parametrize("kind", KINDS)
def test_requests_near_the_context_limit(servers, reference, kind):
    """Near the context, a request is clipped or refused; SGL_DFLASH also keeps room for its
    2 * block_size reservation (before, a 2040-token prompt killed its scheduler and a
    2012-token one leaked KV slots)."""
    server = servers[kind]
    room = 2 * 16 if kind == "sgl_dflash" else 0
    for length, max_new in NEAR_CONTEXT:
        for temperature in (0.0, 1.0):
            body = {"input_ids": [7] * length,
                    "sampling_params": {"max_new_tokens": max_new, "ignore_eos": True, "temperature": temperature}}
            r = post(server, body)
            if length >= 2042 - room:  # the scheduler's input limit: context - 6, less the reservation
                assert r.status_code == 400 and "exceeds the maximum allowed length" in r.text, r.text[:500]
            else:
                assert r.status_code == 200, r.text[:500]
                assert r.json()["meta_info"]["completion_tokens"] == min(max_new, 2046 - room - length)
    time.sleep(3)  # let the scheduler go idle and run its strict leak check
    assert "memory leak detected" not in server.log()
    assert_still_serving(server, reference[kind])
