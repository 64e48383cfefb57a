"""Every change sgl-dflash makes to SGLang 0.5.23 behaviour, in one place.

Each patch is registered through SGLang's HookRegistry (applied right after
plugins load, in every SGLang process) and says which behaviour it changes
and why. Patches are grouped by when they are needed: ``register_common``
always, ``register_cpu`` only with ``SGLANG_USE_CPU_ENGINE=1``.
"""

from __future__ import annotations

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
    # batches to our block attention: prefix fully visible, block causal
    # (target) or non-causal (DFlash draft layers, ENCODER_ONLY).
    HookRegistry.register(
        "sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend.forward_extend",
        _torch_native_verify_extend,
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
    )
    return out.reshape(q.shape[0], layer.tp_q_head_num * layer.v_head_dim)


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
