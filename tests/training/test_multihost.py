"""Multi-host correctness on one machine: two processes (4 fake CPU devices each) joined by jax.distributed on
localhost run SFT on one 8-device mesh, are stopped by a SIGTERM that reaches process 1 only (both must agree on the
step, save together and exit 0), resume, then run GRPO from the exported SFT model; losses, rewards and parameters
match the single-process 8-device runs.

The workers (`multihost_worker.py`) are started the way a launcher starts them: environment variables read by
`parallel/distributed.py`, the run config as YAML. A new trainer joins the comparison as another leg (an entry
of the worker's LEGS and one more `_launch` call below).
"""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import yaml

from omnirrm_jax import demo
from omnirrm_jax.checkpoint.manager import CheckpointManager
from omnirrm_jax.parallel import distributed
from omnirrm_jax.parallel.sharding import MeshConfig
from omnirrm_jax.training import config as config_lib
from omnirrm_jax.training import export, grpo, sft
from omnirrm_jax.training.grpo_config import GRPOConfig, GRPOSpec
from omnirrm_jax.training.optim import OptimConfig
from tests.multiprocess import ROOT, free_port, log_tail, wait_workers, worker_env

WORKER = os.path.join(os.path.dirname(__file__), "multihost_worker.py")


# ------------------------------------------------------------------------------------------ launch detection (fast)

def test_detect_single_process_by_default():
    assert distributed.detect({}).kind == "single"
    assert distributed.detect({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}).kind == "single"
    assert distributed.detect({"OMNIRRM_COORDINATOR": "h:1", "OMNIRRM_NUM_PROCESSES": "1",
                               "OMNIRRM_PROCESS_ID": "0"}).kind == "single"


