"""Tensor and pipeline parallelism over torch.distributed: one process per rank (gloo on CPU, NCCL on CUDA).

Rank r is pipeline stage r // tp and tensor-parallel rank r % tp. Rank 0 lives in the engine's process:
the scheduler and sampling stay there, and each step it splits the batch into micro-batches, prepares
their tensors (token ids, positions, slots, block tables) and broadcasts them. Every rank runs its stage
over the micro-batches in turn, receiving hidden states from the previous stage and sending them on
without waiting, so stage s computes micro-batch m+1 while stage s+1 computes m. The last stage sends
the logits back to rank 0.
"""
from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from backends.engine.config import EngineConfig
from backends.engine.model_runner import ModelRunner
from backends.engine.models.llama import LlamaForCausalLM
from backends.engine.offload import HostKVCache
from backends.engine.parallel import TIMEOUT, Group, build_stage_model, check_parallel, load_stage_weights, stage_layers
from backends.engine.scheduler import ScheduledBatch
from backends.engine.sequence import Sequence


class StageRunner(ModelRunner):
    """One rank's share of the model (its stage's layers, its tensor-parallel shard) and KV cache."""

    def __init__(self, config: EngineConfig, rank: int, store: dist.Store) -> None:
        tp, pp = config.tensor_parallel_size, config.pipeline_parallel_size
        self.rank, self.tp_size = rank, tp
        self.stage = rank // tp
        self.first, self.last = self.stage == 0, self.stage == pp - 1
        self.layers = stage_layers(config.hf_config["num_hidden_layers"], pp, self.stage)
        device = torch.device(config.device)
        if device.type == "cuda":
            torch.cuda.set_device(rank)
            device = torch.device("cuda", rank)
        self.world = Group(store, rank, tp * pp, device, "world")
        self.tp = Group(store, rank % tp, tp, device, f"tp{self.stage}")
        self.threads_before = torch.get_num_threads()
        if not config.num_threads:  # ranks share the machine's cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // (tp * pp)))
        super().__init__(config)
        num_cpu_blocks = self._agree(self.num_cpu_blocks)
        if num_cpu_blocks != self.num_cpu_blocks:
            self.host_kv = HostKVCache(self.model.attention_layers(), dataclasses.replace(config, num_cpu_blocks=num_cpu_blocks))
            self.num_cpu_blocks = num_cpu_blocks

    def _load_model(self, config: EngineConfig) -> LlamaForCausalLM:
        model = build_stage_model(config.hf_config, config.max_model_len, self.layers, self.first, self.last, self.tp,
                                  config.torch_dtype, self.device)
        load_stage_weights(model, config.model, self.layers)
        if config.quantization:
            from backends.engine.quant import quantize_model

            quantize_model(model, config.quantization)
        return model.eval()

    def _blocks_for_budget(self, memory_gb: float, dtype: torch.dtype) -> int:
        return self._agree(super()._blocks_for_budget(memory_gb, dtype))

    def _agree(self, value: int) -> int:
        """Ranks with fewer layers or heads fit more blocks in the same memory; all must use the smallest count."""
        t = torch.tensor([value], dtype=torch.long, device=self.world.device)
        return int(self.world.all_reduce(t, dist.ReduceOp.MIN))

    @torch.inference_mode()
    def run_stages(self, inputs: list[tuple]) -> list[torch.Tensor]:
        """This rank's stage over every micro-batch; on rank 0, the logits of each micro-batch with sequences to sample."""
        cfg = self.model.config
        logits, sends = [], []
        for tag, step in enumerate(inputs):
            input_ids, positions, meta, last_rows = _to(self.device, step)
            if self.first:
                x = self.model.model.embed(input_ids)
            else:
                x = torch.empty(len(input_ids), cfg["hidden_size"], dtype=self.dtype, device=self.device)
                self.world.recv(x, self.rank - self.tp_size, tag)
            for layer in self.model.model.layers:
                x = layer(positions, x, meta)
            if not self.last:
                sends.append((self.world.send(x, self.rank + self.tp_size, tag), x))
            elif len(last_rows):
                out = self.model.lm_head(self.model.model.norm(x[last_rows]))
                if self.rank == 0:
                    logits.append(out)
                elif self.tp.rank == 0:
                    sends.append((self.world.send(out, 0, tag), out))
        for work, _ in sends:
            work.wait()
        if self.rank == 0 and not self.last:
            last_stage_rank = self.world.size - self.tp_size
            for tag, (_, _, _, last_rows) in enumerate(inputs):
                if len(last_rows):
                    out = torch.empty(len(last_rows), cfg["vocab_size"], dtype=self.dtype, device=self.device)
                    logits.append(self.world.recv(out, last_stage_rank, tag))
        return logits

    @property
    def dtype(self) -> torch.dtype:
        return self.model.model.layers[0].input_layernorm.weight.dtype

    def serve(self) -> None:
        """A worker rank's loop: follow rank 0's broadcasts until told to stop."""
        while (message := self.world.broadcast_object())[0] != "stop":
            if message[0] == "step":
                self.run_stages(message[1])
            else:
                ModelRunner.swap(self, *message[1:])


