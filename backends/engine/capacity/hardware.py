"""What the step-time model needs to know about a model, a weight format and a GPU: sizes, bytes and datasheet rates.

GPU figures are the vendors' datasheet peaks (dense, no sparsity); the step-time model's efficiency factors say
how much of them an engine reaches.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

BUNDLED = Path(__file__).resolve().parents[3] / "models"  # the repo's bundled pair: models/large, models/small


@dataclass(frozen=True)
class ModelSpec:
    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int

    @classmethod
    def from_hf_config(cls, name: str, cfg: dict) -> ModelSpec:
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        return cls(name, cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"],
                   cfg.get("num_key_value_heads") or cfg["num_attention_heads"], head_dim, cfg["intermediate_size"],
                   cfg["vocab_size"])

    @property
    def linear_params(self) -> int:
        """Parameters of the decoder's linear layers (what weight-only quantization shrinks)."""
        q_o = 2 * self.hidden * self.heads * self.head_dim
        k_v = 2 * self.hidden * self.kv_heads * self.head_dim
        return self.layers * (q_o + k_v + 3 * self.hidden * self.ffn)

    @property
    def params(self) -> int:
        return self.linear_params + 2 * self.vocab * self.hidden

    def kv_bytes_per_token(self, dtype_bytes: float = 2) -> float:
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


# Meta's published configs (config.json of meta-llama/Meta-Llama-3-70B and -8B on Hugging Face).
MODELS = {
    "llama-3-70b": ModelSpec("llama-3-70b", 80, 8192, 64, 8, 128, 28672, 128256),
    "llama-3-8b": ModelSpec("llama-3-8b", 32, 4096, 32, 8, 128, 14336, 128256),
}

def model_spec(name: str) -> ModelSpec:
    """A preset ("llama-3-70b", "llama-3-8b"), a bundled model ("large", "small") or a checkpoint directory."""
    if name in MODELS:
        return MODELS[name]
    path = Path(name) if (Path(name) / "config.json").is_file() else BUNDLED / name
    if not (path / "config.json").is_file():
        raise ValueError(f"unknown model {name!r}: give one of {', '.join(MODELS)}, large, small, or a checkpoint directory")
    return ModelSpec.from_hf_config(path.name, json.loads((path / "config.json").read_text()))


# Bytes per weight of the decoder linears (as backends/engine/quant stores them: int8 one fp16 scale per output row,
# int4 groups of 128 with an fp16 scale and a uint8 zero point); embedding and LM head stay 16-bit.
FORMAT_BYTES = {"bf16": 2.0, "int8": 1.0, "int4": 0.5 + 3 / 128}


def weight_bytes(model: ModelSpec, fmt: str, full_bytes: float = 2.0) -> float:
    """Weight bytes of the whole model in a format; full_bytes is the unquantized dtype's size (2, or 4 for fp32)."""
    linear = FORMAT_BYTES[fmt] if fmt != "bf16" else full_bytes
    return model.linear_params * linear + 2 * model.vocab * model.hidden * full_bytes


@dataclass(frozen=True)
class Hardware:
    name: str
    memory_gb: float  # device memory, GB (1e9)
    bandwidth: float  # memory bandwidth, bytes/s
    flops: float  # dense 16-bit tensor FLOP/s
    link_bandwidth: float  # GPU-to-GPU, bytes/s per direction
    source: str


GPUS = {
    "h100-sxm": Hardware("H100 SXM 80GB", 80, 3.35e12, 989e12, 450e9,
                         "NVIDIA H100 Tensor Core GPU datasheet: HBM3 3.35 TB/s, BF16 1,979 TFLOPS with sparsity "
                         "(989 dense), NVLink 900 GB/s"),
    "h200": Hardware("H200 SXM 141GB", 141, 4.8e12, 989e12, 450e9,
                     "NVIDIA H200 Tensor Core GPU datasheet: HBM3e 4.8 TB/s, BF16 1,979 TFLOPS with sparsity "
                     "(989 dense), NVLink 900 GB/s"),
    "a100": Hardware("A100 SXM 80GB", 80, 2.039e12, 312e12, 300e9,
                     "NVIDIA A100 Tensor Core GPU datasheet: HBM2e 2,039 GB/s, BF16 312 TFLOPS dense, NVLink 600 GB/s"),
    "l40s": Hardware("L40S 48GB", 48, 864e9, 362e12, 32e9,
                     "NVIDIA L40S datasheet: GDDR6 864 GB/s, BF16 362.05 TFLOPS dense (733 with sparsity), "
                     "no NVLink: PCIe Gen4 x16 64 GB/s"),
}

# Used only to weigh one sequence's share of a CPU engine step against another's (LLMEngine's GPU-second
# attribution): a typical server core's rates. bench/capacity.py measures this machine's own.
CPU_NOMINAL = Hardware("CPU (nominal)", 0.0, 20e9, 100e9, 1e9, "nominal: ~20 GB/s memory, ~100 GFLOP/s float32")
