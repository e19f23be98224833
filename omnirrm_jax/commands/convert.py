"""`omnirrm convert`: weights between an HF safetensors dir and an Orbax checkpoint."""

from __future__ import annotations

import argparse

from omnirrm_jax.commands._model import DTYPES


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("convert", help="convert weights: HF safetensors dir <-> Orbax checkpoint")
    p.add_argument("src", help="HF checkpoint directory (config.json + *.safetensors) or Orbax directory")
    p.add_argument("dst", help="output directory")
    p.add_argument("--to", choices=["orbax", "hf"], required=True, help="output format")
    p.add_argument("--dtype", default=None, choices=DTYPES,
                   help="parameter dtype to store (default: the source's own, as its config.json states)")
    p.add_argument("--lora", default=None, help="PEFT/ms-swift LoRA adapter dir to merge (HF -> Orbax)")
    return p


def run(args: argparse.Namespace) -> int:
    from omnirrm_jax.models import convert

    convert.run(args.src, args.dst, to=args.to, dtype=args.dtype, lora_path=args.lora)
    return 0
