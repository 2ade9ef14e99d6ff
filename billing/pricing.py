"""Prices and the one cost formula. Integer micro-USD only: finance must be able to add records to the cent."""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

PER = 1_000_000  # prices are quoted per 1M tokens


@dataclass(frozen=True)
class Price:
    model: str
    input_micros_per_m: int  # micro-USD per 1M prompt tokens not served from the prefix cache
    cached_input_micros_per_m: int
    output_micros_per_m: int
    # Self-hosted models may be billed by device time instead: micro-USD per GPU-hour (GPUs are rented by the hour;
    # per GPU-second in micro-USD could not say $2.49/h exactly), charged per attributed GPU-second. The per-token
    # prices stay: the report compares against them, and the hold (their worst case) caps the GPU charge.
    gpu_hour_micros: int | None = None

    def cost_micros(self, prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> int:
        """Cost of one request, rounded up to a whole micro-USD. `prompt_tokens` includes `cached_tokens`."""
        if min(prompt_tokens, cached_tokens, completion_tokens) < 0 or cached_tokens > prompt_tokens:
            raise ValueError(f"bad token counts: prompt={prompt_tokens} cached={cached_tokens} "
                             f"completion={completion_tokens}")
        scaled = ((prompt_tokens - cached_tokens) * self.input_micros_per_m
                  + cached_tokens * self.cached_input_micros_per_m
                  + completion_tokens * self.output_micros_per_m)
        return -(-scaled // PER)

    def gpu_cost_micros(self, gpu_seconds: float) -> int:
        """`gpu_seconds` at the GPU-hour price, rounded up to a whole micro-USD. The float's shortest decimal (what
        the usage record shows) is multiplied exactly: 0.07 GPU-s at $3.60/h is 70 micro-USD, where float math says 71."""
        if self.gpu_hour_micros is None:
            raise ValueError(f"{self.model} has no GPU-hour price")
        if not gpu_seconds >= 0 or math.isinf(gpu_seconds):
            raise ValueError(f"bad GPU-seconds: {gpu_seconds}")
        return math.ceil(Fraction(repr(gpu_seconds)) * self.gpu_hour_micros / 3600)

    def charge_micros(self, prompt_tokens: int, cached_tokens: int, completion_tokens: int,
                      gpu_seconds: float | None) -> tuple[int, int | None]:
        """(cost at the per-token prices, cost at the GPU-hour price or None): the second is billed when there is one.
        A backend that measured no GPU time (None) is billed per token."""
        tokens = self.cost_micros(prompt_tokens, cached_tokens, completion_tokens)
        if self.gpu_hour_micros is None or gpu_seconds is None:
            return tokens, None
        return tokens, self.gpu_cost_micros(gpu_seconds)


FREE = Price("", 0, 0, 0)

# Defaults for the two bundled models: the large one costs 10x the small one, cached input a quarter of input.
DEFAULT_PRICES = (
    Price("ferryman-large", 2_000_000, 500_000, 8_000_000),
    Price("ferryman-small", 200_000, 50_000, 800_000),
)


def usd(micros: int) -> str:
    """Exact dollars for humans: 1234567 -> '$1.234567'."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), 1_000_000)
    return f"{sign}${whole}.{frac:06d}"


def micros(dollars: str | int | float) -> int:
    """Parse a dollar amount ('12.50', '$3', 7) into micro-USD, exactly (via Decimal, never float math)."""
    from decimal import Decimal, InvalidOperation

    try:
        value = Decimal(str(dollars).strip().lstrip("$")) * 1_000_000
    except InvalidOperation:
        raise ValueError(f"not a dollar amount: {dollars!r}") from None
    if value != value.to_integral_value():
        raise ValueError(f"{dollars!r} has more precision than a micro-dollar")
    return int(value)
