"""JAX's persistent compilation cache for servers and training runs.

Why: the server compiles every bucketed shape before it listens (at the 3B shape on an H100, ~140 s per prompt
length), and a 3B GRPO run's first step spent 93 of its 98 s compiling (docs/PERFORMANCE.md). With the cache on
disk, a restarted server or a resumed run (same model shapes, same JAX and device) reads those programs back
instead of compiling them again. Programs are cached however short their compile (JAX's default skips those under
1 s, which on a small model is all of them).

Training runs (`run.compile_cache`, default "auto") use it on GPU and TPU only: there the compiles are long, and on
CPU they are short while a cached CPU executable is tied to the instruction set of the host that compiled it (a
home directory shared between machines would hand one host another's code). Name a directory to use it on CPU too.
"""

from __future__ import annotations

import os

ENV = "OMNIRRM_COMPILE_CACHE"


def default_dir() -> str:
    """$OMNIRRM_COMPILE_CACHE, else $XDG_CACHE_HOME/omnirrm/jax (~/.cache/omnirrm/jax)."""
    if os.environ.get(ENV):
        return os.environ[ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "omnirrm", "jax")


def for_run(setting: str | None) -> str | None:
    """A training run's `compile_cache` -> the directory to use, or None: "auto" is `default_dir()` on GPU / TPU
    and off on CPU (module docstring), "none" / empty is off, anything else a directory."""
    if setting == "auto":
        import jax

        return None if jax.default_backend() == "cpu" else default_dir()
    return setting or None


def enable(path: str | None) -> str | None:
    """Turns the cache on at `path` (made if missing); "none" or empty leaves it off. Returns the dir or None.
    Programs compiled before the call are not in it; later ones are (the cache is re-read from the new dir)."""
    if not path or path == "none":
        return None
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    os.makedirs(path, exist_ok=True)
    if jax.config.jax_compilation_cache_dir != path:
        jax.config.update("jax_compilation_cache_dir", path)
        cc.reset_cache()  # a process that already compiled has initialised the cache (or its absence) once
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # every program built: compiled or read from the cache
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


class CompileListener:
    """Calls `on_compile(fun_name, seconds)` for every XLA program the process builds (compiled, or read from the
    persistent cache) and `on_hit()` for each one read from the cache, until `close()`: the one place that knows
    JAX's monitoring event names (the trainer's counters and the server's /metrics both listen)."""

    def __init__(self, on_compile, on_hit=None):
        import jax

        self._on_compile, self._on_hit = on_compile, on_hit
        jax.monitoring.register_event_duration_secs_listener(self._duration)
        jax.monitoring.register_event_listener(self._event)

    def _duration(self, event: str, duration: float, **kw) -> None:
        if event == COMPILE_EVENT:
            self._on_compile(str(kw.get("fun_name", "?")), duration)

    def _event(self, event: str, **kw) -> None:
        if event == CACHE_HIT_EVENT and self._on_hit is not None:
            self._on_hit()

    def close(self) -> None:
        import jax

        for unregister, fn in ((jax.monitoring.unregister_event_duration_listener, self._duration),
                               (jax.monitoring.unregister_event_listener, self._event)):
            try:
                unregister(fn)
            except (AttributeError, ValueError):  # an older JAX without unregistering, or already removed
                pass
