"""The SGL_DFLASH speculative worker: schedule -> draft -> verify -> accept -> commit.

Setup (draft ModelRunner, shared KV pools, mask token, draft CUDA graphs) and
the context-KV materializer are inherited from SGLang's DFlashWorkerV2; every
decode step is ours:

1. schedule: build the block ``[bonus, MASK x (B-1)]``, its positions and the
   KV slots it will occupy (already reserved by the scheduler, 2*B ahead).
2. draft: one non-causal draft forward over context KV + block; argmax through
   the target lm_head gives B-1 draft tokens.
3. verify: one target TARGET_VERIFY forward over ``[bonus, d_1..d_{B-1}]``.
4. accept: an ``acceptance`` policy picks the kept prefix and the bonus token.
5. commit: report committed tokens to the scheduler (which frees unaccepted
   KV slots) and write the committed rows' target hidden states into the
   draft's context KV.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from sglang.kernels.ops.speculative.cache_locs import assign_extend_cache_locs_func
from sglang.srt.layers.logprob_processor import compute_spec_logprobs
from sglang.srt.managers.schedule_batch import ScheduleBatch
from sglang.srt.managers.scheduler import GenerationBatchResult
from sglang.srt.model_executor.forward_batch_info import (
    CaptureHiddenMode,
    ForwardBatch,
    ForwardMode,
    compute_position,
    enable_num_token_non_padded,
)
from sglang.srt.speculative.dflash_info import DFlashVerifyInput
from sglang.srt.speculative.dflash_info_v2 import DFlashDraftInputV2
from sglang.srt.speculative.dflash_utils import apply_dflash_verify_logits_adjustments
from sglang.srt.speculative.dflash_worker_v2 import DFlashWorkerV2
from sglang.srt.speculative.draft_worker_common import make_draft_input_v2
from sglang.srt.speculative.spec_info import SpeculativeAlgorithm
from sglang.srt.speculative.spec_utils import GrammarTree, build_grammar_vocab_mask
from sglang.srt.utils import async_h2d

from sgl_dflash import ALGORITHM_NAME
from sgl_dflash.acceptance import Acceptance, accept_by_rejection, accept_greedy
from sgl_dflash.accept_stats import AcceptStats

logger = logging.getLogger(__name__)


@dataclass
class Block:
    """One decode step's block for every request in the batch."""

    ids: torch.Tensor  # [bs, B]: bonus then MASK
    positions: torch.Tensor  # [bs, B]
    cache_loc: torch.Tensor  # [bs, B]: KV slots (reserved ahead by the scheduler)
    prefix_lens: torch.Tensor  # [bs]: committed tokens before the block
    kv_loc_plan: Any  # SGLang KVLocPlan for this window (draft, verify, commit)


