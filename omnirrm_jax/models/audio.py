"""Qwen2.5-Omni audio tower (Whisper-style encoder run per 2 s chunk) and its host-side input preparation.

HF packs all valid frames of all chunks into one sequence and attends per `cu_seqlens` segment. We keep the
chunks as a batch instead: every chunk is padded to the static width 2*n_window mel frames, the convs and
layers run on (C, T, D) with a key mask, and one gather at the end picks the frame pairs that HF pools.
Everything data dependent (chunk lengths, pair indices) is computed on the host in numpy, so the device
program has static shapes and can be padded to fixed sizes (`pad_chunks_to`, `pad_tokens_to`).

Letters in names (see layers.py): C chunks, M mel frames of a chunk (2*n_window), I mel bins (conv input
channels), T frames after the stride-2 conv (n_window), D d_model, F ffn width, N heads, H head dim,
U output (audio) tokens, O output width (= text hidden), L mel frames of one audio.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from omnirrm_jax.models import layers
from omnirrm_jax.models.rope import audio_token_count
from omnirrm_jax.models.config import AudioConfig, ThinkerConfig
from omnirrm_jax.models.layers import CONV, EMBED, HEADS, MLP, Linear, LayerNorm, init_param

# ----------------------------------------------------------------------------------------------------
# Host side (numpy only): token counts, chunking, gather indices.
# ----------------------------------------------------------------------------------------------------


def _chunk_lens(feature_lens: np.ndarray, W: int) -> list[np.ndarray]:
    """Per audio, the lengths of its chunks of W frames (last one shorter), as HF's chunk_and_pad_features."""
    out = []
    for L in feature_lens.tolist():
        full, tail = divmod(int(L), W)
        out.append(np.array([W] * full + ([tail] if tail else []), np.int32))
    return out


def _pad_to(n: int, pad: int | None, what: str) -> int:
    if pad is None:
        return n
    if pad < n:
        raise ValueError(f"{what}: need {n}, but pad_{what}_to={pad}")
    return pad


