"""The Qwen2.5 text decoder of the thinker, with multimodal rotary (mRoPE) and a static KV cache.

One code path serves training (no cache), prefill (cache written from slot 0) and one-token decode
steps (cache written at `cache_index`): keys always come from the tokens seen so far, and a boolean
mask combines causality with the per-row padding mask, so left-padded batches decode correctly. Packed training
rows (several examples per row, `segment_ids`) attend causally within their own segment. The caches
themselves live in `decoding.cache` (a copy per row, or the prompt's keys/values once for its G samples); the
decoder only calls the methods `DecodeCache` names, so each cache writes and attends in its own layout.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from omnirrm_jax.models import layers as L
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
# What the decoder needs of a KV cache (`decoding.cache` holds the caches; the model does not import them)
# ----------------------------------------------------------------------------------------------------

class LayerCache(Protocol):
    """One layer's view of a decode cache."""

    def attend(self, q_BTNH: jax.Array, k_BTKH: jax.Array, v_BTKH: jax.Array, cache_index: jax.Array, *,
               scale: float, attention_backend: str) -> tuple[jax.Array, "LayerCache"]:
        """Writes the new tokens' keys/values (rotary applied) at `cache_index` and attends to what the cache
        holds. Returns (attention output (B, T, N, H), this layer's updated view)."""
        ...


class DecodeCache(Protocol):
    """A decode cache of every layer: `layer(i)` is layer i's view, `with_layers` puts the updated views back."""

    def layer(self, i: int) -> LayerCache: ...

    def with_layers(self, layers: Sequence[LayerCache]) -> "DecodeCache": ...


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

    def __call__(self, x_BTD, cos_BTH, sin_BTH, packed, layer_cache=None, cache_index=None):
        B, T, _ = x_BTD.shape
        q = self.q_proj(x_BTD).reshape(B, T, self.num_heads, self.head_dim)
        k = self.k_proj(x_BTD).reshape(B, T, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x_BTD).reshape(B, T, self.num_kv_heads, self.head_dim)
        q, k = apply_rotary(q, cos_BTH, sin_BTH), apply_rotary(k, cos_BTH, sin_BTH)
        if layer_cache is not None:
            out, layer_cache = layer_cache.attend(q, k, v, cache_index, scale=self.head_dim ** -0.5,
                                                  attention_backend=self.backend)
            return self.o_proj(out.reshape(B, T, -1)), layer_cache
        # Rows compacted by TextModel: causality is the whole mask. Packed rows: causal within each segment.
        out = L.attention(q, k, v, is_causal=packed is None, packed=packed, scale=self.head_dim ** -0.5,
                          backend=self.backend)
        return self.o_proj(out.reshape(B, T, -1)), None


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

    def __call__(self, x, cos, sin, packed, layer_cache=None, cache_index=None):
        h, layer_cache = self.self_attn(self.input_layernorm(x), cos, sin, packed, layer_cache, cache_index)
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, layer_cache


def _take_rows(x_BT_: jax.Array, index_BT: jax.Array) -> jax.Array:
    """x[b, index[b, t], ...] for (B, T, ...) arrays: a per-row permutation of the token axis."""
    return jnp.take_along_axis(x_BT_, index_BT.reshape(index_BT.shape + (1,) * (x_BT_.ndim - 2)), axis=1)


def _rematerialised(layer: DecoderLayer, policy: str, x, cos, sin, packed, layer_cache=None, cache_index=None):
    """One decoder layer under `jax.checkpoint`: its activations are recomputed in the backward pass instead
    of kept ("full"), or all but the projection matmuls are ("dots"). Training only (GRPO's teacher-forced
    pass differentiates through a cache too). The layer's state is an explicit argument so gradients flow to
    it (LoRA too). Returns (x, layer_cache)."""
    graphdef, state = nnx.split(layer)

    def run(state, x, cos, sin, packed, layer_cache, cache_index):
        return nnx.merge(graphdef, state)(x, cos, sin, packed, layer_cache, cache_index)

    saveable = None if policy == "full" else jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    return jax.checkpoint(run, policy=saveable)(state, x, cos, sin, packed, layer_cache, cache_index)


