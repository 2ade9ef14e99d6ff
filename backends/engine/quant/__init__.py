"""Weight-only int8 / int4 quantization: formats, QuantLinear, Triton kernels, checkpoints.

    from backends.engine.quant import quantize_model, save_quantized, load_quantized
    quantize_model(model, "int4", group_size=128)   # every nn.Linear but lm_head -> QuantLinear, in place
"""
from backends.engine.quant.checkpoint import load_quantized, save_quantized
from backends.engine.quant.formats import dequantize, quantize
from backends.engine.quant.linear import QuantLinear
from backends.engine.quant.model import quant_shells, quantize_model, weight_bytes

__all__ = ["QuantLinear", "dequantize", "load_quantized", "quant_shells", "quantize", "quantize_model", "save_quantized",
           "weight_bytes"]
