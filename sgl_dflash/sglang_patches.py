"""Every change sgl-dflash makes to SGLang 0.5.23 behaviour, in one place.

Each patch is registered through SGLang's HookRegistry (applied right after
plugins load, in every SGLang process) and says which behaviour it changes
and why. Patches are grouped by when they are needed: ``register_common``
always, ``register_cpu`` only with ``SGLANG_USE_CPU_ENGINE=1``.
"""

from __future__ import annotations

import re

import torch
from sglang.srt.plugins.hook_registry import HookRegistry, HookType

from sgl_dflash import ALGORITHM_NAME
from sgl_dflash.verify_attention import block_verify_attention

_SPEC_UTILS = "sglang.srt.speculative.spec_utils"


def register_common() -> None:
    # handle_speculative_decoding loads the draft's HF config (to detect
    # Gemma4 drafts) before it calls the algorithm's own argument handler, so
    # a bad draft path surfaced as an unrelated "Repo id must be ..." error.
    # Run SGL_DFLASH's validation and defaults first instead.
    HookRegistry.register(
        "sglang.srt.arg_groups.speculative_hook.handle_speculative_decoding",
        _resolve_sgl_dflash_args_first,
        HookType.AROUND,
    )
    # spec_need_hidden_states() lists the algorithms whose draft does not need
    # hidden states relayed through the overlap FutureMap by name ("DFLASH",
    # ...). SGL_DFLASH materializes draft KV from target hidden states inside
    # the step, exactly like DFLASH, so it must be on that list too.
    HookRegistry.register(
        f"{_SPEC_UTILS}.spec_need_hidden_states", _no_hidden_relay_for_us, HookType.AFTER
    )
    # DFLASH's verify graphs are captured without a custom mask on backends
    # whose causal path expresses a chain (FlashInfer among them). An
    # SGL_DFLASH tree (top-k > 1) needs its ancestor mask at every replay, so
    # capture with the custom-mask buffer, as SGLang's EAGLE tree verify does.
    HookRegistry.register(
        "sglang.srt.speculative.dflash_utils.resolve_dflash_verify_mask_policy",
        _custom_mask_for_trees,
        HookType.AFTER,
    )
    # ModelRunner._extend_forward_kwargs casts input_embeds to bfloat16
    # unconditionally. The drafter's block embeddings arrive as input_embeds,
    # so an fp32 model would run its draft on bf16-rounded inputs (and fp32
    # layers then see a dtype mismatch). Keep the embeddings' own dtype when
    # it is the runner's dtype.
    HookRegistry.register(
        "sglang.srt.model_executor.model_runner.ModelRunner._extend_forward_kwargs",
        _keep_input_embeds_dtype,
        HookType.AROUND,
    )
    # TokenizerManager._validate_one_request checks a prompt's length only
    # against the context, and GenerateReqInput rejects only a top-level
    # empty input_ids. Requests that reach the scheduler anyway kill it (and
    # so the whole server): a prompt of 0 tokens ("" with a tokenizer that
    # adds no BOS, or an empty entry of a batch) fails in the logits
    # processor, or, batched with others, silently gets another request's
    # logits; a token id outside the vocabulary fails in the embedding; with
    # return_logprob, logprob_start_len below -1 trips an assertion and
    # top_logprobs_num above the vocabulary size fails in topk. Reject these
    # where SGLang already rejects bad input, so the client gets a 400.
    HookRegistry.register(
        "sglang.srt.managers.tokenizer_manager.TokenizerManager._validate_one_request",
        _reject_requests_that_crash_the_scheduler,
        HookType.BEFORE,
    )
    # SamplingParams.normalize sizes each stop_regex with sre_parse, whose
    # re.error is no ValueError, so an unparsable pattern ("((") got a 500;
    # one that parses but does not compile ("(?<=a+)b") was only caught by the
    # scheduler's seatbelt after the request had been prefilled. Compile each
    # pattern first, so both get a 400 before reaching the scheduler.
    HookRegistry.register(
        "sglang.srt.sampling.sampling_params.get_max_seq_length",
        _compile_stop_regex_first,
        HookType.AROUND,
    )
    # The scheduler lets a request grow to context_len - 1 tokens, but each
    # DFLASH-family step reserves 2 * W req_to_token slots past the committed
    # length (W = speculative_num_draft_tokens; DFlashDraftInputV2.
    # prepare_for_decode) in rows only W + 4 wider than the context. Requests
    # that got within 2 * W of the context killed the scheduler (a 2040-token
    # prompt on the tiny model's 2048 context: a row overflow in
    # alloc_for_spec_decode) or leaked KV slots (2012 or 2033 tokens; fatal
    # with SGLang's strict idle memory check). Shrink the scheduler's length
    # limits by 2 * W for SGL_DFLASH: longer prompts get its clean "Input
    # length ... exceeds" 400, and max_new_tokens is clipped to fit, as SGLang
    # already clips it at the context length.
    HookRegistry.register(
        "sglang.srt.managers.scheduler.Scheduler.init_model_worker",
        _leave_room_for_the_block_reservation,
        HookType.AFTER,
    )


