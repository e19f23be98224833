"""Decode-step attention when G samples share one prompt: the prompt's keys/values are read once per prompt.

GRPO samples G completions of each prompt. With the prompt's KV cache repeated per row, every decode step reads
each prompt's cache G times; at 8 prompts x G=8, a 1k-token prompt and 512 new tokens that is three quarters of
the attention's bytes. Here the cache is split: the prefix (B, K, S, H), once per prompt, and the suffix
(B, K, N * G, H), where row n * G + g holds sample g's n-th generated token (the G new tokens of a step are
one contiguous write). A query row attends to its prompt's prefix from `prefix_start` on (prompts are
left-padded) and to its own sample's first `t` suffix tokens.

Two implementations of the same math:
  * `_xla_attention`: einsums and a softmax over [prefix; own suffix] in fp32 (CPU, tests, any shape).
  * `_pallas_attention`: one Pallas (Triton) kernel on GPU. A program per (prompt, kv head, split) holds the
    G x (heads per kv head) query rows of that prompt and kv head as one block and streams its share of the blocks
    to read: the prefix's (blocks wholly inside the left padding skipped), then the filled suffix's (a block holds
    every sample's keys at the same positions and a mask keeps each row to its own sample's), dealt out evenly to
    the splits at every step. It writes unnormalised partial results; a small XLA combine merges the splits by
    log-sum-exp. On an H100 at 8 prompts x G=8, prompt 1024, 512-slot suffix, kernel and combine took 18 / 23 / 35
    us per layer at 16 / 256 / 500 filled suffix tokens (fixed eighths of the prefix and suffix per split: 18 / 26
    / 34; cuDNN over the repeated cache: 48 / 51 / 45; docs/PERFORMANCE.md).

Which one runs is decided with the model's other attention kernels (`models.layers.resolve_shared_prefix_backend`,
set by `decoding.sampler.SamplingConfig.shared_prefix_kernel`); the cache holding this layout is
`decoding.cache.SharedPrefixCache`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from omnirrm_jax.models import layers as L

SPLITS = 8  # programs per (prompt, kv head): the grid is B x K x SPLITS
BLOCK = 128  # keys (prefix slots, or suffix rows: positions x G) per inner step
_NEG = float(jnp.finfo(jnp.float32).min)


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def padded_sizes(prompt_len: int, new_tokens: int, num_samples: int, backend: str) -> tuple[int, int]:
    """(prefix slots, suffix positions) to allocate. The kernel reads whole blocks: the prefix is padded on the left
    (where prompts are padded anyway; whole blocks of padding are skipped, not read), the suffix rows (positions x G)
    at their end (positions past the filled length are skipped too). Both are padded to a power of two of at least
    one block, the sizes the kernel was compiled and measured at on a GPU (other multiples of a block lower to
    Triton on CPU but were never compiled on one)."""
    if backend != "pallas":
        return prompt_len, new_tokens
    if not _pow2(num_samples) or BLOCK % num_samples:
        raise ValueError(f"the shared-prefix kernel takes G a power of two up to {BLOCK}, got {num_samples}")
    return _next_pow2(max(prompt_len, BLOCK)), _next_pow2(max(new_tokens * num_samples, BLOCK)) // num_samples


def attention(q_RNH: jax.Array, prefix_k: jax.Array, prefix_v: jax.Array, k: jax.Array, v: jax.Array,
              prefix_start_B: jax.Array, t, *, num_samples: int, scale: float, backend: str) -> jax.Array:
    """One query token per row, R = B * G rows (prompt b's samples adjacent) -> (R, num_heads, head_dim).

    prefix_k/v (B, K, S, H), valid from `prefix_start_B`; k/v (B, K, N * G, H), suffix positions [0, t) valid.
    `backend`: "pallas" (the kernel; the layout `padded_sizes(..., "pallas")` allocates) or "xla" (any layout).
    """
    if backend not in L.SHARED_PREFIX_BACKENDS:
        raise ValueError(f"shared-prefix attention backend must be one of {L.SHARED_PREFIX_BACKENDS}, "
                         f"got {backend!r}")
    fn = _pallas_attention if backend == "pallas" else _xla_attention
    return fn(q_RNH, prefix_k, prefix_v, k, v, prefix_start_B.astype(jnp.int32), jnp.asarray(t, jnp.int32),
              G=num_samples, scale=scale)


def _xla_attention(q_RNH, pk, pv, sk, sv, start_B, t, *, G, scale):
    R, Hq, H = q_RNH.shape
    B, K, S, _ = pk.shape
    N = sk.shape[2] // G
    qf = q_RNH.reshape(B, G, K, Hq // K, H)
    sk5, sv5 = sk.reshape(B, K, N, G, H), sv.reshape(B, K, N, G, H)
    lp = jnp.einsum("bgkqh,bksh->bgkqs", qf, pk, preferred_element_type=jnp.float32) * scale
    lp = jnp.where(jnp.arange(S) >= start_B[:, None, None, None, None], lp, -jnp.inf)
    ls = jnp.einsum("bgkqh,bkngh->bgkqn", qf, sk5, preferred_element_type=jnp.float32) * scale
    ls = jnp.where(jnp.arange(N) < t, ls, -jnp.inf)
    p = jax.nn.softmax(jnp.concatenate([lp, ls], -1), axis=-1).astype(pv.dtype)
    o = (jnp.einsum("bgkqs,bksh->bgkqh", p[..., :S], pv) + jnp.einsum("bgkqn,bkngh->bgkqh", p[..., S:], sv5))
    return o.reshape(R, Hq, H).astype(q_RNH.dtype)


def _kernel(q_ref, pk_ref, pv_ref, sk_ref, sv_ref, start_ref, t_ref, o_ref, m_ref, l_ref, *, G, qpk, scale, splits,
            block):
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu

    M, H = q_ref.shape
    S = pk_ref.shape[0]  # this prompt's prefix slots (all of them: splits share out blocks, not fixed ranges)
    s = pl.program_id(2)
    q = q_ref[...]
    start, t = start_ref[0], t_ref[0]
    # The blocks to read: the prefix's from the one holding `start` on, then the suffix's up to the one holding
    # row t * G - 1. They are dealt out evenly, in order, to the splits, so every split reads about the same
    # whatever the left padding and however far decoding has got.
    first = start // block
    n_prefix = S // block - first
    n_total = n_prefix + (t * G + block - 1) // block
    per = (n_total + splits - 1) // splits
    lo, hi = s * per, jnp.minimum(s * per + per, n_total)

    def online_softmax(carry, qk, v):
        o, m, l = carry
        m_new = jnp.maximum(m, qk.max(axis=-1))
        corr = jnp.exp(m - m_new)
        p = jnp.exp(qk - m_new[:, None])
        return corr[:, None] * o + plgpu.dot(p.astype(v.dtype), v), m_new, corr * l + p.sum(axis=-1)

    def prefix_block(j, carry):
        sl = pl.ds(j * block, block)
        qk = plgpu.dot(q, pk_ref[sl, :].T) * scale
        qk = jnp.where((j * block + jnp.arange(block) >= start)[None, :], qk, -jnp.inf)
        return online_softmax(carry, qk, pv_ref[sl, :])

    row_sample = jnp.arange(M) // qpk  # padding rows (>= G * qpk) match no sample

    def suffix_block(j, carry):
        sl = pl.ds(j * block, block)
        qk = plgpu.dot(q, sk_ref[sl, :].T) * scale
        r = j * block + jnp.arange(block)
        seen = ((r % G)[None, :] == row_sample[:, None]) & ((r // G) < t)[None, :]
        return online_softmax(carry, jnp.where(seen, qk, -jnp.inf), sv_ref[sl, :])

    carry = (jnp.zeros((M, H), jnp.float32), jnp.full((M,), _NEG, jnp.float32), jnp.zeros((M,), jnp.float32))
    carry = lax.fori_loop(first + lo, first + jnp.minimum(hi, n_prefix), prefix_block, carry)
    carry = lax.fori_loop(jnp.maximum(lo - n_prefix, 0), jnp.maximum(hi - n_prefix, 0), suffix_block, carry)
    o, m, l = carry
    o_ref[...] = o
    m_ref[...] = m
    l_ref[...] = l


def _pallas_attention(q_RNH, pk, pv, sk, sv, start_B, t, *, G, scale, splits: int = SPLITS, block: int = BLOCK,
                      num_warps: int = 4, num_stages: int = 2):
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu

    R, Hq, H = q_RNH.shape
    B, K, S, _ = pk.shape
    X = sk.shape[2]
    qpk = Hq // K
    M = G * qpk
    Mp = _next_pow2(max(16, M))  # Triton blocks: powers of two, at least 16 rows
    if S % block or X % block or block % G or not _pow2(block):
        raise ValueError(f"shared-prefix kernel: prefix {S} / suffix rows {X} / G={G} not laid out by "
                         "padded_sizes")
    qf = q_RNH.reshape(B, G, K, qpk, H).transpose(0, 2, 1, 3, 4).reshape(B, K, M, H)
    qf = jnp.pad(qf, ((0, 0), (0, 0), (0, Mp - M), (0, 0)))
    kern = functools.partial(_kernel, G=G, qpk=qpk, scale=scale, splits=splits, block=block)
    o, m, l = pl.pallas_call(
        kern,
        grid=(B, K, splits),
        in_specs=[pl.BlockSpec((None, None, Mp, H), lambda b, k, s: (b, k, 0, 0)),
                  pl.BlockSpec((None, None, S, H), lambda b, k, s: (b, k, 0, 0)),
                  pl.BlockSpec((None, None, S, H), lambda b, k, s: (b, k, 0, 0)),
                  pl.BlockSpec((None, None, X, H), lambda b, k, s: (b, k, 0, 0)),
                  pl.BlockSpec((None, None, X, H), lambda b, k, s: (b, k, 0, 0)),
                  pl.BlockSpec((1,), lambda b, k, s: (b,)),
                  pl.BlockSpec((1,), lambda b, k, s: (0,))],
        out_specs=[pl.BlockSpec((None, None, None, Mp, H), lambda b, k, s: (b, k, s, 0, 0)),
                   pl.BlockSpec((None, None, None, Mp), lambda b, k, s: (b, k, s, 0)),
                   pl.BlockSpec((None, None, None, Mp), lambda b, k, s: (b, k, s, 0))],
        out_shape=[jax.ShapeDtypeStruct((B, K, splits, Mp, H), jnp.float32),
                   jax.ShapeDtypeStruct((B, K, splits, Mp), jnp.float32),
                   jax.ShapeDtypeStruct((B, K, splits, Mp), jnp.float32)],
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=jax.default_backend() != "gpu",  # CPU: the same kernel interpreted (tests)
        name="shared_prefix_decode_attention",
    )(qf, pk, pv, sk, sv, start_B, jnp.reshape(t, (1,)))
    # merge the splits: every real row has at least its own first suffix token, so its total weight is > 0
    w = jnp.exp(m - m.max(axis=2, keepdims=True))
    out = (o * w[..., None]).sum(axis=2) / (l * w).sum(axis=2)[..., None]
    out = out[:, :, :M].reshape(B, K, G, qpk, H).transpose(0, 2, 1, 3, 4)
    return out.reshape(R, Hq, H).astype(q_RNH.dtype)
