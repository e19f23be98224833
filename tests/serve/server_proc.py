"""Start the real `omnirrm serve` as a subprocess on a free localhost port (the tiny judge of
`tests.eval.judge_env`), wait for /health, stop it with SIGTERM."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAX_NEW = "50"  # the shortest constrained judgement is 39 tokens with the test tokenizer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProc:
    """A running server: `url`, `proc`, `log_path`; `stop()` sends SIGTERM and returns the exit status."""

    def __init__(self, env: dict, tmp: str, *flags: str, extra_env: dict | None = None, startup_s: float = 300):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(tmp, f"server-{self.port}.log")
        cmd = [sys.executable, "-m", "omnirrm_jax.cli", "serve", env["hf_dir"], "--tokenizer", env["tok_path"],
               "--port", str(self.port), "--max-new-tokens", MAX_NEW, "--constrained", *flags]
        penv = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", **(extra_env or {}))
        penv.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
        penv.setdefault("OMNIRRM_COMPILE_CACHE", "none")  # tests compile afresh unless they pass --compile-cache
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=penv, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + startup_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode} at start:\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server not healthy within {startup_s} s:\n{self.log()}")
            time.sleep(0.5)

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()[-5000:]

    def metric(self, name: str, headers: dict | None = None) -> float:
        """The summed value of one Prometheus sample name from /metrics."""
        text = httpx.get(self.url + "/metrics", headers=headers or {}, timeout=10).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name) and (line[len(name)] in " {"))

    def stop(self, timeout: float = 120) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
