from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """gemma=True: Gemma's variant, which scales by (1 + weight) and casts back only after scaling."""

    def __init__(self, hidden_size: int, eps: float, gemma: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(hidden_size) if gemma else torch.ones(hidden_size))
        self.eps, self.gemma = eps, gemma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 and scale where HF does (after casting back for Llama), so greedy outputs match.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.gemma:
            return (h * (1.0 + self.weight.float())).to(x.dtype)
        return self.weight * h.to(x.dtype)
