"""Abstract models (`nnx.eval_shape`: shapes, dtypes and shardings, no memory) built in linear time.

flax NNX's `Variable.set_value` probes `value.sharding` on every assignment, and under a trace a tracer answers with
an AttributeError whose message walks every equation traced so far (the pull request jax-ml/jax#40041 describes it):
tracing that assigns once per operation grows quadratically. Building a thinker abstractly assigns its random-key counter once per
parameter: the 7B with LoRA factors took 29 s on the 2-core development CPU, 1.9 s with the walk skipped (session 22).
Every HF load, training start-up and `omnirrm plan` builds one. `eval_shape` skips the walk while the model is built,
and `skip_origin_walk` while a program that assigns Variables traces (the decode loop folds each LoRA product into its
kernel: 2.4 -> 1.3 s to trace at 3B). Inside the block an error loses only the sentence naming the traced value it
came from; other threads keep it.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from typing import Any, Callable

from flax import nnx

_SKIP = contextvars.ContextVar("skip_origin_walk", default=False)
_INSTALL = threading.Lock()
_installed: list[bool] = []


def _install() -> bool:
    """Wraps the tracer's origin message once, for the whole process: empty inside `skip_origin_walk` (a context
    variable: only the thread that entered it, so no lock is held while tracing and other threads keep their
    messages), the original elsewhere. False where this JAX lacks the private method (nothing to skip)."""
    with _INSTALL:
        if not _installed:
            try:
                from jax._src.interpreters import partial_eval as pe
                tracer = pe.DynamicJaxprTracer
                original = tracer.__dict__["_origin_msg"]
            except (ImportError, AttributeError, KeyError):
                _installed.append(False)
            else:
                tracer._origin_msg = lambda self: "" if _SKIP.get() else original(self)
                _installed.append(True)
        return _installed[0]


@contextlib.contextmanager
def skip_origin_walk():
    """Tracers' error messages without their origin (no walk over the equations traced so far) in this thread, inside
    the block."""
    _install()
    token = _SKIP.set(True)
    try:
        yield
    finally:
        _SKIP.reset(token)


def eval_shape(fn: Callable[[], Any]) -> Any:
    """`nnx.eval_shape(fn)` without the quadratic probe (module docstring)."""
    with skip_origin_walk():
        return nnx.eval_shape(fn)
