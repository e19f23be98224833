"""`omnirrm` command line: a table of command modules (`omnirrm_jax/commands/`), each with
`add_parser(subparsers)` and `run(args) -> int`. The modules import only the standard library at the top, so
building the whole parser (`omnirrm --help`) stays instant; each command loads what it needs in `run`."""

from __future__ import annotations

import argparse
import importlib
import sys

# `omnirrm --help` lists them in this order
COMMANDS = ("convert", "bench", "demo", "sft", "grpo", "judge", "eval", "export", "plan", "prep")


def _command(name: str):
    return importlib.import_module(f"omnirrm_jax.commands.{name}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="omnirrm", description="Omni-RRM rubric-grounded reward model in JAX.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        _command(name).add_parser(sub)
    return p


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
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return _command(args.command).run(args)


if __name__ == "__main__":
    sys.exit(main())
