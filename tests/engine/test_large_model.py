"""The bundled large checkpoint through the engine, against HF transformers on the same weights."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from backends.base import SamplingParams
from backends.engine import EngineConfig, LLMEngine

pytestmark = pytest.mark.slow

LARGE = Path(__file__).resolve().parents[2] / "models" / "large"


def test_large_model_greedy_batch_matches_hf():
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(LARGE)
    chats = [
        [{"role": "user", "content": "reverse abcd"}],
        [{"role": "user", "content": "What is 12 plus 30?"}],
        [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
         {"role": "user", "content": "And another one?"}],
    ]
    prompts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=False) for c in chats]
    engine = LLMEngine(EngineConfig(str(LARGE), num_kv_blocks=64, max_num_batched_tokens=32))
    got = engine.generate(prompts, SamplingParams(max_tokens=16, temperature=0, ignore_eos=True))
    hf = LlamaForCausalLM.from_pretrained(LARGE, dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None
    for prompt, out in zip(prompts, got):
        with torch.inference_mode():
            want = hf.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False, pad_token_id=0)[0, len(prompt):]
        assert out.token_ids == want.tolist()
        assert out.text == tokenizer.decode(out.token_ids, skip_special_tokens=True)
