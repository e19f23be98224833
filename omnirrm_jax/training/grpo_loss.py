"""The GRPO objective: group-relative advantages and the clipped surrogate with a KL penalty.

Written to equal TRL's `GRPOTrainer._compute_loss` (which ms-swift's GRPO, the reference's trainer, runs):

  ratio_t   = exp(logp_t - old_logp_t)
  surrogate = -min(ratio_t * A, clip(ratio_t, 1 - eps_low, 1 + eps_high) * A)
  kl_t      = k3: exp(ref_t - logp_t) - (ref_t - logp_t) - 1      k1: logp_t - ref_t
  loss_t    = surrogate + beta * kl_t

reduced over completion tokens by `loss_type`:
  grpo    : mean over sequences of each sequence's token mean (the reference; favours short completions)
  dr_grpo : sum over tokens / (sequences * max_completion_length)   (Dr. GRPO: no length bias)
  dapo    : sum over tokens / tokens in the batch                    (token mean)

Advantage scalings, KL estimators and loss reductions are tables by name (`ADVANTAGE_SCALES`, `KL_ESTIMATORS`,
`LOSS_TYPES`); `register` adds one, which the GRPO config then accepts.

Rows whose prompt is padding (`row_valid` False: a final partial batch) have zero weight everywhere.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

STD_EPS = 1e-4  # TRL: (r - mean) / (std + 1e-4)


# ---- advantages: (B, G) rewards -> (B, G) advantages, by name (`grpo.scale_rewards`) --------------------------

def _centred(r: np.ndarray) -> np.ndarray:
    return r - r.mean(axis=1, keepdims=True)


def _group_scaled(r: np.ndarray) -> np.ndarray:
    adv = _centred(r)
    std = r.std(axis=1, ddof=1, keepdims=True) if r.shape[1] > 1 else np.zeros_like(adv[:, :1])
    return adv / (std + STD_EPS)


ADVANTAGE_SCALES: dict[str, Callable[[np.ndarray], np.ndarray]] = {"group": _group_scaled, "none": _centred}


def group_advantages(rewards_BG: np.ndarray, scale: str = "group", valid_B: np.ndarray | None = None) -> np.ndarray:
    """(B, G) rewards -> (B, G) advantages by the registered `scale`: "group" is the reward minus its group's mean,
    divided by the group's std (unbiased, as torch.std) + 1e-4; "none" only centres. Groups of invalid prompts
    get 0."""
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"advantage scale must be one of {tuple(ADVANTAGE_SCALES)}, got {scale!r}")
    adv = ADVANTAGE_SCALES[scale](np.asarray(rewards_BG, np.float64))
    if valid_B is not None:
        adv = np.where(np.asarray(valid_B, bool)[:, None], adv, 0.0)
    return adv.astype(np.float32)


# ---- KL estimators: (logp, ref_logp) -> per-token KL, by name (`grpo.kl_estimator`) ----------------------------

def _k3(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
    d = ref_logp - logp
    return jnp.exp(d) - d - 1.0


def _k1(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
    return logp - ref_logp


KL_ESTIMATORS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {"k3": _k3, "k1": _k1}


def per_token_kl(logp: jax.Array, ref_logp: jax.Array, estimator: str) -> jax.Array:
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl estimator must be one of {tuple(KL_ESTIMATORS)}, got {estimator!r}")
    return KL_ESTIMATORS[estimator](logp, ref_logp)


# ---- loss reductions: token weights by name (`grpo.loss_type`) ---------------------------------------------------
# Each maps (valid-token mask (R, N) as float, valid rows, max_completion_length) to each token's weight.

def _sequence_mean(mf, n_rows, max_len):
    return mf / (jnp.maximum(mf.sum(-1, keepdims=True), 1.0) * n_rows)


def _fixed_length(mf, n_rows, max_len):
    return mf / (n_rows * max_len)


def _token_mean(mf, n_rows, max_len):
    return mf / jnp.maximum(mf.sum(), 1.0)


LOSS_TYPES: dict[str, Callable[[jax.Array, jax.Array, int], jax.Array]] = {
    "grpo": _sequence_mean, "dr_grpo": _fixed_length, "dapo": _token_mean}


def register(table: dict, name: str, fn: Callable) -> None:
    """Adds a loss reduction, KL estimator or advantage scaling under `name` (then valid in the GRPO config)."""
    if table not in (LOSS_TYPES, KL_ESTIMATORS, ADVANTAGE_SCALES):
        raise ValueError("register into grpo_loss.LOSS_TYPES, KL_ESTIMATORS or ADVANTAGE_SCALES")
    table[name] = fn


def per_token_terms(logp_RN: jax.Array, old_logp_RN: jax.Array, ref_logp_RN: jax.Array | None, adv_R: jax.Array,
                    valid_RN: jax.Array, *, beta: float, epsilon: float, epsilon_high: float | None = None,
                    kl_estimator: str = "k3") -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Each completion token's loss term (clipped surrogate + beta * KL), with the importance ratio and the KL
    (None when beta = 0) behind it. Log-probs outside `valid_RN` are replaced by 0 first: a padding row's may be
    NaN, and a NaN inside exp() poisons the gradient even where a later `where` drops its value."""
    eps_low, eps_high = epsilon, epsilon if epsilon_high is None else epsilon_high
    logp_RN, old_logp_RN = jnp.where(valid_RN, logp_RN, 0.0), jnp.where(valid_RN, old_logp_RN, 0.0)
    if ref_logp_RN is not None:
        ref_logp_RN = jnp.where(valid_RN, ref_logp_RN, 0.0)
    adv = adv_R[:, None].astype(jnp.float32)
    ratio = jnp.exp(logp_RN - old_logp_RN)
    clipped = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
    per_tok = -jnp.minimum(ratio * adv, clipped * adv)
    kl = None
    if beta != 0.0:
        kl = per_token_kl(logp_RN, ref_logp_RN, kl_estimator)
        per_tok = per_tok + beta * kl
    return per_tok, ratio, kl


