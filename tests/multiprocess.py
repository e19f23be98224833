"""Local multi-process launches for tests: N processes with fake CPU devices each, joined by `jax.distributed` on
localhost through the same environment variables a launcher sets (`parallel/distributed.py`)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def worker_env(i: int, n: int, port: int, devices_per_process: int = 4) -> dict:
    """The environment of process i of n: its fake CPU devices and the coordinator on localhost."""
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}",
            "JAX_PLATFORMS": "cpu", "OMNIRRM_COORDINATOR": f"localhost:{port}", "OMNIRRM_NUM_PROCESSES": str(n),
            "OMNIRRM_PROCESS_ID": str(i), "PYTHONPATH": ROOT}


def start_workers(script: str, args: list[str], *, n: int, devices_per_process: int, out: str,
                  name: str) -> list:
    """Starts `python script *args` n times (logs in OUT/NAME.I.log)."""
    port = free_port()
    os.makedirs(out, exist_ok=True)
    procs = []
    for i in range(n):
        log = open(os.path.join(out, f"{name}.{i}.log"), "w")
        procs.append(subprocess.Popen([sys.executable, script, *args], env=worker_env(i, n, port, devices_per_process),
                                      stdout=log, stderr=subprocess.STDOUT, text=True))
        log.close()
    return procs


def log_tail(out: str, name: str, i: int) -> str:
    with open(os.path.join(out, f"{name}.{i}.log")) as f:
        return f.read()[-4000:]


def wait_workers(procs: list, *, out: str, name: str, timeout: int = 600) -> None:
    """Waits for every worker (killing stragglers past `timeout`); all must exit 0."""
    try:
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, p in enumerate(procs):
        assert p.returncode == 0, f"worker {i} of {len(procs)} ({name}) exited {p.returncode}:\n{log_tail(out, name, i)}"
