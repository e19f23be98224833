"""Optimizer: AdamW with warm-up then cosine/linear decay, global-norm clipping and gradient accumulation.

Matches the reference's HF Trainer defaults (AdamW betas 0.9/0.999, eps 1e-8, weight decay 0.1 in ms-swift,
linear warm-up by ratio, cosine decay to 0) so learning-rate curves line up with the PyTorch runs.
"""

from __future__ import annotations

import dataclasses
import math

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
    if isinstance(opt_state, optax.MultiStepsState):
        return opt_state.gradient_step
    return applied_micro_steps


def applied_learning_rate(schedule: optax.Schedule, updates) -> float:
    """The rate of the last update applied after `updates` of them (the first update's before any): what a run
    logs as `train/lr`."""
    return float(schedule(max(int(updates) - 1, 0)))


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    tx = optax.chain(
        optax.clip_by_global_norm(cfg.max_grad_norm) if cfg.max_grad_norm > 0 else optax.identity(),
        optax.adamw(learning_rate_schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                    weight_decay=cfg.weight_decay),
    )
    if cfg.grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=cfg.grad_accum_steps)
    return tx
