"""QuantLinear, quantize_model and quantized checkpoints on a tiny trained Hugging Face Llama."""
import copy

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from backends.engine.quant import (QuantLinear, load_quantized, quant_shells, quantize_model, save_quantized,
                                  weight_bytes)
from backends.engine.quant.formats import dequantize_int4, dequantize_int8
from backends.engine.quant.linear import CACHED_ROWS, FBGEMM

pytestmark = pytest.mark.slow

VOCAB = 64


def _chains(start: torch.Tensor, perm: torch.Tensor, length: int) -> torch.Tensor:
    """Token sequences where each token is perm[previous]: a language the tiny model learns in seconds."""
    seqs = [start]
    for _ in range(length - 1):
        seqs.append(perm[seqs[-1]])
    return torch.stack(seqs, dim=1)


@pytest.fixture(scope="module")
def trained():
    """A tiny Llama trained until its greedy choices have wide margins, as a real model's mostly do."""
    torch.manual_seed(0)
    # Widths divisible by 128, the engine's int4 group size.
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=None, eos_token_id=None)  # no token ends a chain
    model = LlamaForCausalLM(config)
    perm = torch.randperm(VOCAB)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):
        x = _chains(torch.randint(0, VOCAB, (32,)), perm, 16)
        loss = model(x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), perm


def _greedy(model: nn.Module, prompts: torch.Tensor, new_tokens: int = 12) -> torch.Tensor:
    # An explicit mask: token 0 is a real token here, not padding.
    return model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new_tokens,
                          do_sample=False, pad_token_id=0)


