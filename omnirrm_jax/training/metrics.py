"""Metric logging: a JSONL file (easy to read back) and TensorBoard event files, written by process 0.

TensorBoard's format is TFRecord framing around `Event` protos; the few fields we need (wall time, step,
scalar summaries) are encoded here directly, so logging needs neither TensorFlow nor the tensorboard
package. Only process 0 writes (multi-host runs reduce metrics first).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time

import jax

# ---- TFRecord framing (masked CRC32C) ---------------------------------------------------------------

def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", _masked(crc32c(header))) + data + struct.pack("<I", _masked(crc32c(data)))


# ---- Event proto (hand-encoded) ---------------------------------------------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, wire: int, payload: bytes) -> bytes:
    return _varint((num << 3) | wire) + payload


def _bytes_field(num: int, data: bytes) -> bytes:
    return _field(num, 2, _varint(len(data)) + data)


def event_bytes(wall_time: float, step: int, *, scalars: dict[str, float] | None = None,
                file_version: str | None = None) -> bytes:
    """Event{wall_time=1 (double), step=2 (int64), file_version=3, summary=5{value=1{tag=1, simple_value=2}}}."""
    msg = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
    if file_version is not None:
        msg += _bytes_field(3, file_version.encode())
    if scalars:
        values = b"".join(_bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5, struct.pack("<f", float(v))))
                          for tag, v in scalars.items())
        msg += _bytes_field(5, values)
    return msg


class MetricWriter:
    """Writes scalars to `workdir/metrics.jsonl` and `workdir/tb/events.out.tfevents.*` (process 0 only)."""

    def __init__(self, workdir: str):
        self.active = jax.process_index() == 0
        if not self.active:
            return
        os.makedirs(os.path.join(workdir, "tb"), exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
        self._tb = open(os.path.join(workdir, "tb", name), "ab")
        self._tb.write(tfrecord(event_bytes(time.time(), 0, file_version="brain.Event:2")))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.active:
            return
        clean = {k: float(v) for k, v in scalars.items()}
        self._jsonl.write(json.dumps({"step": int(step), "time": time.time(), **clean}) + "\n")
        self._jsonl.flush()
        self._tb.write(tfrecord(event_bytes(time.time(), int(step), scalars=clean)))
        self._tb.flush()

    def close(self) -> None:
        if self.active:
            self._jsonl.close()
            self._tb.close()


class CompileCounter:
    """XLA compilations since start (logged: after warm-up the count must stay flat)."""

    def __init__(self):
        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            self.count += 1

    def close(self):
        try:
            jax.monitoring.unregister_event_duration_listener(self._listen)
        except (AttributeError, ValueError):
            pass


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


def flops_per_token(cfg, seq: int, *, full_finetune: bool = False, loss_window: int | None = None) -> float:
    """Model FLOPs of one training step per token, what MFU counts: forward 2·N, backward 2·N for the activation
    gradients (+2·N weight gradients when the base trains; a frozen weight gets none), plus causal attention
    (forward 2·T·d per layer, backward twice that). Recompute and the LoRA factors' own FLOPs are not counted,
    so a step scores the same MFU whatever it rematerialises (`omnirrm bench sft`, docs/PERFORMANCE.md). With a
    `loss_window` the output head runs on that many of the `seq` positions only, and only those are counted."""
    t = cfg.text
    attn_fwd = 2 * seq * t.num_heads * t.head_dim  # QKᵀ and PV: 2·2·T·d, halved by the causal mask
    n = matmul_params(cfg)
    if loss_window is not None and loss_window < seq:
        n -= t.vocab_size * t.hidden_size * (seq - loss_window) / seq
    return (6 if full_finetune else 4) * n + 3 * t.num_layers * attn_fwd
