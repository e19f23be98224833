"""`omnirrm sft CONFIG [key.sub=value ...]`: supervised fine-tuning from a YAML run config (`training.sft`)."""

from __future__ import annotations

import argparse

from omnirrm_jax.commands._train import add_config_args, train_from_config


def add_parser(sub) -> argparse.ArgumentParser:
    return add_config_args(sub.add_parser("sft", help="supervised fine-tuning: omnirrm sft CONFIG [key.sub=value ...]"),
                           "configs/")


def run(args: argparse.Namespace) -> int:
    out = train_from_config(args, "sft")
    print(f"done: {out['micro_steps']} steps" + (" (preempted, checkpoint saved)" if out["preempted"] else ""))
    return 0
