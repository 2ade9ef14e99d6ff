"""Swap a model's nn.Linear layers for QuantLinear in place."""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from tqdm import tqdm

from backends.engine.quant import formats
from backends.engine.quant.linear import QuantLinear


def quantize_model(model: nn.Module, mode: str, group_size: int = 128, skip: Iterable[str] = ("lm_head",),
                   progress: bool = False) -> nn.Module:
    """Replace every nn.Linear (weight [out, in]) whose name has no component in `skip` with a QuantLinear.

    The float weight of each layer is released as soon as its QuantLinear exists, so peak memory
    is the float model plus one layer. All layers are checked before any is replaced: a bad mode
    or group size raises and leaves the model unchanged.
    """
    targets = quantizable_linears(model, skip)
    _check(targets, mode, group_size)
    with torch.no_grad():
        for name, linear in tqdm(targets, desc=f"quantize {mode}", disable=not progress):
            _set_submodule(model, name, QuantLinear.from_linear(linear, mode, group_size))
    return model


def quant_shells(model: nn.Module, names: Iterable[str], mode: str, group_size: int = 128) -> nn.Module:
    """Replace the named nn.Linear layers with uninitialized QuantLinear ones, for a quantized checkpoint to fill."""
    targets = [(name, model.get_submodule(name)) for name in names]
    for name, linear in targets:
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"{name} is a {type(linear).__name__}, not an nn.Linear to quantize")
    _check(targets, mode, group_size)
    for name, linear in targets:
        _set_submodule(model, name, QuantLinear(linear.in_features, linear.out_features, mode, group_size,
                                                linear.bias is not None, linear.weight.dtype, linear.weight.device))
    return model


def quantizable_linears(model: nn.Module, skip: Iterable[str] = ("lm_head",)) -> list[tuple[str, nn.Linear]]:
    skip = set(skip)
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and not skip.intersection(name.split("."))]


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer: the memory the weights take, quantized or not."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}  # tied weights count once
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _check(targets: list[tuple[str, nn.Linear]], mode: str, group_size: int) -> None:
    if mode not in formats.MODES:
        raise ValueError(f"unknown quantization mode {mode!r}; expected one of {formats.MODES}")
    if mode == "int4":
        for name, linear in targets:
            try:
                formats.check_group_size(linear.in_features, group_size)
            except ValueError as e:
                raise ValueError(f"{name}: {e}") from None


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)
