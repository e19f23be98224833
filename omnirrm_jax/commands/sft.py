"""`omnirrm sft CONFIG [key.sub=value ...]`: supervised fine-tuning from a YAML run config (`training.sft`)."""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("sft", help="supervised fine-tuning: omnirrm sft CONFIG [key.sub=value ...]")
    p.add_argument("config", help="YAML run config (see configs/)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    return p


def run(args: argparse.Namespace) -> int:
    import logging

    from omnirrm_jax.parallel.distributed import initialize_from_env

    initialize_from_env()  # before any backend starts; a no-op unless launched multi-process
    from omnirrm_jax.training import config as config_lib
    from omnirrm_jax.training import sft

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = config_lib.load_config(args.config, args.overrides)
    out = sft.train(cfg)
    print(f"done: {out['micro_steps']} steps" + (" (preempted, checkpoint saved)" if out["preempted"] else ""))
    return 0
