"""Sampling with top-k on: draw among the k candidates, not over the vocabulary, at HF's exact distribution.

Why: GRPO samples at top-k 50 / top-p 0.95 over Qwen's 152k vocabulary. Masking the vocabulary and drawing from
it costs a sort-like top-k over 152k values plus half a dozen vocab-wide passes every decode step (on an H100 at
GRPO's 8 x 8 rollout shape, 16 % of a step and more). Here the only vocab-wide work is two fused reductions:

1. Exact top-k without sorting the vocabulary (`top_k`): the vocabulary is cut into `chunks` slices; the k-th
   largest slice maximum L is a lower bound of the k-th largest value (k slices each hold a value >= L), so every
   value above L lies in the k slices with the largest maxima. A top-k over those k * slice-size gathered values
   gives the exact top-k values (ties at the k-th value aside, which step 2 treats as one group).
2. HF's top-k keeps every token >= the k-th value `kth` (ties included, so more than k can survive) and top-p
   then works on masses. So the draw is over the candidates strictly above `kth` plus one group: all tokens equal
   to `kth`, counted over the vocabulary, with weight n * exp(kth). When the group is drawn (only ever possible
   when a row has ties there), one of its tokens is picked uniformly by the largest of a per-token integer hash
   keyed by the step's key, a reduction fused into the counting pass.

The support and the probabilities equal `sampler.filter_logits` (which keeps the whole tied group at a top-p
boundary too); tests compare them and the sampled frequencies with HF's warpers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

CHUNKS = 1024


def top_k(x_RV: jax.Array, k: int, chunks: int = CHUNKS) -> tuple[jax.Array, jax.Array]:
    """(values, indices) of the k largest values of each row, values descending (order among equal values and
    which of several tokens tied at the k-th value appear is unspecified). Slices as the module docstring says
    when the vocabulary is large enough for it to pay; else one `lax.top_k`."""
    R, V = x_RV.shape
    size = -(-V // chunks)
    if chunks < k or size < 2 or k * size >= V // 2:
        return jax.lax.top_k(x_RV, k)
    x = jnp.pad(x_RV, ((0, 0), (0, chunks * size - V)), constant_values=-jnp.inf).reshape(R, chunks, size)
    _, best = jax.lax.top_k(jnp.max(x, axis=-1), k)  # (R, k) slices with the largest maxima
    gathered = jnp.take_along_axis(x, best[..., None], axis=1).reshape(R, k * size)
    vals, pos = jax.lax.top_k(gathered, k)
    idx = jnp.take_along_axis(best, pos // size, axis=1) * size + pos % size
    return vals, idx.astype(jnp.int32)


def _hash(v_V: jax.Array, seed_R: jax.Array) -> jax.Array:
    """A well-mixed non-negative int32 per (row, token) (the murmur3 finaliser of token ^ seed): a random
    uniform choice among tied tokens, computed inside the counting reduction instead of drawing vocab-sized
    random bits."""
    h = (v_V[None, :].astype(jnp.uint32) * jnp.uint32(0x9E3779B1)) ^ seed_R[:, None]
    h = (h ^ (h >> 16)) * jnp.uint32(0x85EBCA6B)
    h = (h ^ (h >> 13)) * jnp.uint32(0xC2B2AE35)
    h = h ^ (h >> 16)
    return (h >> 1).astype(jnp.int32)


def is_one(value) -> bool:
    """A static 1.0 (that warper is off); a per-row array is never known to be."""
    return isinstance(value, (int, float)) and value == 1.0


def sample(key: jax.Array, logits_RV: jax.Array, temperature, k: int, top_p) -> tuple[jax.Array, jax.Array]:
    """One token per row drawn from HF's temperature -> top-k -> top-p distribution (0 < k < V), and its
    log-probability under that distribution. temperature / top_p: Python floats (constants of the program) or
    (R, 1) arrays (per row)."""
    x = jnp.asarray(logits_RV).astype(jnp.float32)
    if not is_one(temperature):
        x = x / temperature
    R, V = x.shape
    vals, idx = top_k(x, k)
    kth = vals[:, -1:]
    top = vals[:, :1]
    draw_key, tie_key = jax.random.split(key)

    # the one vocab-wide pass: how many tokens tie with the k-th value, and a uniform pick among them
    tied = x == kth
    n_tied = jnp.sum(tied, axis=-1, keepdims=True).astype(jnp.float32)
    seed = jax.random.bits(tie_key, (R,), jnp.uint32)
    tie_pick = jnp.argmax(jnp.where(tied, _hash(jnp.arange(V), seed), -1), axis=-1).astype(jnp.int32)

    above = vals > kth
    e = jnp.where(above, jnp.exp(vals - top), 0.0)
    e_group = n_tied * jnp.exp(kth - top)  # (R, 1), 0 when kth is -inf (fewer than k finite values)
    z = jnp.sum(e, -1, keepdims=True) + e_group
    keep_above, keep_group = above, jnp.ones_like(kth, bool)
    if not is_one(top_p):
        # mass at or below each candidate (descending order; the group lies below every candidate above kth)
        tail = jnp.flip(jnp.cumsum(jnp.flip(e, -1), -1), -1) + e_group
        keep = (tail / z > 1.0 - top_p) | (jnp.arange(k) == 0)  # always the most probable token
        cutoff = jnp.min(jnp.where(keep & (above | (jnp.arange(k) == 0)), vals, jnp.inf), -1, keepdims=True)
        keep_group = (e_group / z > 1.0 - top_p) | (kth >= top)
        cutoff = jnp.where(keep_group, kth, cutoff)
        keep_above = above & (vals >= cutoff)
    cand = jnp.concatenate([jnp.where(keep_above, vals, -jnp.inf),
                            jnp.where(keep_group, kth + jnp.log(n_tied), -jnp.inf)], axis=-1)  # (R, k + 1)
    log_z = jax.nn.logsumexp(cand, axis=-1)
    choice = jax.random.categorical(draw_key, cand, axis=-1)
    in_group = choice == k
    tok = jnp.where(in_group, tie_pick, jnp.take_along_axis(idx, jnp.minimum(choice, k - 1)[:, None], -1)[:, 0])
    val = jnp.where(in_group, kth[:, 0], jnp.take_along_axis(vals, jnp.minimum(choice, k - 1)[:, None], -1)[:, 0])
    return tok.astype(jnp.int32), val - log_z
