"""Supervised fine-tuning: masked next-token cross-entropy on the assistant judgement.

One linear trainer in the big_vision order:
  mesh -> data -> abstract model -> shardings -> sharded init -> jitted step (donation) -> resume ->
  evals -> loop.
Resume precedence: the newest finished checkpoint in `run.workdir/checkpoints` wins; without one the run
starts from `model.hf_path` (+ `model.lora_path`) or a fresh preset; the data iterator resumes from the
state stored with the checkpoint, so the next batch is the one the interrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from omnirrm_jax.data import shards
from omnirrm_jax.models import config as model_config
from omnirrm_jax.models.thinker import MODEL_KEYS, model_inputs  # noqa: F401 - MODEL_KEYS re-exported
from omnirrm_jax.training import losses
from omnirrm_jax.training import sharding as S
from omnirrm_jax.training.state import TrainState, step_out_shardings, tree_where

log = logging.getLogger(__name__)



# ----------------------------------------------------------------------------------------------------
# The step
# ----------------------------------------------------------------------------------------------------

loss_fn = losses.sft_loss  # the SFT loss; lives in losses so held-out evaluation needs no sft import


def sft_step(graphdef, tx: optax.GradientTransformation, trainable, frozen, opt_state, step, batch, *,
             loss_window: int | None = None):
    """One micro-step: gradients of the masked loss w.r.t. the trainable state, an optimizer update (a
    no-op accumulation inside optax.MultiSteps until the boundary), and a skipped update when the loss or
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
    updates, new_opt = tx.update(grads, opt_state, trainable)
    new_trainable = optax.apply_updates(trainable, updates)
    trainable = tree_where(apply, new_trainable, trainable)
    opt_state = tree_where(apply, new_opt, opt_state)
    # tokens: of the global batch (every process's rows), so throughput needs no host-side reduction.
    metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite,
               "tokens": jnp.sum(batch["attention_mask"]), **aux}
    return trainable, opt_state, step + apply.astype(jnp.int32), metrics


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

PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v5 lite": 197e12, "TPU v5p": 459e12,
              "TPU v4": 275e12, "TPU v6 lite": 918e12}


def peak_flops_per_device() -> float | None:
    kind = jax.devices()[0].device_kind
    for name, flops in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return flops
    return None


def load_tokenizer(path: str | None):
    from omnirrm_jax.data import tokenizer as tok_lib

    if path is None:
        raise ValueError("data.tokenizer is required (an HF checkpoint dir or a SentencePiece .model)")
    if path.endswith(".model"):
        return tok_lib.SentencePieceTokenizer.from_file(path)
    return tok_lib.HFTokenizer.from_dir(path)


def resolve_thinker_config(spec, tok) -> model_config.ThinkerConfig:
    """The model config: from the HF checkpoint, or a preset resized to the tokenizer's vocabulary."""
    from omnirrm_jax.data.tokenizer import thinker_token_ids
    from omnirrm_jax.models import params as P

    runtime = dict(dtype=spec.dtype, param_dtype=spec.param_dtype, attention_backend=spec.attention_backend,
                   remat=spec.remat)
    if spec.hf_path:
        return P.read_config(spec.hf_path, **runtime)
    cfg = model_config.PRESETS[spec.preset](**runtime)
    text = dataclasses.replace(cfg.text, vocab_size=max(cfg.text.vocab_size, tok.vocab_size)
                               if spec.preset not in ("tiny", "demo") else tok.vocab_size)
    return dataclasses.replace(cfg, text=text, **thinker_token_ids(tok))


def loss_window_error(host: dict, window: int, micro: int, n: int) -> ValueError:
    """The run's stop when a step saw `n` targets before its loss window (its update was skipped): the pipeline skips
    judgements longer than the window, so training on such a batch would drop part of one without a word. Names
    the examples among this process's rows."""
    rows = np.nonzero(np.asarray(host["loss_mask"])[:, 1:-window].any(1))[0]
    examples = np.asarray(host["example_index"])[rows].tolist()
    return ValueError(f"micro-step {micro}: {n} target tokens lie before the last {window} positions "
                      f"(data.pipeline.max_target_length); this process's examples among them: {examples}")


