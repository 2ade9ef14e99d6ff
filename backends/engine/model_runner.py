"""Turns a scheduled batch into flat tensors, runs the model over the paged cache, and samples."""
from __future__ import annotations

import torch

from backends.engine.config import EngineConfig
from backends.engine.layers.attention import AttentionMetadata, DecodeGroup, PrefillChunk
from backends.engine.models.llama import LlamaForCausalLM, load_weights
from backends.engine.offload import HostKVCache, WeightOffloader
from backends.engine.sampling import Logprob, sample
from backends.engine.scheduler import ScheduledBatch
from backends.engine.sequence import Sequence

Sampled = list[tuple[Sequence, int, Logprob | None]]  # (sequence, next token, its logprob if asked)
DECODE_GROUP = 8  # decodes per attention call on CPU: short contexts are not padded to the longest in the batch


class ModelRunner:
    def __init__(self, config: EngineConfig) -> None:
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.device = torch.device(config.device)
        self.block_size = config.block_size
        self.model = self._load_model(config)
        layers = list(self.model.model.layers)[: config.cpu_offload_layers]
        self.weight_offloader = WeightOffloader(layers, self.device) if layers else None
        self.num_blocks = config.num_kv_blocks or self._blocks_for_budget(config.kv_cache_memory_gb, config.torch_dtype)
        self._allocate_kv_cache(config.torch_dtype)
        self.host_kv = HostKVCache(self.model.attention_layers(), config)
        self.num_cpu_blocks = self.host_kv.num_blocks

    def _load_model(self, config: EngineConfig) -> LlamaForCausalLM:
        with torch.device(self.device):
            model = LlamaForCausalLM(config.hf_config, config.max_model_len)
        model.to(config.torch_dtype)
        load_weights(model, config.model)
        if config.quantization:
            from backends.engine.quant import quantize_model  # owned by the quantization work; optional

            quantize_model(model, config.quantization)
        return model.eval()

    def _blocks_for_budget(self, memory_gb: float, dtype: torch.dtype) -> int:
        layers = self.model.attention_layers()
        a = layers[0]
        bytes_per_block = 2 * len(layers) * self.block_size * a.num_kv_heads * a.head_dim * dtype.itemsize
        return max(1, int(memory_gb * 2**30 // bytes_per_block))

    def _allocate_kv_cache(self, dtype: torch.dtype) -> None:
        for attn in self.model.attention_layers():
            shape = (self.num_blocks, self.block_size, attn.num_kv_heads, attn.head_dim)
            attn.k_cache = torch.zeros(shape, dtype=dtype, device=self.device)
            attn.v_cache = torch.zeros(shape, dtype=dtype, device=self.device)

    def swap(self, blocks_out: list[tuple[int, int]], blocks_in: list[tuple[int, int]]) -> None:
        self.host_kv.swap(blocks_out, blocks_in)

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> Sampled:
        """Compute each scheduled sequence's next tokens; sample for those whose chunk reaches their end."""
        if not batch:
            return []
        logits, seqs = self.execute(batch)
        if not seqs:
            return []
        tokens, logprobs = sample(logits, seqs)
        return list(zip(seqs, tokens, logprobs or [None] * len(seqs)))

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> tuple[torch.Tensor, list[Sequence]]:
        """The forward pass alone: last-position logits of every sequence whose chunk completes it."""
        input_ids, positions, meta, last_rows, seqs = self._prepare(batch)
        hidden = self.model(input_ids, positions, meta)
        return self.model.compute_logits(hidden[last_rows]), seqs

    @torch.inference_mode()
    def execute_verify(self, batch: ScheduledBatch, verified: set[int]) -> tuple[torch.Tensor, list[Sequence], dict[int, torch.Tensor]]:
        """execute(), and the logits at every computed position of the sequences in verified (their drafts' check)."""
        input_ids, positions, meta, last_rows, seqs = self._prepare(batch)
        hidden = self.model(input_ids, positions, meta)
        chunked = [s for s, n in batch if n > 1]  # _prepare lays the chunks out in batch order
        spans = {s.seq_id: (c.start, c.num_tokens) for s, c in zip(chunked, meta.prefills) if s.seq_id in verified}
        rows = torch.cat([last_rows] + [torch.arange(a, a + n, device=self.device) for a, n in spans.values()])
        logits = self.model.compute_logits(hidden[rows])
        per_seq = logits[len(last_rows) :].split([n for _, n in spans.values()])
        return logits[: len(last_rows)], seqs, dict(zip(spans, per_seq))

    def _prepare(self, batch: ScheduledBatch):
        decodes = sorted(((s, n) for s, n in batch if n == 1), key=lambda item: item[0].num_computed_tokens)
        prefills = [(s, n) for s, n in batch if n > 1]
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        chunks: list[PrefillChunk] = []
        last_rows: list[int] = []
        seqs: list[Sequence] = []
        for seq, n in decodes + prefills:
            start, end = seq.num_computed_tokens, seq.num_computed_tokens + n
            if n > 1:
                table = torch.tensor(seq.block_table[: -(-end // bs)], device=self.device)
                chunks.append(PrefillChunk(len(input_ids), n, end, table))
            input_ids += seq.token_ids[start:end]
            positions += range(start, end)
            slots += [seq.block_table[p // bs] * bs + p % bs for p in range(start, end)]
            if end == len(seq):
                last_rows.append(len(input_ids) - 1)
                seqs.append(seq)
        meta = AttentionMetadata(self._tensor(slots), self._decode_groups([s for s, _ in decodes]), chunks)
        return self._tensor(input_ids), self._tensor(positions), meta, self._tensor(last_rows), seqs

    def _decode_groups(self, seqs: list[Sequence]) -> list[DecodeGroup]:
        size = len(seqs) if self.device.type == "cuda" else DECODE_GROUP  # the kernel reads no padding
        groups = []
        for start in range(0, len(seqs), size):
            group = seqs[start : start + size]
            width = max(len(s.block_table) for s in group)
            tables = self._tensor([s.block_table + [0] * (width - len(s.block_table)) for s in group])
            lens = self._tensor([s.num_computed_tokens + 1 for s in group])
            groups.append(DecodeGroup(start, len(group), tables, lens))
        return groups

    def _tensor(self, values: list) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)
