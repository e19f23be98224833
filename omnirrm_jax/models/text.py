"""The Qwen2.5 text decoder of the thinker, with multimodal rotary (mRoPE) and a static KV cache.

One code path serves training (no cache), prefill (cache written from slot 0) and one-token decode
steps (cache written at `cache_index`): keys always come from the tokens seen so far, and a boolean
mask combines causality with the per-row padding mask, so left-padded batches decode correctly. Decoding G
samples per prompt may instead use a `SharedPrefixCache` (the prompt's keys/values once per prompt,
`models.shared_prefix`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from omnirrm_jax.models import layers as L
from omnirrm_jax.models import shared_prefix as SP
from omnirrm_jax.models.config import ThinkerConfig


# ----------------------------------------------------------------------------------------------------
# Multimodal rotary
# ----------------------------------------------------------------------------------------------------

def mrope_cos_sin(positions_3BT: jax.Array, *, head_dim: int, theta: float, section: tuple[int, ...],
                  dtype) -> tuple[jax.Array, jax.Array]:
    """cos/sin (B, T, H) for (temporal, height, width) positions.

    Frequencies [0, s0) rotate with the temporal id, [s0, s0+s1) with the height id, the rest with the
    width id (contiguous blocks, HF `recomposition_frequencies`); computed in fp32 and cast to the
    activation dtype as HF does, so bf16 runs round the same way.
    """
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))
    freqs = positions_3BT.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)  # (3,B,T,H/2)
    bounds = np.cumsum((0,) + tuple(section))
    parts = [freqs[i % 3, ..., bounds[i]:bounds[i + 1]] for i in range(len(section))]
    freqs_BTh = jnp.concatenate(parts, axis=-1)
    emb = jnp.concatenate([freqs_BTh, freqs_BTh], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rotary(x_BTNH: jax.Array, cos_BTH: jax.Array, sin_BTH: jax.Array) -> jax.Array:
    cos, sin = cos_BTH[:, :, None, :], sin_BTH[:, :, None, :]
    return x_BTNH * cos + L.rotate_half(x_BTNH) * sin


# ----------------------------------------------------------------------------------------------------
# KV cache
# ----------------------------------------------------------------------------------------------------

@struct.dataclass
class KVCache:
    """Per-layer keys/values (B, S_max, K, H) and the (B, S_max) validity of each slot (False = padding).

    `kv_mask` covers future slots too (decoded tokens are valid); causality hides them until written.
    """

    k: list[jax.Array]
    v: list[jax.Array]
    kv_mask: jax.Array

    @property
    def max_len(self) -> int:
        return self.kv_mask.shape[1]


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
    """Decode cache of B prompts x G samples (`models.shared_prefix`): per layer the prompt's keys/values once per
    prompt (B, K, S, H), valid from slot `prefix_start` (B,), and the generated tokens' (B, K, N * G, H), sample
    g's n-th token at row n * G + g. `cache_index` of a decode step is the generated token's position n. The
    model holds one list entry per layer; `layer(i)` is the same cache with layer i's arrays (what `Attention`
    reads and updates)."""

    prefix_k: list[jax.Array] | jax.Array
    prefix_v: list[jax.Array] | jax.Array
    k: list[jax.Array] | jax.Array
    v: list[jax.Array] | jax.Array
    prefix_start: jax.Array
    num_samples: int = struct.field(pytree_node=False)
    kernel: bool = struct.field(pytree_node=False)  # the Pallas kernel (one GPU) or the XLA einsums

    def layer(self, i: int) -> "SharedPrefixCache":
        return dataclasses.replace(self, prefix_k=self.prefix_k[i], prefix_v=self.prefix_v[i], k=self.k[i],
                                   v=self.v[i])


def shared_prefix_cache(cache: KVCache, num_samples: int, new_tokens: int, kernel: bool) -> SharedPrefixCache:
    """The prefill's cache (B, S, K, H per layer) laid out for G samples of `new_tokens` each; the kernel's block
    sizes pad the prefix on the left and the suffix at its end (`shared_prefix.padded_sizes`). Prompts must be
    left-padded without gaps (the valid slots are the last ones: `sampler.generate` checks)."""
    B, S, K, H = cache.k[0].shape
    S_pad, N_pad = SP.padded_sizes(S, new_tokens, num_samples, kernel)

    def prefix(a):
        return jnp.pad(a, ((0, 0), (S_pad - S, 0), (0, 0), (0, 0))).transpose(0, 2, 1, 3)

    start = (S_pad - cache.kv_mask[:, :S].astype(jnp.int32).sum(axis=1)).astype(jnp.int32)
    empty = [jnp.zeros((B, K, N_pad * num_samples, H), a.dtype) for a in cache.k]
    return SharedPrefixCache(prefix_k=[prefix(a) for a in cache.k], prefix_v=[prefix(a) for a in cache.v],
                             k=empty, v=[jnp.zeros_like(a) for a in empty], prefix_start=start,
                             num_samples=num_samples, kernel=kernel)


# ----------------------------------------------------------------------------------------------------
# Decoder
# ----------------------------------------------------------------------------------------------------

class Attention(nnx.Module):
    def __init__(self, cfg: ThinkerConfig, *, rngs: nnx.Rngs):
        t = cfg.text
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        self.q_proj = L.Linear(t.hidden_size, t.num_heads * t.head_dim, use_bias=True, axes=(L.EMBED, L.HEADS), **kw)
        self.k_proj = L.Linear(t.hidden_size, t.num_kv_heads * t.head_dim, use_bias=True,
                               axes=(L.EMBED, L.KV_HEADS), **kw)
        self.v_proj = L.Linear(t.hidden_size, t.num_kv_heads * t.head_dim, use_bias=True,
                               axes=(L.EMBED, L.KV_HEADS), **kw)
        self.o_proj = L.Linear(t.num_heads * t.head_dim, t.hidden_size, use_bias=False, axes=(L.HEADS, L.EMBED), **kw)
        self.num_heads, self.num_kv_heads, self.head_dim = t.num_heads, t.num_kv_heads, t.head_dim
        self.backend = cfg.attention_backend

    def __call__(self, x_BTD, cos_BTH, sin_BTH, mask_BS, layer_cache=None, cache_index=None):
        B, T, _ = x_BTD.shape
        q = self.q_proj(x_BTD).reshape(B, T, self.num_heads, self.head_dim)
        k = self.k_proj(x_BTD).reshape(B, T, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x_BTD).reshape(B, T, self.num_kv_heads, self.head_dim)
        q, k = apply_rotary(q, cos_BTH, sin_BTH), apply_rotary(k, cos_BTH, sin_BTH)
        if isinstance(layer_cache, SharedPrefixCache):
            return self._shared_prefix_step(q, k, v, layer_cache, cache_index)
        is_causal = False
        if layer_cache is None and mask_BS is None:  # rows compacted by TextModel: causality is the whole mask
            mask_BTS, is_causal = None, True
        elif layer_cache is None:
            causal_TS = jnp.tril(jnp.ones((T, T), bool))
            mask_BTS = causal_TS[None] & mask_BS[:, None, :]
        else:
            k_all, v_all = layer_cache
            k = jax.lax.dynamic_update_slice(k_all, k.astype(k_all.dtype), (0, cache_index, 0, 0))
            v = jax.lax.dynamic_update_slice(v_all, v.astype(v_all.dtype), (0, cache_index, 0, 0))
            layer_cache = (k, v)
            slot_S = jnp.arange(k.shape[1])
            causal_TS = slot_S[None, :] <= (cache_index + jnp.arange(T))[:, None]
            mask_BTS = causal_TS[None] & mask_BS[:, None, :]
        out = L.attention(q, k.astype(q.dtype), v.astype(q.dtype), mask_BTS=mask_BTS, is_causal=is_causal,
                          scale=self.head_dim ** -0.5, backend=self.backend)
        return self.o_proj(out.reshape(B, T, -1)), layer_cache

    def _shared_prefix_step(self, q, k, v, lc: SharedPrefixCache, n):
        """One token per row (R = B * G rows) at generated position `n`: its key/value joins the suffix, its query
        attends to the prompt's prefix and to its own sample's suffix."""
        R, T, _, H = q.shape
        if T != 1:
            raise ValueError(f"a SharedPrefixCache takes one token per decode step, got {T}")
        G = lc.num_samples
        K = self.num_kv_heads

        def write(buf, x):  # (R, 1, K, H) -> rows n * G + g of (B, K, N * G, H)
            x = x[:, 0].astype(buf.dtype).reshape(R // G, G, K, H).transpose(0, 2, 1, 3)
            return jax.lax.dynamic_update_slice(buf, x, (0, 0, n * G, 0))

        lc = dataclasses.replace(lc, k=write(lc.k, k), v=write(lc.v, v))
        out = SP.attention(q[:, 0], lc.prefix_k.astype(q.dtype), lc.prefix_v.astype(q.dtype), lc.k.astype(q.dtype),
                           lc.v.astype(q.dtype), lc.prefix_start, n + 1, num_samples=G, scale=H ** -0.5,
                           kernel=lc.kernel)
        return self.o_proj(out.reshape(R, 1, -1)), lc


class MLP(nnx.Module):
    def __init__(self, cfg: ThinkerConfig, *, rngs: nnx.Rngs):
        t = cfg.text
        kw = dict(use_bias=False, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        self.gate_proj = L.Linear(t.hidden_size, t.intermediate_size, axes=(L.EMBED, L.MLP), **kw)
        self.up_proj = L.Linear(t.hidden_size, t.intermediate_size, axes=(L.EMBED, L.MLP), **kw)
        self.down_proj = L.Linear(t.intermediate_size, t.hidden_size, axes=(L.MLP, L.EMBED), **kw)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: ThinkerConfig, *, rngs: nnx.Rngs):
        eps = cfg.text.rms_norm_eps
        self.input_layernorm = L.RMSNorm(cfg.text.hidden_size, eps=eps, param_dtype=cfg.param_dtype)
        self.self_attn = Attention(cfg, rngs=rngs)
        self.post_attention_layernorm = L.RMSNorm(cfg.text.hidden_size, eps=eps, param_dtype=cfg.param_dtype)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x, cos, sin, mask_BS, layer_cache=None, cache_index=None):
        h, layer_cache = self.self_attn(self.input_layernorm(x), cos, sin, mask_BS, layer_cache, cache_index)
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, layer_cache


def _take_rows(x_BT_: jax.Array, index_BT: jax.Array) -> jax.Array:
    """x[b, index[b, t], ...] for (B, T, ...) arrays: a per-row permutation of the token axis."""
    return jnp.take_along_axis(x_BT_, index_BT.reshape(index_BT.shape + (1,) * (x_BT_.ndim - 2)), axis=1)


def _rematerialised(layer: DecoderLayer, policy: str, x, cos, sin, mask_BS, layer_cache=None, cache_index=None):
    """One decoder layer under `jax.checkpoint`: its activations are recomputed in the backward pass instead
    of kept ("full"), or all but the projection matmuls are ("dots"). Training only (GRPO's teacher-forced
    pass differentiates through a cache too). The layer's state is an explicit argument so gradients flow to
    it (LoRA too). Returns (x, layer_cache)."""
    graphdef, state = nnx.split(layer)

    def run(state, x, cos, sin, mask_BS, layer_cache, cache_index):
        return nnx.merge(graphdef, state)(x, cos, sin, mask_BS, layer_cache, cache_index)

    saveable = None if policy == "full" else jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    return jax.checkpoint(run, policy=saveable)(state, x, cos, sin, mask_BS, layer_cache, cache_index)


class TextModel(nnx.Module):
    """`model.*` of the checkpoint: token embedding, decoder layers, final norm (no output head)."""

    def __init__(self, cfg: ThinkerConfig, *, rngs: nnx.Rngs):
        t = cfg.text
        self.embed_tokens = L.Embed(t.vocab_size, t.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                                    rngs=rngs)
        self.layers = nnx.List([DecoderLayer(cfg, rngs=rngs) for _ in range(t.num_layers)])
        self.norm = L.RMSNorm(t.hidden_size, eps=t.rms_norm_eps, param_dtype=cfg.param_dtype)
        self.rope = (t.head_dim, t.rope_theta, tuple(t.mrope_section))  # hashable: graphdefs stay static
        self.dtype = L.as_dtype(cfg.dtype)
        self.remat = cfg.remat

    def __call__(self, inputs_embeds_BTD: jax.Array, positions_3BT: jax.Array, attention_mask_BT: jax.Array | None = None,
                 cache: KVCache | SharedPrefixCache | None = None, cache_index: jax.Array | int | None = None,
                 output_hidden_states: bool = False):
        """Runs the decoder.

        Args:
          inputs_embeds_BTD: token embeddings with multimodal rows already merged.
          positions_3BT: mRoPE position ids (temporal, height, width).
          attention_mask_BT: 1 for real tokens, 0 for padding (no cache); ignored with a cache, whose
            `kv_mask` already says which slots are padding.
          cache: a `KVCache`; the T new tokens are written at slots [cache_index, cache_index + T). Or a
            `SharedPrefixCache` (one token per row, at generated position `cache_index`).
        Returns:
          (final-norm hidden states (B,T,D), updated cache or None, per-layer inputs + final pre-norm if asked).
        """
        x = inputs_embeds_BTD.astype(self.dtype)
        B, T, _ = x.shape
        head_dim, theta, section = self.rope
        cos, sin = mrope_cos_sin(positions_3BT, head_dim=head_dim, theta=theta, section=section, dtype=self.dtype)
        back_BT = None
        shared = isinstance(cache, SharedPrefixCache)
        if cache is None:
            # Each row's real tokens move to the front (order kept) and padding to the end, so every real query
            # sees exactly the keys the padding mask allows under a plain causal mask: attention runs as a
            # causal flash kernel with no (B, T, T) mask. Position ids travel with their tokens; undone below.
            mask_BS = None
            if attention_mask_BT is not None:
                order_BT = jnp.argsort(~attention_mask_BT.astype(bool), axis=-1, stable=True)
                back_BT = jnp.argsort(order_BT, axis=-1)
                x, cos, sin = (_take_rows(a, order_BT) for a in (x, cos, sin))
        else:
            mask_BS = None if shared else cache.kv_mask
            cache_index = jnp.asarray(cache_index, jnp.int32)
        hidden, new_k, new_v = [], [], []
        for i, layer in enumerate(self.layers):
            if output_hidden_states:
                hidden.append(x if back_BT is None else _take_rows(x, back_BT))
            layer_cache = None if cache is None else cache.layer(i) if shared else (cache.k[i], cache.v[i])
            if self.remat != "none" and T > 1:  # a one-token decode step is never differentiated
                x, layer_cache = _rematerialised(layer, self.remat, x, cos, sin, mask_BS, layer_cache, cache_index)
            else:
                x, layer_cache = layer(x, cos, sin, mask_BS, layer_cache, cache_index)
            if layer_cache is not None:
                new_k.append(layer_cache.k if shared else layer_cache[0])
                new_v.append(layer_cache.v if shared else layer_cache[1])
        if back_BT is not None:
            x = _take_rows(x, back_BT)
        if output_hidden_states:
            hidden.append(x)
        new_cache = None if cache is None else dataclasses.replace(cache, k=new_k, v=new_v)
        return self.norm(x), new_cache, hidden
