"""The `omnirrm` command table: every command is a module of one shape, building the parser stays light, and the
parsing rules the commands rely on hold (plan's overrides after options, bench's pass-through, prep's --rewrite)."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from omnirrm_jax import cli

ROOT = Path(__file__).resolve().parents[1]


def test_every_command_module_has_the_same_shape():
    for name in cli.COMMANDS:
        module = cli._command(name)
        assert callable(module.add_parser) and callable(module.run), name
    # every public module is a command; `_`-prefixed ones are helpers commands share
    assert sorted(p.stem for p in (ROOT / "omnirrm_jax" / "commands").glob("*.py") if not p.stem.startswith("_")) \
        == sorted(cli.COMMANDS)


def test_building_the_parser_imports_nothing_heavy():
    code = ("import sys; from omnirrm_jax import cli; cli.build_parser(); "
            "print([m for m in ('jax', 'flax', 'transformers', 'numpy', 'torch') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout


def test_bench_help_lists_every_benchmark(capsys):
    from omnirrm_jax.commands import bench

    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    modules = sorted(p.stem for p in (ROOT / "omnirrm_jax" / "bench").glob("*.py")
                     if p.stem not in ("__init__", "profile"))
    assert sorted(bench.BENCHMARKS) == modules
    for name, what in bench.BENCHMARKS.items():
        assert f"  {name:<8}{what}" in out
        doc = ast.get_docstring(ast.parse((ROOT / "omnirrm_jax" / "bench" / f"{name}.py").read_text()))
        assert doc.startswith(f"`omnirrm bench {name}`: {what}"), (name, doc.splitlines()[0])
    # everything after the name is the benchmark's own, --help included
    assert cli.build_parser().parse_args(["bench", "decode", "--help", "--x"]).rest == ["--help", "--x"]


def test_plan_takes_overrides_after_the_options():
    from omnirrm_jax.commands import plan as plan_cmd
    from omnirrm_jax.training import plan

    assert plan_cmd.PLATFORMS == tuple(sorted(plan.HBM_GIB))
    args = cli.build_parser().parse_args(["plan", "c.yaml", "a.b=1", "--devices", "8", "model.remat=full",
                                          "--mesh", "fsdp=8"])
    assert (args.config, args.overrides, args.devices, args.mesh) == ("c.yaml", ["a.b=1", "model.remat=full"], 8,
                                                                     "fsdp=8")
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["plan", "c.yaml", "--platform", "tpu-v9"])


def test_prep_rewrite_needs_old_equals_new(capsys):
    base = ["prep", "--jsonl", "a.jsonl", "--media-root", ".", "--out", "o"]
    assert cli.build_parser().parse_args(base + ["--rewrite", "/data/="]).rewrite == [("/data/", "")]
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(base + ["--rewrite", "nothing"])
    assert e.value.code == 2 and "--rewrite takes OLD=NEW" in capsys.readouterr().err


def test_no_command_prints_the_help(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert all(f"    {name} " in out for name in cli.COMMANDS), out
