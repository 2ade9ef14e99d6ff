"""Tensor parallelism: process groups and the sharded layers of a Llama.

Megatron's split: q/k/v and gate/up are column-parallel (each rank computes its heads and its slice of
the FFN, no communication), o_proj and down_proj row-parallel (each rank multiplies its slice of the
input; one all-reduce sums the partial outputs). So a decoder layer costs two all-reduces of the
hidden state. The embedding and the LM head are split over the vocabulary: an all-reduce after the
lookup, an all-gather of the logits.

Every sharded layer keeps its local weight in a plain nn.Linear (`.linear`), so weight-only
quantization applies to the shard unchanged.
"""
from __future__ import annotations

import datetime
import pickle
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from backends.engine.layers.attention import PagedAttention
from backends.engine.models.families import Family
from backends.engine.models.llama import _FUSED, LlamaForCausalLM, rotary_embedding

TIMEOUT = datetime.timedelta(minutes=10)  # loading a large checkpoint sits between the first collectives


class Group:
    """A process group with the few collectives the engine uses; counts the bytes they move and the time they take."""

    def __init__(self, store: dist.Store, rank: int, size: int, device: torch.device, name: str) -> None:
        self.rank, self.size, self.device = rank, size, device
        store = dist.PrefixStore(name, store)
        if device.type == "cuda":
            self.pg = dist.ProcessGroupNCCL(store, rank, size)
        else:
            self.pg = dist.ProcessGroupGloo(store, rank, size, TIMEOUT)
        self.bytes = 0
        self.seconds = 0.0

    def all_reduce(self, t: torch.Tensor, op: dist.ReduceOp = dist.ReduceOp.SUM) -> torch.Tensor:
        if self.size > 1:
            options = dist.AllreduceOptions()
            options.reduceOp = op
            self._timed(t.nbytes, lambda: self.pg.allreduce([t], options))
        return t

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's t along the last dimension, in rank order."""
        if self.size == 1:
            return t
        parts = [torch.empty_like(t) for _ in range(self.size)]
        self._timed(t.nbytes * self.size, lambda: self.pg.allgather([parts], [t.contiguous()]))
        return torch.cat(parts, dim=-1)

    def broadcast_object(self, obj: object = None, src: int = 0) -> object:
        """Rank src's obj, on every rank (pickled; tensors inside travel as bytes)."""
        data = pickle.dumps(obj) if self.rank == src else b""
        length = torch.tensor([len(data)], dtype=torch.long, device=self.device)
        self._timed(8, lambda: self.pg.broadcast([length], dist.BroadcastOptions()))
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(int(length), dtype=torch.uint8)
        buf = buf.to(self.device)
        self._timed(buf.nbytes, lambda: self.pg.broadcast([buf], dist.BroadcastOptions()))
        return obj if self.rank == src else pickle.loads(buf.cpu().numpy().tobytes())

    def send(self, t: torch.Tensor, dst: int, tag: int = 0):
        """Start sending t to rank dst; returns the work to wait on."""
        self.bytes += t.nbytes
        return self.pg.send([t.contiguous()], dst, tag)

    def recv(self, t: torch.Tensor, src: int, tag: int = 0) -> torch.Tensor:
        self._timed(t.nbytes, lambda: self.pg.recv([t], src, tag))
        return t

    def _timed(self, nbytes: int, op) -> None:
        start = time.perf_counter()
        op().wait()
        self.seconds += time.perf_counter() - start
        self.bytes += nbytes


