"""Multi-host correctness on one machine: two processes (4 fake CPU devices each) joined by jax.distributed on
localhost train on one 8-device mesh, checkpoint, stop, resume, and match the single-process 8-device run.

The workers (`multihost_worker.py`) are started the way a launcher starts them: environment variables read by
`training/distributed.py`, the run config as YAML. A new trainer joins the comparison as another leg (an entry
of the worker's LEGS and one more `_launch` call below).
"""
import dataclasses
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
import yaml

from omnirrm_jax import demo
from omnirrm_jax.checkpoint.manager import CheckpointManager
from omnirrm_jax.training import config as config_lib
from omnirrm_jax.training import distributed
from omnirrm_jax.training import sft

WORKER = os.path.join(os.path.dirname(__file__), "multihost_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
    data = demo._prepare(cfg, "data", blank=False)
    _, tok_path = demo._tokenizer(cfg, data["root"])
    return cfg, data, tok_path


def _sft_cfg(prepared, workdir, steps=6):
    cfg, data, tok_path = prepared
    c = demo._sft_config(dataclasses.replace(cfg, steps=steps), data["shards"], tok_path, str(workdir))
    return dataclasses.replace(c, run=dataclasses.replace(c.run, log_every=1, keep_checkpoints=2))


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(n: int, config: str, leg: str, out: str, stop_after: int | None = None, timeout: int = 600) -> dict:
    """Starts n worker processes with 4 CPU devices each, waits for all, returns process 0's summary."""
    port = _free_port()
    procs = []
    for i in range(n):
        env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
               "OMNIRRM_COORDINATOR": f"localhost:{port}", "OMNIRRM_NUM_PROCESSES": str(n),
               "OMNIRRM_PROCESS_ID": str(i), "PYTHONPATH": ROOT}
        cmd = [sys.executable, WORKER, config, leg, out] + ([f"--stop-after={stop_after}"] if stop_after else [])
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"worker {i} of {n} ({leg}) exited {p.returncode}:\n{log[-4000:]}"
    with open(os.path.join(out, f"{leg}.json")) as f:
        return json.load(f)


def _losses(workdir) -> dict[int, float]:
    steps = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            assert row["step"] not in steps, f"step {row['step']} logged twice: a process other than 0 wrote logs"
            steps[row["step"]] = row["train/loss"]
    return steps


@pytest.mark.slow
def test_two_processes_train_stop_resume_like_one(prepared, tmp_path):
    ref = sft.train(_sft_cfg(prepared, tmp_path / "one"), progress=False)
    assert ref["micro_steps"] == 6 and jax.device_count() == 8

    config = str(tmp_path / "two.yaml")
    with open(config, "w") as f:
        yaml.safe_dump(_plain(config_lib.to_dict(_sft_cfg(prepared, tmp_path / "two"))), f)
    first = _launch(2, config, "sft", str(tmp_path / "out1"), stop_after=3)
    assert first == {"micro_steps": 3, "preempted": True, "process_count": 2, "device_count": 8}
    data_file = tmp_path / "two" / "checkpoints" / "3" / "data" / "metadata"
    per_process = json.loads(data_file.read_text())
    # 3 steps of a global batch of 8: each process read its own 4 rows per step, 12 records, not 24.
    assert per_process["process_count"] == 2
    assert [st["state"]["counts"]["seen"] for st in per_process["processes"]] == [12, 12], per_process

    second = _launch(2, config, "sft", str(tmp_path / "out2"))
    assert second["micro_steps"] == 6 and not second["preempted"]

    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == list(range(1, 7))
    np.testing.assert_allclose([two[s] for s in range(1, 7)], [one[s] for s in range(1, 7)], rtol=1e-5,
                               err_msg="2-process losses differ from the 1-process run")
    got = np.load(tmp_path / "out2" / "sft.npz")
    want = {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(ref["state"].trainable)}
    assert sorted(got.files) == sorted(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-6, err_msg=k)
