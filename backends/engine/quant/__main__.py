"""Quantize a Hugging Face checkpoint once, offline: fp weights in, a quantized checkpoint out.

    .venv/bin/python -m backends.engine.quant models/large /tmp/large-int4 --mode int4 [--group-size 128]

The tokenizer files travel along, so the output directory is a whole model directory.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from backends.engine.quant import formats, quantize_model, save_quantized, weight_bytes

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="directory of an HF causal LM checkpoint")
    parser.add_argument("target", type=Path, help="directory to write the quantized checkpoint to")
    parser.add_argument("--mode", choices=formats.MODES, required=True)
    parser.add_argument("--group-size", type=int, default=128, help="int4 only: input columns per scale")
    args = parser.parse_args()
    if args.target.resolve() == args.source.resolve():
        parser.error("target must differ from source: the float checkpoint is not overwritten")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(args.source, dtype=torch.float32)
    before = weight_bytes(model)
    quantize_model(model, args.mode, args.group_size, progress=True)
    save_quantized(model, args.target)
    for name in TOKENIZER_FILES:
        if (args.source / name).is_file():
            shutil.copy2(args.source / name, args.target / name)
    print(f"{args.target}: weights {before / 2**20:.1f} MiB -> {weight_bytes(model) / 2**20:.1f} MiB ({args.mode})")


if __name__ == "__main__":
    main()
