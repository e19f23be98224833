"""Abstract models (`nnx.eval_shape`: shapes, dtypes and shardings, no memory) built in linear time.

flax NNX's `Variable.set_value` probes `value.sharding` on every assignment, and under a trace a tracer answers with
an AttributeError whose message walks every equation traced so far (jax-ml/jax#40041 describes it): tracing that
assigns once per operation grows quadratically. Building a thinker abstractly assigns its random-key counter once per
parameter: the 7B with LoRA factors took 29 s on the 2-core development CPU, 1.9 s with the walk skipped (session 22).
Every HF load, training start-up and `omnirrm plan` builds one. `eval_shape` skips the walk while the model is built,
and `skip_origin_walk` while a program that assigns Variables traces (the decode loop folds each LoRA product into its
kernel: 2.4 -> 1.3 s to trace at 3B). Meanwhile an error raised in any thread loses only the sentence naming the
traced value it came from.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable

from flax import nnx

_LOCK = threading.RLock()  # re-entrant: a nested use restores what the outer one set


@contextlib.contextmanager
def skip_origin_walk():
    """Tracers' error messages without their origin (no walk over the equations traced so far) inside the block."""
    try:
        from jax._src.interpreters import partial_eval as pe
    except ImportError:  # a JAX without the private module: nothing to skip
        yield
        return
    tracer = getattr(pe, "DynamicJaxprTracer", None)
    if tracer is None or not hasattr(tracer, "_origin_msg"):
        yield
        return
    with _LOCK:
        original = tracer.__dict__.get("_origin_msg")
        tracer._origin_msg = lambda self: ""
        try:
            yield
        finally:
            if original is None:
                del tracer._origin_msg
            else:
                tracer._origin_msg = original


def eval_shape(fn: Callable[[], Any]) -> Any:
    """`nnx.eval_shape(fn)` without the quadratic probe (module docstring)."""
    with skip_origin_walk():
        return nnx.eval_shape(fn)
