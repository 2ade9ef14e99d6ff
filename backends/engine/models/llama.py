"""Llama (GQA, RoPE, RMSNorm, SwiGLU) over the paged KV cache, loading HF checkpoints.

q/k/v and gate/up are fused into one matmul each: fewer, larger GEMMs are what a decode step spends on.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from backends.engine.layers.attention import AttentionMetadata, PagedAttention
from backends.engine.layers.norm import RMSNorm
from backends.engine.layers.rotary import RotaryEmbedding


class LlamaAttention(nn.Module):
    def __init__(self, cfg: dict, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.head_dim = _head_dim(cfg)
        self.q_size, self.kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        bias = cfg.get("attention_bias", False)
        self.qkv_proj = nn.Linear(cfg["hidden_size"], self.q_size + 2 * self.kv_size, bias=bias)
        self.o_proj = nn.Linear(self.q_size, cfg["hidden_size"], bias=bias)
        self.rotary = rotary
        self.attn = PagedAttention(self.num_heads, self.num_kv_heads, self.head_dim)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        q, k = self.rotary(positions, q, k)
        out = self.attn(q, k, v.view(-1, self.num_kv_heads, self.head_dim), meta)
        return self.o_proj(out.flatten(1))


class LlamaMLP(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        bias = cfg.get("mlp_bias", False)
        self.gate_up_proj = nn.Linear(cfg["hidden_size"], 2 * cfg["intermediate_size"], bias=bias)
        self.down_proj = nn.Linear(cfg["intermediate_size"], cfg["hidden_size"], bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: dict, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.self_attn = LlamaAttention(cfg, rotary)
        self.post_attention_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.mlp = LlamaMLP(cfg)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        x = x + self.self_attn(positions, self.input_layernorm(x), meta)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, cfg: dict, max_positions: int) -> None:
        super().__init__()
        self.rotary = rotary_embedding(cfg, max_positions)
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg, self.rotary) for _ in range(cfg["num_hidden_layers"]))
        self.norm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(positions, x, meta)
        return self.norm(x)


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: dict, max_positions: int) -> None:
        super().__init__()
        self.config = cfg
        self.model = LlamaModel(cfg, max_positions)
        self.lm_head = nn.Linear(cfg["hidden_size"], cfg["vocab_size"], bias=False)
        if cfg.get("tie_word_embeddings", False):
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Flattened tokens of a whole step -> final hidden states [T, hidden]."""
        return self.model(input_ids, positions, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    def attention_layers(self) -> list[PagedAttention]:
        return [layer.self_attn.attn for layer in self.model.layers]


def rotary_embedding(cfg: dict, max_positions: int) -> RotaryEmbedding:
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    return RotaryEmbedding(_head_dim(cfg), max_positions, theta, rope)


def _head_dim(cfg: dict) -> int:
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


# HF parameter name suffix -> (our parameter suffix, which slice of the fused weight)
_FUSED = {
    "q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
}


def load_weights(model: LlamaForCausalLM, path: str | Path) -> None:
    """Copy an HF checkpoint (one or many safetensors shards) into the model; every parameter must be found."""
    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise ValueError(f"no *.safetensors files in {path}")
    params = dict(model.named_parameters())
    missing = {key for name in params for key in _expected_keys(model, name)}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                if "rotary_emb" in name or (name == "lm_head.weight" and model.config.get("tie_word_embeddings")):
                    continue
                missing -= _load_one(model, params, name, f.get_tensor(name))
    if missing:
        raise ValueError(f"checkpoint {path} lacks parameters: {sorted(missing)}")


def _load_one(model: LlamaForCausalLM, params: dict, name: str, tensor: torch.Tensor) -> set[str]:
    module_name, _, kind = name.rpartition(".")  # kind: weight | bias
    parent, _, leaf = module_name.rpartition(".")
    if leaf not in _FUSED:
        if name not in params:
            raise ValueError(f"unexpected checkpoint tensor {name}")
        params[name].data.copy_(tensor)
        return {name}
    fused_leaf, shard = _FUSED[leaf]
    target = f"{parent}.{fused_leaf}.{kind}"
    sizes = _fused_sizes(model, fused_leaf)
    offset = sum(sizes[:shard])
    params[target].data[offset : offset + sizes[shard]].copy_(tensor)
    return {f"{target}#{shard}"}


def _expected_keys(model: LlamaForCausalLM, name: str) -> list[str]:
    leaf = name.rsplit(".", 2)[-2]
    if leaf in ("qkv_proj", "gate_up_proj"):
        return [f"{name}#{i}" for i in range(len(_fused_sizes(model, leaf)))]
    return [name]


def _fused_sizes(model: LlamaForCausalLM, fused_leaf: str) -> list[int]:
    attn = model.model.layers[0].self_attn
    if fused_leaf == "qkv_proj":
        return [attn.q_size, attn.kv_size, attn.kv_size]
    inter = model.config["intermediate_size"]
    return [inter, inter]

