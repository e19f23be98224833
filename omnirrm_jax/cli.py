"""`omnirrm` command line: a table of command modules (`omnirrm_jax/commands/`), each with
`add_parser(subparsers)` and `run(args) -> int`. The modules import only the standard library at the top, so
building the whole parser (`omnirrm --help`) stays instant; each command loads what it needs in `run`.

Errors a user can fix are one line on stderr, `omnirrm <command>: error: ...`, and exit status 2: bad flags
(argparse) and every `errors.UserError` a command or the library raises. Ctrl-C is one line and exit 130. Anything
else is a bug and keeps its traceback."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from omnirrm_jax.errors import UserError

# `omnirrm --help` lists them in this order
COMMANDS = ("convert", "bench", "demo", "sft", "grpo", "judge", "eval", "serve", "bon", "synth", "export", "plan",
            "prep")
# loggers whose INFO lines are ours; others (Orbax's absl lines: 152 of a 30-step run's 155) need --verbose
OWN_LOGGERS = ("omnirrm_jax", "omnirrm", "data_prep", "__main__")


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line like every other user error (subcommand parsers inherit the class; the
    benchmarks' own parsers use it too)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _command(name: str):
    return importlib.import_module(f"omnirrm_jax.commands.{name}")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="omnirrm", description="Omni-RRM rubric-grounded reward model in JAX.")
    p.add_argument("--verbose", action="store_true", help="also show other libraries' INFO logs (Orbax, JAX, ...)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        c = _command(name).add_parser(sub)
        if name != "bench":  # bench passes everything after its name on to the benchmark
            c.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                           help="also show other libraries' INFO logs (Orbax, JAX, ...)")
    return p


def _own_or_warning(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or record.name.split(".")[0] in OWN_LOGGERS


def configure_logging(verbose: bool = False) -> None:
    """INFO lines of the project on stderr; other libraries' only from WARNING up unless `verbose`. Left alone when
    the process already has log handlers (an embedding program or pytest configured logging itself)."""
    root = logging.getLogger()
    if root.handlers:
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        for handler in root.handlers:
            handler.addFilter(_own_or_warning)


def _one_line(e: BaseException) -> str:
    return " ".join(part.strip() for part in str(e).splitlines() if part.strip()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    """Runs a subcommand; returns its exit status (2: a user error, printed as one line; 130: Ctrl-C)."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    if args.command is None:
        parser.print_help()
        return 0
    configure_logging(args.verbose)
    prog = f"omnirrm {args.command}"
    try:
        return _command(args.command).run(args)
    except UserError as e:
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
