"""The decoder every supported family shares (GQA, RoPE, RMSNorm, gated MLP) over the paged KV cache,
loading HF checkpoints. What a family changes (biases, q/k norms, Gemma's norm and embedding scale, the
activation) comes from models/families.py.

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
from backends.engine.models.families import Family, model_family, rope_parameters

ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}


class LlamaAttention(nn.Module):
    def __init__(self, cfg: dict, family: Family, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.head_dim = _head_dim(cfg)
        self.q_size, self.kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.qkv_proj = nn.Linear(cfg["hidden_size"], self.q_size + 2 * self.kv_size, bias=family.qkv_bias)
        self.o_proj = nn.Linear(self.q_size, cfg["hidden_size"], bias=family.o_bias)
        if family.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, cfg["rms_norm_eps"])
            self.k_norm = RMSNorm(self.head_dim, cfg["rms_norm_eps"])
        self.rotary = rotary
        self.attn = PagedAttention(self.num_heads, self.num_kv_heads, self.head_dim)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rotary(positions, q, k)
        out = self.attn(q, k, v.view(-1, self.num_kv_heads, self.head_dim), meta)
        return self.o_proj(out.flatten(1))


class LlamaMLP(nn.Module):
    def __init__(self, cfg: dict, family: Family) -> None:
        super().__init__()
        bias = family.mlp_bias
        self.gate_up_proj = nn.Linear(cfg["hidden_size"], 2 * cfg["intermediate_size"], bias=bias)
        self.down_proj = nn.Linear(cfg["intermediate_size"], cfg["hidden_size"], bias=bias)
        self.act = ACTIVATIONS[family.act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(self.act(gate) * up)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: dict, family: Family, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"], family.gemma_norm)
        self.self_attn = LlamaAttention(cfg, family, rotary)
        self.post_attention_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"], family.gemma_norm)
        self.mlp = LlamaMLP(cfg, family)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        x = x + self.self_attn(positions, self.input_layernorm(x), meta)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, cfg: dict, family: Family, max_positions: int) -> None:
        super().__init__()
        self.rotary = rotary_embedding(cfg, max_positions)
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.embed_scale = cfg["hidden_size"] ** 0.5 if family.embed_scale else None
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg, family, self.rotary) for _ in range(cfg["num_hidden_layers"]))
        self.norm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"], family.gemma_norm)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        # Gemma scales in the activations' dtype, as HF does (in bf16, sqrt(3072) rounds to 55.5).
        return x if self.embed_scale is None else x * torch.tensor(self.embed_scale, dtype=x.dtype)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(positions, x, meta)
        return self.norm(x)


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: dict, max_positions: int) -> None:
        super().__init__()
        self.config = cfg
        self.family = model_family(cfg)
        self.model = LlamaModel(cfg, self.family, max_positions)
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
    rope = rope_parameters(cfg)
    return RotaryEmbedding(_head_dim(cfg), max_positions, rope["rope_theta"], rope)


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
        return set(_expected_keys(model, name))  # all parts at once where the checkpoint fuses them (Phi-3)
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

