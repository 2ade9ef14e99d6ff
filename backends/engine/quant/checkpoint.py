"""Quantized checkpoints: model.safetensors (QuantLinear buffers under each layer's own name) plus
config.json carrying a `quantization_config` that says which layers are quantized and how.

    {"quant_method": "ferryman", "mode": "int4", "group_size": 128, "modules": ["model.layers.0.self_attn.q_proj", ...]}

Each layer keeps its name, and every tensor of a layer is split along its output rows, so a loader
that fuses q/k/v or gate/up into one layer (the engine's) makes its fused layers QuantLinear with
quant_shells and copies qweight, scales and zeros into row slices, exactly as it does weights.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from backends.engine.quant.linear import QuantLinear
from backends.engine.quant.model import quant_shells

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
QUANT_METHOD = "ferryman"


def save_quantized(model: nn.Module, directory: str | Path, config: dict | None = None) -> Path:
    """Write a quantized model. `config` defaults to model.config (Hugging Face models) or {}."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    if not layers:
        raise ValueError("model has no QuantLinear layers; call quantize_model first")
    modes = {(m.mode, m.group_size) for m in layers.values()}
    if len(modes) != 1:
        raise ValueError(f"a checkpoint holds one quantization mode; this model mixes {sorted(modes, key=str)}")
    (mode, group_size), = modes
    if config is None:
        config = model.config.to_dict() if hasattr(model, "config") else {}
    config = {**config, "quantization_config": {
        "quant_method": QUANT_METHOD, "mode": mode, "group_size": group_size, "modules": sorted(layers)}}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, str(directory / WEIGHTS))
    (directory / CONFIG).write_text(json.dumps(config, indent=2, default=str))
    return directory


def load_quantized(directory: str | Path, model: nn.Module | None = None, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Load a checkpoint written by save_quantized.

    `model` is a float skeleton with the saved layer names; its listed nn.Linear layers become
    QuantLinear and every tensor is loaded strictly. Without one, a Hugging Face causal LM is built
    from config.json in `dtype`.
    """
    directory = Path(directory)
    config = json.loads((directory / CONFIG).read_text())
    quant = config.pop("quantization_config", None)
    if not quant or quant.get("quant_method") != QUANT_METHOD:
        raise ValueError(f"{directory / CONFIG} has no Ferryman quantization_config; not a quantized checkpoint")
    if model is None:
        model = _hf_model(config, dtype)
    quant_shells(model, quant["modules"], quant["mode"], quant["group_size"] or 128)
    load_model(model, str(directory / WEIGHTS), strict=True)
    return model.eval()


def _hf_model(config: dict, dtype: torch.dtype) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = AutoConfig.for_model(**config)
    return AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
