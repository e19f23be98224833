"""Supervised fine-tuning: masked next-token cross-entropy on the assistant judgement.

The step and its metrics; the run around it (mesh, data, sharded state, resume, evaluation, checkpoints,
preemption) is the skeleton both trainers share (`training.run`).
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from omnirrm_jax.parallel import sharding as S
from omnirrm_jax.parallel.distributed import is_main
from omnirrm_jax.training import losses, optim
from omnirrm_jax.training import run as run_lib
from omnirrm_jax.training.loop import NonFiniteGuard, data_counts
from omnirrm_jax.training.metrics import Throughput, attention_span, flops_per_token, peak_flops_per_device
from omnirrm_jax.training.state import TrainState, step_out_shardings, tree_where

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------
# The step
# ----------------------------------------------------------------------------------------------------

loss_fn = losses.sft_loss  # the SFT loss; lives in losses so held-out evaluation needs no sft import


def sft_step(graphdef, tx: optax.GradientTransformation, trainable, frozen, opt_state, step, batch, *,
             loss_window: int | None = None):
    """One micro-step: gradients of the masked loss w.r.t. the trainable state, an optimizer update (a
    no-op accumulation until the boundary: `optim.token_mean_accumulation`), and a skipped update when the loss or
    the gradient norm is not finite, or when a target lies before the `loss_window` (the pipeline's
    max_target_length skips such examples, so one here is a bug upstream: the metric `targets_outside_window`,
    global like every metric, lets each process's run loop stop on it)."""
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable, frozen, graphdef, batch, loss_window)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    apply = finite
    if loss_window is not None and loss_window < batch["loss_mask"].shape[1] - 1:
        aux["targets_outside_window"] = jnp.sum(batch["loss_mask"][:, 1:-loss_window])
        apply = finite & (aux["targets_outside_window"] == 0)
    grads = jax.tree.map(lambda g: jnp.where(apply, g, jnp.zeros_like(g)), grads)
    # accumulation weighs each micro-step by its target tokens (`optim.token_mean_accumulation`)
    extra = {"tokens": aux["target_tokens"]} if optim.uses_token_counts(tx) else {}
    updates, new_opt = tx.update(grads, opt_state, trainable, **extra)
    new_trainable = optax.apply_updates(trainable, updates)
    trainable = tree_where(apply, new_trainable, trainable)
    opt_state = tree_where(apply, new_opt, opt_state)
    step = step + apply.astype(jnp.int32)
    # tokens: of the global batch (every process's rows), so throughput needs no host-side reduction.
    metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite, "updates": optim.update_count(opt_state, step),
               "tokens": jnp.sum(batch["attention_mask"]), **aux}
    return trainable, opt_state, step, metrics


def jit_sft_step(state: TrainState, tx, shardings=None, *, loss_window: int | None = None) -> Callable:
    """The step jitted once: graphdef and optimizer closed over, state donated, outputs keep shardings."""
    fn = functools.partial(sft_step, state.graphdef, tx, loss_window=loss_window)
    if shardings is None:
        return jax.jit(fn, donate_argnums=(0, 2))
    fn = S.traced_on(S.mesh_of(shardings[0]), fn)  # activations pinned on the state's mesh
    return jax.jit(fn, donate_argnums=(0, 2), out_shardings=step_out_shardings(state, shardings[0]))


# ----------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------

def loss_window_error(host: dict, window: int, micro: int, n: int) -> ValueError:
    """The run's stop when a step saw `n` targets before its loss window (its update was skipped): the pipeline skips
    judgements longer than the window, so training on such a batch would drop part of one without a word. Names
    the examples among this process's rows."""
    rows = np.nonzero(np.asarray(host["loss_mask"])[:, 1:-window].any(1))[0]
    examples = np.asarray(host["example_index"])[rows].tolist()
    return ValueError(f"micro-step {micro}: {n} target tokens lie before the last {window} positions "
                      f"(data.pipeline.max_target_length); this process's examples among them: {examples}")


