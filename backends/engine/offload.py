"""Host memory as the engine's overflow: KV blocks of sequences preempted by swap, and weights of offloaded layers.

On CUDA the host buffers are pinned, so copies to and from the device run at PCIe/NVLink-C2C speed. On a
CPU-only machine "device" and host are the same RAM; the bookkeeping and copies are exercised all the same.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from backends.engine.config import EngineConfig
from backends.engine.layers.attention import PagedAttention
from backends.engine.layers.rotary import RotaryEmbedding


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


class WeightOffloader:
    """Chosen decoder layers keep their weights in host memory (pinned on CUDA) and borrow device memory only to run.

    Before an offloaded layer runs, its copy (already under way) is awaited, and the next offloaded layer's copy
    starts: on a side CUDA stream, so the transfer overlaps this layer's compute; on CPU, on a helper thread,
    where host and "device" are the same RAM, so only the mechanism is exercised. After the layer runs, its
    device copy is dropped: at most two offloaded layers occupy device memory at any time.
    """

    def __init__(self, layers: list[nn.Module], device: torch.device) -> None:
        self.device = device
        self.slots = [_weight_slots(layer) for layer in layers]
        cuda = device.type == "cuda"
        self.host = [[t.detach().to("cpu").pin_memory() if cuda else t.detach().clone() for t in _get(slots)] for slots in self.slots]
        self.stream = torch.cuda.Stream(device) if cuda else None
        self.thread = None if cuda else ThreadPoolExecutor(1, thread_name_prefix="weight-prefetch")
        self.pending: dict[int, object] = {}  # layer index -> its copy under way (an event or a future) and tensors
        self.num_copies = 0
        for i, layer in enumerate(layers):
            _set(self.slots[i], [torch.empty(0, dtype=t.dtype, device=device) for t in self.host[i]])
            layer.register_forward_pre_hook(lambda module, args, i=i: self._before(i))
            layer.register_forward_hook(lambda module, args, out, i=i: self._after(i))

    def _before(self, i: int) -> None:
        tensors = self._wait(self.pending.pop(i, None) or self._fetch(i))
        _set(self.slots[i], tensors)
        following = (i + 1) % len(self.slots)  # past the last offloaded layer, the first one for the next step
        if following != i:
            self.pending[following] = self._fetch(following)

    def _after(self, i: int) -> None:
        _set(self.slots[i], [torch.empty(0, dtype=t.dtype, device=self.device) for t in self.host[i]])

    def _fetch(self, i: int):
        self.num_copies += 1
        if self.stream is None:
            return self.thread.submit(lambda: [t.clone() for t in self.host[i]])
        with torch.cuda.stream(self.stream):
            tensors = [t.to(self.device, non_blocking=True) for t in self.host[i]]
            event = torch.cuda.Event()
            event.record(self.stream)
        return event, tensors

    def _wait(self, copy) -> list[torch.Tensor]:
        if self.stream is None:
            return copy.result()
        event, tensors = copy
        compute = torch.cuda.current_stream(self.device)
        compute.wait_event(event)
        for t in tensors:
            t.record_stream(compute)  # allocated on the side stream, used on the compute stream
        return tensors


Slot = tuple[nn.Module, str, bool]  # (module, tensor name, is a parameter)


def _weight_slots(layer: nn.Module) -> list[Slot]:
    """Every parameter and buffer of a layer but the shared rotary tables (and the KV cache, which is no buffer)."""
    slots = []
    for module in layer.modules():
        if isinstance(module, RotaryEmbedding):
            continue
        slots += [(module, name, True) for name, p in module._parameters.items() if p is not None]
        slots += [(module, name, False) for name, b in module._buffers.items() if b is not None]
    return slots


def _get(slots: list[Slot]) -> list[torch.Tensor]:
    return [(module._parameters if is_param else module._buffers)[name] for module, name, is_param in slots]


def _set(slots: list[Slot], tensors: list[torch.Tensor]) -> None:
    for (module, name, is_param), t in zip(slots, tensors):
        if is_param:
            module._parameters[name].data = t
        else:
            module._buffers[name] = t
