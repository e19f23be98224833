"""Static KV caches for cached decoding: the keys/values once per row, or once per prompt for its G samples.

The model does not import these classes (`models/` holds the model only): the decoder asks a cache for layer i's
view (`layer`), lets that view write the new tokens' keys/values and attend (`attend`), and hands the updated views
back (`with_layers`), the protocol `models.text.DecodeCache` spells out. So each cache keeps its own layout and its
attention together, and the decode loop carries the same arrays it did when the model knew the classes: every step
writes into the loop's cache buffers in place (one `dynamic_update_slice` per layer and k/v), nothing is copied.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import struct

from omnirrm_jax.decoding import shared_prefix as SP
from omnirrm_jax.models import layers as L
from omnirrm_jax.models.config import ThinkerConfig


@struct.dataclass
class KVCache:
    """Per-layer keys/values (B, S_max, K, H) and the (B, S_max) validity of each slot (False = padding).

    `kv_mask` covers future slots too (decoded tokens are valid); causality hides them until written. The whole
    cache holds a list (one entry per layer); `layer(i)` is the same cache holding layer i's arrays.
    """

    k: list[jax.Array] | jax.Array
    v: list[jax.Array] | jax.Array
    kv_mask: jax.Array

    @property
    def max_len(self) -> int:
        return self.kv_mask.shape[1]

    def layer(self, i: int) -> "KVCache":
        return dataclasses.replace(self, k=self.k[i], v=self.v[i])

    def with_layers(self, layers: Sequence["KVCache"]) -> "KVCache":
        return dataclasses.replace(self, k=[c.k for c in layers], v=[c.v for c in layers])

    def attend(self, q_BTNH: jax.Array, k_BTKH: jax.Array, v_BTKH: jax.Array, cache_index: jax.Array, *,
               scale: float, attention_backend: str) -> tuple[jax.Array, "KVCache"]:
        """(One layer's view.) Writes the T new tokens at slots [cache_index, cache_index + T); their queries see
        the valid slots up to their own. Returns (attention output (B, T, N, H), the updated view)."""
        T = q_BTNH.shape[1]
        k = jax.lax.dynamic_update_slice(self.k, k_BTKH.astype(self.k.dtype), (0, cache_index, 0, 0))
        v = jax.lax.dynamic_update_slice(self.v, v_BTKH.astype(self.v.dtype), (0, cache_index, 0, 0))
        slot_S = jnp.arange(k.shape[1])
        causal_TS = slot_S[None, :] <= (cache_index + jnp.arange(T))[:, None]
        mask_BTS = causal_TS[None] & self.kv_mask[:, None, :]
        out = L.attention(q_BTNH, k.astype(q_BTNH.dtype), v.astype(q_BTNH.dtype), mask_BTS=mask_BTS, scale=scale,
                          backend=attention_backend)
        return out, dataclasses.replace(self, k=k, v=v)


def init_cache(cfg: ThinkerConfig, batch: int, max_len: int, prompt_mask_BT: jax.Array | None = None,
               dtype=None) -> KVCache:
    """An empty cache. `prompt_mask_BT` (B, T<=max_len) marks left padding of the prompt; later slots are valid."""
    t = cfg.text
    dtype = L.as_dtype(dtype or cfg.dtype)
    shape = (batch, max_len, t.num_kv_heads, t.head_dim)
    kv_mask = jnp.ones((batch, max_len), bool)
    if prompt_mask_BT is not None:
        kv_mask = kv_mask.at[:, :prompt_mask_BT.shape[1]].set(prompt_mask_BT.astype(bool))
    return KVCache(k=[jnp.zeros(shape, dtype) for _ in range(t.num_layers)],
                   v=[jnp.zeros(shape, dtype) for _ in range(t.num_layers)], kv_mask=kv_mask)


@struct.dataclass
class SharedPrefixCache:
    """Decode cache of B prompts x G samples (`decoding.shared_prefix`): per layer the prompt's keys/values once per
    prompt (B, K, S, H), valid from slot `prefix_start` (B,), and the generated tokens' (B, K, N * G, H), sample
    g's n-th token at row n * G + g. `cache_index` of a decode step is the generated token's position n. The
    whole cache holds one list entry per layer; `layer(i)` is the same cache holding layer i's arrays."""

    prefix_k: list[jax.Array] | jax.Array
    prefix_v: list[jax.Array] | jax.Array
    k: list[jax.Array] | jax.Array
    v: list[jax.Array] | jax.Array
    prefix_start: jax.Array
    num_samples: int = struct.field(pytree_node=False)
    backend: str = struct.field(pytree_node=False)  # "pallas" (the one-GPU kernel) or "xla" (einsums)

    def layer(self, i: int) -> "SharedPrefixCache":
        return dataclasses.replace(self, prefix_k=self.prefix_k[i], prefix_v=self.prefix_v[i], k=self.k[i],
                                   v=self.v[i])

    def with_layers(self, layers: Sequence["SharedPrefixCache"]) -> "SharedPrefixCache":
        return dataclasses.replace(self, k=[c.k for c in layers], v=[c.v for c in layers])

    def attend(self, q_RTNH: jax.Array, k_RTKH: jax.Array, v_RTKH: jax.Array, cache_index: jax.Array, *,
               scale: float, attention_backend: str) -> tuple[jax.Array, "SharedPrefixCache"]:
        """(One layer's view.) One token per row (R = B * G rows) at generated position n = `cache_index`: its
        key/value joins the suffix, its query attends to the prompt's prefix and to its own sample's suffix.
        The model's `attention_backend` does not apply: this layout has its own (`backend`)."""
        del attention_backend
        R, T, _, H = q_RTNH.shape
        if T != 1:
            raise ValueError(f"a SharedPrefixCache takes one token per decode step, got {T}")
        G, n = self.num_samples, cache_index
        K = k_RTKH.shape[2]

        def write(buf, x):  # (R, 1, K, H) -> rows n * G + g of (B, K, N * G, H)
            x = x[:, 0].astype(buf.dtype).reshape(R // G, G, K, H).transpose(0, 2, 1, 3)
            return jax.lax.dynamic_update_slice(buf, x, (0, 0, n * G, 0))

        lc = dataclasses.replace(self, k=write(self.k, k_RTKH), v=write(self.v, v_RTKH))
        dt = q_RTNH.dtype
        out = SP.attention(q_RTNH[:, 0], lc.prefix_k.astype(dt), lc.prefix_v.astype(dt), lc.k.astype(dt),
                           lc.v.astype(dt), lc.prefix_start, n + 1, num_samples=G, scale=scale, backend=lc.backend)
        return out[:, None], lc


def shared_prefix_cache(cache: KVCache, num_samples: int, new_tokens: int, backend: str) -> SharedPrefixCache:
    """The prefill's cache (B, S, K, H per layer) laid out for G samples of `new_tokens` each, read by `backend`
    ("pallas" or "xla", `models.layers.resolve_shared_prefix_backend`); the kernel's block sizes pad the prefix on
    the left and the suffix at its end (`shared_prefix.padded_sizes`). Prompts must be left-padded without gaps
    (the valid slots are the last ones: `sampler.generate` checks)."""
    B, S, K, H = cache.k[0].shape
    S_pad, N_pad = SP.padded_sizes(S, new_tokens, num_samples, backend)

    def prefix(a):
        return jnp.pad(a, ((0, 0), (S_pad - S, 0), (0, 0), (0, 0))).transpose(0, 2, 1, 3)

    start = (S_pad - cache.kv_mask[:, :S].astype(jnp.int32).sum(axis=1)).astype(jnp.int32)
    empty = [jnp.zeros((B, K, N_pad * num_samples, H), a.dtype) for a in cache.k]
    return SharedPrefixCache(prefix_k=[prefix(a) for a in cache.k], prefix_v=[prefix(a) for a in cache.v],
                             k=empty, v=[jnp.zeros_like(a) for a in empty], prefix_start=start,
                             num_samples=num_samples, backend=backend)
