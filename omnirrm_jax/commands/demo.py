"""`omnirrm demo`: the whole path on the embedded demo task (`omnirrm_jax.demo`), from nothing to a judge."""

from __future__ import annotations

import argparse


def _positive(text: str) -> int:
    if not text.lstrip("-").isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a whole number >= 1, got {text!r}")
    return int(text)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="generate demo data, prep it, train a tiny judge, evaluate it (CPU: minutes)")
    p.add_argument("--workdir", default="runs/demo", help="where data, checkpoints and demo_report.json go (a rerun "
                   "first removes what an earlier demo run wrote there: it starts clean, it does not resume)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the initial weights and every sampling "
                   "step (the GRPO stage's too, unless --grpo-seed)")
    p.add_argument("--steps", type=_positive, default=None, help="SFT steps (default from DemoConfig)")
    p.add_argument("--no-control", action="store_true", help="skip the blanked-media control run")
    p.add_argument("--no-grpo", action="store_true", help="stop after SFT (skip the GRPO stage)")
    p.add_argument("--grpo-seed", type=int, default=None, help="seed of the GRPO stage (default: the demo's)")
    return p


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from omnirrm_jax import demo

    cfg = demo.DemoConfig(workdir=args.workdir, control=not args.no_control, seed=args.seed)
    if args.no_grpo:
        cfg = dataclasses.replace(cfg, grpo=None)
    elif args.grpo_seed is not None:
        cfg = dataclasses.replace(cfg, grpo=dataclasses.replace(cfg.grpo, seed=args.grpo_seed))
    if args.steps:
        cfg = dataclasses.replace(cfg, steps=args.steps)
    report = demo.run_demo(cfg)
    return 0 if report["passed"] else 1  # a FAIL line (demo.criteria) was printed
