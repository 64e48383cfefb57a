"""A plain-torch DFlash drafter, numerically the same model as SGLang's DFlashDraftModel.

Checkpoint format (what SGLang and the public DFlash drafts use): config.json
with ``architectures: ["DFlashDraftModel"]``, Qwen3 fields, ``block_size``,
``num_target_layers``, ``dflash_config.{target_layer_ids, mask_token_id}``;
safetensors weights ``layers.*``, ``fc``, ``hidden_norm``, ``norm``. The token
embedding and lm_head are the target's.

Forward: block hidden states attend, non-causally, to the context K/V (target
hidden states at ``target_layer_ids``, concatenated, projected by ``fc`` and
``hidden_norm``; per layer only k/v projection, k_norm and RoPE, no input
norm) and to the whole block; Qwen3 pre-norm layers; final ``norm``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Neox-style rotary embedding; x: [..., N, heads, head_dim], positions: [..., N]."""
    half = x.shape[-1] // 2
    inv = 1.0 / (theta ** (torch.arange(half, device=x.device, dtype=torch.float32) / half))
    ang = positions.float()[..., None] * inv  # [..., N, half]
    cos, sin = ang.cos()[..., None, :], ang.sin()[..., None, :]
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class DraftLayer(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        h, hd, eps = cfg["hidden_size"], cfg["head_dim"], cfg["rms_norm_eps"]
        self.heads, self.kv_heads, self.head_dim = cfg["num_attention_heads"], cfg["num_key_value_heads"], hd
        self.theta = cfg["rope_theta"]
        self.input_layernorm = RMSNorm(h, eps)
        self.post_attention_layernorm = RMSNorm(h, eps)
        self.self_attn = nn.Module()
        self.self_attn.q_proj = nn.Linear(h, self.heads * hd, bias=False)
        self.self_attn.k_proj = nn.Linear(h, self.kv_heads * hd, bias=False)
        self.self_attn.v_proj = nn.Linear(h, self.kv_heads * hd, bias=False)
        self.self_attn.o_proj = nn.Linear(self.heads * hd, h, bias=False)
        self.self_attn.q_norm = RMSNorm(hd, eps)
        self.self_attn.k_norm = RMSNorm(hd, eps)
        self.mlp = nn.Module()
        self.mlp.gate_proj = nn.Linear(h, cfg["intermediate_size"], bias=False)
        self.mlp.up_proj = nn.Linear(h, cfg["intermediate_size"], bias=False)
        self.mlp.down_proj = nn.Linear(cfg["intermediate_size"], h, bias=False)

    def _kv(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.self_attn
        k = a.k_norm(a.k_proj(x).unflatten(-1, (self.kv_heads, self.head_dim)))
        v = a.v_proj(x).unflatten(-1, (self.kv_heads, self.head_dim))
        return rope(k, positions, self.theta), v

    def forward(
        self,
        h: torch.Tensor,  # [S, Q, H] block hidden
        positions: torch.Tensor,  # [S, Q]
        ctx: torch.Tensor,  # [S, C, H] projected context
        ctx_positions: torch.Tensor,  # [S, C]
        mask: torch.Tensor,  # [S, Q, C + Q] bool: True = may attend
    ) -> torch.Tensor:
        a = self.self_attn
        x = self.input_layernorm(h)
        q = rope(a.q_norm(a.q_proj(x).unflatten(-1, (self.heads, self.head_dim))), positions, self.theta)
        k_blk, v_blk = self._kv(x, positions)
        k_ctx, v_ctx = self._kv(ctx, ctx_positions)
        k = torch.cat([k_ctx, k_blk], dim=1).transpose(1, 2)
        v = torch.cat([v_ctx, v_blk], dim=1).transpose(1, 2)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k, v, attn_mask=mask[:, None], enable_gqa=self.heads != self.kv_heads
        )
        h = h + a.o_proj(out.transpose(1, 2).flatten(-2))
        x = self.post_attention_layernorm(h)
        return h + self.mlp.down_proj(F.silu(self.mlp.gate_proj(x)) * self.mlp.up_proj(x))


class DFlashDrafter(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.config = cfg
        h, eps = cfg["hidden_size"], cfg["rms_norm_eps"]
        n_ctx = len(cfg["dflash_config"]["target_layer_ids"])
        self.layers = nn.ModuleList(DraftLayer(cfg) for _ in range(cfg["num_hidden_layers"]))
        self.fc = nn.Linear(n_ctx * h, h, bias=False)
        self.hidden_norm = RMSNorm(h, eps)
        self.norm = RMSNorm(h, eps)

    @property
    def block_size(self) -> int:
        return int(self.config["block_size"])

    @property
    def target_layer_ids(self) -> list[int]:
        return list(self.config["dflash_config"]["target_layer_ids"])

    @property
    def mask_token_id(self) -> int:
        return int(self.config["dflash_config"]["mask_token_id"])

    def project_context(self, target_features: torch.Tensor) -> torch.Tensor:
        """Concatenated target hidden states [..., n_ctx * H] -> context hidden [..., H]."""
        return self.hidden_norm(self.fc(target_features))

    def forward(self, block_embeds, positions, ctx, ctx_positions, mask) -> torch.Tensor:
        h = block_embeds
        for layer in self.layers:
            h = layer(h, positions, ctx, ctx_positions, mask)
        return self.norm(h)

    @classmethod
    def from_target_config(
        cls, target_cfg: dict, *, num_layers: int, block_size: int, target_layer_ids: list[int],
        mask_token_id: int,
    ) -> "DFlashDrafter":
        keys = ("hidden_size intermediate_size num_attention_heads num_key_value_heads "
                "max_position_embeddings rms_norm_eps rope_theta vocab_size").split()
        cfg = {k: target_cfg[k] for k in keys}
        cfg.update(
            architectures=["DFlashDraftModel"],
            model_type="qwen3",
            head_dim=target_cfg.get("head_dim") or target_cfg["hidden_size"] // target_cfg["num_attention_heads"],
            num_hidden_layers=num_layers,
            num_target_layers=target_cfg["num_hidden_layers"],
            block_size=block_size,
            attention_bias=False,
            hidden_act="silu",
            tie_word_embeddings=False,
            torch_dtype="float32",
            dflash_config={"mask_token_id": mask_token_id, "target_layer_ids": list(target_layer_ids)},
        )
        return cls(cfg)

    def init_from_target(self, target_layers: nn.ModuleList) -> list[int]:
        """Start draft layer j as a copy of target layer L-n+j (the target's top n layers).

        The drafter does the target's last layers' job on the block, so starting
        from them trains much faster than from noise. Tensors whose shape differs
        (e.g. other head counts) and names the target lacks (Llama has no q/k
        norm) keep their fresh init. Returns the target layer ids copied from.
        """
        n, sources = len(self.layers), []
        for j, layer in enumerate(self.layers):
            src_id = len(target_layers) - n + j
            if src_id < 0:
                continue
            mine = layer.state_dict()
            theirs = {k: v for k, v in target_layers[src_id].state_dict().items()
                      if k in mine and v.shape == mine[k].shape}
            if theirs:
                layer.load_state_dict(theirs, strict=False)
                sources.append(src_id)
        return sources

    def save_pretrained(self, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(self.config, indent=2))
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
                  str(path / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, path: Path) -> "DFlashDrafter":
        path = Path(path)
        model = cls(json.loads((path / "config.json").read_text()))
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        return model
