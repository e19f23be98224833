"""Prometheus metrics of the server (`GET /metrics`): what an operator needs to size it and to see it degrade.

Queue depth, batch sizes, prompt and generated tokens (rates give tokens/s), request latency per endpoint, answers
by status and errors by reason, and XLA compilations: `omnirrm_serve_compiles_total` counts every program the
process compiled or read from the persistent cache (a `jax.monitoring` listener), `..._compile_cache_hits_total`
those read from the cache (`--compile-cache`), `omnirrm_serve_compiles_after_warmup` those after warm-up ended,
which should stay 0 for text traffic (`serve.runner`)."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from omnirrm_jax.compile_cache import CompileListener

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)


class Metrics:
    def __init__(self, queue_depth=lambda: 0):
        r = self.registry = CollectorRegistry()
        Gauge("omnirrm_serve_queue_depth", "jobs waiting for a batch", registry=r).set_function(queue_depth)
        self.batch_rows = Histogram("omnirrm_serve_batch_rows", "real rows per device batch", ["kind"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.prompt_tokens = Counter("omnirrm_serve_prompt_tokens", "prompt tokens run", registry=r)
        self.generated_tokens = Counter("omnirrm_serve_generated_tokens", "chat tokens generated", registry=r)
        self.latency = Histogram("omnirrm_serve_request_seconds", "request latency", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.answers = Counter("omnirrm_serve_requests", "answers by endpoint and HTTP status",
                               ["endpoint", "status"], registry=r)
        self.errors = Counter("omnirrm_serve_errors", "refused or failed requests by reason", ["reason"], registry=r)
        self.compiles = Counter("omnirrm_serve_compiles", "XLA compilations in this process", registry=r)
        self.compiles_after = Counter("omnirrm_serve_compiles_after_warmup", "XLA compilations after warm-up",
                                      registry=r)
        self.cache_hits = Counter("omnirrm_serve_compile_cache_hits", "programs read from the persistent "
                                  "compilation cache (--compile-cache) instead of compiled", registry=r)
        self.warmup_seconds = Gauge("omnirrm_serve_warmup_seconds", "warm-up compile time", registry=r)
        self._warm = False
        self._lock = threading.Lock()
        self._listener = CompileListener(self._compiled, self.cache_hits.inc)

    def _compiled(self, fun_name: str, seconds: float) -> None:
        self.compiles.inc()
        if self._warm:
            self.compiles_after.inc()

    def warmed_up(self, seconds: float) -> None:
        self.warmup_seconds.set(seconds)
        self._warm = True

    def batch(self, kind: str, rows: int, prompt_tokens: int) -> None:
        self.batch_rows.labels(kind).observe(rows)
        self.prompt_tokens.inc(prompt_tokens)

    def generated(self, n: int) -> None:
        self.generated_tokens.inc(n)

    def answer(self, endpoint: str, status: int, seconds: float) -> None:
        self.answers.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def error(self, reason: str) -> None:
        self.errors.labels(reason).inc()

    def close(self) -> None:
        self._listener.close()

    def text(self) -> bytes:
        return generate_latest(self.registry)