def register_cpu() -> None:
    from sglang.srt.arg_groups.choices import (
        DRAFT_ATTENTION_BACKEND_CHOICES,
        add_draft_attention_backend_choices,
    )

    # The draft worker only accepts GPU attention backends; on CPU the draft
    # runs on torch_native like the target (SGLang's own extension API).
    if "torch_native" not in DRAFT_ATTENTION_BACKEND_CHOICES:
        add_draft_attention_backend_choices(["torch_native"])
    # TorchNativeAttnBackend.forward_extend reads extend_prefix_lens /
    # extend_seq_lens, which TARGET_VERIFY batches (target verify and DFlash
    # draft blocks) do not carry, and it has no block/custom mask. Route those
    # batches to our block attention: prefix fully visible, then a verified
    # tree's ancestor mask (the verify input's custom_mask), a causal block
    # (a chain) or a non-causal one (DFlash draft layers, ENCODER_ONLY).
    HookRegistry.register(
        "sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend.forward_extend",
        _torch_native_verify_extend,
        HookType.AROUND,
    )
    # F.linear on CPU fp32 goes to MKL's sgemm, which is inefficient for a
    # few rows: measured on the twin pair's layer shapes (1 thread, AMD EPYC),
    # 2 rows cost 2.0x one row, 4 rows 2.3x, 16 rows 3.6x, where the weights'
    # memory traffic (the same for all) should dominate. Verifying a few
    # speculative tokens and decoding a small batch both live there, so the
    # CPU made speculation look far costlier than on a GPU. oneDNN with the
    # weight prepacked once (what PyTorch's own CPU compiler does) costs 1.1x
    # for 2 rows, 1.4x for 4 and 2.5x for 16 (bench/cpu_linear.py). Applies
    # to every CPU server (plain decoding too), so comparisons stay like for like.
    if torch.backends.mkldnn.is_available():
        HookRegistry.register(
            "sglang.srt.layers.quantization.unquant.UnquantizedLinearMethod.apply",
            _prepacked_cpu_linear,
            HookType.AROUND,
        )
    # The built-in DFLASH refuses device "cpu" by platform check, although
    # with the patches here it runs there. Allowed so that benchmarks can
    # compare SGL_DFLASH against the built-in on the same CPU machine.
    HookRegistry.register(
        "sglang.srt.arg_groups.speculative_hook._handle_dflash",
        _allow_builtin_dflash_on_cpu,
        HookType.AROUND,
    )
    # The built-in DFLASH worker calls Tensor.record_stream unconditionally;
    # CPU tensors have no streams and raise. No-op for CPU tensors only.
    _original_record_stream = torch.Tensor.record_stream

    def record_stream(self: torch.Tensor, stream) -> None:
        if self.device.type != "cpu":
            _original_record_stream(self, stream)

    torch.Tensor.record_stream = record_stream


def _resolve_sgl_dflash_args_first(original, server_args) -> None:
    from sglang.srt.arg_groups.overrides import record_foreign_defaults, resolving_view

    from sgl_dflash.algorithm import resolve_server_args

    if str(resolving_view(server_args).speculative_algorithm).upper() == ALGORITHM_NAME:
        record_foreign_defaults(server_args, ALGORITHM_NAME, resolve_server_args)
    original(server_args)


def _no_hidden_relay_for_us(result: bool) -> bool:
    from sglang.srt.runtime_context import get_spec

    return False if get_spec().speculative_algorithm == ALGORITHM_NAME else result


def _custom_mask_for_trees(result: tuple[str, bool]) -> tuple[str, bool]:
    from sglang.srt.runtime_context import get_spec

    from sgl_dflash.config import SpecConfig

    if get_spec().speculative_algorithm == ALGORITHM_NAME and SpecConfig.from_env().topk > 1:
        return result[0], True
    return result


def _keep_input_embeds_dtype(original, self, forward_batch, pp_proxy_tensors):
    kwargs = original(self, forward_batch, pp_proxy_tensors)
    embeds = forward_batch.input_embeds
    if (
        embeds is not None
        and forward_batch.replace_embeds is None
        and embeds.dtype == self.dtype
    ):
        kwargs["input_embeds"] = embeds
    return kwargs


