"""`omnirrm export`: a training workdir -> merged Orbax / HF safetensors / PEFT adapter (`training.export`)."""

from __future__ import annotations

import argparse

from omnirrm_jax.commands._model import DTYPES


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help="training workdir -> merged Orbax / HF safetensors / PEFT adapter")
    p.add_argument("workdir", help="run.workdir of an omnirrm sft or grpo run (with checkpoints/)")
    p.add_argument("out", help="output directory (gets orbax/, hf/, adapter/)")
    p.add_argument("--formats", default="orbax,hf", help="comma list of orbax, hf, adapter (LoRA runs)")
    p.add_argument("--dtype", default=None, choices=DTYPES, help="parameter dtype of orbax/hf (default: the training "
                   "one)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    p.add_argument("--base-hf", default=None, help="base HF dir, if the run's model.hf_path has moved")
    return p


def run(args: argparse.Namespace) -> int:
    from omnirrm_jax.training import export

    return export.run(args.workdir, args.out, formats=args.formats, dtype=args.dtype, step=args.step,
                      base_hf=args.base_hf)
