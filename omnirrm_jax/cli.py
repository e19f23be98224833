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
    bench = sub.add_parser("bench", help="benchmarks (decode, ...): `omnirrm bench NAME --help`",
                           add_help=False)
    bench.add_argument("name", choices=["decode", "data", "eval", "grpo", "sft"], help="which benchmark")
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_cmd_bench)
    demo = sub.add_parser("demo", help="generate demo data, prep it, train a tiny judge, evaluate it (CPU: minutes)")
    demo.add_argument("--workdir", default="runs/demo", help="where data, checkpoints and demo_report.json go")
    demo.add_argument("--steps", type=int, default=None, help="SFT steps (default from DemoConfig)")
    demo.add_argument("--no-control", action="store_true", help="skip the blanked-media control run")
    demo.add_argument("--no-grpo", action="store_true", help="stop after SFT (skip the GRPO stage)")
    demo.add_argument("--grpo-seed", type=int, default=None, help="seed of the GRPO stage (default: the demo's)")
    demo.set_defaults(func=_cmd_demo)
    sft = sub.add_parser("sft", help="supervised fine-tuning: omnirrm sft CONFIG [key.sub=value ...]")
    sft.add_argument("config", help="YAML run config (see configs/)")
    sft.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    sft.set_defaults(func=_cmd_sft)
    grpo = sub.add_parser("grpo", help="GRPO with the rubric rewards: omnirrm grpo CONFIG [key.sub=value ...]")
    grpo.add_argument("config", help="YAML run config (see configs/grpo_*.yaml)")
    grpo.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    grpo.set_defaults(func=_cmd_grpo)
    from omnirrm_jax.eval.cli_judge import add_judge_parser  # light module: heavy imports run inside the command

    add_judge_parser(sub)
    from omnirrm_jax.eval.cli_eval import add_eval_parser

    add_eval_parser(sub)
    exp = sub.add_parser("export", help="training workdir -> merged Orbax / HF safetensors / PEFT adapter")
    exp.add_argument("workdir", help="run.workdir of an omnirrm sft or grpo run (with checkpoints/)")
    exp.add_argument("out", help="output directory (gets orbax/, hf/, adapter/)")
    exp.add_argument("--formats", default="orbax,hf", help="comma list of orbax, hf, adapter (LoRA runs)")
    exp.add_argument("--dtype", default=None, help="parameter dtype of orbax/hf (default: the training one)")
    exp.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    exp.add_argument("--base-hf", default=None, help="base HF dir, if the run's model.hf_path has moved")
    exp.set_defaults(func=_cmd_export)
    sub.add_parser("plan", add_help=False, help="per-device memory of a run config on a mesh: `omnirrm plan --help`")
    # prep parses its own options; main() hands it argv before argparse sees them.
    sub.add_parser("prep", add_help=False, help="ms-swift JSONL + media -> ArrayRecord shards: `omnirrm prep --help`")
    return p


def _cmd_demo(args: argparse.Namespace) -> int:
    import dataclasses

    from omnirrm_jax import demo

    cfg = demo.DemoConfig(workdir=args.workdir, control=not args.no_control)
    if args.no_grpo:
        cfg = dataclasses.replace(cfg, grpo=None)
    elif args.grpo_seed is not None:
        cfg = dataclasses.replace(cfg, grpo=dataclasses.replace(cfg.grpo, seed=args.grpo_seed))
    if args.steps:
        cfg = dataclasses.replace(cfg, steps=args.steps)
    demo.run_demo(cfg)
    return 0


def _cmd_sft(args: argparse.Namespace) -> int:
    import logging

    from omnirrm_jax.training import config as config_lib
    from omnirrm_jax.training import sft

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = config_lib.load_config(args.config, args.overrides)
    out = sft.train(cfg)
    print(f"done: {out['micro_steps']} steps" + (" (preempted, checkpoint saved)" if out["preempted"] else ""))
    return 0


def _cmd_grpo(args: argparse.Namespace) -> int:
    import logging

    from omnirrm_jax.training import config as config_lib
    from omnirrm_jax.training import grpo
    from omnirrm_jax.training.grpo_config import GRPOConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = config_lib.load_config(args.config, args.overrides, cls=GRPOConfig)
    out = grpo.train(cfg)
    print(f"done: {out['rollouts']} rollout batches" + (" (preempted, checkpoint saved)" if out["preempted"] else ""))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    return importlib.import_module(f"omnirrm_jax.bench.{args.name}").main(args.rest)


def _cmd_convert(args: argparse.Namespace) -> int:
    from omnirrm_jax.models import convert

    convert.run(args.src, args.dst, to=args.to, dtype=args.dtype, lora_path=args.lora)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from omnirrm_jax.checkpoint import export

    return export.run(args.workdir, args.out, formats=args.formats, dtype=args.dtype, step=args.step,
                      base_hf=args.base_hf)


def main(argv: list[str] | None = None) -> int:
    """Runs a subcommand. A bad run config (unknown key, wrong type, missing file) is a one-line error naming the
    key or file and exit status 2, not a traceback."""
    try:
        return _main(sys.argv[1:] if argv is None else list(argv))
    except Exception as e:  # noqa: BLE001 - only config errors are caught below; the rest re-raise
        config = sys.modules.get("omnirrm_jax.training.config")  # loaded by whatever raised one
        if config is not None and isinstance(e, config.ConfigError):
            print(f"omnirrm: config error: {e}", file=sys.stderr)
            return 2
        raise


def _main(argv: list[str]) -> int:
    if argv[:1] == ["plan"]:
        from omnirrm_jax.training import plan

        return plan.main(argv[1:])
    if argv[:1] == ["prep"]:
        from data_prep import prep

        return prep.main(argv[1:])
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    if args.command in ("sft", "grpo"):  # before any backend starts; a no-op unless launched multi-process
        from omnirrm_jax.training.distributed import initialize_from_env

        initialize_from_env()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
