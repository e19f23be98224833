"""Decoding: jitted prefill + cached sampling of G continuations per prompt (see `sampler`)."""

from omnirrm_jax.decoding.sampler import GenerationResult, SamplingConfig, filter_logits, generate, sample_tokens

__all__ = ["GenerationResult", "SamplingConfig", "filter_logits", "generate", "sample_tokens"]
