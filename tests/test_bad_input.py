"""Bad launches fail at startup with a message that says what is wrong."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sgl_dflash.draft_checkpoint import DraftConfigError, validate_draft
from sgl_dflash.launcher import CPU_ENV, free_port, server_command


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
        "block_size_1": (ok + ["--speculative-num-draft-tokens", "1"], "must be >= 2"),
        "block_size_mismatch": (ok + ["--speculative-num-draft-tokens", "8"], "does not match the draft's block_size=4"),
        "cpu_bf16": (ok + ["--dtype", "bfloat16"], "float32 only"),
    }


def launch(target: Path, extra: list[str]) -> subprocess.CompletedProcess:
    cmd = server_command(target, free_port()) + ["--speculative-algorithm", "SGL_DFLASH"] + extra
    return subprocess.run(
        cmd, env={**os.environ, **CPU_ENV}, capture_output=True, text=True, timeout=300
    )


def test_bad_launches_fail_fast_with_clear_errors(tiny_pair, tmp_path):
    target, draft = tiny_pair("random")
    table = cases(target, draft, tmp_path)
    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(table, pool.map(lambda c: launch(target, c[0]), table.values())))
    for name, (_, expected) in table.items():
        res = results[name]
        assert res.returncode != 0, f"{name}: server started"
        assert expected in res.stdout + res.stderr, f"{name}:\n{(res.stdout + res.stderr)[-2000:]}"


def test_validate_draft_resolves_block_size_from_checkpoint(tiny_pair):
    target, draft = tiny_pair("random")
    spec = validate_draft(str(draft), str(target), None)
    assert spec.block_size == 4 and spec.target_layer_ids == (1, 2) and spec.mask_token_id == 257
    with pytest.raises(DraftConfigError, match="must be >= 2"):
        validate_draft(str(draft), str(target), 0)
