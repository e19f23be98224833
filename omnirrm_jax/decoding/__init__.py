"""Decoding: jitted prefill + cached sampling of G continuations per prompt (see `sampler`), the KV caches it
decodes with (`cache`), the shared-prefix decode attention (`shared_prefix`) and the top-k draw (`top_k_draw`)."""

from omnirrm_jax.decoding.cache import KVCache, SharedPrefixCache, init_cache, shared_prefix_cache
from omnirrm_jax.decoding.sampler import (GenerationResult, RowSampling, SamplingConfig, filter_logits, generate,
                                          sample_tokens)

__all__ = ["GenerationResult", "KVCache", "RowSampling", "SamplingConfig", "SharedPrefixCache", "filter_logits",
           "generate", "init_cache", "sample_tokens", "shared_prefix_cache"]