def train(cfg, *, progress: bool = True, stop_after: int | None = None) -> dict:
    """Runs SFT as configured (an `SFTConfig`); returns final metrics, state and tokenizer.

    `stop_after` behaves like a preemption after that many micro-steps (save, return): resume tests and
    time-sliced schedulers use it."""
    from omnirrm_jax.data import pipeline
    from omnirrm_jax.training import config as config_lib
    from omnirrm_jax.training import optim
    from omnirrm_jax.training.loop import NonFiniteGuard, PeriodicEval, Preemption, RunCheckpoints, data_counts
    from omnirrm_jax.training.metrics import CompileCounter, MetricWriter, flops_per_token
    from omnirrm_jax.training.state import create_run_state

    run = cfg.run
    os.makedirs(run.workdir, exist_ok=True)
    # ---- mesh -------------------------------------------------------------------------------------
    mesh = S.make_mesh(cfg.mesh)
    log.info("mesh %s", S.describe(mesh))
    # ---- data -------------------------------------------------------------------------------------
    tok = load_tokenizer(cfg.data.tokenizer)
    thinker_cfg = resolve_thinker_config(cfg.model, tok)
    pcfg = pipeline.PipelineConfig(**{**cfg.data.pipeline, "mode": "sft"})
    train_paths = shards.expand_paths(cfg.data.train)
    n_records = shards.count_records(train_paths)
    micro_per_epoch = max(n_records // pcfg.batch_size, 1)
    total_micro = run.max_steps * cfg.optim.grad_accum_steps if run.max_steps else \
        int(math.ceil(run.num_epochs * micro_per_epoch))
    total_updates = max(total_micro // cfg.optim.grad_accum_steps, 1)
    dataset = pipeline.make_dataset(train_paths, tok, thinker_cfg,
                                    dataclasses.replace(pcfg, num_epochs=None))
    # ---- model, shardings, jitted init and step ---------------------------------------------------
    tx = optim.make_optimizer(cfg.optim, total_updates)
    state, shardings = create_run_state(cfg.model, thinker_cfg, tx, mesh, run.seed)
    step_fn = jit_sft_step(state, tx, shardings, loss_window=pcfg.max_target_length)
    writer = MetricWriter(run.workdir)
    evaluate = PeriodicEval(cfg, tok, thinker_cfg, pcfg, mesh, state.graphdef, writer, progress=progress)
    # ---- resume -----------------------------------------------------------------------------------
    ckpt = RunCheckpoints(run, shardings)
    iterator = iter(dataset)
    micro = 0
    resumed = ckpt.restore(state, iterator)
    if resumed is not None:
        state, meta = resumed
        micro = int(meta["micro_step"])
        log.info("resumed from micro-step %d", micro)
    trainable, opt_state, step = state.trainable, state.opt_state, state.step
    meta_base = {"config": config_lib.to_dict(cfg), "thinker": model_config.to_hf_dict(thinker_cfg)}
    # ---- loop -------------------------------------------------------------------------------------
    guard, preempt = NonFiniteGuard(run.max_consecutive_nonfinite), Preemption()
    compiles = CompileCounter()  # logged: flat after each sequence bucket's first step
    peak = peak_flops_per_device()
    lr_fn = optim.learning_rate_schedule(cfg.optim, total_updates)
    window = {"loss": [], "tokens": 0, "t": time.perf_counter()}
    last, last_eval = {}, {}

    def save(micro_now):
        ckpt.save(micro_now, TrainState(state.graphdef, trainable, state.frozen, opt_state, step), iterator,
                  {**meta_base, "micro_step": micro_now})

    def record(micro_p, host_p, m_p, step_p):
        """Host-side bookkeeping of a finished step. Called one step late, so reading its metrics never
        stalls the device: step n+1 is already dispatched when step n's values are fetched."""
        nonlocal window, last
        guard.update(bool(m_p["finite"]), micro_p, host_p)
        if int(m_p.get("targets_outside_window", 0)):
            raise loss_window_error(host_p, pcfg.max_target_length, micro_p, int(m_p["targets_outside_window"]))
        window["loss"].append(float(m_p["loss"]))
        window["tokens"] += int(m_p["tokens"])  # global metrics are replicated: every process can read them
        if micro_p % run.log_every == 0 or micro_p == total_micro:
            tps = window["tokens"] / (time.perf_counter() - window["t"])
            last = {"train/loss": float(np.mean(window["loss"])), "train/grad_norm": float(m_p["grad_norm"]),
                    "train/lr": float(lr_fn(int(step_p))), "train/tokens_per_s": tps,
                    "train/skipped_nonfinite": guard.total, "compiles": compiles.count, **data_counts(iterator)}
            if peak:
                fpt = flops_per_token(thinker_cfg, int(np.shape(host_p["input_ids"])[1]),
                                      full_finetune=cfg.model.full_finetune, loss_window=pcfg.max_target_length)
                last["train/mfu"] = fpt * tps / (peak * jax.device_count())
            writer.write(micro_p, last)
            if progress and jax.process_index() == 0:
                print(f"step {micro_p}/{total_micro} loss {last['train/loss']:.4f} "
                      f"lr {last['train/lr']:.2e} {tps:.0f} tok/s", flush=True)
            window = {"loss": [], "tokens": 0, "t": time.perf_counter()}

    pending = None
    try:
        while micro < total_micro:
            host = next(iterator)
            batch = pipeline.to_global_arrays(host, mesh, tok.special_ids["pad"])
            trainable, opt_state, step, m = step_fn(trainable, state.frozen, opt_state, step, batch)
            micro += 1
            if pending is not None:
                record(*pending)
            pending = (micro, host, m, step)
            last_eval = evaluate(micro, total_micro, trainable, state.frozen)
            stop = preempt.should_stop(micro, stop_after)
            if micro % run.save_every == 0 or stop:
                save(micro)
            if stop:
                break
        if pending is not None:
            record(*pending)
        if ckpt.latest_step() != micro:
            save(micro)
    finally:
        ckpt.close()
        writer.close()
        preempt.restore()
        compiles.close()
    final_state = TrainState(state.graphdef, trainable, state.frozen, opt_state, step)
    return {"micro_steps": micro, "preempted": micro < total_micro, "metrics": last, "eval": last_eval,
            "state": final_state,
            "tokenizer": tok, "thinker_config": thinker_cfg}
