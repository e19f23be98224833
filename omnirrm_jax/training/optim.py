"""Optimizer: AdamW with warm-up then cosine/linear decay, global-norm clipping and gradient accumulation.

Matches the reference's HF Trainer defaults (AdamW betas 0.9/0.999, eps 1e-8, weight decay 0.1 in ms-swift,
linear warm-up by ratio, cosine decay to 0) so learning-rate curves line up with the PyTorch runs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 5e-6
    warmup_ratio: float = 0.03
    schedule: str = "cosine"  # cosine | linear | constant
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    grad_accum_steps: int = 1

    def __post_init__(self):
        """Values that would train wrongly without an error (a negative rate ascends the loss) are refused."""
        _require(self, learning_rate=(self.learning_rate > 0 and math.isfinite(self.learning_rate), "a number > 0"),
                 warmup_ratio=(0 <= self.warmup_ratio < 1, "in [0, 1)"),
                 schedule=(self.schedule in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
                 weight_decay=(self.weight_decay >= 0, ">= 0"), b1=(0 <= self.b1 < 1, "in [0, 1)"),
                 b2=(0 <= self.b2 < 1, "in [0, 1)"), eps=(self.eps > 0, "> 0"),
                 max_grad_norm=(self.max_grad_norm >= 0, ">= 0 (0: no clipping)"),
                 grad_accum_steps=(self.grad_accum_steps >= 1, "an integer >= 1"))


SCHEDULES = ("cosine", "linear", "constant")


def _require(spec, **checks: tuple[bool, str]) -> None:
    """Raises ValueError naming every field of `spec` whose check failed, with the value and what is allowed."""
    bad = [f"{name} must be {allowed}, got {getattr(spec, name)!r}" for name, (ok, allowed) in checks.items() if not ok]
    if bad:
        raise ValueError("; ".join(bad))


def learning_rate_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Schedule over optimizer updates (after accumulation). Warm-up lasts ceil(warmup_ratio * total) updates, as
    HF `TrainingArguments.get_warmup_steps` counts them (round() would drop it entirely for short runs)."""
    total_steps = max(int(total_steps), 1)
    warmup = math.ceil(total_steps * cfg.warmup_ratio)
    decay_steps = max(total_steps - warmup, 1)
    if cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(cfg.learning_rate, decay_steps)
    elif cfg.schedule == "linear":
        decay = optax.linear_schedule(cfg.learning_rate, 0.0, decay_steps)
    elif cfg.schedule == "constant":
        decay = optax.constant_schedule(cfg.learning_rate)
    else:
        raise ValueError(f"unknown schedule {cfg.schedule!r} (cosine, linear, constant)")
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.learning_rate, warmup), decay], [warmup])


def update_count(opt_state, applied_micro_steps):
    """Optimizer updates applied so far (update u ran at `learning_rate_schedule(...)(u)`). Under accumulation
    that is optax.MultiSteps' gradient_step, which moves only at a boundary; a micro-step count would index the
    update schedule k times too fast. Without accumulation every applied micro-step is one update."""
    if isinstance(opt_state, TokenMeanState):
        opt_state = opt_state.multi_steps
    if isinstance(opt_state, optax.MultiStepsState):
        return opt_state.gradient_step
    return applied_micro_steps


class TokenMeanState(NamedTuple):
    tokens: jax.Array  # target tokens of the window's micro-steps so far (0 after a boundary)
    multi_steps: optax.MultiStepsState  # whose accumulator holds the running token mean of the window's gradients


class TokenMeanTransformation(optax.GradientTransformationExtraArgs):
    """`token_mean_accumulation`'s transformation: its type tells the SFT step to pass `tokens=`."""


def token_mean_accumulation(inner: optax.GradientTransformation, every_k: int) -> TokenMeanTransformation:
    """Gradient accumulation over `every_k` micro-steps whose update is the gradient of the window's loss summed
    over all its target tokens and divided by their count, as HF Trainer computes it since transformers 4.46
    (`num_items_in_batch`, tokens counted over all devices; the reference's SFT, ms-swift with 12 micro-steps of
    one example per GPU, runs on HF Trainer). optax.MultiSteps alone averages the micro-steps' own token means,
    which weighs a token of a short micro-batch more than one of a long one.

    `update(grads, state, params, tokens=n)` takes the micro-step's token-mean gradient and its target-token count
    (the global batch's). The accumulator always holds the running token mean: micro-step k adds
    acc * (W_{k-1} / W_k - 1) + grads * n_k / W_k (W: tokens so far), so `inner` receives the window's token mean
    at the boundary. A window without targets contributes zeros."""
    multi = optax.MultiSteps(inner, every_k_schedule=every_k, use_grad_mean=False)

    def init(params):
        return TokenMeanState(jnp.zeros((), jnp.float32), multi.init(params))

    def update(grads, state, params=None, *, tokens, **extra_args):
        n = jnp.asarray(tokens, jnp.float32)
        total = state.tokens + n
        keep, add = state.tokens / jnp.maximum(total, 1.0), n / jnp.maximum(total, 1.0)
        delta = jax.tree.map(lambda g, acc: (acc * (keep - 1) + g.astype(acc.dtype) * add).astype(acc.dtype),
                             grads, state.multi_steps.acc_grads)
        updates, new_multi = multi.update(delta, state.multi_steps, params, **extra_args)
        tokens_after = jnp.where(new_multi.mini_step == 0, 0.0, total)  # a boundary starts the next window
        return updates, TokenMeanState(tokens_after, new_multi)

    return TokenMeanTransformation(init, update)


def uses_token_counts(tx: Any) -> bool:
    """Whether `tx.update` needs `tokens=` (the SFT step passes its target-token count)."""
    return isinstance(tx, TokenMeanTransformation)


def applied_learning_rate(schedule: optax.Schedule, updates) -> float:
    """The rate of the last update applied after `updates` of them (the first update's before any): what a run
    logs as `train/lr`."""
    return float(schedule(max(int(updates) - 1, 0)))


def make_optimizer(cfg: OptimConfig, total_steps: int, *, token_mean: bool = False) -> optax.GradientTransformation:
    """Clipped AdamW on the schedule, accumulated over `grad_accum_steps` micro-steps: with `token_mean` (SFT) by
    `token_mean_accumulation` (the window's token mean, as HF Trainer); otherwise by optax.MultiSteps (the mean
    of the micro-steps' gradients: GRPO, whose loss normalisation is per micro-batch as in TRL)."""
    tx = optax.chain(
        optax.clip_by_global_norm(cfg.max_grad_norm) if cfg.max_grad_norm > 0 else optax.identity(),
        optax.adamw(learning_rate_schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                    weight_decay=cfg.weight_decay),
    )
    if cfg.grad_accum_steps > 1 and token_mean:
        return token_mean_accumulation(tx, cfg.grad_accum_steps)
    if cfg.grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=cfg.grad_accum_steps)
    return tx
