"""The checkpoint families the engine serves, and what each changes in the shared decoder (models/llama.py).

Llama, Mistral, Qwen2, Qwen3, Gemma and Phi-3 are one decoder (RMSNorm, RoPE, GQA attention, gated MLP) that differs
in a few switches; they are read from config.json here. Anything else in a config that would change the
math is refused by name: a checkpoint the engine cannot reproduce must fail to load, never answer wrongly.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    architecture: str
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3: RMSNorm over each head of q and k, before RoPE
    gemma_norm: bool = False  # Gemma: RMSNorm scales by (1 + weight) in float32
    embed_scale: bool = False  # Gemma: embeddings are multiplied by sqrt(hidden_size)
    act: str = "silu"  # the gate's activation in the MLP
    sliding_window: int | None = None  # attention span; the engine serves contexts up to it (check_context)


ACTIVATIONS = ("silu", "gelu", "gelu_pytorch_tanh")
ROPE_TYPES = ("default", "linear", "llama3")


def model_family(cfg: dict) -> Family:
    """The family of an HF config.json (as a dict); ValueError naming whatever the engine cannot reproduce."""
    arch = _architecture(cfg)
    _check_common(cfg)
    family = _FAMILIES[arch](cfg)
    if family.act not in ACTIVATIONS:
        raise ValueError(f"{arch}: unsupported hidden_act {family.act!r}; the engine implements {ACTIVATIONS}")
    return family


def check_context(cfg: dict, max_model_len: int | None) -> int:
    """The longest context to serve. A sliding window never binds inside it, so full attention is exact."""
    family = model_family(cfg)
    limit = cfg.get("max_position_embeddings", 2048)
    window = family.sliding_window
    if window is None or window >= (max_model_len or limit):
        return max_model_len or limit
    if max_model_len is not None:
        raise ValueError(f"{family.architecture} attends within sliding_window={window} tokens and the engine "
                         f"does not implement windowed attention: max_model_len must be at most {window}, "
                         f"not {max_model_len}")
    return window


def _architecture(cfg: dict) -> str:
    archs = cfg.get("architectures") or []
    if len(archs) != 1 or archs[0] not in _FAMILIES:
        raise ValueError(f"unsupported architectures {archs!r} in config.json; the engine serves {sorted(_FAMILIES)}")
    return archs[0]


def _check_common(cfg: dict) -> None:
    quant = cfg.get("quantization_config")
    if quant:
        raise ValueError(f"config.json has a quantization_config (quant_method {quant.get('quant_method')!r}): "
                         "the engine loads float checkpoints; set EngineConfig.quantization to quantize at load")
    rope = rope_parameters(cfg)
    if rope["rope_type"] not in ROPE_TYPES:
        raise ValueError(f"unsupported RoPE scaling rope_type {rope['rope_type']!r}; the engine implements {ROPE_TYPES}")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"unsupported partial_rotary_factor {rope['partial_rotary_factor']}: the engine rotates whole heads")


def rope_parameters(cfg: dict) -> dict:
    """RoPE settings from either config format: v5's rope_parameters, or rope_theta plus rope_scaling (older)."""
    rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    rope.setdefault("rope_type", rope.get("type", "default"))
    rope.setdefault("rope_theta", cfg.get("rope_theta", 10000.0))
    if cfg.get("partial_rotary_factor") is not None:
        rope.setdefault("partial_rotary_factor", cfg["partial_rotary_factor"])
    if rope["rope_type"] == "llama3":  # HF's fallback when the config omits the pretraining length
        rope.setdefault("original_max_position_embeddings", cfg.get("max_position_embeddings"))
    return rope


def _llama(cfg: dict) -> Family:
    bias = cfg.get("attention_bias", False)
    return Family("LlamaForCausalLM", qkv_bias=bias, o_bias=bias, mlp_bias=cfg.get("mlp_bias", False),
                  act=cfg.get("hidden_act", "silu"))


def _mistral(cfg: dict) -> Family:
    return Family("MistralForCausalLM", act=cfg.get("hidden_act", "silu"), sliding_window=cfg.get("sliding_window"))


def _qwen2(cfg: dict) -> Family:
    return Family("Qwen2ForCausalLM", qkv_bias=True, act=cfg.get("hidden_act", "silu"),
                  sliding_window=_qwen_window(cfg))


def _qwen3(cfg: dict) -> Family:
    bias = cfg.get("attention_bias", False)
    return Family("Qwen3ForCausalLM", qkv_bias=bias, o_bias=bias, qk_norm=True, act=cfg.get("hidden_act", "silu"),
                  sliding_window=_qwen_window(cfg))


def _gemma(cfg: dict) -> Family:
    if cfg.get("use_bidirectional_attention"):
        raise ValueError("GemmaForCausalLM: use_bidirectional_attention is not supported (the engine is causal)")
    bias = cfg.get("attention_bias", False)
    # Older Gemma configs name the activation hidden_activation, which then wins over hidden_act.
    act = cfg.get("hidden_activation") or cfg.get("hidden_act", "gelu_pytorch_tanh")
    return Family("GemmaForCausalLM", qkv_bias=bias, o_bias=bias, gemma_norm=True, embed_scale=True, act=act)


def _phi3(cfg: dict) -> Family:
    return Family("Phi3ForCausalLM", act=cfg.get("hidden_act", "silu"), sliding_window=cfg.get("sliding_window"))


def _qwen_window(cfg: dict) -> int | None:
    """Qwen windows only the layers layer_types (or use_sliding_window) marks; any such layer caps the context."""
    windowed = "sliding_attention" in (cfg.get("layer_types") or []) or (
        cfg.get("use_sliding_window") and cfg.get("max_window_layers", 0) < cfg["num_hidden_layers"])
    return cfg.get("sliding_window") if windowed else None


_FAMILIES = {
    "LlamaForCausalLM": _llama,
    "MistralForCausalLM": _mistral,
    "Qwen2ForCausalLM": _qwen2,
    "Qwen3ForCausalLM": _qwen3,
    "GemmaForCausalLM": _gemma,
    "Phi3ForCausalLM": _phi3,  # Llama's math; its checkpoints store q/k/v and gate/up already fused
}
