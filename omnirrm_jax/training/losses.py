"""Token losses computed from final hidden states, through the model's chunked head log-probabilities
(`models.head`, `Thinker.token_logprobs`) so (B, T, V) fp32 logits of a 152k vocabulary never materialise at once."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from omnirrm_jax.models.head import token_logprobs
from omnirrm_jax.models.thinker import model_inputs


def masked_cross_entropy(hidden_BTD: jax.Array, input_ids_BT: jax.Array, loss_mask_BT: jax.Array, *, model=None,
                         logits_fn=None, chunk: int = 1024, window: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Mean next-token cross-entropy over positions whose *target* has loss_mask 1.

    Returns (loss, number of target tokens). Position t predicts token t+1; `loss_mask_BT[:, t]` marks
    whether token t is a target (the assistant's judgement), so the prompt and padding never count. The logits
    come from `model`'s output head (fused with the loss where it is one matrix) or from `logits_fn`.

    `window`: only the targets among each row's last `window` tokens are scored (the head and its gradient run on
    those positions alone). Rows are left-padded with the judgement at the end (`data.examples.collate`), so
    nothing is lost when no judgement is longer: the pipeline's `max_target_length` skips those that are, and the
    SFT step checks each batch (`sft.sft_step`).
    """
    if (model is None) == (logits_fn is None):
        raise ValueError("masked_cross_entropy needs exactly one of model= and logits_fn=")
    h, y, mask = hidden_BTD[:, :-1], input_ids_BT[:, 1:], loss_mask_BT[:, 1:]
    if window is not None and window < y.shape[1]:
        h, y, mask = h[:, -window:], y[:, -window:], mask[:, -window:]
    if model is not None:
        logp = model.token_logprobs(h, y, chunk=chunk)
    else:
        logp = token_logprobs(h, y, logits_fn, chunk=chunk)
    mask = mask.astype(bool)
    n = jnp.sum(mask.astype(jnp.float32))
    # where, not multiply: padding rows attend to no key and may carry NaN (NaN * 0 = NaN)
    return -jnp.sum(jnp.where(mask, logp, 0.0)) / jnp.maximum(n, 1.0), n


def sft_loss(trainable, frozen, graphdef, batch, window: int | None = None) -> tuple[jax.Array, dict]:
    """Masked cross-entropy of a batch; with `window` only the targets among each row's last `window` tokens count
    (the pipeline's `max_target_length`: the output head then runs on those positions alone)."""
    model = nnx.merge(graphdef, trainable, frozen)
    hidden = model.forward(model_inputs(batch), return_hidden=True)
    loss, n_tokens = masked_cross_entropy(hidden, batch["input_ids"], batch["loss_mask"], model=model, window=window)
    return loss, {"target_tokens": n_tokens}