def _stack(trees: Sequence) -> object:
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _scanned_layers(layers: Sequence[DecoderLayer], remat: str, x, cos, sin, packed, cache: "DecodeCache | None",
                    cache_index):
    """The decoder layers as one `lax.scan` over their stacked weights: JAX traces and lowers one layer and XLA
    compiles and loads one, where the Python loop gives every program one copy per layer (a 3B GRPO update's
    tracing, lowering, compile and cache load all grew with it: docs/PERFORMANCE.md). Costs one stacked copy of the
    layer weights per program call. Returns (x, the layers' updated caches), or None where the layers differ in
    structure (a LoRA pattern giving layers their own rank or scale, say): the caller runs the loop then. A pass over
    a cache also holds a stacked copy of the layers' caches."""
    split = [nnx.split(layer) for layer in layers]
    graphdef = split[0][0]

    def shapes(state):  # a graphdef holds static attributes, not array shapes: LoRA ranks differ here
        return [(path, jnp.shape(v), jnp.result_type(v)) for path, v in nnx.to_flat_state(state)]

    first = shapes(split[0][1])
    if any(g != graphdef or shapes(state) != first for g, state in split[1:]):
        return None
    caches = None if cache is None else _stack([cache.layer(i) for i in range(len(layers))])

    def one_layer(x, state_and_cache):
        state, layer_cache = state_and_cache
        return nnx.merge(graphdef, state)(x, cos, sin, packed, layer_cache, cache_index)

    if remat != "none":
        saveable = None if remat == "full" else jax.checkpoint_policies.dots_with_no_batch_dims_saveable
        one_layer = jax.checkpoint(one_layer, policy=saveable, prevent_cse=False)
    x, new_caches = jax.lax.scan(one_layer, x, (_stack([state for _, state in split]), caches))
    if cache is None:
        return x, [None] * len(layers)
    return x, [jax.tree.map(lambda a: a[i], new_caches) for i in range(len(layers))]


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
        self.scan_layers = cfg.scan_layers

    def __call__(self, inputs_embeds_BTD: jax.Array, positions_3BT: jax.Array, attention_mask_BT: jax.Array | None = None,
                 cache: DecodeCache | None = None, cache_index: jax.Array | int | None = None,
                 output_hidden_states: bool = False, segment_ids_BT: jax.Array | None = None,
                 segment_lengths_BM: jax.Array | None = None):
        """Runs the decoder.

        Args:
          inputs_embeds_BTD: token embeddings with multimodal rows already merged.
          positions_3BT: mRoPE position ids (temporal, height, width).
          attention_mask_BT: 1 for real tokens, 0 for padding (no cache); ignored with a cache, which already
            knows which slots are padding, and with `segment_ids_BT`, whose 0 marks padding.
          segment_ids_BT: packed rows (no cache): 1..k the examples of a row, 0 padding. A token attends only to
            earlier tokens of its own segment; positions must already restart per segment (`data.packing`).
          segment_lengths_BM: with segment ids, the tokens of segments 1..k of each row (0 past the last), the
            segments contiguous from the row's start: GPU attention then runs per segment (`L.PackedRows`).
          cache: a `DecodeCache` (`decoding.cache`): a `KVCache` takes the T new tokens at slots
            [cache_index, cache_index + T), a `SharedPrefixCache` one token per row at generated position
            `cache_index`.
        Returns:
          (final-norm hidden states (B,T,D), updated cache or None, per-layer inputs + final pre-norm if asked).
        """
        x = inputs_embeds_BTD.astype(self.dtype)
        B, T, _ = x.shape
        head_dim, theta, section = self.rope
        cos, sin = mrope_cos_sin(positions_3BT, head_dim=head_dim, theta=theta, section=section, dtype=self.dtype)
        back_BT = None
        packed = None
        if segment_ids_BT is not None:
            if cache is not None:
                raise ValueError("segment_ids are for packed training rows; a decode cache takes unpacked rows")
            # No compaction: segments interleave real tokens, so attention is causal within each segment instead.
            packed = L.PackedRows(jnp.asarray(segment_ids_BT, jnp.int32),
                                  None if segment_lengths_BM is None else jnp.asarray(segment_lengths_BM, jnp.int32))
        elif cache is None:
            # Each row's real tokens move to the front (order kept) and padding to the end, so every real query
            # sees exactly the keys the padding mask allows under a plain causal mask: attention runs as a
            # causal flash kernel with no (B, T, T) mask. Position ids travel with their tokens; undone below.
            if attention_mask_BT is not None:
                order_BT = jnp.argsort(~attention_mask_BT.astype(bool), axis=-1, stable=True)
                back_BT = jnp.argsort(order_BT, axis=-1)
                x, cos, sin = (_take_rows(a, order_BT) for a in (x, cos, sin))
        else:
            cache_index = jnp.asarray(cache_index, jnp.int32)
        hidden, new_layers = [], []
        # Multi-token passes (training, prefill, teacher-forced log-probs) scan the layers; a one-token decode step
        # keeps the loop, whose cache writes XLA does in place (a scan would copy every layer's cache each step).
        scanned = None
        if self.scan_layers and T > 1 and not output_hidden_states and len(self.layers) > 1:
            scanned = _scanned_layers(self.layers, self.remat, x, cos, sin, packed, cache, cache_index)
        if scanned is not None:
            x, new_layers = scanned
        for i, layer in enumerate(self.layers if scanned is None else ()):
            if output_hidden_states:
                hidden.append(x if back_BT is None else _take_rows(x, back_BT))
            layer_cache = None if cache is None else cache.layer(i)
            if self.remat != "none" and T > 1:  # a one-token decode step is never differentiated
                x, layer_cache = _rematerialised(layer, self.remat, x, cos, sin, packed, layer_cache,
                                                cache_index)
            else:
                x, layer_cache = layer(x, cos, sin, packed, layer_cache, cache_index)
            new_layers.append(layer_cache)
        if back_BT is not None:
            x = _take_rows(x, back_BT)
        if output_hidden_states:
            hidden.append(x)
        new_cache = None if cache is None else cache.with_layers(new_layers)
        return self.norm(x), new_cache, hidden
