"""Metric logging: a JSONL file (easy to read back) and TensorBoard event files, written by process 0.

The event files come from tensorboardX (a maintained writer of TensorBoard's format that needs neither
TensorFlow nor the tensorboard package). Only process 0 writes (multi-host runs reduce metrics first).
"""

from __future__ import annotations

import collections
import json
import os
import time
from typing import Callable

import jax
import numpy as np

from omnirrm_jax.compile_cache import CompileListener


class MetricWriter:
    """Writes scalars to `workdir/metrics.jsonl` and `workdir/tb/events.out.tfevents.*` (process 0 only)."""

    def __init__(self, workdir: str):
        self.active = jax.process_index() == 0
        if not self.active:
            return
        from tensorboardX import SummaryWriter  # imported here: only the writing process needs it

        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
        self._tb = SummaryWriter(os.path.join(workdir, "tb"))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.active:
            return
        now = time.time()
        clean = {k: float(v) for k, v in scalars.items()}
        self._jsonl.write(json.dumps({"step": int(step), "time": now, **clean}) + "\n")
        self._jsonl.flush()
        for tag, value in clean.items():
            self._tb.add_scalar(tag, value, global_step=int(step), walltime=now)
        self._tb.flush()

    def close(self) -> None:
        if self.active:
            self._jsonl.close()
            self._tb.close()


class CompileCounter:
    """XLA programs built since start (logged: after warm-up the count must stay flat), the seconds each took and
    how many were read from the persistent compilation cache instead of compiled (a resumed run's first step)."""

    def __init__(self):
        self.count, self.cache_hits = 0, 0
        self.seconds: dict[str, float] = collections.defaultdict(float)  # per jitted function's name
        self._listener = CompileListener(self._compiled, self._hit)

    def _compiled(self, fun_name: str, seconds: float) -> None:
        self.count += 1
        self.seconds[fun_name] += seconds

    def _hit(self) -> None:
        self.cache_hits += 1

    def metrics(self) -> dict:
        """The logged counters: programs built, seconds building them, how many came from the cache."""
        return {"compiles": self.count, "compile/seconds": round(sum(self.seconds.values()), 3),
                "compile/cache_hits": self.cache_hits}

    def summary(self, top: int = 5) -> str:
        """One line: programs, seconds, cache hits and the slowest functions."""
        slow = sorted(self.seconds.items(), key=lambda kv: -kv[1])[:top]
        return (f"{self.count} XLA programs in {sum(self.seconds.values()):.1f} s ({self.cache_hits} read from the "
                f"compilation cache); slowest: " + ", ".join(f"{k} {v:.1f} s" for k, v in slow))

    def close(self):
        self._listener.close()


class Throughput:
    """Tokens per second over the steps of a log window that compiled nothing.

    Why: a trainer reads each step's metrics one step late (the next step is already dispatched), and the time
    between two reads is one step's time only in steady state. An interval in which XLA compiled (the first step, a
    new shape bucket, the first held-out evaluation) holds the compile, and the last read of a run follows no
    dispatch (on a synchronous backend it times nothing): counted, they logged 60 tokens/s and then 2.8 M. Both are
    left out; a window with nothing left has no rate (None)."""

    def __init__(self, compile_count: Callable[[], int]):
        self._count = compile_count
        self._t, self._seen = time.perf_counter(), None  # the first interval holds setup and compile: never counted
        self.tokens, self.seconds = 0, 0.0

    def step(self, tokens: int, *, dispatched_next: bool = True) -> None:
        """After a step's metrics were read: its interval counts unless something compiled in it or no step was
        dispatched after it (`dispatched_next=False`: the run's last read)."""
        now, count = time.perf_counter(), self._count()
        if count == self._seen and dispatched_next:
            self.tokens += tokens
            self.seconds += now - self._t
        self._t, self._seen = now, count

    def rate(self) -> float | None:
        """Tokens/s of the counted steps since the last call, or None when none counted; starts the next window."""
        out = self.tokens / self.seconds if self.tokens and self.seconds > 0 else None
        self.tokens, self.seconds = 0, 0.0
        return out


# ----------------------------------------------------------------------------------------------------
# Model FLOPs (MFU)
# ----------------------------------------------------------------------------------------------------

# Dense bf16 peak FLOP/s per device, for MFU (matched against `jax.Device.device_kind`).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v5 lite": 197e12, "TPU v5p": 459e12,
              "TPU v4": 275e12, "TPU v6 lite": 918e12}


def peak_flops_per_device() -> float | None:
    kind = jax.devices()[0].device_kind
    for name, flops in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return flops
    return None


def matmul_params(cfg) -> int:
    """N: weights of the text decoder's matmuls and the output head (embedding lookups are not matmuls)."""
    t = cfg.text
    per_layer = (t.hidden_size * (t.num_heads + 2 * t.num_kv_heads) * t.head_dim
                 + t.num_heads * t.head_dim * t.hidden_size + 3 * t.hidden_size * t.intermediate_size)
    return t.num_layers * per_layer + t.vocab_size * t.hidden_size


def flops_per_token(cfg, seq: int, *, full_finetune: bool = False, loss_window: int | None = None,
                    attended: float | None = None) -> float:
    """Model FLOPs of one training step per token, what MFU counts: forward 2·N, backward 2·N for the activation
    gradients (+2·N weight gradients when the base trains; a frozen weight gets none), plus causal attention
    (forward 2·T·d per layer, backward twice that). Recompute and the LoRA factors' own FLOPs are not counted,
    so a step scores the same MFU whatever it rematerialises (`omnirrm bench sft`, docs/PERFORMANCE.md). With a
    `loss_window` the output head runs on that many of the `seq` positions only, and only those are counted.
    `attended` replaces T in the attention term for rows that are not one `seq`-long example: packed rows or
    padded ones, where a token attends only within its own example (`attention_span`)."""
    t = cfg.text
    span = seq if attended is None else attended
    attn_fwd = 2 * span * t.num_heads * t.head_dim  # QKᵀ and PV: 2·2·T·d, halved by the causal mask
    n = matmul_params(cfg)
    if loss_window is not None and loss_window < seq:
        n -= t.vocab_size * t.hidden_size * (seq - loss_window) / seq
    return (6 if full_finetune else 4) * n + 3 * t.num_layers * attn_fwd


def attention_span(batch) -> float:
    """The T that makes `flops_per_token`'s causal attention term exact for a host batch: Σ L² / Σ L over its
    examples' lengths L (each packed segment, or each row's real tokens), since a token of an L-long example
    attends within it. A packed row of short examples does far less attention than one row-long example; counting
    the whole row would inflate a packed run's MFU."""
    if "segment_ids" in batch:
        seg = np.asarray(batch["segment_ids"])
        lengths = np.concatenate([np.bincount(row[row > 0]) for row in seg] or [np.zeros(0, np.int64)])
    else:
        lengths = np.asarray(batch["attention_mask"]).sum(axis=1)
    lengths = lengths.astype(np.float64)
    total = lengths.sum()
    return float((lengths ** 2).sum() / total) if total > 0 else 0.0