def token_weights(mask_RN: jax.Array, row_valid_R: jax.Array, loss_type: str,
                  max_completion_length: int | None = None) -> jax.Array:
    """Each token's weight in the loss, so that loss = sum(weights * per-token terms) for every `loss_type`: the
    normalisers are fixed by the masks alone, which lets the update sum the gradients of row chunks
    (`grpo_objective.accumulated_grads`) and still get the gradient of the whole batch's loss."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {tuple(LOSS_TYPES)}, got {loss_type!r}")
    mf = (mask_RN.astype(bool) & row_valid_R.astype(bool)[:, None]).astype(jnp.float32)
    n_rows = jnp.maximum(row_valid_R.astype(jnp.float32).sum(), 1.0)
    return LOSS_TYPES[loss_type](mf, n_rows, max_completion_length or mask_RN.shape[1])


def grpo_loss(logp_RN: jax.Array, old_logp_RN: jax.Array, ref_logp_RN: jax.Array | None, adv_R: jax.Array,
              mask_RN: jax.Array, row_valid_R: jax.Array, *, beta: float, epsilon: float,
              epsilon_high: float | None = None, kl_estimator: str = "k3", loss_type: str = "grpo",
              max_completion_length: int | None = None) -> tuple[jax.Array, dict]:
    """The loss and its diagnostics (token means over the completion mask of valid rows)."""
    eps_low, eps_high = epsilon, epsilon if epsilon_high is None else epsilon_high
    m = mask_RN.astype(bool) & row_valid_R.astype(bool)[:, None]
    mf = m.astype(jnp.float32)
    adv = adv_R[:, None].astype(jnp.float32)
    per_tok, ratio, kl = per_token_terms(logp_RN, old_logp_RN, ref_logp_RN, adv_R, m, beta=beta, epsilon=epsilon,
                                         epsilon_high=epsilon_high, kl_estimator=kl_estimator)
    w = token_weights(mask_RN, row_valid_R, loss_type, max_completion_length)
    loss = jnp.sum(jnp.where(m, per_tok * w, 0.0))
    n_tok = jnp.maximum(mf.sum(), 1.0)

    def token_mean(x):
        return jnp.sum(jnp.where(m, x, 0.0)) / n_tok

    low = (ratio < 1.0 - eps_low) & (adv < 0)
    high = (ratio > 1.0 + eps_high) & (adv > 0)
    metrics = {"clip_frac_low": token_mean(low.astype(jnp.float32)),
               "clip_frac_high": token_mean(high.astype(jnp.float32)),
               "clip_frac": token_mean((low | high).astype(jnp.float32)),
               "ratio_mean": token_mean(ratio),
               "kl": token_mean(kl) if kl is not None else jnp.zeros(()),
               "completion_tokens": mf.sum()}
    return loss, metrics
