"""Shared test helper: count XLA compilations (proves "no recompiles" claims)."""
import contextlib

import jax


@contextlib.contextmanager
def count_compiles():
    """XLA backend compilations inside the block, by function name."""
    events = []

    def listener(event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(kw.get("fun_name", "?"))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
