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
import signal
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from omnirrm_jax.models import config as model_config
from omnirrm_jax.training import losses
from omnirrm_jax.training.state import TrainState, tree_where

log = logging.getLogger(__name__)

MODEL_KEYS = ("input_ids", "attention_mask", "position_ids", "rope_deltas", "pixel_values", "image_aux",
              "pixel_values_videos", "video_aux", "audio_chunks", "audio_aux")


def model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in MODEL_KEYS if k in batch}


# ----------------------------------------------------------------------------------------------------
# The step
# ----------------------------------------------------------------------------------------------------

def loss_fn(trainable, frozen, graphdef, batch) -> tuple[jax.Array, dict]:
    model = nnx.merge(graphdef, trainable, frozen)
    hidden = model.forward(model_inputs(batch), return_hidden=True)
    loss, n_tokens = losses.masked_cross_entropy(hidden, batch["input_ids"], batch["loss_mask"], model.logits)
    return loss, {"target_tokens": n_tokens}


def sft_step(graphdef, tx: optax.GradientTransformation, trainable, frozen, opt_state, step, batch):
    """One micro-step: gradients of the masked loss w.r.t. the trainable state, an optimizer update (a
    no-op accumulation inside optax.MultiSteps until the boundary), and a skipped update when the loss or
    the gradient norm is not finite."""
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable, frozen, graphdef, batch)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    grads = jax.tree.map(lambda g: jnp.where(finite, g, jnp.zeros_like(g)), grads)
    updates, new_opt = tx.update(grads, opt_state, trainable)
    new_trainable = optax.apply_updates(trainable, updates)
    trainable = tree_where(finite, new_trainable, trainable)
    opt_state = tree_where(finite, new_opt, opt_state)
    metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite, **aux}
    return trainable, opt_state, step + finite.astype(jnp.int32), metrics


def jit_sft_step(state: TrainState, tx, shardings=None) -> Callable:
    """The step jitted once: graphdef and optimizer closed over, state donated, outputs keep shardings."""
    fn = functools.partial(sft_step, state.graphdef, tx)
    if shardings is None:
        return jax.jit(fn, donate_argnums=(0, 2))
    sh_trainable, sh_frozen = shardings
    return jax.jit(fn, donate_argnums=(0, 2), out_shardings=(sh_trainable, None, None, None))


def eval_loss_step(graphdef, trainable, frozen, batch):
    loss, aux = loss_fn(trainable, frozen, graphdef, batch)
    return loss * aux["target_tokens"], aux["target_tokens"]


# ----------------------------------------------------------------------------------------------------
# Non-finite guard and preemption
# ----------------------------------------------------------------------------------------------------

class NonFiniteGuard:
    """Counts skipped updates; aborts after `limit` in a row, naming the step and the batch's examples."""

    def __init__(self, limit: int):
        self.limit, self.in_a_row, self.total = limit, 0, 0

    def update(self, finite: bool, step: int, batch: dict) -> None:
        if finite:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        self.total += 1
        ids = np.asarray(batch.get("example_index", [])).tolist()
        log.warning("non-finite loss/gradient at step %d (examples %s): update skipped", step, ids)
        if self.in_a_row >= self.limit:
            raise FloatingPointError(f"{self.in_a_row} consecutive non-finite updates; last at step {step}, "
                                     f"batch examples {ids}")


class Preemption:
    """SIGTERM/SIGINT set a flag; the loop finishes the current step, saves and exits 0."""

    def __init__(self):
        self.requested = False
        self._old = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass

    def _handler(self, signum, frame):
        log.warning("signal %d: finishing the step, saving, exiting", signum)
        self.requested = True

    def restore(self):
        for sig, old in self._old.items():
            signal.signal(sig, old)