@pytest.mark.parametrize("mode", ["int8", "int4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quant_linear_matches_dequantized_reference(mode, dtype):
    torch.manual_seed(1)
    linear = nn.Linear(128, 48, bias=True)
    layer = QuantLinear.from_linear(linear, mode, group_size=64)
    if mode == "int8":
        w = dequantize_int8(layer.qweight, layer.scales)
    else:
        w = dequantize_int4(layer.qweight, layer.scales, layer.zeros, 64)
    x = torch.randn(2, 5, 128).to(dtype)
    expected = (x.float() @ w.T + linear.bias.detach()).to(dtype)
    out = layer(x)
    assert out.dtype == dtype
    assert out.shape == (2, 5, 48)
    if mode == "int8" and FBGEMM:  # fbgemm quantizes activations too (per row, 7-bit): close, not equal
        assert ((out.float() - expected.float()).norm() / expected.float().norm()) < 0.02
    else:
        tol = 1e-5 if dtype == torch.float32 else 5e-2
        torch.testing.assert_close(out, expected, atol=tol, rtol=tol)
    # And it approximates the float layer it replaced, to within the format's precision.
    rel = (layer(x.float()) - linear(x.float())).norm() / linear(x.float()).norm()
    assert rel < (0.02 if mode == "int8" else 0.15)


@pytest.mark.skipif(not FBGEMM, reason="needs an x86 CPU (fbgemm's int8 GEMM)")
def test_int8_cpu_gemm_rows_are_batch_invariant():
    """fbgemm quantizes activations with one scale per tensor; QuantLinear makes it one per row, so a row's
    result is bit for bit the same alone or beside rows a million times larger or smaller."""
    torch.manual_seed(2)
    layer = QuantLinear.from_linear(nn.Linear(256, 96, bias=True), "int8")
    x = torch.randn(6, 256) * torch.logspace(-3, 3, 6)[:, None]
    batch = layer(x)
    expected = x @ dequantize_int8(layer.qweight, layer.scales).T + layer.bias
    for i in range(6):
        assert torch.equal(layer(x[i:i + 1]), batch[i:i + 1])
        assert (batch[i] - expected[i]).norm() / expected[i].norm() < 0.02


@pytest.mark.skipif(not FBGEMM, reason="needs an x86 CPU (fbgemm's int8 GEMM)")
def test_int8_cpu_gemm_long_batches_and_zero_rows():
    """A batch past the reused decode buffer (a prefill) gets the same rows, and an all-zero row gives the bias."""
    torch.manual_seed(4)
    layer = QuantLinear.from_linear(nn.Linear(128, 40, bias=True), "int8")
    x = torch.randn(CACHED_ROWS + 40, 128)
    x[7] = 0.0
    batch = layer(x)
    assert torch.equal(batch[7], layer.bias)
    for i in (0, 7, CACHED_ROWS + 39):
        assert torch.equal(layer(x[i:i + 1])[0], batch[i])
    assert torch.equal(layer(x[:5]), batch[:5])  # the reused buffer's anchor row survived the long batch


def test_int8_cpu_packing_follows_the_loaded_weights():
    """The packed copy is rebuilt when a checkpoint is loaded into a layer that already ran."""
    torch.manual_seed(3)
    source = QuantLinear.from_linear(nn.Linear(128, 32), "int8")
    layer = QuantLinear.from_linear(nn.Linear(128, 32), "int8")
    x = torch.randn(3, 128)
    before = layer(x)
    layer.load_state_dict(source.state_dict())
    assert torch.equal(layer(x), source(x))
    assert not torch.equal(layer(x), before)
    layer.qweight[:16].copy_(-layer.qweight[:16])  # an in-place row-slice copy, as the engine's fused loader does
    assert torch.allclose(layer(x)[:, :16] - layer.bias[:16], -(source(x)[:, :16] - source.bias[:16]), atol=1e-5)


def test_quantize_model_swaps_every_linear_but_lm_head(trained):
    model = copy.deepcopy(trained[0])
    quantize_model(model, "int4", group_size=32)
    swapped = [name for name, m in model.named_modules() if isinstance(m, QuantLinear)]
    assert len(swapped) == 2 * 7  # q, k, v, o, gate, up, down per layer
    assert type(model.lm_head) is nn.Linear
    assert not any(type(m) is nn.Linear for name, m in model.named_modules() if name != "lm_head")


@pytest.mark.parametrize("mode, max_rel_error", [("int8", 0.02), ("int4", 0.15)])
def test_quantized_llama_keeps_greedy_output_and_logits(trained, mode, max_rel_error):
    model, perm = trained
    prompts = _chains(torch.arange(0, VOCAB, 8), perm, 3)
    expected = _greedy(model, prompts)
    assert torch.equal(expected, _chains(prompts[:, 0], perm, expected.shape[1]))  # the model learned the chains
    quantized = quantize_model(copy.deepcopy(model), mode, group_size=32)
    assert torch.equal(_greedy(quantized, prompts), expected)
    text = _chains(torch.arange(VOCAB), perm, 12)
    with torch.no_grad():
        ref, out = model(text).logits, quantized(text).logits
    assert (out - ref).norm() / ref.norm() < max_rel_error
    assert (out.argmax(-1) == ref.argmax(-1)).all()


def test_weight_memory_shrinks_by_the_format_ratio(trained):
    model = trained[0]
    fp32 = weight_bytes(model)
    linear_params = sum(m.weight.numel() for name, m in model.named_modules()
                        if isinstance(m, nn.Linear) and name != "lm_head")
    int8 = weight_bytes(quantize_model(copy.deepcopy(model), "int8"))
    int4 = weight_bytes(quantize_model(copy.deepcopy(model), "int4", group_size=32))
    out_rows = sum(m.out_features for name, m in model.named_modules() if isinstance(m, nn.Linear) and name != "lm_head")
    assert fp32 - int8 == linear_params * 3 - out_rows * 2  # 4 bytes -> 1 byte, plus a float16 scale per row
    assert fp32 - int4 == linear_params * (4 - 0.5) - (linear_params // 32) * 3  # + float16 scale, uint8 zero per group


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_engine_quantized_on_load_matches_hf_quantized(trained, tmp_path, mode):
    """The engine fuses q/k/v and gate/up before quantizing; per-row formats make that the same weights."""
    from backends.base import SamplingParams
    from backends.engine import EngineConfig, LLMEngine

    model, perm = trained
    model.save_pretrained(tmp_path)
    prompts = _chains(torch.arange(3, VOCAB, 9), perm, 3)
    expected = _greedy(quantize_model(copy.deepcopy(model), mode), prompts)[:, prompts.shape[1]:]
    engine = LLMEngine(EngineConfig(str(tmp_path), num_kv_blocks=32, block_size=4, quantization=mode))
    assert isinstance(engine.model_runner.model.model.layers[0].self_attn.qkv_proj, QuantLinear)
    out = engine.generate(prompts.tolist(), SamplingParams(max_tokens=expected.shape[1], temperature=0.0, ignore_eos=True))
    assert [o.token_ids for o in out] == expected.tolist()


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_save_and_load_round_trip(trained, tmp_path, mode):
    model = trained[0]
    quantized = quantize_model(copy.deepcopy(model), mode, group_size=32)
    save_quantized(quantized, tmp_path / "q")
    save_quantized_fp = tmp_path / "fp"
    model.save_pretrained(save_quantized_fp)
    assert (tmp_path / "q" / "model.safetensors").stat().st_size < 0.8 * (save_quantized_fp / "model.safetensors").stat().st_size
    text = _chains(torch.arange(VOCAB), trained[1], 8)
    with torch.no_grad():
        expected = quantized(text).logits
        assert torch.equal(load_quantized(tmp_path / "q")(text).logits, expected)
        # Into a caller's own float skeleton, as the engine does with its model.
        skeleton = LlamaForCausalLM(model.config)
        assert torch.equal(load_quantized(tmp_path / "q", model=skeleton)(text).logits, expected)


def test_bad_requests_are_refused_and_change_nothing(trained, tmp_path):
    model = copy.deepcopy(trained[0])
    with pytest.raises(ValueError, match="group_size"):
        quantize_model(model, "int4", group_size=48)
    with pytest.raises(ValueError, match="unknown quantization mode"):
        quantize_model(model, "fp8")
    assert not any(isinstance(m, QuantLinear) for m in model.modules())
    with pytest.raises(ValueError, match="no QuantLinear"):
        save_quantized(model, tmp_path / "x")
    model.save_pretrained(tmp_path / "fp")
    with pytest.raises(ValueError, match="not a quantized checkpoint"):
        load_quantized(tmp_path / "fp")
    with pytest.raises(ValueError, match="not an nn.Linear"):
        quant_shells(model, ["model.norm"], "int8")
