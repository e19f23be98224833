"""The `omnirrm` command table: every command is a module of one shape, building the parser stays light, and the
parsing rules the commands rely on hold (plan's overrides after options, bench's pass-through, prep's --rewrite).
Every command turns bad arguments into one line on stderr and exit status 2 (Ctrl-C: 130), and other libraries'
INFO logs show only with --verbose."""
import ast
import os
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
                     if p.stem not in ("__init__", "profile", "length_mix", "grpo_bound"))  # helpers
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


# ----------------------------------------------------------------------------------------------------
# User errors: one line, exit 2, no traceback (issue 21, finding 5)
# ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """Stand-ins the bad arguments below point at: shard and tokenizer files that exist (the configs get past the
    path checks they do not test), run configs, a plain folder, a folder of the user's, and an SFT workdir with one
    checkpoint (written as before SFT checkpoints named their trainer)."""
    import numpy as np
    import yaml

    from omnirrm_jax.checkpoint.manager import CheckpointManager

    root = tmp_path_factory.mktemp("cli")
    (root / "shards").mkdir()
    (root / "shards" / "train-00000-of-00001.array_record").write_bytes(b"")
    (root / "tok.model").write_bytes(b"")
    (root / "plain").mkdir()
    (root / "plain" / "readme.txt").write_text("not a model")
    (root / "mine" / "data").mkdir(parents=True)
    (root / "mine" / "data" / "keep.txt").write_text("the user's")
    sft_workdir = root / "sft_run"
    mngr = CheckpointManager(str(sft_workdir / "checkpoints"))
    mngr.save(3, state={"x": np.zeros(2, np.float32)}, data_state={}, meta={"micro_step": 3}, force=True)
    mngr.close()
    run = {"model": {"preset": "tiny"}, "data": {"train": [str(root / "shards" / "train-*.array_record")],
                                                  "tokenizer": str(root / "tok.model")},
           "run": {"workdir": str(root / "new_run")}}
    (root / "sft.yaml").write_text(yaml.safe_dump(run))
    (root / "grpo.yaml").write_text(yaml.safe_dump({**run, "grpo": {"num_generations": 2}}))
    return {"root": str(root), "nowhere": str(root / "nowhere"), "plain": str(root / "plain"),
            "mine": str(root / "mine"), "sft_workdir": str(sft_workdir), "sft": str(root / "sft.yaml"),
            "grpo": str(root / "grpo.yaml"), "out": str(root / "out")}


# (command line with {placeholders} from `paths`, what the one line must say)
BAD_ARGUMENTS = {
    "sft-missing-data": ("sft {sft} data.train=[{nowhere}/train-*.array_record]", "data.train: no files match"),
    "sft-missing-tokenizer": ("sft {sft} data.tokenizer={nowhere}/tok.model", "data.tokenizer: {nowhere}/tok.model"),
    "sft-missing-hf-path": ("sft {sft} model.hf_path={nowhere} model.preset=null", "model.hf_path: {nowhere}"),
    "sft-pipeline-key": ("sft {sft} data.pipeline.batchsize=4", "unknown config key data.pipeline.batchsize; did "
                         "you mean data.pipeline.batch_size?"),
    "sft-pipeline-value": ("sft {sft} data.pipeline.seq_buckets=[512,256]", "data.pipeline: "),
    "sft-preset": ("sft {sft} model.preset=omni_9b", "model.preset: 'omni_9b' is not one of tiny, demo"),
    "sft-dtype": ("sft {sft} model.param_dtype=fp8", "model.param_dtype: 'fp8' is not one of float32"),
    "sft-batch-over-mesh": ("sft {sft} data.pipeline.batch_size=3", "data.pipeline.batch_size 3 does not split over "
                            "the 8 data-parallel devices"),  # conftest's 8 CPU devices
    "grpo-on-sft-workdir": ("grpo {grpo} run.workdir={sft_workdir}", "holds checkpoints of an `omnirrm sft` run "
                            "(step 3)"),
    "grpo-missing-tokenizer": ("grpo {grpo} data.tokenizer={nowhere}", "data.tokenizer: {nowhere} does not exist"),
    "judge-missing": ("judge {nowhere} --answer-a a --answer-b b", "checkpoint {nowhere} is not a directory"),
    "judge-not-a-model": ("judge {plain} --answer-a a --answer-b b", "is neither an HF thinker folder"),
    "judge-dtype": ("judge {plain} --dtype bogus", "argument --dtype: invalid choice: 'bogus'"),
    "judge-no-pair": ("judge {plain}", "one pair needs --answer-a and --answer-b"),
    "serve-missing": ("serve {nowhere}", "checkpoint {nowhere} is not a directory"),
    "serve-batch": ("serve {plain} --max-batch 1", "--max-batch 1: at least 2"),
    "serve-media-root": ("serve {plain} --media-root {nowhere}", "--media-root {nowhere} is not a directory"),
    "serve-key": ("serve {plain} --api-key-env OMNIRRM_TEST_UNSET_KEY", "OMNIRRM_TEST_UNSET_KEY: that environment "
                  "variable is unset or empty"),
    "convert-missing": ("convert {nowhere} {out} --to hf", "{nowhere} is not a folder"),
    "convert-not-hf": ("convert {plain} {out} --to orbax", "{plain} has no config.json"),
    "convert-not-orbax": ("convert {plain} {out} --to hf", "is not an Orbax thinker folder"),
    "convert-workdir": ("convert {sft_workdir} {out} --to hf", "is a training workdir; write its checkpoint out with "
                        "`omnirrm export"),
    "convert-dtype": ("convert {plain} {out} --to hf --dtype bogus", "argument --dtype: invalid choice: 'bogus'"),
    "export-missing": ("export {nowhere} {out}", "workdir {nowhere} does not exist"),
    "export-not-a-run": ("export {plain} {out}", "has no checkpoints/ directory"),
    "export-step": ("export {sft_workdir} {out} --step 7", "no finished checkpoint 7 (steps: [3])"),
    "export-format": ("export {sft_workdir} {out} --formats onnx", "unknown export format(s) ['onnx']"),
    "export-dtype": ("export {sft_workdir} {out} --dtype bogus", "argument --dtype: invalid choice: 'bogus'"),
    "eval-missing-data": ("eval vl_rewardbench {plain} --data {nowhere}/vl.json --judgements {out}.jsonl",
                          "{nowhere}/vl.json: no such file"),
    "eval-dtype": ("eval vl_rewardbench {plain} --data x --judgements y --dtype bogus", "invalid choice: 'bogus'"),
    "eval-suite-missing": ("eval suite {nowhere}/eval.yaml", "{nowhere}/eval.yaml is not a file"),
    "plan-missing": ("plan {nowhere}/run.yaml", "cannot read config file {nowhere}/run.yaml"),
    "plan-mesh": ("plan {sft} --devices 8 --mesh data=two", "--mesh 'data=two'"),
    "prep-missing-jsonl": ("prep --jsonl {nowhere}/rows.jsonl --media-root {plain} --out {out}",
                           "input JSONL {nowhere}/rows.jsonl is not a file"),
    "prep-out-is-a-file": ("prep --jsonl {sft} --media-root {plain} --out {sft}", "output {sft} exists and is not a "
                           "folder"),
    "prep-missing-root": ("prep --jsonl {nowhere}/rows.jsonl --media-root {nowhere} --out {out}",
                          "media root {nowhere} is not a directory"),
    "demo-not-a-demo-workdir": ("demo --workdir {mine}", "holds data but is not a demo workdir"),
    "demo-steps": ("demo --steps 0", "argument --steps: a whole number >= 1"),
    "bench-flag": ("bench decode --bogus", "unrecognized arguments: --bogus"),
    "bon-missing-data": ("bon select --bench mmmu --data {nowhere}/m.jsonl --out {out}", "{nowhere}/m.jsonl: no such file"),
    "bon-strategy": ("bon select --bench mmmu --data x --out {out} --strategies best", "unknown strategy best"),
    "synth-missing-config": ("synth {nowhere}/synth.yaml", "config {nowhere}/synth.yaml does not exist"),
    "synth-not-a-synth-config": ("synth {sft}", "config: "),
    "bon-bench": ("bon sample {plain} --bench gsm8k --data x --output y", "argument --bench: invalid choice: 'gsm8k'"),
}


def _main(argv, capsys) -> tuple[int, str]:
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own exit
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", sorted(BAD_ARGUMENTS))
def test_bad_arguments_are_one_line_with_status_2(case, paths, capsys):
    line, says = BAD_ARGUMENTS[case]
    argv = [a.format(**paths) for a in line.split()]
    code, err = _main(argv, capsys)
    assert code == 2 and "Traceback" not in err, (case, code, err)
    assert len(err.strip().splitlines()) == 1, err
    prog = "omnirrm bench decode" if argv[0] == "bench" else f"omnirrm {argv[0]}"
    assert err.startswith(prog) and ": error: " in err and says.format(**paths) in err, err


def test_every_command_is_walked_with_bad_arguments():
    assert {line.split()[0] for line, _ in BAD_ARGUMENTS.values()} == set(cli.COMMANDS)


def test_grpo_refuses_an_sft_workdir_before_writing_into_it(paths, capsys):
    """`omnirrm grpo` on an SFT workdir used to fail with `KeyError: 'rollout'` after writing into it."""
    def snapshot(d):
        return {os.path.relpath(os.path.join(r, f), d): open(os.path.join(r, f), "rb").read()
                for r, dirs, files in os.walk(d) for f in files + dirs if os.path.isfile(os.path.join(r, f))}, \
            sorted(os.path.relpath(os.path.join(r, x), d) for r, dirs, files in os.walk(d) for x in dirs + files)

    before = snapshot(paths["sft_workdir"])
    code, err = _main(["grpo", paths["grpo"], f"run.workdir={paths['sft_workdir']}"], capsys)
    assert code == 2 and "give this run a new run.workdir" in err and "omnirrm export" in err
    assert snapshot(paths["sft_workdir"]) == before
    assert not os.path.exists(os.path.join(paths["root"], "new_run"))  # no run refused above made its workdir


def test_demo_leaves_a_folder_that_is_not_its_own_alone(paths, capsys):
    code, _ = _main(["demo", "--workdir", paths["mine"]], capsys)
    assert code == 2 and open(os.path.join(paths["mine"], "data", "keep.txt")).read() == "the user's"


def test_ctrl_c_is_one_line_and_130(monkeypatch, capsys):
    from omnirrm_jax.commands import plan

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(plan, "run", interrupted)
    code, err = _main(["plan", "c.yaml"], capsys)
    assert code == 130 and err == "omnirrm plan: interrupted\n"


def test_a_bug_still_raises(monkeypatch):
    from omnirrm_jax.commands import plan

    def bug(args):
        raise KeyError("a bug")

    monkeypatch.setattr(plan, "run", bug)
    with pytest.raises(KeyError, match="a bug"):
        cli.main(["plan", "c.yaml"])


def test_the_whole_stderr_is_the_one_line(paths):
    """In a real process, with the CLI's logging: nothing but the error (no INFO lines, no Orbax lines)."""
    out = subprocess.run([sys.executable, "-m", "omnirrm_jax.cli", "grpo", paths["grpo"],
                          f"run.workdir={paths['sft_workdir']}"], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 2 and out.stderr.startswith("omnirrm grpo: error: run.workdir: ")
    assert len(out.stderr.splitlines()) == 1, out.stderr


def test_model_commands_offer_the_models_dtypes():
    from omnirrm_jax.commands import _model
    from omnirrm_jax.models.config import DTYPES

    assert _model.DTYPES == DTYPES


# ----------------------------------------------------------------------------------------------------
# Logging: other libraries' INFO lines only with --verbose (issue 21, finding 6)
# ----------------------------------------------------------------------------------------------------

SAVE_ONE_CHECKPOINT = """
import sys
import numpy as np
from omnirrm_jax import cli
from omnirrm_jax.checkpoint.manager import CheckpointManager
cli.configure_logging(verbose=sys.argv[2] == "verbose")
m = CheckpointManager(sys.argv[1])
m.save(1, state={"x": np.zeros(2, np.float32)}, data_state={}, meta={}, force=True)
m.close()
import logging
logging.getLogger("omnirrm_jax.test").info("ours")
"""


def test_orbax_info_logs_need_verbose(tmp_path):
    def stderr(mode):
        out = subprocess.run([sys.executable, "-c", SAVE_ONE_CHECKPOINT, str(tmp_path / mode), mode], check=True,
                             capture_output=True, text=True, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"})
        return out.stderr.splitlines()

    quiet, verbose = stderr("quiet"), stderr("verbose")
    assert [line.split(" ", 2)[2] for line in quiet] == ["INFO omnirrm_jax.test: ours"], quiet
    assert sum(" INFO absl: " in line for line in verbose) >= 5, verbose  # Orbax's lines are there when asked for
    args = cli.build_parser().parse_args(["sft", "c.yaml", "--verbose"])
    assert args.verbose and not cli.build_parser().parse_args(["sft", "c.yaml"]).verbose
    assert cli.build_parser().parse_args(["--verbose", "judge", "ckpt"]).verbose