def schedule(cfg) -> Callable[[int, Any], run_lib.Schedule]:
    """SFT's length in micro-steps: `run.max_steps` optimizer updates, else `run.num_epochs` over the records."""
    accum = cfg.optim.grad_accum_steps

    def length(n_records: int, pcfg) -> run_lib.Schedule:
        per_epoch = max(n_records // pcfg.batch_size, 1)
        total = cfg.run.max_steps * accum if cfg.run.max_steps else int(math.ceil(cfg.run.num_epochs * per_epoch))
        return run_lib.Schedule(total, max(total // accum, 1))
    return length


def train(cfg, *, progress: bool = True, stop_after: int | None = None) -> dict:
    """Runs SFT as configured (an `SFTConfig`) on the shared run skeleton (`training.run`); returns final metrics,
    state and tokenizer.

    `stop_after` behaves like a preemption after that many micro-steps (save, return): resume tests and
    time-sliced schedulers use it."""
    run = run_lib.setup(cfg, mode="sft", schedule=schedule(cfg), progress=progress,
                        start_of=lambda meta: int(meta["micro_step"]))
    pcfg, thinker_cfg, total = run.pcfg, run.thinker_cfg, run.schedule.total
    # Packed rows hold targets mid-row, so the loss window (the last max_target_length positions) is off with pack.
    loss_window = None if pcfg.pack else pcfg.max_target_length
    step_fn = jit_sft_step(run.state, run.tx, run.shardings, loss_window=loss_window)
    guard = NonFiniteGuard(cfg.run.max_consecutive_nonfinite)
    peak = peak_flops_per_device()
    lr_fn = run.lr_fn
    window_losses: list[float] = []
    throughput = Throughput(lambda: run.compiles.count if run.compiles is not None else 0)
    last: dict = {}
    pending = []  # the previous step's (micro, host, metrics): read one step late

    def record(micro_p, host_p, m_p, dispatched_next: bool):
        """Host-side bookkeeping of a finished step. Called one step late, so reading its metrics never
        stalls the device: step n+1 is already dispatched when step n's values are fetched."""
        nonlocal last
        guard.update(bool(m_p["finite"]), micro_p, host_p)
        if int(m_p.get("targets_outside_window", 0)):
            raise loss_window_error(host_p, loss_window, micro_p, int(m_p["targets_outside_window"]))
        window_losses.append(float(m_p["loss"]))
        # global metrics are replicated: every process can read them
        throughput.step(int(m_p["tokens"]), dispatched_next=dispatched_next)
        if micro_p % cfg.run.log_every == 0 or micro_p == total:
            tps = throughput.rate()  # None: every step of the window compiled (or ended the run)
            last = {"train/loss": float(np.mean(window_losses)), "train/grad_norm": float(m_p["grad_norm"]),
                    "train/lr": optim.applied_learning_rate(lr_fn, m_p["updates"]),
                    "train/skipped_nonfinite": guard.total, **run.compiles.metrics(), **data_counts(run.iterator)}
            if tps is not None:
                last["train/tokens_per_s"] = tps
                if peak:
                    fpt = flops_per_token(thinker_cfg, int(np.shape(host_p["input_ids"])[1]),
                                          full_finetune=cfg.model.full_finetune, loss_window=loss_window,
                                          attended=attention_span(host_p))
                    last["train/mfu"] = fpt * tps / (peak * jax.device_count())
            run.writer.write(micro_p, last)
            if progress and is_main():
                rate = f"{tps:.0f} tok/s" if tps is not None else "tok/s n/a (compiling or last step)"
                print(f"step {micro_p}/{total} loss {last['train/loss']:.4f} lr {last['train/lr']:.2e} {rate}",
                      flush=True)
            window_losses.clear()

    def step(micro, host, batch):
        s = run.state
        trainable, opt_state, count, m = step_fn(s.trainable, s.frozen, s.opt_state, s.step, batch)
        run.state = TrainState(s.graphdef, trainable, s.frozen, opt_state, count)
        drain(dispatched_next=True)
        pending.append((micro, host, m))

    def drain(dispatched_next: bool):
        while pending:
            record(*pending.pop(), dispatched_next)

    micro = run_lib.loop(run, step, save_meta=lambda n: {"micro_step": n}, stop_after=stop_after,
                         flush=lambda: drain(dispatched_next=False))
    return {"micro_steps": micro, "preempted": micro < total, "metrics": last, "eval": run.last_eval,
            "state": run.state, "tokenizer": run.tok, "thinker_config": thinker_cfg}
