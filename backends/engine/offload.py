"""Host memory as the engine's overflow: KV blocks of sequences preempted by swap.

On CUDA the host buffers are pinned, so copies to and from the device run at PCIe/NVLink-C2C speed. On a
CPU-only machine "device" and host are the same RAM; the bookkeeping and copies are exercised all the same.
"""
from __future__ import annotations

import torch

from backends.engine.config import EngineConfig
from backends.engine.layers.attention import PagedAttention


class HostKVCache:
    """Per layer, a host-side twin of the device KV cache with its own number of blocks."""

    def __init__(self, layers: list[PagedAttention], config: EngineConfig) -> None:
        self.layers = layers
        block_shape = layers[0].k_cache.shape[1:]
        dtype = layers[0].k_cache.dtype
        if config.num_cpu_blocks is not None:
            self.num_blocks = config.num_cpu_blocks
        else:
            bytes_per_block = 2 * len(layers) * block_shape.numel() * dtype.itemsize
            self.num_blocks = int(config.swap_space_gb * 2**30 // bytes_per_block)
        pin = layers[0].k_cache.is_cuda
        self.k = [torch.zeros((self.num_blocks, *a.k_cache.shape[1:]), dtype=dtype, pin_memory=pin) for a in layers]
        self.v = [torch.zeros((self.num_blocks, *a.v_cache.shape[1:]), dtype=dtype, pin_memory=pin) for a in layers]

    def swap(self, blocks_out: list[tuple[int, int]], blocks_in: list[tuple[int, int]]) -> None:
        """Copy (device, host) pairs out, then (host, device) pairs in: the order the scheduler relies on."""
        if blocks_out:
            device_ids, host_ids = _columns(blocks_out)
            for attn, k, v in zip(self.layers, self.k, self.v):
                k.index_copy_(0, host_ids, attn.k_cache[device_ids.to(attn.k_cache.device)].cpu())
                v.index_copy_(0, host_ids, attn.v_cache[device_ids.to(attn.v_cache.device)].cpu())
        if blocks_in:
            host_ids, device_ids = _columns(blocks_in)
            for attn, k, v in zip(self.layers, self.k, self.v):
                dev = attn.k_cache.device
                attn.k_cache.index_copy_(0, device_ids.to(dev), k[host_ids].to(dev, non_blocking=True))
                attn.v_cache.index_copy_(0, device_ids.to(dev), v[host_ids].to(dev, non_blocking=True))


def _columns(pairs: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    first, second = zip(*pairs)
    return torch.tensor(first), torch.tensor(second)