def audio_aux(feature_lens: np.ndarray, acfg: AudioConfig, pad_chunks_to: int | None = None,
              pad_tokens_to: int | None = None) -> dict[str, np.ndarray]:
    """The index arrays `AudioEncoder.__call__` needs, for audios of `feature_lens` mel frames.

    Returns:
      chunk_lens: (C,) int32 mel frames of each chunk; 0 for padding chunks.
      pool_index: (U, 2) int32, for each output token the two source positions in the flattened (C*T) grid
        of post-conv frames (pairs run over the per-audio concatenated stream, so they may straddle chunks).
        Padding tokens point at position 0.
      token_mask: (U,) bool, False for padding tokens (their output rows are zero).
    """
    feature_lens = np.asarray(feature_lens, np.int64).reshape(-1)
    T = acfg.n_window
    per_audio = _chunk_lens(feature_lens, 2 * T)
    lens = np.concatenate(per_audio + [np.zeros(0, np.int32)])
    n_c = _pad_to(len(lens), pad_chunks_to, "chunks")
    pairs, first_chunk = [], 0
    for L, chunks in zip(feature_lens.tolist(), per_audio):
        # k-th valid frame of this audio sits in chunk first_chunk + k // T, row k % T (all but the
        # last chunk have exactly T valid frames since 2T is even).
        k = 2 * np.arange(audio_token_count(L))[:, None] + np.arange(2)[None]
        pairs.append((first_chunk + k // T) * T + k % T)
        first_chunk += len(chunks)
    pool = np.concatenate(pairs + [np.zeros((0, 2), np.int64)]).astype(np.int32)
    n_u = _pad_to(len(pool), pad_tokens_to, "tokens")
    return {
        "chunk_lens": np.pad(lens, (0, n_c - len(lens))).astype(np.int32),
        "pool_index": np.pad(pool, ((0, n_u - len(pool)), (0, 0))),
        "token_mask": np.arange(n_u) < len(pool),
    }


def chunk_features(input_features: np.ndarray, feature_attention_mask, acfg: AudioConfig, *, feature_lens=None,
                   pad_chunks_to: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cuts features into zero-padded chunks (C, I, M = 2*n_window) and returns them with the per-audio lengths.

    Accepts HF's two forms: packed (I, sum L) with `feature_lens`, or batched (n_audio, I, frames) with
    `feature_attention_mask` (n_audio, frames), whose set frames are taken in order, as get_audio_features does.
    """
    x = np.asarray(input_features)
    if feature_attention_mask is not None:
        mask = np.asarray(feature_attention_mask).astype(bool)
        feature_lens = mask.sum(-1)
        x = np.transpose(x, (0, 2, 1))[mask].T  # (I, sum L)
    if feature_lens is None:
        raise ValueError("give feature_lens (packed features) or feature_attention_mask (batched features)")
    feature_lens = np.asarray(feature_lens, np.int64).reshape(-1)
    if x.ndim != 2 or x.shape[1] != feature_lens.sum():
        raise ValueError(f"features {x.shape} do not hold sum(feature_lens) = {feature_lens.sum()} frames")
    W = 2 * acfg.n_window
    lens = np.concatenate(_chunk_lens(feature_lens, W) + [np.zeros(0, np.int32)])
    chunks = np.zeros((_pad_to(len(lens), pad_chunks_to, "chunks"), x.shape[0], W), x.dtype)
    start = 0
    for c, n in enumerate(lens.tolist()):
        chunks[c, :, :n] = x[:, start:start + n]
        start += n
    return chunks, feature_lens


def prepare_audio(input_features: np.ndarray, feature_attention_mask, acfg: AudioConfig, *, feature_lens=None,
                  pad_chunks_to: int | None = None, pad_tokens_to: int | None = None
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """HF `input_features` + `feature_attention_mask` (or packed features, mask None, + `feature_lens`)
    -> (chunks, aux) for `AudioEncoder`: the one host call the thinker makes."""
    chunks, lens = chunk_features(input_features, feature_attention_mask, acfg, feature_lens=feature_lens,
                                  pad_chunks_to=pad_chunks_to)
    return chunks, audio_aux(lens, acfg, pad_chunks_to=pad_chunks_to, pad_tokens_to=pad_tokens_to)


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """Whisper's position table (first half sin, second half cos), in fp32 as HF builds it."""
    inc = np.log(max_timescale) / (channels // 2 - 1)
    inv = np.exp(-inc * np.arange(channels // 2, dtype=np.float32)).astype(np.float32)
    t = np.arange(length, dtype=np.float32)[:, None] * inv[None, :]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# Device side.
# ----------------------------------------------------------------------------------------------------


_CONV_LECUN_NORMAL = nnx.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)


class Conv1d(nnx.Module):
    """torch Conv1d (padding 1) on channels-last input; kernel stored (k, in, out) as Flax convs do."""

    def __init__(self, d_in: int, d_out: int, *, stride: int, in_axis: str | None, dtype: str,
                 param_dtype: str, rngs: nnx.Rngs, k: int = 3):
        pdt = layers.as_dtype(param_dtype)
        self.kernel = init_param(_CONV_LECUN_NORMAL, rngs.params(), (k, d_in, d_out), pdt, (CONV, in_axis, EMBED))
        self.bias = init_param(nnx.initializers.zeros, None, (d_out,), pdt, (EMBED,))
        self.stride = stride
        self.dtype = layers.as_dtype(dtype)

    def __call__(self, x_BWI: jax.Array) -> jax.Array:
        y = jax.lax.conv_general_dilated(
            x_BWI.astype(self.dtype), layers.weight(self.kernel, self.dtype), window_strides=(self.stride,),
            padding=[(1, 1)], dimension_numbers=("NWC", "WIO", "NWC"))
        return y + layers.weight(self.bias, self.dtype)


class AudioAttention(nnx.Module):
    """Bidirectional multi-head attention inside one chunk (Whisper: k_proj has no bias)."""

    def __init__(self, a: AudioConfig, *, dtype: str, param_dtype: str, backend: str, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        D = a.d_model
        self.q_proj = Linear(D, D, use_bias=True, axes=(EMBED, HEADS), **kw)
        self.k_proj = Linear(D, D, use_bias=False, axes=(EMBED, HEADS), **kw)
        self.v_proj = Linear(D, D, use_bias=True, axes=(EMBED, HEADS), **kw)
        self.out_proj = Linear(D, D, use_bias=True, axes=(HEADS, EMBED), **kw)
        self.num_heads, self.head_dim, self.backend = a.num_heads, a.head_dim, backend

    def __call__(self, x_CTD: jax.Array, mask_CTT: jax.Array) -> jax.Array:
        C, T, _ = x_CTD.shape
        split = lambda y: y.reshape(C, T, self.num_heads, self.head_dim)  # noqa: E731
        out_CTNH = layers.attention(split(self.q_proj(x_CTD)), split(self.k_proj(x_CTD)),
                                    split(self.v_proj(x_CTD)), mask_BTS=mask_CTT,
                                    scale=self.head_dim ** -0.5, backend=self.backend)
        return self.out_proj(out_CTNH.reshape(C, T, -1))


class AudioEncoderLayer(nnx.Module):
    """Pre-LN block: x += attn(LN(x)); x += fc2(gelu(fc1(LN(x))))."""

    def __init__(self, a: AudioConfig, *, dtype: str, param_dtype: str, backend: str, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.self_attn = AudioAttention(a, backend=backend, **kw)
        self.self_attn_layer_norm = LayerNorm(a.d_model, param_dtype=param_dtype)
        self.fc1 = Linear(a.d_model, a.ffn_dim, use_bias=True, axes=(EMBED, MLP), **kw)
        self.fc2 = Linear(a.ffn_dim, a.d_model, use_bias=True, axes=(MLP, EMBED), **kw)
        self.final_layer_norm = LayerNorm(a.d_model, param_dtype=param_dtype)

    def __call__(self, x_CTD: jax.Array, mask_CTT: jax.Array) -> jax.Array:
        x_CTD = x_CTD + self.self_attn(self.self_attn_layer_norm(x_CTD), mask_CTT)
        return x_CTD + self.fc2(layers.gelu_exact(self.fc1(self.final_layer_norm(x_CTD))))


class BosEosTable(nnx.Module):
    """`audio_bos_eos_token` (2, O): in the checkpoint but unused by the thinker; kept for bit-exact round trips."""

    def __init__(self, features: int, *, param_dtype: str, rngs: nnx.Rngs):
        self.embedding = init_param(layers.normal_init(0.02), rngs.params(), (2, features),
                                    layers.as_dtype(param_dtype), (None, EMBED))


class AudioEncoder(nnx.Module):
    """The thinker's `audio_tower`: chunks (C, I, M) + `audio_aux` arrays -> audio token embeddings (U, O)."""

    def __init__(self, cfg: ThinkerConfig, *, rngs: nnx.Rngs):
        a = cfg.audio
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        self.conv1 = Conv1d(a.num_mel_bins, a.d_model, stride=1, in_axis=None, **kw)
        self.conv2 = Conv1d(a.d_model, a.d_model, stride=2, in_axis=None, **kw)
        self.layers = nnx.List([AudioEncoderLayer(a, backend=cfg.attention_backend, **kw)
                                for _ in range(a.num_layers)])
        self.ln_post = LayerNorm(a.d_model, param_dtype=cfg.param_dtype)
        self.proj = Linear(a.d_model, a.output_dim, use_bias=True, axes=(None, EMBED), **kw)
        self.audio_bos_eos_token = BosEosTable(a.output_dim, param_dtype=cfg.param_dtype, rngs=rngs)
        self.n_window, self.d_model = a.n_window, a.d_model
        self.dtype = layers.as_dtype(cfg.dtype)
        if a.n_window > a.max_source_positions:
            raise ValueError(f"n_window {a.n_window} exceeds max_source_positions {a.max_source_positions}")

    def __call__(self, chunks_CIM: jax.Array, aux: dict) -> jax.Array:
        T = self.n_window
        if chunks_CIM.shape[-1] != 2 * T:
            raise ValueError(f"chunks must be {2 * T} frames wide (2*n_window), got {chunks_CIM.shape}")
        lens_C = jnp.asarray(aux["chunk_lens"], jnp.int32)
        x_CMI = jnp.swapaxes(chunks_CIM, 1, 2).astype(self.dtype)
        frame_mask_CM = jnp.arange(2 * T)[None] < lens_C[:, None]
        # HF zeroes conv1 outputs past the chunk end, so conv2 sees zeros there, as at a chunk border.
        x_CMD = layers.gelu_exact(self.conv1(x_CMI)) * frame_mask_CM[..., None].astype(self.dtype)
        x_CTD = layers.gelu_exact(self.conv2(x_CMD))
        x_CTD = x_CTD + jnp.asarray(sinusoids(T, self.d_model), self.dtype)[None]  # restarts in every chunk
        # Keys limited to the chunk's valid frames; padding chunks keep one key so no softmax row is empty.
        n_valid_C = jnp.maximum((lens_C - 1) // 2 + 1, 1)
        key_mask_CT = jnp.arange(T)[None] < n_valid_C[:, None]
        mask_CTT = jnp.broadcast_to(key_mask_CT[:, None, :], (x_CTD.shape[0], T, T))
        for layer in self.layers:
            x_CTD = layer(x_CTD, mask_CTT)
        flat_RD = x_CTD.reshape(-1, x_CTD.shape[-1])
        pool_U2 = jnp.asarray(aux["pool_index"], jnp.int32)
        pooled_UD = (flat_RD[pool_U2[:, 0]] + flat_RD[pool_U2[:, 1]]) / 2
        out_UO = self.proj(self.ln_post(pooled_UD))
        return jnp.where(jnp.asarray(aux["token_mask"])[:, None], out_UO, jnp.zeros((), out_UO.dtype))
