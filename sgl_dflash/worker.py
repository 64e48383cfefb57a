"""The SGL_DFLASH speculative worker: schedule -> draft -> verify -> accept -> commit.

Setup (draft ModelRunner, shared KV pools, mask token, draft CUDA graphs) and
the context-KV materializer are inherited from SGLang's DFlashWorkerV2; every
decode step is ours, orchestrating one module per stage:

1. schedule: the step's KV window (``StepWindow``): W = max(B, N) slots after
   each request's prefix, reserved ahead by the scheduler.
2. draft (tree): one non-causal draft pass over context KV + the block
   ``[bonus, MASK x (B-1)]``; each position's top-K through the target's
   lm_head; the best-first tree of N nodes (``DraftTree``).
3. verify (tree_mask, penalties): one TARGET_VERIFY pass over the N nodes,
   each attending to the prefix and its ancestors; the target's logits at
   every node adjusted as plain decoding would (penalties by the node's own
   history, grammar, logit bias, custom logit processors).
4. accept (acceptance): the target's choice at every node; the walk from the
   root along agreeing children; the bonus.
5. commit (commit): the accepted path's KV moved right after the prefix, its
   target hidden states written into the draft's context KV, the committed
   tokens returned to the scheduler (which keeps the window reserved).
"""

from __future__ import annotations

import logging
import platform
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from sglang.kernels.ops.speculative.cache_locs import assign_extend_cache_locs_func
from sglang.srt.layers.logprob_processor import compute_spec_logprobs
from sglang.srt.layers.sampler import apply_custom_logit_processor
from sglang.srt.managers.schedule_batch import ScheduleBatch
from sglang.srt.managers.scheduler import GenerationBatchResult
from sglang.srt.model_executor.forward_batch_info import (
    CaptureHiddenMode,
    ForwardBatch,
    ForwardMode,
    compute_position,
    enable_num_token_non_padded,
)
from sglang.srt.runtime_context import get_parallel, get_spec
from sglang.srt.speculative.dflash_info import DFlashVerifyInput
from sglang.srt.speculative.dflash_info_v2 import DFlashDraftInputV2
from sglang.srt.speculative.dflash_worker_v2 import DFlashWorkerV2
from sglang.srt.speculative.draft_worker_common import make_draft_input_v2
from sglang.srt.speculative.spec_info import SpeculativeAlgorithm
from sglang.srt.speculative.spec_utils import GrammarTree, build_grammar_vocab_mask
from sglang.srt.utils import async_h2d

from sgl_dflash import ALGORITHM_NAME
from sgl_dflash.accept_stats import AcceptStats
from sgl_dflash.acceptance import Acceptance, target_choices, walk_tree
from sgl_dflash.commit import compact_kv, path_rows
from sgl_dflash.config import SpecConfig
from sgl_dflash.controller import BudgetController, ControllerConfig, StepRecord
from sgl_dflash.cost_model import PROFILE_FORMAT, StepCostModel, default_profile_path
from sgl_dflash.penalties import PenaltyState
from sgl_dflash.step import DraftTree, StepWindow
from sgl_dflash.step_timing import StepTimer
from sgl_dflash.tree import DraftTopKHead, grammar_links, make_tree, root_tree
from sgl_dflash.tree_mask import verify_mask
from sgl_dflash.value_model import AcceptanceCalibration

logger = logging.getLogger(__name__)