class DistributedRunner(StageRunner):
    """Rank 0: starts the other ranks, then drives them step by step. Same face as ModelRunner."""

    def __init__(self, config: EngineConfig) -> None:
        tp, pp = config.tensor_parallel_size, config.pipeline_parallel_size
        check_parallel(config.hf_config, tp, pp)
        # Port 0: the OS picks a free one. The workers connect once started.
        self.store = dist.TCPStore("127.0.0.1", 0, tp * pp, True, timeout=TIMEOUT, wait_for_workers=False)
        ctx = mp.get_context("spawn")
        self.workers = [
            ctx.Process(target=_serve, args=(config, rank, self.store.port), daemon=True, name=f"ferryman-rank{rank}")
            for rank in range(1, tp * pp)
        ]
        for worker in self.workers:
            worker.start()
        try:
            super().__init__(config, 0, self.store)
        except BaseException:
            self._kill_workers()
            raise
        self.num_microbatches = config.num_microbatches or pp

    def swap(self, blocks_out: list[tuple[int, int]], blocks_in: list[tuple[int, int]]) -> None:
        if blocks_out or blocks_in:
            self.world.broadcast_object(("swap", blocks_out, blocks_in))
            super().swap(blocks_out, blocks_in)

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> tuple[torch.Tensor, list[Sequence]]:
        inputs, seqs = [], []
        for part in microbatches(batch, self.num_microbatches):
            input_ids, positions, meta, last_rows, part_seqs = self._prepare(part)
            inputs.append((input_ids, positions, meta, last_rows))
            seqs += part_seqs
        self.world.broadcast_object(("step", inputs))
        logits = self.run_stages(inputs)
        return (torch.cat(logits) if logits else torch.empty(0, self.model.config["vocab_size"])), seqs

    def shutdown(self) -> None:
        """Stop the other ranks; the engine is unusable afterwards."""
        if any(w.is_alive() for w in self.workers):
            self.world.broadcast_object(("stop",))
        for worker in self.workers:
            worker.join(timeout=30)
        self._kill_workers()
        torch.set_num_threads(self.threads_before)

    def _kill_workers(self) -> None:
        for worker in self.workers:
            if worker.is_alive():
                worker.kill()
                worker.join()


def microbatches(batch: ScheduledBatch, parts: int) -> list[ScheduledBatch]:
    """Split a step's sequences into up to `parts` consecutive groups of about equal token counts."""
    total = sum(n for _, n in batch)
    groups: list[ScheduledBatch] = [[]]
    done = 0
    for seq, n in batch:
        if groups[-1] and done >= total * len(groups) / parts:
            groups.append([])
        groups[-1].append((seq, n))
        done += n
    return groups


def _serve(config: EngineConfig, rank: int, port: int) -> None:
    store = dist.TCPStore("127.0.0.1", port, config.tensor_parallel_size * config.pipeline_parallel_size, False,
                          timeout=TIMEOUT)
    StageRunner(config, rank, store).serve()


def _to(device: torch.device, obj):
    """obj with every tensor inside (tuples, lists, dataclasses) on device."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(device, o) for o in obj)
    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(obj, **{f.name: _to(device, getattr(obj, f.name)) for f in dataclasses.fields(obj)})
    return obj
