"""Read and validate a DFlash draft checkpoint against its target, at startup.

Every check raises ``DraftConfigError`` with a message that names the file,
the field, the bad value and what would be valid, so a bad launch fails before
the scheduler starts instead of crashing mid-request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from sgl_dflash.config import SpecConfig
from sgl_dflash.kernels.tree_build import max_tree_nodes

DRAFT_ARCHITECTURE = "DFlashDraftModel"


class DraftConfigError(ValueError):
    """A draft checkpoint that cannot drive this target."""


@dataclass(frozen=True)
class DraftSpec:
    """What the worker needs to know about a validated draft checkpoint."""

    path: Path
    block_size: int
    target_layer_ids: tuple[int, ...]
    mask_token_id: int
    num_layers: int


def _read_config(path: Path, what: str) -> dict[str, Any]:
    if not path.is_dir():
        raise DraftConfigError(f"{what} path {str(path)!r} does not exist or is not a directory.")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise DraftConfigError(f"{what} path {str(path)!r} has no config.json.")
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise DraftConfigError(f"{cfg_file} is not valid JSON: {e}") from None
    # Multimodal targets keep the language model fields in text_config.
    return cfg.get("text_config", cfg) if what == "target" else cfg


def _int_field(cfg: dict, key: str, where: str) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DraftConfigError(f"{where}: {key} must be an integer, got {value!r}.")
    return value


def validate_draft(draft_path: Optional[str], target_path: str) -> DraftSpec:
    """Check the draft against the target; return the resolved draft spec."""
    if not draft_path:
        raise DraftConfigError(
            "SGL_DFLASH needs a draft checkpoint: pass --speculative-draft-model-path "
            "(a local DFlash draft directory)."
        )
    dpath = Path(draft_path)
    draft = _read_config(dpath, "draft")
    target = _read_config(Path(target_path), "target")
    where = f"draft config {dpath / 'config.json'}"

    archs = draft.get("architectures") or []
    if DRAFT_ARCHITECTURE not in archs:
        raise DraftConfigError(
            f"{where}: architectures is {archs!r}; SGL_DFLASH needs a DFlash draft "
            f"({DRAFT_ARCHITECTURE!r})."
        )
    dflash = draft.get("dflash_config")
    if not isinstance(dflash, dict):
        raise DraftConfigError(f"{where}: missing the dflash_config object.")

    hidden, t_hidden = _int_field(draft, "hidden_size", where), _int_field(
        target, "hidden_size", "target config"
    )
    if hidden != t_hidden:
        raise DraftConfigError(
            f"{where}: hidden_size={hidden} does not match the target's hidden_size={t_hidden}; "
            "a DFlash draft borrows the target embedding and lm_head, so they must be equal."
        )
    t_vocab = _int_field(target, "vocab_size", "target config")
    if "vocab_size" in draft and draft["vocab_size"] != t_vocab:
        raise DraftConfigError(
            f"{where}: vocab_size={draft['vocab_size']} does not match the target's "
            f"vocab_size={t_vocab}."
        )

    t_layers = _int_field(target, "num_hidden_layers", "target config")
    layer_ids = dflash.get("target_layer_ids")
    if not isinstance(layer_ids, list) or not layer_ids or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in layer_ids
    ):
        raise DraftConfigError(
            f"{where}: dflash_config.target_layer_ids must be a non-empty list of ints, "
            f"got {layer_ids!r}."
        )
    # SGLang captures the hidden state entering layer k+1, so the last layer has none.
    bad = [i for i in layer_ids if not 0 <= i <= t_layers - 2]
    if bad:
        raise DraftConfigError(
            f"{where}: dflash_config.target_layer_ids {layer_ids} has ids {bad} out of range; "
            f"the target has {t_layers} layers, so valid ids are 0..{t_layers - 2}."
        )

    mask_id = dflash.get("mask_token_id")
    if isinstance(mask_id, bool) or not isinstance(mask_id, int) or not 0 <= mask_id < t_vocab:
        raise DraftConfigError(
            f"{where}: dflash_config.mask_token_id={mask_id!r} is not a token id of the "
            f"target vocabulary (0..{t_vocab - 1})."
        )

    block = dflash.get("block_size", draft.get("block_size"))
    if block is None:
        raise DraftConfigError(f"{where}: no block_size (the block the drafter was trained to fill).")
    block = _int_field({"block_size": block}, "block_size", where)
    if block < 2:
        raise DraftConfigError(
            f"{where}: block_size={block} is impossible: a block holds the bonus token plus at "
            "least one drafted token."
        )
    return DraftSpec(
        path=dpath,
        block_size=block,
        target_layer_ids=tuple(layer_ids),
        mask_token_id=mask_id,
        num_layers=_int_field(draft, "num_hidden_layers", where),
    )


def validate_tree(spec: DraftSpec, topk: Optional[int], node_budget: Optional[int]) -> SpecConfig:
    """Resolve ``--speculative-eagle-topk`` (K, default 1) and
    ``--speculative-num-draft-tokens`` (N, default the block size) for this draft."""
    k = 1 if topk is None else topk
    n = spec.block_size if node_budget is None else node_budget
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DraftConfigError(f"--speculative-eagle-topk={k!r}: the tree's top-k must be an integer >= 1.")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DraftConfigError(
            f"--speculative-num-draft-tokens={n!r}: the node budget (tree nodes verified per "
            "request, the bonus token included) must be an integer >= 1."
        )
    reachable = max_tree_nodes(k, spec.block_size - 1, n)
    if reachable < n:
        raise DraftConfigError(
            f"--speculative-num-draft-tokens={n} is more than a top-{k} tree can hold under a "
            f"block of {spec.block_size} ({reachable} nodes: depth at most {spec.block_size - 1}); "
            f"use at most {reachable} or a larger --speculative-eagle-topk."
        )
    return SpecConfig(block_size=spec.block_size, topk=k, node_budget=n)
