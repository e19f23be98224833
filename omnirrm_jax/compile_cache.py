"""JAX's persistent compilation cache for long-lived processes (`omnirrm serve`).

Why: the server compiles every bucketed shape before it listens, and at the 3B shape on an H100 that took ~140 s
per prompt length (docs/PERFORMANCE.md). With the cache on disk, a restarted server (same model shapes, same JAX
and device) reads those programs back instead of compiling them again. Programs are cached however short their
compile (JAX's default skips those under 1 s, which on a small model is all of them).
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


def enable(path: str | None) -> str | None:
    """Turns the cache on at `path` (made if missing); "none" or empty leaves it off. Returns the dir or None.
    Call before the first compilation of the process."""
    if not path or path == "none":
        return None
    import jax

    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
