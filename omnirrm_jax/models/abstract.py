"""Abstract models (`nnx.eval_shape`: shapes, dtypes and shardings, no memory) built in linear time.

flax NNX's `Variable.set_value` probes `value.sharding` on every assignment, and under a trace a tracer answers with
an AttributeError whose message walks every equation traced so far (the pull request jax-ml/jax#40041 describes it):
tracing that assigns once per operation grows quadratically. Building a thinker abstractly assigns its random-key
counter once per parameter: the 7B with LoRA factors took 29 s on the 2-core development CPU, 1.9 s with the walk
skipped (session 22). Every HF load, training start-up and `omnirrm plan` builds one. `eval_shape` skips the walk
while the model is built, and `skip_origin_walk` wherever else traced code assigns Variables (`layers.fold_lora`:
the decode loop's 3B trace 2.4 -> 1.3 s). Inside the block an error loses only the sentence naming the traced value
it came from; other threads keep it.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable

from flax import nnx

_SKIP = contextvars.ContextVar("skip_origin_walk", default=False)


def _install() -> None:
    """Wraps the tracer's origin message once, at import: empty inside `skip_origin_walk` (a context variable: only
    the thread that entered the block, so no lock is held while tracing), the original elsewhere. A JAX without the
    private method is left as it is (nothing to skip)."""
    try:
        from jax._src.interpreters import partial_eval as pe
        tracer = pe.DynamicJaxprTracer
        original = tracer.__dict__["_origin_msg"]
    except (ImportError, AttributeError, KeyError):
        return
    tracer._origin_msg = lambda self: "" if _SKIP.get() else original(self)


_install()


@contextlib.contextmanager
def skip_origin_walk():
    """Tracers' error messages without their origin (no walk over the equations traced so far) in this thread, inside
    the block."""
    token = _SKIP.set(True)
    try:
        yield
    finally:
        _SKIP.reset(token)


def eval_shape(fn: Callable[[], Any]) -> Any:
    """`nnx.eval_shape(fn)` without the quadratic probe (module docstring)."""
    with skip_origin_walk():
        return nnx.eval_shape(fn)
