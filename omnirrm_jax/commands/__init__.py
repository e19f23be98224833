"""The `omnirrm` subcommands, one module each, all of one shape:

  add_parser(subparsers) -> argparse.ArgumentParser   registers the command, its flags and help
  run(args: argparse.Namespace) -> int                 does it; the exit status

`omnirrm_jax.cli` builds its parser from every module, so a module imports only the standard library at the top;
JAX, Flax, transformers and the rest load inside `run` (`omnirrm --help` stays instant). `_`-prefixed modules are
helpers the commands share (`_train`: what `sft` and `grpo` do around their trainer; `_model`: the `--dtype` choices
and the judge model, a checkpoint folder or a training workdir). A user error is raised (`errors.UserError`), not
printed: `cli.main` prints it as one line and exits 2.
"""
