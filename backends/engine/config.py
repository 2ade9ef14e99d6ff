"""Every knob of the engine in one place."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from backends.engine.models.families import check_context


@dataclass
class EngineConfig:
    model: str  # a directory holding an HF Llama checkpoint: config.json + *.safetensors (+ tokenizer)
    name: str = ""  # the label metrics carry; defaults to the directory's name
    block_size: int = 16
    num_kv_blocks: int | None = None  # None: derived from kv_cache_memory_gb
    kv_cache_memory_gb: float = 1.0
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512  # per-step token budget; long prompts are prefilled in chunks of it
    max_model_len: int | None = None  # None: the checkpoint's max_position_embeddings
    enable_prefix_caching: bool = True
    dtype: str = "auto"  # "auto": float32 on CPU (fast and exact there), the checkpoint's dtype on CUDA
    device: str = "auto"
    num_threads: int | None = None  # torch intra-op threads on CPU; None leaves torch's default
    quantization: str | None = None  # "int8" | "int4" weight-only, via backends.engine.quant when present
    priority_aging_s: float | None = None  # a waiting request climbs one class per this many seconds; None: never
    # While a tenant holds strictly the smallest share of seats, each other tenant adds to a step it is in no more
    # sequences than its weight's worth of that tenant's (Scheduler); False: seats are shared, steps are not.
    fair_step_share: bool = True
    preemption_mode: str = "recompute"  # "recompute" | "swap" (recompute still when host blocks run out)
    swap_space_gb: float = 0.0  # host memory for the KV blocks of sequences preempted by swap
    num_cpu_blocks: int | None = None  # None: derived from swap_space_gb
    tensor_parallel_size: int = 1  # ranks sharing every layer (heads, FFN and vocabulary split)
    pipeline_parallel_size: int = 1  # stages holding consecutive layers
    num_microbatches: int | None = None  # per step across pipeline stages; None: pipeline_parallel_size
    cpu_offload_layers: int = 0  # decoder layers whose weights stay in host memory, prefetched one layer ahead
    speculative_method: str | None = None  # "draft" (speculative_model proposes) | "ngram" (prompt lookup) | None
    speculative_model: str | None = None  # the draft checkpoint: same tokenizer as model, smaller
    num_speculative_tokens: int = 4  # the most draft tokens proposed per sequence and step (k)
    speculative_max_batch_size: int = 16  # above this many decoding sequences, speculation stops paying: off
    speculative_min_acceptance: float = 0.2  # below this moving acceptance rate, speculate only to probe
    hf_config: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        path = Path(self.model)
        if not (path / "config.json").is_file():
            raise ValueError(f"no config.json in model directory {self.model!r}")
        self.hf_config = json.loads((path / "config.json").read_text())
        self.hf_config.setdefault("num_key_value_heads", self.hf_config.get("num_attention_heads"))  # pre-GQA configs
        self.name = self.name or path.resolve().name
        if self.block_size <= 0 or self.max_num_seqs <= 0 or self.max_num_batched_tokens <= 0:
            raise ValueError("block_size, max_num_seqs and max_num_batched_tokens must be positive")
        if self.preemption_mode not in ("recompute", "swap"):
            raise ValueError(f"preemption_mode must be 'recompute' or 'swap', not {self.preemption_mode!r}")
        if self.preemption_mode == "swap" and not (self.num_cpu_blocks or self.swap_space_gb > 0):
            raise ValueError("preemption_mode 'swap' needs host blocks: set swap_space_gb or num_cpu_blocks")
        if self.tensor_parallel_size < 1 or self.pipeline_parallel_size < 1 or (self.num_microbatches or 1) < 1:
            raise ValueError("tensor_parallel_size, pipeline_parallel_size and num_microbatches must be at least 1")
        if not 0 <= self.cpu_offload_layers <= self.hf_config["num_hidden_layers"]:
            raise ValueError("cpu_offload_layers must lie between 0 and the model's number of layers")
        self._check_speculative()
        self.max_model_len = check_context(self.hf_config, self.max_model_len)  # also refuses unsupported families
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, not {self.dtype!r}")

    def _check_speculative(self) -> None:
        if self.speculative_method not in (None, "draft", "ngram"):
            raise ValueError(f"speculative_method must be 'draft', 'ngram' or None, not {self.speculative_method!r}")
        if self.speculative_method is None:
            return
        if self.num_speculative_tokens < 1 or self.speculative_max_batch_size < 1:
            raise ValueError("num_speculative_tokens and speculative_max_batch_size must be at least 1")
        if self.tensor_parallel_size * self.pipeline_parallel_size > 1:
            raise ValueError("speculative decoding runs in a single-process engine (no tensor or pipeline parallelism)")
        if self.speculative_method == "draft":
            _check_same_vocabulary(Path(self.model), Path(self.speculative_model or ""))

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype != "auto":
            return getattr(torch, self.dtype)
        if self.device == "cpu":
            return torch.float32
        return getattr(torch, self.hf_config.get("torch_dtype") or self.hf_config.get("dtype") or "bfloat16")


def _check_same_vocabulary(target: Path, draft: Path) -> None:
    """A draft proposes token ids the target verifies: both must mean the same thing by every id."""
    if not (draft / "config.json").is_file():
        raise ValueError(f"speculative_method 'draft' needs speculative_model, a checkpoint directory; got {str(draft)!r}")
    sizes = [json.loads((path / "config.json").read_text())["vocab_size"] for path in (target, draft)]
    vocabs = [_tokenizer_vocab(path) for path in (target, draft)]
    if sizes[0] != sizes[1] or vocabs[0] != vocabs[1]:
        raise ValueError(f"draft model {str(draft)!r} does not share the target's vocabulary (tokenizer)")


def _tokenizer_vocab(path: Path) -> dict | None:
    file = path / "tokenizer.json"
    return json.loads(file.read_text())["model"].get("vocab") if file.is_file() else None
