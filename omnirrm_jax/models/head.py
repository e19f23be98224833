"""Token log-probabilities under the output head, in sequence chunks so (B, T, V) fp32 logits of a 152k vocabulary
never materialise at once: what the SFT loss, the GRPO objective and held-out evaluation all read from the model
(`Thinker.token_logprobs`). Where the head is one matrix, the log-softmax is fused with its gradient."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def token_logprobs(hidden_BTD: jax.Array, targets_BT: jax.Array, logits_fn, *, chunk: int = 1024) -> jax.Array:
    """log p(target_t | ...) for every position, computed over sequence chunks of `chunk` tokens.

    Args:
      hidden_BTD: final-norm hidden states.
      targets_BT: the token each position predicts (already shifted).
      logits_fn: hidden (B, t, D) -> logits (B, t, V), e.g. `model.logits`.
    """
    B, T, _ = hidden_BTD.shape
    h, y = _chunked(hidden_BTD, targets_BT, chunk)

    @jax.checkpoint
    def one(h_BtD, y_Bt):
        return _logp_and_lse(logits_fn(h_BtD).astype(jnp.float32), y_Bt)[0]

    out = jax.lax.map(lambda args: one(*args), (h, y))  # (n_chunks, B, chunk)
    return out.swapaxes(0, 1).reshape(B, -1)[:, :T]


def _chunked(hidden_BTD, targets_BT, chunk):
    """(n_chunks, B, c, D) hidden states and (n_chunks, B, c) targets: as few chunks as chunks of at most `chunk`
    positions need, of equal length c, the sequence padded to whole chunks (T = 1025 is two chunks of 513, not two
    of 1024)."""
    B, T, D = hidden_BTD.shape
    chunk = -(-T // -(-T // chunk))
    pad = (-T) % chunk
    h = jnp.pad(hidden_BTD, ((0, 0), (0, pad), (0, 0))).reshape(B, -1, chunk, D).swapaxes(0, 1)
    y = jnp.pad(targets_BT, ((0, 0), (0, pad))).reshape(B, -1, chunk).swapaxes(0, 1)
    return h, y


def _head_logits(h_BcD, w_DV, temperature):
    # as `model.logits`: the matmul in the weight's dtype, then fp32 (HF upcasts bf16 logits the same way)
    logits = (h_BcD.astype(w_DV.dtype) @ w_DV).astype(jnp.float32)
    return logits if temperature == 1.0 else logits / temperature


def _logp_and_lse(logits_BcV, y_Bc):
    lse = jax.nn.logsumexp(logits_BcV, axis=-1)
    return jnp.take_along_axis(logits_BcV, y_Bc[..., None], axis=-1)[..., 0] - lse, lse


def _softmax_and_logp(logits_BcV, y_Bc):
    logp, lse = _logp_and_lse(logits_BcV, y_Bc)
    return jnp.exp(logits_BcV - lse[..., None]), logp


def _dlogp_dlogits(p_BcV, y_Bc):
    return jax.nn.one_hot(y_Bc, p_BcV.shape[-1], dtype=p_BcV.dtype) - p_BcV


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _fused_logprobs(h_CBcD, y_CBc, w_DV, temperature):
    def one(_, hy):
        return None, _softmax_and_logp(_head_logits(hy[0], w_DV, temperature), hy[1])[1]
    return jax.lax.scan(one, None, (h_CBcD, y_CBc))[1]


def _fused_fwd(h_CBcD, y_CBc, w_DV, temperature):
    def one(_, hy):
        p, logp = _softmax_and_logp(_head_logits(hy[0], w_DV, temperature), hy[1])
        # d logp / d h for this position: (onehot - p) @ W^T / temperature, D floats kept instead of V logits
        grad_h = jnp.einsum("bcv,dv->bcd", _dlogp_dlogits(p, hy[1]).astype(w_DV.dtype), w_DV,
                            preferred_element_type=jnp.float32) / temperature
        return None, (logp, grad_h)
    logp, grad_h = jax.lax.scan(one, None, (h_CBcD, y_CBc))[1]
    return logp, (h_CBcD, y_CBc, w_DV, grad_h)


def _fused_bwd(temperature, res, g_CBc):
    h, y, w_DV, grad_h = res
    live = g_CBc != 0  # positions outside the loss contribute nothing, even where their hidden state is not finite
    dh = jnp.where(live[..., None], g_CBc[..., None] * grad_h, 0.0).astype(h.dtype)

    def one(acc_DV, args):  # the head's own gradient (full fine-tuning); dead code, removed by XLA, when frozen
        h_c, y_c, g_c, live_c = args
        h_c = jnp.where(live_c[..., None], h_c, 0.0)  # a non-finite row outside the loss must not reach dW either
        p, _ = _softmax_and_logp(_head_logits(h_c, w_DV, temperature), y_c)
        d = g_c[..., None] * _dlogp_dlogits(p, y_c) / temperature  # zero outside the loss: g is, p is finite
        return acc_DV + jnp.einsum("bcd,bcv->dv", h_c.astype(w_DV.dtype), d.astype(w_DV.dtype),
                                   preferred_element_type=jnp.float32), None
    dw, _ = jax.lax.scan(one, jnp.zeros(w_DV.shape, jnp.float32), (h, y, g_CBc, live))
    return dh, None, dw.astype(w_DV.dtype)


_fused_logprobs.defvjp(_fused_fwd, _fused_bwd)


def linear_token_logprobs(hidden_BTD: jax.Array, targets_BT: jax.Array, w_DV: jax.Array, *, chunk: int = 1024,
                          temperature: float = 1.0) -> jax.Array:
    """log softmax(h @ W / temperature)[target] per position, fused with its gradient: `token_logprobs` for a head
    that is one matrix, without recomputing the logits in the backward pass.

    The forward pass, chunk by chunk, also computes each position's gradient with respect to its hidden state
    ((onehot - p) @ W^T / temperature: D numbers per position instead of V logits, kept in fp32 until the
    backward pass), so the backward pass for the hidden states is one multiply. Same values as `token_logprobs`
    with `logits_fn = h @ W`. What it saves: with a frozen head and no rematerialisation around it (SFT), two
    head matmuls per step instead of three; inside a rematerialised region (GRPO's update chunks) the recomputed
    forward computes the gradient again, three as before; a trained head (full fine-tuning) recomputes the
    chunk's logits for its own gradient, four as before. `temperature` must be a Python number (static).
    """
    T = hidden_BTD.shape[1]
    h, y = _chunked(hidden_BTD, targets_BT, chunk)
    logp = _fused_logprobs(h, y, w_DV, float(temperature))
    return logp.swapaxes(0, 1).reshape(hidden_BTD.shape[0], -1)[:, :T]


def head_token_logprobs(hidden_BTD: jax.Array, targets_BT: jax.Array, model, *, chunk: int = 1024,
                        temperature: float = 1.0) -> jax.Array:
    """Token log-probs under `model`'s output head: fused when the head is one matrix (`model.output_weight()`),
    else through `model.logits` (a head with a bias or a LoRA branch)."""
    w_DV = model.output_weight()
    if w_DV is not None:
        return linear_token_logprobs(hidden_BTD, targets_BT, w_DV, chunk=chunk, temperature=temperature)
    return token_logprobs(hidden_BTD, targets_BT,
                          lambda h: model.logits(h).astype(jnp.float32) / temperature, chunk=chunk)
