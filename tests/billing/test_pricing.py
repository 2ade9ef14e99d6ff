import pytest

from billing.pricing import DEFAULT_PRICES, Price, micros, usd


def test_cost_counts_cached_prompt_tokens_at_the_cached_price_and_rounds_up():
    price = Price("m", input_micros_per_m=2_000_000, cached_input_micros_per_m=500_000, output_micros_per_m=8_000_000)
    # 60 uncached * 2 + 40 cached * 0.5 + 10 out * 8 = 120 + 20 + 80 micro-USD
    assert price.cost_micros(100, 40, 10) == 220
    assert price.cost_micros(0, 0, 0) == 0
    cheap = Price("c", 1, 1, 1)  # a millionth of a micro-USD per token still costs a whole micro-USD
    assert cheap.cost_micros(1, 0, 0) == 1
    assert cheap.cost_micros(1_000_000, 0, 0) == 1
    assert cheap.cost_micros(1_000_001, 0, 0) == 2


def test_worst_case_bounds_every_actual_cost():
    price = DEFAULT_PRICES[0]
    worst = price.cost_micros(321, 0, 64)
    assert all(price.cost_micros(321, cached, out) <= worst for cached in (0, 100, 321) for out in (0, 1, 63, 64))


@pytest.mark.parametrize("counts", [(-1, 0, 0), (10, 11, 0), (10, 0, -5)])
def test_bad_token_counts_are_refused(counts):
    with pytest.raises(ValueError):
        DEFAULT_PRICES[0].cost_micros(*counts)


def test_default_large_model_costs_ten_times_the_small_one():
    large, small = DEFAULT_PRICES
    assert large.cost_micros(1000, 200, 500) == 10 * small.cost_micros(1000, 200, 500)


def test_dollars_and_micros_convert_exactly():
    assert micros("12.345678") == 12_345_678
    assert micros("$0.10") == 100_000
    assert micros(3) == 3_000_000
    assert usd(1_234_567) == "$1.234567"
    assert usd(-5) == "-$0.000005"
    for bad in ("0.0000001", "ten"):
        with pytest.raises(ValueError):
            micros(bad)
