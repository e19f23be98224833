"""`omnirrm grpo CONFIG [key.sub=value ...]`: GRPO with the rubric rewards from a YAML run config
(`training.grpo`)."""

from __future__ import annotations

import argparse

from omnirrm_jax.commands._train import add_config_args, train_from_config


def add_parser(sub) -> argparse.ArgumentParser:
    return add_config_args(sub.add_parser("grpo", help="GRPO with the rubric rewards: omnirrm grpo CONFIG "
                                                       "[key.sub=value ...]"), "configs/grpo_*.yaml")


def run(args: argparse.Namespace) -> int:
    out = train_from_config(args, "grpo")
    print(f"done: {out['rollouts']} rollout batches" + (" (preempted, checkpoint saved)" if out["preempted"] else ""))
    return 0