class ColumnParallelLinear(nn.Module):
    """Output features split across ranks, each fused part (q, k, v or gate, up) separately; no communication."""

    def __init__(self, in_features: int, part_sizes: list[int], bias: bool, group: Group) -> None:
        super().__init__()
        self.group = group
        self.part_sizes = [_split(size, group.size) for size in part_sizes]
        self.linear = nn.Linear(in_features, sum(self.part_sizes), bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    def load(self, tensor, part: int, kind: str) -> None:
        n, offset, r = self.part_sizes[part], sum(self.part_sizes[:part]), self.group.rank
        getattr(self.linear, kind).data[offset : offset + n].copy_(tensor[r * n : (r + 1) * n])


class RowParallelLinear(nn.Module):
    """Input features split across ranks: an all-reduce sums the partial products; the bias is added once, after."""

    def __init__(self, in_features: int, out_features: int, bias: bool, group: Group) -> None:
        super().__init__()
        self.group = group
        self.linear = nn.Linear(_split(in_features, group.size), out_features, bias=False)
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.group.all_reduce(self.linear(x))
        return y if self.bias is None else y + self.bias

    def load(self, tensor, part: int, kind: str) -> None:
        if kind == "bias":
            self.bias.data.copy_(tensor[:])
            return
        n, r = self.linear.in_features, self.group.rank
        self.linear.weight.data.copy_(tensor[:, r * n : (r + 1) * n])


class VocabParallelEmbedding(nn.Module):
    """Each rank holds a contiguous slice of the vocabulary's rows; tokens outside it look up zeros; an all-reduce sums."""

    def __init__(self, vocab_size: int, hidden_size: int, group: Group) -> None:
        super().__init__()
        self.group, self.vocab_size = group, vocab_size
        self.shard = -(-vocab_size // group.size)  # the last shard is padded when the vocabulary does not split evenly
        self.start = group.rank * self.shard
        self.weight = nn.Parameter(torch.empty(self.shard, hidden_size))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        local = input_ids - self.start
        outside = (local < 0) | (local >= self.shard)
        x = F.embedding(local.masked_fill(outside, 0), self.weight).masked_fill(outside[:, None], 0.0)
        return self.group.all_reduce(x)

    def load(self, tensor, part: int, kind: str) -> None:
        rows = tensor[self.start : min(self.start + self.shard, self.vocab_size)]
        self.weight.data.zero_()
        self.weight.data[: len(rows)].copy_(rows)


class ParallelLMHead(nn.Module):
    """Each rank scores its slice of the vocabulary; an all-gather assembles the full logits."""

    def __init__(self, vocab_size: int, hidden_size: int, group: Group) -> None:
        super().__init__()
        self.group, self.vocab_size = group, vocab_size
        self.shard = -(-vocab_size // group.size)
        self.start = group.rank * self.shard
        self.linear = nn.Linear(hidden_size, self.shard, bias=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.group.all_gather(self.linear(hidden))[:, : self.vocab_size]

    def load(self, tensor, part: int, kind: str) -> None:
        rows = tensor[self.start : min(self.start + self.shard, self.vocab_size)]
        self.linear.weight.data.zero_()
        self.linear.weight.data[: len(rows)].copy_(rows)


def _split(size: int, parts: int) -> int:
    if size % parts:
        raise ValueError(f"{size} does not split evenly over {parts} tensor-parallel ranks")
    return size // parts


def check_parallel(cfg: dict, tp: int, pp: int) -> None:
    """Raise ValueError, before any process starts, for a model these sizes cannot split."""
    for key in ("num_attention_heads", "num_key_value_heads", "intermediate_size"):
        if cfg[key] % tp:
            raise ValueError(f"{key}={cfg[key]} does not split over tensor_parallel_size={tp}")
    if cfg["num_hidden_layers"] < pp:
        raise ValueError(f"{cfg['num_hidden_layers']} layers cannot fill pipeline_parallel_size={pp} stages")


def stage_layers(num_layers: int, pp: int, stage: int) -> range:
    """Consecutive layers of one pipeline stage; the first stages take one more when they do not split evenly."""
    base, extra = divmod(num_layers, pp)
    start = stage * base + min(stage, extra)
    return range(start, start + base + (stage < extra))


def build_stage_model(cfg: dict, max_positions: int, layers: range, first: bool, last: bool, tp: Group,
                      dtype: torch.dtype, device: torch.device) -> LlamaForCausalLM:
    """The part of a Llama one rank holds: its stage's layers, sharded over the tensor-parallel group.

    Built on the meta device and materialized shard by shard, so no rank ever allocates the whole model."""
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg, max_positions)
    inner = model.model
    inner.layers = nn.ModuleList(inner.layers[i] for i in layers)
    with torch.device(device):
        inner.rotary = rotary_embedding(cfg, max_positions)
        hidden = cfg["hidden_size"]
        for layer in inner.layers:
            _shard_layer(layer, cfg, model.family, inner.rotary, tp)
        inner.embed_tokens = VocabParallelEmbedding(cfg["vocab_size"], hidden, tp) if first else None
        model.lm_head = ParallelLMHead(cfg["vocab_size"], hidden, tp) if last else None
        if not last:
            inner.norm = None
    model.to_empty(device=device)
    inner.rotary = rotary_embedding(cfg, max_positions).to(device)  # to_empty dropped its precomputed tables
    for layer in inner.layers:
        layer.self_attn.rotary = inner.rotary
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))  # a slice the checkpoint never fills stays NaN and is caught after loading
    return model.to(dtype)


def _shard_layer(layer: nn.Module, cfg: dict, family: Family, rotary: nn.Module, tp: Group) -> None:
    attn, mlp = layer.self_attn, layer.mlp
    hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
    attn.qkv_proj = ColumnParallelLinear(hidden, [attn.q_size, attn.kv_size, attn.kv_size], family.qkv_bias, tp)
    attn.o_proj = RowParallelLinear(attn.q_size, hidden, family.o_bias, tp)
    attn.num_heads, attn.num_kv_heads = attn.num_heads // tp.size, attn.num_kv_heads // tp.size
    attn.q_size, attn.kv_size = attn.q_size // tp.size, attn.kv_size // tp.size
    attn.attn = PagedAttention(attn.num_heads, attn.num_kv_heads, attn.head_dim)
    attn.rotary = rotary
    mlp.gate_up_proj = ColumnParallelLinear(hidden, [inter, inter], family.mlp_bias, tp)
    mlp.down_proj = RowParallelLinear(inter, hidden, family.mlp_bias, tp)


def load_stage_weights(model: LlamaForCausalLM, path: str | Path, layers: range) -> None:
    """Read only this rank's slices of an HF checkpoint (safetensors slices are memory-mapped)."""
    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise ValueError(f"no *.safetensors files in {path}")
    with torch.no_grad():
        for file in files:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    for module, part, kind in _targets(model, name, layers):
                        module.load(f.get_slice(name), part, kind)
    unfilled = [n for n, p in model.named_parameters() if p.isnan().any()]
    if unfilled:
        raise ValueError(f"checkpoint {path} lacks parameters: {unfilled}")


def _targets(model: LlamaForCausalLM, name: str, layers: range) -> list[tuple[nn.Module, int, str]]:
    inner = model.model
    module_name, _, kind = name.rpartition(".")
    if name == "model.embed_tokens.weight":
        tied = model.config.get("tie_word_embeddings") and model.lm_head is not None
        return [(m, 0, kind) for m in (inner.embed_tokens, model.lm_head if tied else None) if m is not None]
    if name == "lm_head.weight":
        return [(model.lm_head, 0, kind)] if model.lm_head is not None else []
    if name == "model.norm.weight":
        return [(_Plain(inner.norm), 0, kind)] if inner.norm is not None else []
    if not name.startswith("model.layers.") or "rotary_emb" in name:
        return []
    index, _, rest = name.removeprefix("model.layers.").partition(".")
    if int(index) not in layers:
        return []
    layer = inner.layers[int(index) - layers.start]
    parent, _, leaf = rest.removesuffix(f".{kind}").rpartition(".")
    if leaf in _FUSED:
        fused, part = _FUSED[leaf]
        return [(layer.get_submodule(f"{parent}.{fused}"), part, kind)]
    module = layer.get_submodule(f"{parent}.{leaf}" if parent else leaf)
    if isinstance(module, ColumnParallelLinear):  # fused in the checkpoint too (Phi-3): every part from one tensor
        return [(_FusedPart(module), part, kind) for part in range(len(module.part_sizes))]
    return [(module if hasattr(module, "load") else _Plain(module), 0, kind)]


class _FusedPart:
    """A part of a tensor the checkpoint stores fused: its rows start after the earlier parts' (unsharded) rows."""

    def __init__(self, module: ColumnParallelLinear) -> None:
        self.module = module

    def load(self, tensor, part: int, kind: str) -> None:
        offset = sum(self.module.part_sizes[:part]) * self.module.group.size
        self.module.load(_RowsFrom(tensor, offset), part, kind)


class _RowsFrom:
    """tensor[offset + a : offset + b] for tensor[a:b]: a safetensors slice, read lazily."""

    def __init__(self, tensor, offset: int) -> None:
        self.tensor, self.offset = tensor, offset

    def __getitem__(self, rows: slice):
        return self.tensor[self.offset + rows.start : self.offset + rows.stop]


class _Plain:
    """A replicated module (norms, unsplit projections): every rank loads the whole tensor."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def load(self, tensor, part: int, kind: str) -> None:
        getattr(self.module, kind).data.copy_(tensor[:])
