"""Registers ``--speculative-algorithm SGL_DFLASH`` with SGLang.

The scheduler wires aux hidden-state capture, draft KV pool sizing, the
2*B over-allocation per decode step and TARGET_VERIFY graphs for algorithms
that answer ``is_dflash()``; SGL_DFLASH needs exactly that wiring, so it
answers like DFLASH everywhere except the worker and its own argument checks.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

from sglang.srt.plugins.hook_registry import HookRegistry, HookType
from sglang.srt.speculative.spec_info import SpeculativeAlgorithm
from sglang.srt.speculative.spec_registry import CustomSpecAlgo

from sgl_dflash import ALGORITHM_NAME
from sgl_dflash.config import SpecConfig
from sgl_dflash.draft_checkpoint import validate_draft, validate_tree

logger = logging.getLogger(__name__)

DEFAULT_MAX_RUNNING_REQUESTS = 48  # same default as the built-in DFLASH (fixed budgets only)
# GET /server_info: internal_states[i][STATE_KEY] is the worker's internal_state() (graph passes, accept totals).
STATE_KEY = "sgl_dflash"


class SglDFlashAlgo(CustomSpecAlgo):
    def is_dflash(self) -> bool:
        return True

    def is_dflash_family(self) -> bool:
        return True

    def supports_target_verify_for_draft(self) -> bool:
        return True

    def supports_prefill_shared_read_done(self) -> bool:
        return True

    def supports_grammar_overlap(self) -> bool:
        return True

    def get_num_tokens_per_req_for_target_verify(
        self, num_draft_tokens: int, is_draft_worker: bool
    ) -> int:
        # The draft pass always fills one block; the target verifies tree nodes.
        return SpecConfig.from_env().block_size if is_draft_worker else num_draft_tokens

    def __getattr__(self, name: str) -> Any:
        # Scheduler helpers the custom-algorithm base lacks (create_future_map,
        # need_topk, carries_draft_hidden_states, ...) behave as for DFLASH.
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(SpeculativeAlgorithm.DFLASH, name)


def resolve_server_args(args: Any) -> None:
    """Validate the launch and fill SGL_DFLASH's defaults.

    Runs in the launching process during argument resolution (see
    sglang_patches), before any scheduler starts or the draft is loaded.
    """
    if args.pp_size != 1:
        raise ValueError(f"{ALGORITHM_NAME} supports pp_size == 1 only, got {args.pp_size}.")
    if getattr(args, "enable_dp_attention", False):
        raise ValueError(f"{ALGORITHM_NAME} does not support --enable-dp-attention yet.")
    if getattr(args, "speculative_draft_window_size", None) is not None:
        raise ValueError(f"{ALGORITHM_NAME} does not support --speculative-draft-window-size yet.")
    if args.device == "cpu":
        _check_cpu_launch(args)

    spec = validate_draft(args.speculative_draft_model_path, args.model_path)
    config = validate_tree(spec, args.speculative_eagle_topk, args.speculative_num_draft_tokens)
    if getattr(args, "speculative_adaptive", False):
        config = replace(config, adaptive=_adaptive_knobs(args.speculative_adaptive_config, config.node_budget))
        # The controller is ours; SGLang's own adaptive mode (EAGLE step tables) stays off.
        args.speculative_adaptive = False
        args.speculative_adaptive_config = None
    config.publish()
    if getattr(args, "speculative_num_steps", None) not in (None, 1):
        logger.warning("%s ignores speculative_num_steps=%s.", ALGORITHM_NAME, args.speculative_num_steps)
    # SGLang's view: top-k 1 keeps its EAGLE tree paths off (the tree is ours);
    # the per-step KV window is what it reserves ahead (twice) per request.
    args.speculative_num_steps = 1
    args.speculative_eagle_topk = 1
    args.speculative_num_draft_tokens = config.window
    if args.device == "cpu":
        args.speculative_draft_attention_backend = "torch_native"
    elif config.topk > 1:
        # The tree's ancestor mask goes through SGLang's custom-mask path, which
        # FlashInfer implements for verify passes (as for EAGLE trees).
        if args.attention_backend not in (None, "flashinfer"):
            raise ValueError(
                f"{ALGORITHM_NAME} trees (--speculative-eagle-topk > 1) need --attention-backend "
                f"flashinfer on GPU, got {args.attention_backend!r}."
            )
        args.attention_backend = "flashinfer"
    if args.max_running_requests is None and config.adaptive is None:
        # With the controller, batches grow as plain decoding's do: it stops speculating where
        # that does not pay, and a cap plain decoding lacks would make it slower there.
        args.max_running_requests = DEFAULT_MAX_RUNNING_REQUESTS
    logger.info(
        "%s: draft %s, block size %d, top-k %d, node budget %d%s, target layers %s, mask token %d",
        ALGORITHM_NAME,
        spec.path,
        spec.block_size,
        config.topk,
        config.node_budget,
        " (adaptive)" if config.adaptive is not None else "",
        list(spec.target_layer_ids),
        spec.mask_token_id,
    )


def _adaptive_knobs(path: Optional[str], node_budget: int) -> str:
    """The JSON text of --speculative-adaptive-config ("" = defaults), validated now."""
    from sgl_dflash.controller import ControllerConfig

    text = ""
    if path:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ValueError(f"--speculative-adaptive-config {path!r}: {e.strerror}.") from None
    try:
        ControllerConfig.from_json(text, node_budget)
    except json.JSONDecodeError as e:
        raise ValueError(f"--speculative-adaptive-config {path!r} is not valid JSON: {e}") from None
    return text


def _check_cpu_launch(args: Any) -> None:
    import os

    if os.environ.get("SGLANG_USE_CPU_ENGINE") != "1":
        raise ValueError("On CPU, set SGLANG_USE_CPU_ENGINE=1 (SGLang's CPU engine).")
    if args.attention_backend not in (None, "torch_native"):
        raise ValueError(
            f"{ALGORITHM_NAME} on CPU needs --attention-backend torch_native, "
            f"got {args.attention_backend!r}."
        )
    if args.dtype not in ("float32", "auto"):
        raise ValueError(
            f"{ALGORITHM_NAME} on CPU runs in float32 only (--dtype float32), got {args.dtype!r}."
        )


def register() -> None:
    SpeculativeAlgorithm.register(
        ALGORITHM_NAME, supports_overlap=True, spec_class=SglDFlashAlgo
    )(_worker_factory)
    # A readback, not a change of behaviour: the scheduler's internal state (GET /server_info)
    # gains the SGL_DFLASH worker's counters, so a test can assert that the draft and verify
    # CUDA graphs were captured and replayed from SGLang's own flags instead of a log line.
    HookRegistry.register(
        "sglang.srt.managers.scheduler_components.internal_state."
        "SchedulerInternalStateController._add_speculative",
        _add_worker_state,
        HookType.AFTER,
    )


def _add_worker_state(result: None, controller: Any, state: dict) -> None:
    worker_state = getattr(controller.scheduler.draft_worker, "internal_state", None)
    if callable(worker_state):
        state[STATE_KEY] = worker_state()


def _worker_factory(server_args: Any) -> type:
    from sgl_dflash.worker import SglDFlashWorker

    return SglDFlashWorker