class SglDFlashWorker(DFlashWorkerV2):
    def __init__(self, server_args, gpu_id: int, nccl_port: int, target_worker) -> None:
        self.config = SpecConfig.from_env()
        # SGLang's speculative_num_draft_tokens is the step's KV window; the
        # inherited draft setup (block size, buffers, draft graphs) needs B.
        with get_spec().override(speculative_num_draft_tokens=self.config.block_size):
            super().__init__(server_args, gpu_id, nccl_port, target_worker)
        if self.selector is not None or self.lilicorr is not None or self._is_domino:
            raise ValueError(
                f"{ALGORITHM_NAME} supports plain DFlash drafts; this checkpoint has a "
                "selector / LiLiCorr / Domino head (use --speculative-algorithm DFLASH)."
            )
        if get_parallel().tp_size != 1:
            raise ValueError(f"{ALGORITHM_NAME} supports --tp-size 1 only (the tree's top-K head is unsharded).")
        runner = self.target_worker.model_runner
        lm_head = getattr(runner.model, "lm_head", None)
        if lm_head is None or not hasattr(lm_head, "weight"):
            raise ValueError(f"{ALGORITHM_NAME} needs a target with a dense lm_head.")
        self.stats = AcceptStats()
        self.passes = GraphPasses()
        self.timer = StepTimer(self.device)
        # Sized by the request pool, which exists only after alloc_memory_pool.
        self._head: Optional[DraftTopKHead] = None
        self._penalties: Optional[PenaltyState] = None
        self.controller: Optional[BudgetController] = None  # built after the graphs: it profiles them
        self._on_cpu = torch.device(self.device).type == "cpu"
        self._last_step: Optional[tuple[float, float]] = None  # (start, forward seconds) on CPU
        self._profile_context = 0  # prefix length of the cost profile's dummy requests
        self._step_confidence = False  # the controller reads this step's trees back (stage 2)

    @property
    def head(self) -> DraftTopKHead:
        if self._head is None:
            runner = self.target_worker.model_runner
            weight = runner.model.lm_head.weight[: runner.model_config.vocab_size]
            self._head = DraftTopKHead(
                weight, self.config.block_size, self.config.topk, runner.req_to_token_pool.size
            )
        return self._head

    @property
    def penalties(self) -> PenaltyState:
        if self._penalties is None:
            runner = self.target_worker.model_runner
            slots = runner.req_to_token_pool.req_to_token.shape[0]  # request slot indices index its rows
            self._penalties = PenaltyState(slots, runner.model_config.vocab_size, self.device)
        return self._penalties

    def _maybe_build_draft_sampler(self) -> DraftTopKHead:
        # Folded into the captured draft graph by DFlashWorkerV2.init_cuda_graphs.
        return self.head

    def init_cuda_graphs(self) -> None:
        super().init_cuda_graphs()
        if self.config.adaptive is not None:
            self.controller = self._build_controller()

    def _build_controller(self) -> BudgetController:
        knobs = ControllerConfig.from_json(self.config.adaptive, self.config.node_budget)
        runner = self.target_worker.model_runner
        max_bs = runner.req_to_token_pool.size
        key = {
            "format": PROFILE_FORMAT,
            "target": str(Path(runner.model_config.model_path).resolve()),
            "draft": str(Path(self.draft_model_runner.model_config.model_path).resolve()),
            "device": torch.cuda.get_device_name(self.device) if self.device != "cpu" else platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "dtype": str(runner.dtype),
            "block_size": self.config.block_size,
            "topk": self.config.topk,
            "budgets": list(knobs.budgets),
            "max_bs": max_bs,
            "context": knobs.profile_context,
        }
        path = Path(knobs.profile_path) if knobs.profile_path else default_profile_path(key)
        self._profile_context = knobs.profile_context
        self._step_confidence = self._on_cpu if knobs.use_step_confidence is None else knobs.use_step_confidence
        costs = StepCostModel.load_or_measure(
            path,
            key,
            lambda: StepCostModel.measure(
                self._time_draft, self._time_verify, list(knobs.budgets), max_bs, knobs.profile_seconds
            ),
            list(knobs.budgets),
        )
        calibration = AcceptanceCalibration(self.device)
        resumed = calibration.load_state(costs.acceptance)
        if resumed:
            logger.info("%s acceptance calibration resumed from %s (%.0f verified nodes)", ALGORITHM_NAME, path, resumed)
        return BudgetController(knobs, costs, calibration)

    def on_verify_complete_cpu(self, num_correct_drafts_per_req: list[int], batch_size: int = 0) -> None:
        if self.controller is not None:
            self.controller.on_accepted(num_correct_drafts_per_req)

    def note_request_finished(self, *, rid: str, natural_stop: bool) -> None:
        if self.controller is not None:
            self.controller.forget(rid)

    def internal_state(self) -> dict:
        """The worker's counters, in GET /server_info as internal_states[i]["sgl_dflash"] (algorithm.py).

        graphs: per stage the batch sizes SGLang captured a decode CUDA graph for (the draft
        runner's block graphs; the target's verify graphs, at the window max(N, B) per request)
        and the serving passes replayed from them or run eagerly, as SGLang's
        ModelRunner.forward reported each (on CPU: nothing captured, every pass eager).
        accept: the running totals of AcceptStats.
        """
        if not self._on_cpu:
            torch.cuda.synchronize(self.device)  # the sums below are written on the forward stream
        committed, branches = self.stats.totals()
        runners = {"draft": self.draft_model_runner, "verify": self.target_worker.model_runner}
        return {
            "config": {"block_size": self.config.block_size, "topk": self.config.topk,
                       "node_budget": self.config.node_budget, "adaptive": self.config.adaptive is not None},
            "graphs": {stage: {"captured_bs": _captured_bs(runner), **self.passes.counts[stage]}
                       for stage, runner in runners.items()},
            "accept": {"steps": self.stats.steps, "request_steps": self.stats.request_steps,
                       "committed_tokens": committed, "branches_taken": branches},
        }

    # ------------------------------------------------------------------ entry

    def forward_batch_generation(
        self,
        batch: ScheduleBatch,
        on_publish: Optional[Callable] = None,
        grammar_barrier=None,
        pp_proxy_tensors=None,
    ) -> GenerationBatchResult:
        if batch.forward_mode.is_extend() or batch.is_extend_in_batch:
            return self._prefill(batch, on_publish)
        if batch.forward_mode.is_idle():
            return self._idle(on_publish)
        if not isinstance(batch.spec_info, DFlashDraftInputV2):
            raise RuntimeError(f"{ALGORITHM_NAME} expected DFlash draft state on the batch.")
        if batch.seq_lens.is_cuda:
            # Under overlap scheduling seq_lens may come from another stream.
            batch.seq_lens.record_stream(torch.cuda.current_stream())
        start = self.timer.step_start()
        rids = [req.rid for req in batch.reqs]
        budget = self.config.node_budget
        if self.controller is not None:
            budget = self.controller.before_draft(rids)
        clock = self._clock()
        window = self._schedule(batch)
        with self.timer.stage("draft"):
            # The largest budget is drafted: its prefixes price (and are) every smaller tree.
            full_tree = self._draft(batch, window, self.config.node_budget if budget > 1 else 1)
        drafted_clock = self._clock()
        curves = host_curves = None
        if self.controller is not None and budget > 1:
            curves = self.controller.calibration.expected_commits(full_tree.scores, self.controller.budgets)
            host_curves = curves.cpu() if self._step_confidence else None  # stage 2 waits for the draft
            budget = self.controller.after_draft(rids, host_curves, budget)
        tree = full_tree.prefix(budget)
        if self.controller is not None:
            self.speculative_num_draft_tokens = budget  # SGLang's gauge sglang:spec_num_draft_tokens
        with self.timer.stage("verify"):
            logits_output, can_run_graph = self._verify(batch, window, tree, grammar_barrier)
        self.passes.record("verify", can_run_graph)
        acceptance = self._accept(batch, tree, logits_output)
        result = self._commit(batch, window, tree, logits_output, acceptance, can_run_graph, on_publish)
        if self.controller is not None:
            clocks = (clock, drafted_clock, self._clock())
            self._report(rids, budget, curves, host_curves, tree, acceptance, clocks)
        self.timer.step_done(start, window.batch_size)
        return result

    def _report(self, rids, budget: int, curves, host_curves, tree: DraftTree, acceptance: Acceptance, clocks) -> None:
        """Hand the step's statistics to the controller (without waiting for the device)."""
        controller = self.controller
        tokens, seconds = controller.prediction(rids, host_curves, budget, drafted=curves is not None)
        if self._on_cpu:
            start, drafted, end = clocks
            if self._last_step is not None:
                # Between back-to-back steps, the rest of the period is the scheduler's own work.
                period, forward = start - self._last_step[0], self._last_step[1]
                if period < 3 * forward:
                    controller.costs.observe_overhead(len(rids), period - forward)
            self._last_step = (start, end - start)
            timing = (drafted - start, end - drafted)
        else:
            timing = clocks
        counts = None
        if curves is not None:
            counts = controller.calibration.step_counts(tree.scores, _on_path(acceptance.path, tree.num_nodes))
        controller.after_step(StepRecord(rids, budget, tokens, seconds, curves, counts, timing))

    def _clock(self):
        """The host clock on CPU; a recorded CUDA event on GPU (read later, never waited for)."""
        if self.controller is None:
            return None
        if self._on_cpu:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    # ---------------------------------------------------------- cost profile

    def _time_draft(self, bs: int, _: int) -> float:
        """Seconds of one draft pass over dummy requests (KV writes go to the sink slot)."""
        prefix = self._dummy_prefix(bs)
        window = self._dummy_window(bs, prefix)
        root = torch.zeros(bs, dtype=torch.long, device=self.device)
        return self._timed(lambda: self._draft_pass(root, window))

    def _time_verify(self, bs: int, n: int) -> float:
        """Seconds of one target verify pass of n nodes per dummy request."""
        prefix = self._dummy_prefix(bs)
        window = self._dummy_window(bs, prefix)
        runner = self.target_worker.model_runner
        positions = (prefix[:, None] + torch.arange(n, device=self.device)).reshape(-1)
        lens, context = window.kv_lens_cpu, self._profile_context
        forward_batch = ForwardBatch(
            forward_mode=ForwardMode.TARGET_VERIFY,
            batch_size=bs,
            input_ids=torch.zeros(bs * n, dtype=torch.long, device=self.device),
            req_pool_indices=window.kv_loc_plan.req_pool_indices,
            seq_lens=prefix,
            out_cache_loc=window.slots[:, :n].reshape(-1),
            seq_lens_sum=int(lens.sum()),
            seq_lens_cpu=lens,
            positions=positions,
            spec_algorithm=SpeculativeAlgorithm.DFLASH,
            spec_info=DFlashVerifyInput(
                draft_token=torch.zeros(bs * n, dtype=torch.long, device=self.device),
                positions=positions,
                draft_token_num=n,
                custom_mask=(
                    torch.ones(bs * n * (context + n), dtype=torch.bool, device=self.device)
                    if self.config.topk > 1 else None
                ),
                capture_hidden_mode=CaptureHiddenMode.FULL,
            ),
            capture_hidden_mode=CaptureHiddenMode.FULL,
            global_num_token_non_padded_cpu=bs * n,
        )
        window.kv_loc_plan.bind(forward_batch, runner.kv_index_translator, cols=slice(0, n))
        return self._timed(lambda: runner.forward(forward_batch))

    def _dummy_prefix(self, bs: int) -> torch.Tensor:
        return torch.full((bs,), self._profile_context, dtype=torch.int64, device=self.device)

    def _dummy_window(self, bs: int, prefix: torch.Tensor) -> StepWindow:
        """Request slot 0 and KV slot 0 (SGLang's sink for padded tokens), before any request exists."""
        slots = torch.zeros(bs, self.config.window, dtype=torch.int64, device=self.device)
        prefix_cpu = torch.full((bs,), self._profile_context, dtype=torch.int32)
        plan = self.model_runner.kv_index_translator.plan(
            req_pool_indices=torch.zeros(bs, dtype=torch.int64, device=self.device),
            seq_lens=prefix,
            seq_lens_cpu=prefix_cpu,
            write_virtual=slots.reshape(-1),
            read_extent=self.config.window,
        )
        return StepWindow(prefix, slots, plan, prefix_cpu + self.config.window)

    def _timed(self, run: Callable[[], object]) -> float:
        sync = (lambda: None) if self._on_cpu else torch.cuda.synchronize
        with torch.no_grad():  # not inference_mode: the draft head's buffers are created here
            sync()
            start = time.perf_counter()
            run()
            sync()
        return time.perf_counter() - start

    # ---------------------------------------------------------------- prefill

    def _prefill(self, batch: ScheduleBatch, on_publish) -> GenerationBatchResult:
        """Target prefill with hidden capture; prompt rows become draft context KV."""
        out = self.target_worker.forward_batch_generation(
            batch, capture_hidden_mode=CaptureHiddenMode.FULL, return_kv_loc_plan=True
        )
        kv_loc_plan, out.kv_loc_plan = out.kv_loc_plan, None
        out.new_seq_lens = batch.seq_lens
        if on_publish is not None:
            on_publish(out.new_seq_lens)
        if batch.forward_mode.is_idle():
            out.next_draft_input = DFlashDraftInputV2.create_idle_input(device=self.device)
            return out
        hidden = out.logits_output.hidden_states
        if hidden is None:
            raise RuntimeError(f"{ALGORITHM_NAME}: target prefill returned no hidden states.")
        device = out.next_token_ids.device
        extend_lens = async_h2d(batch.extend_lens, dtype=torch.int32, device=device)
        prefix_lens = async_h2d(batch.prefix_lens, dtype=torch.int32, device=device)
        positions, _ = compute_position(
            self.model_runner.prefill_attention_backend_str,
            prefix_lens,
            extend_lens,
            int(sum(batch.extend_lens)),
        )
        # Written now, before the scheduler can insert these slots into the radix cache.
        self._append_target_hidden_to_draft_kv_by_loc(
            target_hidden=hidden,
            cache_loc=self._draft_write_ids(kv_loc_plan),
            positions=positions,
            extend_lens=extend_lens,
        )
        out.logits_output.hidden_states = None  # not shipped to the CPU
        self._last_step = None  # the next decode step's period would include this prefill
        if PenaltyState.needed(batch.sampling_info):
            self.penalties.start(batch.reqs, batch.req_pool_indices, out.next_token_ids)
        out.next_draft_input = make_draft_input_v2(
            bonus_tokens=out.next_token_ids, new_seq_lens=batch.seq_lens
        )
        return out

    def _idle(self, on_publish) -> GenerationBatchResult:
        empty = torch.empty((0,), dtype=torch.int64, device=self.device)
        next_input = make_draft_input_v2(bonus_tokens=empty, new_seq_lens=empty)
        if on_publish is not None:
            on_publish(next_input.new_seq_lens)
        return GenerationBatchResult(
            logits_output=None,
            next_token_ids=empty,
            accept_lens=torch.empty((0,), dtype=torch.int32, device=self.device),
            next_draft_input=next_input,
            can_run_cuda_graph=False,
            speculative_num_draft_tokens=self.config.node_budget,
            new_seq_lens=empty,
        )

    # --------------------------------------------------------------- schedule

    def _schedule(self, batch: ScheduleBatch) -> StepWindow:
        bs, width = len(batch.seq_lens), self.config.window
        prefix_lens = batch.seq_lens
        slots = assign_extend_cache_locs_func(
            req_pool_indices=batch.req_pool_indices,
            req_to_token=self.model_runner.req_to_token_pool.req_to_token,
            start_offset=prefix_lens,
            end_offset=prefix_lens + width,
            batch_size=bs,
            draft_token_num=width,
            device=self.device,
        ).view(bs, width)
        plan = self.model_runner.kv_index_translator.plan(
            req_pool_indices=batch.req_pool_indices,
            seq_lens=prefix_lens,
            seq_lens_cpu=self._committed_lens_cpu(batch),
            write_virtual=slots.reshape(-1),
            read_extent=width,
        )
        return StepWindow(prefix_lens, slots, plan, self._window_lens_cpu(batch))

    @staticmethod
    def _committed_lens_cpu(batch: ScheduleBatch) -> Optional[torch.Tensor]:
        if batch.seq_lens_cpu is not None:
            return batch.seq_lens_cpu
        return batch.spec_info.nxt_kv_lens_cpu

    def _window_lens_cpu(self, batch: ScheduleBatch) -> torch.Tensor:
        """Host upper bound of each request's KV length while the step is in flight."""
        if batch.seq_lens_cpu is not None:
            return batch.seq_lens_cpu.to(torch.int32) + self.config.window
        if batch.spec_info.nxt_kv_lens_cpu is not None:
            return batch.spec_info.nxt_kv_lens_cpu.clone()
        return torch.tensor([r.kv.kv_allocated_len for r in batch.reqs], dtype=torch.int32)

    # ------------------------------------------------------------------ draft

    def _draft(self, batch: ScheduleBatch, window: StepWindow, num_nodes: int) -> DraftTree:
        """One non-causal draft pass over the block, then the best-first tree of num_nodes."""
        root = batch.spec_info.bonus_tokens
        if num_nodes == 1:  # nothing to draft: the step verifies the root alone
            return root_tree(root, window.prefix_lens)
        topk_ids, topk_probs = self._draft_pass(root, window, batch.can_run_decode_cuda_graph, count=True)
        return make_tree(root, topk_ids, topk_probs, num_nodes, window.prefix_lens)

    def _draft_pass(
        self, root: torch.Tensor, window: StepWindow, can_run_graph: bool = True, count: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The drafter over ``[root, MASK x (B-1)]``: each position's top-K, [bs, B-1, K] each.

        count: a serving pass, counted in ``self.passes`` (the cost profile's passes are not).
        """
        bs, size = window.batch_size, self.config.block_size
        ids = torch.full((bs, size), int(self._mask_token_id), dtype=torch.long, device=self.device)
        ids[:, 0] = root
        positions = window.prefix_lens[:, None].to(torch.int64) + self._block_pos_offsets[None, :]
        target = self.target_worker.model_runner.model
        embeds = target.get_input_embeddings()(ids).view(bs * size, -1)
        if self._noise_embed_scale != 1.0:  # targets that scale their embeddings (e.g. Gemma)
            embeds = embeds * self._noise_embed_scale
        lens_cpu = window.kv_lens_cpu
        forward_batch = ForwardBatch(
            forward_mode=ForwardMode.TARGET_VERIFY,
            batch_size=bs,
            input_ids=ids.reshape(-1),
            req_pool_indices=window.kv_loc_plan.req_pool_indices,
            seq_lens=window.prefix_lens,
            out_cache_loc=window.slots[:, :size].reshape(-1),
            seq_lens_sum=int(lens_cpu.sum()),
            seq_lens_cpu=lens_cpu,
            positions=positions.reshape(-1),
            input_embeds=embeds,
            spec_algorithm=SpeculativeAlgorithm.DFLASH,
            spec_info=self._draft_block_spec_info,
            capture_hidden_mode=CaptureHiddenMode.NULL,
            num_token_non_padded=(
                torch.full((), bs * size, dtype=torch.int32, device=self.device)
                if enable_num_token_non_padded()
                else None
            ),
            global_num_token_non_padded_cpu=bs * size,
            can_run_decode_cuda_graph=can_run_graph,
        )
        window.kv_loc_plan.bind(
            forward_batch, self.draft_model_runner.kv_index_translator, cols=slice(0, size)
        )
        with torch.inference_mode():
            out = self.draft_model_runner.forward(forward_batch)
        if count:
            self.passes.record("draft", out.can_run_graph)
        if not (self._draft_sampler is self.head and out.can_run_graph):
            hidden = out.logits_output.hidden_states
            if hidden is None:
                raise RuntimeError(f"{ALGORITHM_NAME}: draft forward returned no hidden states.")
            self.head(hidden, ids)  # eager; on GPU graphs it ran inside the replay
        return self.head.read(bs)

    # ----------------------------------------------------------------- verify

    def _verify(self, batch: ScheduleBatch, window: StepWindow, tree: DraftTree, grammar_barrier):
        """Target forward over the tree. Returns (logits_output with adjusted logits, graph?)."""
        n = tree.num_nodes
        # Before the launch: the grammar tree's host copy overlaps the forward.
        grammar_tree = GrammarTree.from_device(*grammar_links(tree), tree.tokens) if batch.has_grammar else None
        verify_input = DFlashVerifyInput(
            draft_token=tree.tokens.reshape(-1),
            positions=tree.positions.reshape(-1),
            draft_token_num=n,
            custom_mask=verify_mask(tree, self.config.topk, window.prefix_lens, batch.seq_lens_sum),
            capture_hidden_mode=CaptureHiddenMode.FULL,
            kv_loc_plan=window.kv_loc_plan,
            kv_loc_cols=slice(0, n),
        )
        batch.out_cache_loc = window.slots[:, :n].reshape(-1)
        saved = batch.seq_lens_cpu, batch.seq_lens_sum
        batch.seq_lens_cpu, batch.seq_lens_sum = window.kv_lens_cpu, int(window.kv_lens_cpu.sum())
        forward_batch, _ = verify_input.prepare_for_verify(batch, self.target_worker)
        batch.seq_lens_cpu, batch.seq_lens_sum = saved
        out = self.target_worker.forward_batch_generation(
            batch=None, forward_batch=forward_batch, is_verify=True, skip_attn_backend_init=True
        )
        logits_output = out.logits_output
        lp = self._target_logits_processor
        if lp is not None and lp.is_deferred_shard(logits_output.next_token_logits):
            logits_output.next_token_logits = lp.finish_deferred_gather(logits_output.next_token_logits)
        self._adjust_target_logits(batch, tree, logits_output.next_token_logits, grammar_tree, grammar_barrier)
        return logits_output, out.can_run_cuda_graph

    def _adjust_target_logits(self, batch, tree: DraftTree, logits, grammar_tree, grammar_barrier) -> None:
        """In place, in plain decoding's order: penalties, grammar, logit bias, custom processors."""
        info = batch.sampling_info
        if info is None:
            return
        if PenaltyState.needed(info):
            self.penalties.apply(logits, batch.reqs, batch.req_pool_indices, tree)
        if grammar_tree is not None:
            mask = build_grammar_vocab_mask(
                reqs=batch.reqs,
                tree=grammar_tree,
                sampling_info=info,
                device=logits.device,
                barrier=grammar_barrier,
            )
            if mask is not None:
                mask.apply(logits)
        if info.logit_bias is not None:
            logits.view(tree.tokens.shape[0], tree.num_nodes, -1).add_(info.logit_bias[:, None, :])
        if info.has_custom_logit_processor:
            apply_custom_logit_processor(logits, info, num_tokens_in_batch=tree.num_nodes)

    # ----------------------------------------------------------------- accept

    def _accept(self, batch: ScheduleBatch, tree: DraftTree, logits_output) -> Acceptance:
        info = batch.sampling_info
        choices = target_choices(logits_output.next_token_logits, info, tree.positions.reshape(-1))
        return walk_tree(tree, choices, self._root_only(info, tree.tokens.shape[0]))

    def _root_only(self, info, bs: int) -> Optional[torch.Tensor]:
        """Requests with a custom logit processor commit only the root's choice.

        A processor may read the request's output so far (``__req__``), which
        at a deeper node would lack the node's path; at the root it is exact,
        so such a request decodes exactly as without speculation.
        """
        if info is None or not info.has_custom_logit_processor:
            return None
        rows = [r for entry in info.custom_logit_processor.values() for r in entry.rows]
        mask = torch.zeros(bs, dtype=torch.bool)
        mask[rows] = True
        return mask.to(self.device)

    # ----------------------------------------------------------------- commit

    def _commit(
        self,
        batch: ScheduleBatch,
        window: StepWindow,
        tree: DraftTree,
        logits_output,
        acceptance: Acceptance,
        can_run_graph: bool,
        on_publish,
    ) -> GenerationBatchResult:
        bs, n = tree.tokens.shape
        commit_lens = acceptance.commit_lens
        rows = path_rows(acceptance.path, n)  # [bs, D+1]
        if batch.return_logprob:
            compute_spec_logprobs(
                batch, logits_output, acceptance.choices.reshape(-1), accept_index=rows
            )
        new_seq_lens = window.prefix_lens + commit_lens.to(window.prefix_lens.dtype)
        if on_publish is not None:
            on_publish(new_seq_lens)

        target_slots = window.kv_loc_plan.write_ids(self.model_runner.kv_index_translator).view(bs, -1)
        compact_kv(self.model_runner.token_to_kv_pool, target_slots, acceptance.path, self.config.topk)
        # The accepted nodes' target hidden states become the draft's context KV.
        hidden = logits_output.hidden_states
        if hidden is None:
            raise RuntimeError(f"{ALGORITHM_NAME}: target verify returned no hidden states.")
        width = rows.shape[1]
        draft_slots = window.kv_loc_plan.write_ids(
            self.draft_model_runner.kv_index_translator, cols=slice(0, width)
        )
        self._append_target_hidden_to_draft_kv_by_loc(
            target_hidden=hidden.reshape(bs * n, -1)[rows.reshape(-1)],
            cache_loc=draft_slots,
            cache_loc_2d=draft_slots.view(bs, width),
            positions=(window.prefix_lens[:, None].long() + torch.arange(width, device=self.device)).reshape(-1),
            commit_lens=commit_lens,
        )
        logits_output.hidden_states = None
        if PenaltyState.needed(batch.sampling_info):
            self.penalties.commit(batch.req_pool_indices, acceptance.out_tokens, commit_lens)
        on_path = acceptance.path > 0  # accepted drafts (the root excluded)
        self.stats.record(commit_lens, on_path & ~tree.is_top1.gather(1, acceptance.path.clamp(min=0)))

        return GenerationBatchResult(
            logits_output=logits_output,
            next_token_ids=acceptance.out_tokens.reshape(-1),
            accept_lens=commit_lens,
            can_run_cuda_graph=can_run_graph,
            next_draft_input=make_draft_input_v2(
                bonus_tokens=acceptance.bonus, new_seq_lens=new_seq_lens
            ),
            speculative_num_draft_tokens=n,
            speculative_output_stride=width,
            new_seq_lens=new_seq_lens,
        )


class GraphPasses:
    """Serving passes per stage ("draft", "verify"): replayed from a captured CUDA graph, or eager.

    Host integers from the flag SGLang's ModelRunner.forward returns with each pass, so
    counting costs the decode loop no device work.
    """

    STAGES = ("draft", "verify")

    def __init__(self) -> None:
        self.counts = {stage: {"replayed": 0, "eager": 0} for stage in self.STAGES}

    def record(self, stage: str, replayed: bool) -> None:
        self.counts[stage]["replayed" if replayed else "eager"] += 1


def _captured_bs(runner) -> list[int]:
    """The batch sizes a ModelRunner captured decode CUDA graphs for (SGLang's own record)."""
    if not getattr(runner, "decode_cuda_graph_captured", False):
        return []
    return sorted(int(bs) for bs in getattr(runner, "decode_cuda_graph_capture_bs", None) or [])


def _on_path(path: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """[bs, N] bool: the node is on the accepted path (-1 entries land in a spare column)."""
    on_path = torch.zeros(path.shape[0], num_nodes + 1, dtype=torch.bool, device=path.device)
    on_path.scatter_(1, torch.where(path >= 0, path, num_nodes), True)
    return on_path[:, :num_nodes]
