"""Token losses computed from final hidden states, in vocab chunks so (B, T, V) fp32 logits of a
152k vocabulary never materialise at once."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_logprobs(hidden_BTD: jax.Array, targets_BT: jax.Array, logits_fn, *, chunk: int = 1024) -> jax.Array:
    """log p(target_t | ...) for every position, computed over sequence chunks of `chunk` tokens.

    Args:
      hidden_BTD: final-norm hidden states.
      targets_BT: the token each position predicts (already shifted).
      logits_fn: hidden (B, t, D) -> logits (B, t, V), e.g. `model.logits`.
    """
    B, T, D = hidden_BTD.shape
    chunk = min(chunk, T)
    pad = (-T) % chunk
    h = jnp.pad(hidden_BTD, ((0, 0), (0, pad), (0, 0))).reshape(B, -1, chunk, D).swapaxes(0, 1)
    y = jnp.pad(targets_BT, ((0, 0), (0, pad))).reshape(B, -1, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def one(h_BtD, y_Bt):
        logits = logits_fn(h_BtD).astype(jnp.float32)
        lse = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, y_Bt[..., None], axis=-1)[..., 0]
        return picked - lse

    out = jax.lax.map(lambda args: one(*args), (h, y))  # (n_chunks, B, chunk)
    return out.swapaxes(0, 1).reshape(B, -1)[:, :T]


def masked_cross_entropy(hidden_BTD: jax.Array, input_ids_BT: jax.Array, loss_mask_BT: jax.Array, logits_fn,
                         *, chunk: int = 1024) -> tuple[jax.Array, jax.Array]:
    """Mean next-token cross-entropy over positions whose *target* has loss_mask 1.

    Returns (loss, number of target tokens). Position t predicts token t+1; `loss_mask_BT[:, t]` marks
    whether token t is a target (the assistant's judgement), so the prompt and padding never count.
    """
    logp = token_logprobs(hidden_BTD[:, :-1], input_ids_BT[:, 1:], logits_fn, chunk=chunk)
    mask = loss_mask_BT[:, 1:].astype(bool)
    n = jnp.sum(mask.astype(jnp.float32))
    # where, not multiply: padding rows attend to no key and may carry NaN (NaN * 0 = NaN)
    return -jnp.sum(jnp.where(mask, logp, 0.0)) / jnp.maximum(n, 1.0), n