class SglDFlashWorker(DFlashWorkerV2):
    def __init__(self, server_args, gpu_id: int, nccl_port: int, target_worker) -> None:
        super().__init__(server_args, gpu_id, nccl_port, target_worker)
        if self.selector is not None or self.lilicorr is not None or self._is_domino:
            raise ValueError(
                f"{ALGORITHM_NAME} supports plain DFlash drafts; this checkpoint has a "
                "selector / LiLiCorr / Domino head (use --speculative-algorithm DFLASH)."
            )
        lm_head = getattr(self.target_worker.model_runner.model, "lm_head", None)
        if lm_head is None or not hasattr(lm_head, "weight"):
            raise ValueError(f"{ALGORITHM_NAME} needs a target with a dense lm_head.")
        self.stats = AcceptStats(block_size=int(self.block_size))

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
        block = self._schedule(batch)
        candidates = self._draft(batch, block)
        logits_output, target_top1, can_run_graph = self._verify(
            batch, block, candidates, grammar_barrier
        )
        acceptance = self._accept(batch, candidates, logits_output, target_top1)
        return self._commit(batch, block, logits_output, acceptance, can_run_graph, on_publish)

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
            speculative_num_draft_tokens=int(self.block_size),
            new_seq_lens=empty,
        )

    # --------------------------------------------------------------- schedule

    def _schedule(self, batch: ScheduleBatch) -> Block:
        bs, size = len(batch.seq_lens), int(self.block_size)
        prefix_lens = batch.seq_lens
        ids = torch.full((bs, size), int(self._mask_token_id), dtype=torch.long, device=self.device)
        ids[:, 0] = batch.spec_info.bonus_tokens
        positions = prefix_lens[:, None].to(torch.int64) + self._block_pos_offsets[None, :]
        cache_loc = assign_extend_cache_locs_func(
            req_pool_indices=batch.req_pool_indices,
            req_to_token=self.model_runner.req_to_token_pool.req_to_token,
            start_offset=prefix_lens,
            end_offset=prefix_lens + size,
            batch_size=bs,
            draft_token_num=size,
            device=self.device,
        ).view(bs, size)
        plan = self.model_runner.kv_index_translator.plan(
            req_pool_indices=batch.req_pool_indices,
            seq_lens=prefix_lens,
            seq_lens_cpu=self._committed_lens_cpu(batch),
            write_virtual=cache_loc.reshape(-1),
            read_extent=size,
        )
        return Block(ids, positions, cache_loc, prefix_lens, plan)

    @staticmethod
    def _committed_lens_cpu(batch: ScheduleBatch) -> Optional[torch.Tensor]:
        if batch.seq_lens_cpu is not None:
            return batch.seq_lens_cpu
        return batch.spec_info.nxt_kv_lens_cpu

    def _window_lens_cpu(self, batch: ScheduleBatch) -> tuple[torch.Tensor, int]:
        """Host upper bound of each request's KV length while the block is in flight."""
        if batch.seq_lens_cpu is not None:
            lens = batch.seq_lens_cpu.to(torch.int32) + int(self.block_size)
        elif batch.spec_info.nxt_kv_lens_cpu is not None:
            lens = batch.spec_info.nxt_kv_lens_cpu.clone()
        else:
            lens = torch.tensor([r.kv.kv_allocated_len for r in batch.reqs], dtype=torch.int32)
        return lens, int(lens.sum())

    # ------------------------------------------------------------------ draft

    def _draft(self, batch: ScheduleBatch, block: Block) -> torch.Tensor:
        """One non-causal draft pass; returns candidates [bs, B] = [bonus, d_1..d_{B-1}]."""
        bs, size = block.ids.shape
        target = self.target_worker.model_runner.model
        embeds = target.get_input_embeddings()(block.ids).view(bs * size, -1)
        if self._noise_embed_scale != 1.0:  # targets that scale their embeddings (e.g. Gemma)
            embeds = embeds * self._noise_embed_scale
        lens_cpu, lens_sum = self._window_lens_cpu(batch)
        forward_batch = ForwardBatch(
            forward_mode=ForwardMode.TARGET_VERIFY,
            batch_size=bs,
            input_ids=block.ids.reshape(-1),
            req_pool_indices=batch.req_pool_indices,
            seq_lens=block.prefix_lens,
            out_cache_loc=block.cache_loc.reshape(-1),
            seq_lens_sum=lens_sum,
            seq_lens_cpu=lens_cpu,
            positions=block.positions.reshape(-1),
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
            can_run_decode_cuda_graph=batch.can_run_decode_cuda_graph,
        )
        block.kv_loc_plan.bind(forward_batch, self.draft_model_runner.kv_index_translator)
        with torch.inference_mode():
            out = self.draft_model_runner.forward(forward_batch)
        if self._draft_sampler is not None and out.can_run_graph:
            # The greedy head ran inside the captured draft graph.
            drafts = self._draft_sampler.out[: bs * (size - 1)].view(bs, size - 1)
            return torch.cat([block.ids[:, :1], drafts], dim=1)
        hidden = out.logits_output.hidden_states
        if hidden is None:
            raise RuntimeError(f"{ALGORITHM_NAME}: draft forward returned no hidden states.")
        hidden = hidden[: bs * size].view(bs, size, -1)[:, 1:, :]
        drafts = self._greedy_sample_from_vocab_parallel_head(
            hidden_states=hidden.reshape(-1, hidden.shape[-1]), lm_head=target.lm_head
        ).view(bs, size - 1)
        return torch.cat([block.ids[:, :1], drafts], dim=1)

    # ----------------------------------------------------------------- verify

    def _verify(self, batch: ScheduleBatch, block: Block, candidates: torch.Tensor, grammar_barrier):
        """Target forward over the candidate block. Returns (logits_output, top1 or None, graph?)."""
        size = int(self.block_size)
        grammar_tree = GrammarTree.from_linear_chain(candidates) if batch.has_grammar else None
        verify_input = DFlashVerifyInput(
            draft_token=candidates.reshape(-1),
            positions=block.positions.reshape(-1),
            draft_token_num=size,
            custom_mask=None,  # linear chain: causal; tree verification will set a mask here
            capture_hidden_mode=CaptureHiddenMode.FULL,
            kv_loc_plan=block.kv_loc_plan,
        )
        batch.out_cache_loc = block.cache_loc.reshape(-1)
        saved = batch.seq_lens_cpu, batch.seq_lens_sum
        batch.seq_lens_cpu, batch.seq_lens_sum = self._window_lens_cpu(batch)
        forward_batch, _ = verify_input.prepare_for_verify(batch, self.target_worker)
        batch.seq_lens_cpu, batch.seq_lens_sum = saved
        out = self.target_worker.forward_batch_generation(
            batch=None, forward_batch=forward_batch, is_verify=True, skip_attn_backend_init=True
        )
        logits_output = out.logits_output
        sampling_info = batch.sampling_info

        top1 = None
        lp = self._target_logits_processor
        if lp is not None and lp.is_deferred_shard(logits_output.next_token_logits):
            if self._can_skip_verify_logits(batch, sampling_info):
                top1 = lp.deferred_argmax(logits_output.next_token_logits)
                logits_output.next_token_logits = None
            else:
                logits_output.next_token_logits = lp.finish_deferred_gather(
                    logits_output.next_token_logits
                )
        if top1 is None:
            logits = logits_output.next_token_logits
            if sampling_info is not None:
                apply_dflash_verify_logits_adjustments(
                    next_token_logits=logits, sampling_info=sampling_info, draft_token_num=size
                )
            if grammar_tree is not None:
                build_grammar_vocab_mask(
                    reqs=batch.reqs,
                    tree=grammar_tree,
                    sampling_info=sampling_info,
                    device=logits.device,
                    barrier=grammar_barrier,
                ).apply(logits)
        return logits_output, top1, out.can_run_cuda_graph

    # ----------------------------------------------------------------- accept

    def _accept(self, batch, candidates, logits_output, target_top1) -> Acceptance:
        sampling_info = batch.sampling_info
        if sampling_info is None or sampling_info.is_all_greedy:
            if target_top1 is None:
                target_top1 = logits_output.next_token_logits.argmax(dim=-1)
            return accept_greedy(candidates, target_top1)
        return accept_by_rejection(candidates, logits_output.next_token_logits, sampling_info)

    # ----------------------------------------------------------------- commit

    def _commit(
        self,
        batch: ScheduleBatch,
        block: Block,
        logits_output,
        acceptance: Acceptance,
        can_run_graph: bool,
        on_publish,
    ) -> GenerationBatchResult:
        size = int(self.block_size)
        commit_lens = acceptance.commit_lens
        if batch.return_logprob:
            compute_spec_logprobs(
                batch, logits_output, acceptance.out_tokens.reshape(-1), chain_stride=size
            )
        new_seq_lens = block.prefix_lens + commit_lens.to(block.prefix_lens.dtype)
        if on_publish is not None:
            on_publish(new_seq_lens)

        # Committed rows' target hidden states become the draft's context KV.
        hidden = logits_output.hidden_states
        if hidden is None:
            raise RuntimeError(f"{ALGORITHM_NAME}: target verify returned no hidden states.")
        cache_loc = self._draft_write_ids(block.kv_loc_plan)
        self._append_target_hidden_to_draft_kv_by_loc(
            target_hidden=hidden.reshape(-1, hidden.shape[-1]),
            cache_loc=cache_loc,
            cache_loc_2d=cache_loc.view(block.cache_loc.shape),
            positions=block.positions.reshape(-1),
            commit_lens=commit_lens,
        )
        logits_output.hidden_states = None
        self.stats.record(commit_lens)

        return GenerationBatchResult(
            logits_output=logits_output,
            next_token_ids=acceptance.out_tokens.reshape(-1),
            accept_lens=commit_lens,
            can_run_cuda_graph=can_run_graph,
            next_draft_input=make_draft_input_v2(
                bonus_tokens=acceptance.bonus, new_seq_lens=new_seq_lens
            ),
            speculative_num_draft_tokens=size,
            new_seq_lens=new_seq_lens,
        )
