"""`omnirrm` command line. Heavy imports happen inside each subcommand so `--help` stays instant."""

from __future__ import annotations

import argparse
import sys


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="omnirrm", description="Omni-RRM rubric-grounded reward model in JAX.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    conv = sub.add_parser("convert", help="convert weights: HF safetensors dir <-> Orbax checkpoint")
    conv.add_argument("src", help="HF checkpoint directory (config.json + *.safetensors) or Orbax directory")
    conv.add_argument("dst", help="output directory")
    conv.add_argument("--to", choices=["orbax", "hf"], required=True, help="output format")
    conv.add_argument("--dtype", default="float32", help="parameter dtype to store (float32, bfloat16)")
    conv.add_argument("--lora", default=None, help="PEFT/ms-swift LoRA adapter dir to merge (HF -> Orbax)")
    conv.set_defaults(func=_cmd_convert)
    return p


def _cmd_convert(args: argparse.Namespace) -> int:
    from omnirrm_jax.models import convert

    convert.run(args.src, args.dst, to=args.to, dtype=args.dtype, lora_path=args.lora)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