def _reject_requests_that_crash_the_scheduler(self, obj, input_ids) -> None:
    """Raise ValueError (HTTP 400) for a (sub-)request the scheduler cannot serve."""
    vocab_size = self.model_config.vocab_size
    # input_embeds requests carry no ids to check.
    if input_ids is not None and obj.input_embeds is None:
        session = getattr(obj, "session_params", None)
        # A session request may be empty: the session history is its prompt.
        if not input_ids and not (isinstance(session, dict) and session.get("id")):
            raise ValueError(
                "The prompt is empty: it has 0 tokens after tokenization. "
                "Send at least one token."
            )
        # Multimodal prompts may hold placeholder ids that the model replaces.
        if input_ids and not obj.contains_mm_input():
            bad = [t for t in (min(input_ids), max(input_ids)) if not 0 <= t < vocab_size]
            if bad:
                raise ValueError(
                    f"input_ids contains token id {bad[0]} outside the vocabulary; "
                    f"valid range is [0, {vocab_size})."
                )
    if not getattr(obj, "return_logprob", False):
        return  # the scheduler ignores the logprob fields then
    if obj.logprob_start_len < -1:
        raise ValueError(
            "logprob_start_len must be -1 (output tokens only) or a prompt "
            f"position >= 0, got {obj.logprob_start_len}."
        )
    if obj.top_logprobs_num > vocab_size:
        raise ValueError(
            f"top_logprobs_num must be at most the vocabulary size {vocab_size}, "
            f"got {obj.top_logprobs_num}."
        )


def _compile_stop_regex_first(original, regex_str: str) -> int:
    try:
        re.compile(regex_str)
    except re.error as e:
        raise ValueError(f"stop_regex {regex_str!r} is not a valid regular expression: {e}") from e
    return original(regex_str)


def _leave_room_for_the_block_reservation(result: None, self) -> None:
    from sglang.srt.runtime_context import get_spec

    spec = get_spec()
    if spec.speculative_algorithm == ALGORITHM_NAME:
        reserve = 2 * int(spec.speculative_num_draft_tokens)
        self.max_req_len -= reserve
        self.max_req_input_len -= reserve


def _torch_native_verify_extend(
    original, self, q, k, v, layer, forward_batch, save_kv_cache: bool = True
):
    if not forward_batch.forward_mode.is_target_verify():
        return original(self, q, k, v, layer, forward_batch, save_kv_cache)
    from sglang.srt.layers.radix_attention import AttentionType
    from sglang.srt.mem_cache.memory_pool import KVWriteLoc

    if save_kv_cache and k is not None and v is not None:
        self.token_to_kv_pool.set_kv_buffer(
            layer, KVWriteLoc(forward_batch.out_cache_loc, self.swa_out_cache_loc), k, v
        )
    out = block_verify_attention(
        q.view(-1, layer.tp_q_head_num, layer.qk_head_dim),
        self.token_to_kv_pool.get_key_buffer(layer.layer_id),
        self.token_to_kv_pool.get_value_buffer(layer.layer_id),
        self.req_to_token_pool.req_to_token,
        forward_batch.req_pool_indices,
        forward_batch.seq_lens,
        causal=layer.attn_type != AttentionType.ENCODER_ONLY,
        scaling=layer.scaling,
        custom_mask=getattr(forward_batch.spec_info, "custom_mask", None),
    )
    return out.reshape(q.shape[0], layer.tp_q_head_num * layer.v_head_dim)


def _prepacked_cpu_linear(original, self, layer, x: torch.Tensor, bias=None) -> torch.Tensor:
    weight = layer.weight
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return original(self, layer, x, bias)
    # Re-packed when the weight is replaced or updated in place (weight updates);
    # a weight made under inference mode has no version counter (nor in-place updates).
    key = (weight.data_ptr(), 0 if weight.is_inference() else weight._version)
    packed = getattr(layer, "_sgl_dflash_onednn_weight", None)
    if packed is None or packed[0] != key:
        packed = (key, torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None))
        layer._sgl_dflash_onednn_weight = packed
    rows = x.reshape(-1, x.shape[-1])
    out = torch.ops.mkldnn._linear_pointwise(rows, packed[1], bias, "none", [], "")
    return out.view(*x.shape[:-1], out.shape[-1])


def _allow_builtin_dflash_on_cpu(original, server_args):
    """Answer the platform checks as a CPU platform that supports DFLASH would."""
    from sglang.srt.platforms import current_platform

    platform = type(current_platform)
    answers = {
        "is_out_of_tree": lambda self: True,
        "supports_speculative_algorithm": lambda self, algorithm: True,
        "supports_speculative_draft_attention_backend": (
            lambda self, algorithm, backend: backend == "torch_native"
        ),
        "get_default_speculative_draft_attention_backend": lambda self, algorithm: "torch_native",
    }
    saved = {name: getattr(platform, name) for name in answers}
    for name, answer in answers.items():
        setattr(platform, name, answer)
    try:
        return original(server_args)
    finally:
        for name, method in saved.items():
            setattr(platform, name, method)
