"""Multi-controller start-up and the few cross-process helpers the trainers need.

Why one helper: the same `omnirrm sft|grpo CONFIG` runs alone on a laptop, on one GPU host, as a SLURM job,
under mpirun and on every worker of a TPU pod slice. `jax.distributed.initialize` must run in each process
before anything touches a backend, with arguments that only the launcher knows; `initialize_from_env` reads
them from the environment (`detect`, a pure function, decides) and does nothing for a single process.

Environment, first match wins:
  OMNIRRM_DISTRIBUTED=0               never initialise (debugging one worker of a pod by hand)
  OMNIRRM_COORDINATOR=host:port       explicit: with OMNIRRM_NUM_PROCESSES and OMNIRRM_PROCESS_ID
    (or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID; JAX_LOCAL_DEVICE_IDS passes through)
  SLURM_JOB_ID + SLURM_NTASKS > 1     SLURM: JAX reads the task layout itself and binds each task to the GPU of
                                      its local rank, so start one task per GPU
  OMPI_COMM_WORLD_SIZE > 1            Open MPI (mpirun; the same one-GPU-per-rank binding)
  TPU_WORKER_HOSTNAMES with a comma,  a TPU slice of several workers: JAX asks the TPU metadata
    or OMNIRRM_DISTRIBUTED=auto       (launch/tpu_pod.sh sets auto)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils

from omnirrm_jax.errors import UserError

log = logging.getLogger(__name__)


class LaunchError(UserError):
    """The environment describes a multi-process launch that cannot work; names the variable."""


@dataclasses.dataclass(frozen=True)
class Launch:
    kind: str  # "single" | "explicit" | "slurm" | "mpi" | "tpu" | "auto"
    num_processes: int | None  # None: the cluster tells JAX (TPU metadata)
    kwargs: dict  # for jax.distributed.initialize


def _first(env: Mapping[str, str], *names: str) -> tuple[str | None, str | None]:
    for n in names:
        if env.get(n, "") != "":
            return n, env[n]
    return None, None


def _int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"{name}={value!r} is not an integer") from None


def detect(env: Mapping[str, str]) -> Launch:
    """What kind of launch `env` describes (pure: reads only `env`)."""
    mode = env.get("OMNIRRM_DISTRIBUTED", "").lower()
    if mode in ("0", "off", "false", "no"):
        return Launch("single", 1, {})
    coord_var, coord = _first(env, "OMNIRRM_COORDINATOR", "JAX_COORDINATOR_ADDRESS")
    n_var, n = _first(env, "OMNIRRM_NUM_PROCESSES", "JAX_NUM_PROCESSES")
    id_var, pid = _first(env, "OMNIRRM_PROCESS_ID", "JAX_PROCESS_ID")
    if coord or n or pid:
        missing = [v for v, x in (("OMNIRRM_COORDINATOR", coord), ("OMNIRRM_NUM_PROCESSES", n),
                                  ("OMNIRRM_PROCESS_ID", pid)) if x is None]
        if missing:
            given = ", ".join(v for v in (coord_var, n_var, id_var) if v)
            raise LaunchError(f"{given} set but {', '.join(missing)} missing: an explicit multi-process launch "
                              "needs the coordinator address, the process count and this process's id")
        count, index = _int(n_var, n), _int(id_var, pid)
        if count < 1 or not 0 <= index < count:
            raise LaunchError(f"{id_var}={index} is not in [0, {n_var}={count})")
        if ":" not in coord:
            raise LaunchError(f"{coord_var}={coord!r} is not host:port")
        if count == 1:
            return Launch("single", 1, {})
        return Launch("explicit", count, {"coordinator_address": coord, "num_processes": count,
                                          "process_id": index})
    if env.get("SLURM_JOB_ID") and _int("SLURM_NTASKS", env.get("SLURM_NTASKS", "1")) > 1:
        return Launch("slurm", _int("SLURM_NTASKS", env["SLURM_NTASKS"]), {})
    if _int("OMPI_COMM_WORLD_SIZE", env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return Launch("mpi", _int("OMPI_COMM_WORLD_SIZE", env["OMPI_COMM_WORLD_SIZE"]), {})
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    if len(hosts) > 1:
        return Launch("tpu", len(hosts), {})
    if mode == "auto":
        return Launch("auto", None, {})
    if mode not in ("", "1", "on", "true", "yes"):
        raise LaunchError(f"OMNIRRM_DISTRIBUTED={mode!r} is not one of 0, auto")
    return Launch("single", 1, {})


def initialize_from_env(env: Mapping[str, str] | None = None) -> Launch:
    """Calls `jax.distributed.initialize` as the environment says (once; a no-op for one process)."""
    launch = detect(os.environ if env is None else env)
    if launch.kind == "single" or jax.distributed.is_initialized():
        return launch
    log.info("jax.distributed.initialize (%s launch, %s processes)", launch.kind, launch.num_processes or "?")
    jax.distributed.initialize(**launch.kwargs)
    log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
    return launch


def is_main() -> bool:
    """Process 0 writes logs, metrics and prints; everything else is done by every process."""
    return jax.process_index() == 0


def allgather_json(obj: Any) -> list:
    """Every process's JSON-able `obj`, in process order, on every process (e.g. data-iterator states, which
    differ per process, saved together by the one process that writes JSON checkpoint items)."""
    if jax.process_count() == 1:
        return [json.loads(json.dumps(obj))]
    raw = np.frombuffer(json.dumps(obj).encode("utf-8"), np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.array([raw.size], np.int32))).reshape(-1)
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[:raw.size] = raw
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(lengths), -1)
    return [json.loads(bytes(row[:n]).decode("utf-8")) for row, n in zip(rows, lengths)]


def to_host(x) -> np.ndarray:
    """A global array on every process (all-gathered when several processes hold parts of it)."""
    if jax.process_count() > 1 and isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is True on any (e.g. a stop request that reached one host only).

    Every process must call it at the same point. One tiny all-gather; it waits for the devices' queued work, which
    a multi-process step boundary already does (the hosts agree on the next batch's shapes there)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(np.asarray(multihost_utils.process_allgather(np.asarray([flag], np.int32))).any())