def test_detect_explicit_slurm_mpi_tpu():
    e = distributed.detect({"OMNIRRM_COORDINATOR": "10.0.0.1:1234", "OMNIRRM_NUM_PROCESSES": "4",
                            "OMNIRRM_PROCESS_ID": "3"})
    assert e.kind == "explicit" and e.kwargs == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4,
                                                 "process_id": 3}
    jax_names = distributed.detect({"JAX_COORDINATOR_ADDRESS": "h:9", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"})
    assert jax_names.kwargs["process_id"] == 1
    assert distributed.detect({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}) == distributed.Launch("slurm", 16, {})
    assert distributed.detect({"OMPI_COMM_WORLD_SIZE": "2"}).kind == "mpi"
    assert distributed.detect({"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}).num_processes == 4
    assert distributed.detect({"OMNIRRM_DISTRIBUTED": "auto"}).kind == "auto"
    assert distributed.detect({"OMNIRRM_DISTRIBUTED": "0", "SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}).kind == "single"


@pytest.mark.parametrize("env, match", [
    ({"OMNIRRM_COORDINATOR": "h:1"}, "OMNIRRM_NUM_PROCESSES, OMNIRRM_PROCESS_ID missing"),
    ({"OMNIRRM_COORDINATOR": "h:1", "OMNIRRM_NUM_PROCESSES": "2", "OMNIRRM_PROCESS_ID": "2"}, r"not in \[0"),
    ({"OMNIRRM_COORDINATOR": "h", "OMNIRRM_NUM_PROCESSES": "2", "OMNIRRM_PROCESS_ID": "0"}, "host:port"),
    ({"OMNIRRM_COORDINATOR": "h:1", "OMNIRRM_NUM_PROCESSES": "two", "OMNIRRM_PROCESS_ID": "0"}, "not an integer"),
    ({"OMNIRRM_DISTRIBUTED": "maybe"}, "OMNIRRM_DISTRIBUTED"),
])
def test_detect_names_the_bad_variable(env, match):
    with pytest.raises(distributed.LaunchError, match=match):
        distributed.detect(env)


def test_initialize_is_a_no_op_alone():
    assert distributed.initialize_from_env({}).kind == "single" and jax.process_count() == 1
    assert distributed.allgather_json({"a": [1, 2]}) == [{"a": [1, 2]}] and distributed.is_main()


def test_resume_with_another_process_count_is_an_error(tmp_path):
    mngr = CheckpointManager(str(tmp_path), async_save=False)
    try:
        with pytest.raises(ValueError, match="written by 2 processes; this run has 1"):
            mngr._this_process({"process_count": 2, "processes": [{}, {}]}, 5)
        assert mngr._this_process({"process_count": 1, "processes": [{"x": 1}]}, 5) == {"x": 1}
        assert mngr._this_process({"state": "old"}, 5) == {"state": "old"}  # pre per-process checkpoints
    finally:
        mngr.close()


# ------------------------------------------------------------------------------------------ two processes (slow)

@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    cfg = demo.DemoConfig(workdir=str(root), n_train_per_modality=12, n_eval_per_modality=4, batch_size=8)
    data = demo.prepare_demo_data(cfg, grpo_train=True)
    return cfg, data


def _sft_cfg(prepared, workdir, steps=6):
    cfg, data = prepared
    c = demo.sft_config(dataclasses.replace(cfg, steps=steps), data.shards, data.tokenizer_path, str(workdir))
    return dataclasses.replace(c, run=dataclasses.replace(c.run, log_every=1, keep_checkpoints=2))


def _grpo_cfg(prepared, hf_path: str, workdir) -> GRPOConfig:
    """Two rollout batches of 4 prompts x G=2 from the SFT model, LoRA on it, on a data x fsdp x tensor mesh.
    Constrained sampling: every completion parses, so the sampled scores make rewards differ within a group (a
    6-step SFT model writes no valid JSON alone: equal rewards, zero advantages, an update of pure noise)."""
    _, data = prepared
    return GRPOConfig(
        model=config_lib.ModelSpec(preset=None, hf_path=hf_path, dtype="float32", param_dtype="float32"),
        data=config_lib.DataSpec(train=(os.path.join(data.shards, "grpotrain-*.array_record"),),
                                 tokenizer=data.tokenizer_path, eval=(os.path.join(data.shards, "eval-*.array_record"),),
                                 pipeline={"batch_size": 4, "shuffle_seed": 0, "seq_buckets": (384,),
                                           "media_buckets": demo.media_buckets(4)}),
        optim=OptimConfig(learning_rate=1e-3, warmup_ratio=0.0, weight_decay=0.0),
        mesh=MeshConfig(data=2, fsdp=2, tensor=2),
        run=config_lib.RunSpec(workdir=str(workdir), seed=0, max_steps=2, log_every=1, save_every=10 ** 9,
                               eval_every=2, eval_max_new_tokens=8),
        grpo=GRPOSpec(num_generations=2, max_completion_length=48, constrained=True))  # the schema needs >= 44


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _yaml(path, cfg) -> str:
    """The config as `omnirrm sft|grpo CONFIG.yaml` reads it."""
    with open(path, "w") as f:
        yaml.safe_dump(_plain(config_lib.to_dict(cfg)), f)
    return str(path)


def _start(n: int, config: str, leg: str, out: str, stop_after: int | None = None) -> list:
    """Starts n worker processes with 4 CPU devices each (logs in OUT/LEG.I.log)."""
    port = free_port()
    os.makedirs(out, exist_ok=True)
    procs = []
    for i in range(n):
        env = worker_env(i, n, port, devices_per_process=4)
        cmd = [sys.executable, WORKER, config, leg, out] + ([f"--stop-after={stop_after}"] if stop_after else [])
        log = open(os.path.join(out, f"{leg}.{i}.log"), "w")
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True))
        log.close()
    return procs


def _finish(procs: list, leg: str, out: str, timeout: int = 600) -> dict:
    """Waits for every worker; all must exit 0. Returns process 0's summary."""
    wait_workers(procs, out=out, name=leg, timeout=timeout)
    with open(os.path.join(out, f"{leg}.json")) as f:
        summary = json.load(f)
    assert summary["package"] == os.path.join(ROOT, "omnirrm_jax"), f"workers imported {summary['package']}"
    assert summary["process_count"] == len(procs) and summary["device_count"] == 8, summary
    return summary


def _launch(n: int, config: str, leg: str, out: str, stop_after: int | None = None) -> dict:
    return _finish(_start(n, config, leg, out, stop_after), leg, out)


def _wait_for_logged_step(metrics: str, step: int, procs: list, out: str, leg: str, timeout: float = 600) -> None:
    """Returns once process 0 has logged `step` (so every process is inside the training loop)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        for i, p in enumerate(procs):
            assert p.poll() is None, f"worker {i} ended early ({p.returncode}):\n{log_tail(out, leg, i)}"
        if os.path.exists(metrics):
            with open(metrics) as f:
                if any(json.loads(line)["step"] >= step for line in f if line.endswith("\n")):
                    return
        time.sleep(0.05)
    raise TimeoutError(f"{metrics}: step {step} not logged in {timeout} s")


def _metrics(workdir) -> dict[int, dict]:
    steps = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            old = steps.setdefault(row.pop("step"), {})
            row.pop("time")
            # a step's eval metrics come on a line of their own; the same metric twice means another process wrote
            assert not set(old) & set(row), f"{sorted(set(old) & set(row))} logged twice: a process other than 0 wrote"
            old.update(row)
    return steps


def _trainable(state) -> dict:
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(state.trainable)}


def _assert_params_close(npz, state, rtol, atol, noisy_bound=None, noisy_fraction=1e-3):
    """Every trainable leaf close to the reference. With `noisy_bound`: a few entries (at most `noisy_fraction` of a
    leaf) may differ by up to it. Why: Adam scales each entry's step by its own gradient RMS, so an entry whose
    gradient is at summation-order noise level takes a step of ~learning rate in a sign the noise picks; a
    layout bug differs in whole rows or blocks, far more entries than that."""
    got, want = np.load(npz), _trainable(state)
    assert sorted(got.files) == sorted(want)
    for k in want:
        if noisy_bound is None:
            np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=atol, err_msg=k)
            continue
        off = np.abs(got[k] - want[k]) > atol + rtol * np.abs(want[k])
        assert off.mean() <= noisy_fraction, (k, int(off.sum()), off.size)
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=noisy_bound, err_msg=k)


@pytest.mark.slow
def test_two_processes_sft_sigterm_resume_then_grpo_like_one(prepared, tmp_path):
    # ---- SFT, one process: the reference ----------------------------------------------------------------------
    ref = sft.train(_sft_cfg(prepared, tmp_path / "one"), progress=False)
    assert ref["micro_steps"] == 6 and jax.device_count() == 8

    # ---- SFT, two processes: SIGTERM reaches process 1 only, once training is under way ------------------------
    config = _yaml(tmp_path / "two.yaml", _sft_cfg(prepared, tmp_path / "two"))
    out1 = str(tmp_path / "out1")
    procs = _start(2, config, "sft", out1)
    _wait_for_logged_step(str(tmp_path / "two" / "metrics.jsonl"), 1, procs, out1, "sft")
    procs[1].send_signal(signal.SIGTERM)
    first = _finish(procs, "sft", out1)
    k = first["steps"]
    # both stopped after the same step (process 0 was never signalled), saved it together and exited 0
    assert first["preempted"] and first["steps_per_process"] == [k, k] and 2 <= k < 6, first
    per_process = json.loads((tmp_path / "two" / "checkpoints" / str(k) / "data" / "metadata").read_text())
    # k steps of a global batch of 8: each process read its own 4 rows per step
    assert per_process["process_count"] == 2
    assert [st["state"]["counts"]["seen"] for st in per_process["processes"]] == [4 * k, 4 * k], per_process

    second = _launch(2, config, "sft", str(tmp_path / "out2"))
    assert second["steps"] == 6 and not second["preempted"]
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert sorted(one) == sorted(two) == list(range(1, 7))
    np.testing.assert_allclose([two[s]["train/loss"] for s in range(1, 7)], [one[s]["train/loss"] for s in range(1, 7)],
                               rtol=1e-5, err_msg="2-process SFT losses differ from the 1-process run")
    # Adam divides by the gradient's RMS, so summation-order noise in tiny gradient entries grows to ~1e-6 absolute
    # (one entry in 8192 of an o_proj once moved 3.8e-6, rtol 1.7e-4: allowed as noise, a whole row would not be)
    _assert_params_close(tmp_path / "out2" / "sft.npz", ref["state"], rtol=1e-4, atol=1e-6, noisy_bound=1e-4)

    # ---- GRPO from the exported SFT model: one process vs two --------------------------------------------------
    hf = export.export(str(tmp_path / "two"), str(tmp_path / "export"), formats=["hf"])["hf"]
    g_ref = grpo.train(_grpo_cfg(prepared, hf, tmp_path / "grpo_one"), progress=False)
    assert g_ref["rollouts"] == 2
    g_config = _yaml(tmp_path / "grpo.yaml", _grpo_cfg(prepared, hf, tmp_path / "grpo_two"))
    g_two = _launch(2, g_config, "grpo", str(tmp_path / "out3"))
    assert g_two["steps"] == 2 and g_two["steps_per_process"] == [2, 2]
    one, two = _metrics(tmp_path / "grpo_one"), _metrics(tmp_path / "grpo_two")
    assert sorted(one) == sorted(two) == [1, 2]
    for s in (1, 2):
        # the same completions scored against the same gold labels in the same rows: rewards are equal exactly
        for key in ("reward/format_mean", "reward/content_mean", "reward/rubric_mean", "reward/total_std",
                    "rollout/completion_length", "rollout/verdict_accuracy"):
            assert two[s][key] == one[s][key], (s, key, two[s][key], one[s][key])
        for key in ("train/loss", "train/kl", "train/grad_norm"):
            np.testing.assert_allclose(two[s][key], one[s][key], rtol=1e-5, atol=1e-7, err_msg=f"step {s} {key}")
    # held-out eval sees the whole eval set on every process (each process's share gathered), as one process does
    assert two[2]["eval/examples"] == one[2]["eval/examples"] == 16
    assert two[2]["eval/accuracy"] == one[2]["eval/accuracy"] and two[2]["eval/valid_json"] == one[2]["eval/valid_json"]
    # 2 Adam steps at learning rate 1e-3: a noise-level entry may move up to ~2e-3 either way (it moved 1.7e-5 in one
    # of 2048 entries of a lora_b once the rollouts drew among the top-k candidates)
    _assert_params_close(tmp_path / "out3" / "grpo.npz", g_ref["state"], rtol=1e-4, atol=1e-6, noisy_bound=2e-3)
