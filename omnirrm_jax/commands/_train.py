"""What `omnirrm sft` and `omnirrm grpo` share: join a multi-process launch, read the run config, train."""

from __future__ import annotations

import argparse


def add_config_args(p: argparse.ArgumentParser, configs: str) -> argparse.ArgumentParser:
    p.add_argument("config", help=f"YAML run config (see {configs})")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    return p


def train_from_config(args: argparse.Namespace, trainer: str) -> dict:
    """Runs `omnirrm_jax.training.<trainer>.train` on the config named in `args`; returns its result."""
    import importlib

    from omnirrm_jax.parallel.distributed import initialize_from_env

    initialize_from_env()  # before any backend starts; a no-op unless launched multi-process
    from omnirrm_jax.training import config as config_lib
    from omnirrm_jax.training.grpo_config import GRPOConfig

    cfg = config_lib.load_config(args.config, args.overrides,
                                 cls=GRPOConfig if trainer == "grpo" else config_lib.SFTConfig)
    return importlib.import_module(f"omnirrm_jax.training.{trainer}").train(cfg)
