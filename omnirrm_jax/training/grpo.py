"""GRPO: sample G judgements per prompt, score them with the rubric rewards, update with the clipped
surrogate plus a KL penalty to the reference policy.

One rollout batch, in order (each a separate jitted program with static shapes):
  1. rollout   `decoding.sampler.Decoder.generate`: the B prompts are prefilled once (media towers included) and G
               completions of `max_completion_length` tokens are sampled per prompt (temperature/top-p/top-k).
  2. reference log-probabilities of the completions under the reference policy, queued on the device as soon as
               the completions are on the host: for LoRA runs the same model with its LoRA branches left out
               (`grpo_objective.jit_logprobs(base=True)`; no second model is held); for full fine-tuning a
               frozen copy of the starting weights. Skipped when beta = 0.
  3. rewards   on the host while the reference pass runs: completions decoded and scored by
               `rubric.rewards.reward_components` (the reference plugin's exact values) against the record's gold
               verdict and scores; group-relative advantages (`grpo_loss.group_advantages`).
  4. update    `num_iterations` optimizer micro-steps on the rollout: the policy's log-probabilities come
               from one teacher-forced forward: the prompt (and its media) once per prompt into a KV cache,
               then the G completions over that cache. The importance ratio is taken against the
               policy's own log-probabilities at rollout time (computed by the training forward, so it is
               exactly 1 at the first update, as in TRL). The sampler's own log-probabilities are those of the
               top-k/top-p-filtered distribution it drew from; their token mean is logged as
               `rollout/sampler_logprob_mean`.

This module is the thin trainer: the cycle (`RolloutUpdate`) and its metrics on the shared run skeleton
(`training.run`). The device-side objective is `training.grpo_objective`; the host-side scoring is
`training.rollout`; losses and advantage scalings are registered by name in `training.grpo_loss`.

Resume is exact: the checkpoint holds the trainable state, the optimizer, the step and the data-iterator
state; the sampling key of rollout n (counted from 0) is `fold_in(key(seed), n)`, so rollouts after a resume are the
ones an uninterrupted run would have drawn; under full fine-tuning the KL reference stays the run's starting weights
(`run.setup(keep_initial=True)`), not the resumed ones.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from omnirrm_jax.decoding.constrained import judgement_constraint
from omnirrm_jax.decoding.sampler import Decoder, SamplingConfig, check_constraint
from omnirrm_jax.models.flat_state import FlatState
from omnirrm_jax.models.thinker import model_inputs
from omnirrm_jax.parallel import sharding as S
from omnirrm_jax.parallel.distributed import is_main
from omnirrm_jax.training import optim
from omnirrm_jax.training import run as run_lib
from omnirrm_jax.training.grpo_config import GRPOConfig, GRPOSpec
from omnirrm_jax.training.grpo_objective import jit_grpo_step, jit_logprobs
from omnirrm_jax.training.loop import NonFiniteGuard, data_counts
from omnirrm_jax.training.rollout import (build_roll, completion_arrays, rollout_metrics, sampling_config,
                                         score_rollout, to_host)
from omnirrm_jax.training.state import TrainState

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RolloutUpdate:
    """The jitted programs of a run and one rollout -> rewards -> reference -> update cycle (`__call__`),
    shared by `train` and `omnirrm bench grpo` so the benchmark times exactly what training runs."""

    frozen: FlatState  # the frozen weights flattened once: each program call walks a tuple, not the State
    decoder: Decoder  # the rollout's prefill and decode programs, the graph definition bound into them
    step_fn: Callable
    logprobs_fn: Callable
    ref_logprobs_fn: Callable  # a LoRA run's reference: the model without its branches
    spec: GRPOSpec
    sampling: SamplingConfig
    tok: Any
    mesh: Any
    full_finetune: bool = False
    initial: Any = None  # full fine-tuning: the reference weights
    constraint: Any = None
    _ahead: Any = None  # the first call's futures (log-probs programs, update program); () once waited for

    @classmethod
    def build(cls, state: TrainState, tx, spec: GRPOSpec, shardings, *, tok, mesh, sampling=None,
              full_finetune=False, constraint=None, initial=None) -> "RolloutUpdate":
        """`initial`: full fine-tuning's KL reference (the run's starting weights); by default a copy of `state`'s."""
        if full_finetune and spec.beta != 0 and initial is None:
            initial = jax.tree.map(jnp.copy, state.trainable)
        elif not (full_finetune and spec.beta != 0):
            initial = None
        step_mesh = S.mesh_of(shardings[0]) if shardings else None
        sampling = sampling or sampling_config(spec, tok)
        if constraint is not None:
            vocab = nnx.merge(state.graphdef, state.trainable, state.frozen).config.text.vocab_size
            check_constraint(vocab, sampling, constraint)
        return cls(FlatState.of(state.frozen), Decoder(state.graphdef),
                   jit_grpo_step(state, tx, spec, shardings),
                   jit_logprobs(state.graphdef, spec, step_mesh), jit_logprobs(state.graphdef, spec, step_mesh, True),
                   spec, sampling, tok, mesh, full_finetune, initial, constraint)

    def __call__(self, trainable, opt_state, step, batch: dict, key):
        """Returns (trainable, opt_state, step, record, per-update metrics) for one rollout batch (a GRPO-mode
        pipeline batch as global arrays, with gold labels).

        The log-prob passes are queued on the device as soon as the completions are on the host, and the host scores
        the rollout while they run. So `time/reference_s` spans the rollout's end to the passes' end (the upload of
        the completions and the scoring beside the passes included), `time/rewards_s` is the host's scoring inside
        that span, and rollout + reference + update make the step. With no log-prob pass (beta = 0 and one update
        per rollout) the scoring is on the path instead: rollout + rewards + update make the step."""
        spec, frozen = self.spec, self.frozen
        t0 = time.perf_counter()
        if spec.compile_ahead and self._ahead is None:
            self._ahead = self._start_compiling(trainable, opt_state, step, batch)
        with S.activations_on(self.mesh):  # attention inputs on one sharding (cuDNN under FSDP needs it)
            result = self.decoder.generate((trainable, frozen), model_inputs(batch), self.sampling, key,
                                           constraint=self.constraint)
        tokens, lengths = to_host(result.tokens), to_host(result.lengths)
        t1 = time.perf_counter()
        # gold labels of the global batch, in the global row order of `tokens`; gathered before the log-prob passes
        # are queued: with several processes the gather is a device collective that would wait behind them
        gold = {k: to_host(batch[k]) for k in ("gold_better", "gold_score_A", "gold_score_B", "valid") if k in batch}
        comps = completion_arrays(tokens, lengths, self.mesh)
        _wait(self._ahead, 0)
        logp = self._logprobs(trainable, batch, comps)
        tq = time.perf_counter()
        scored = score_rollout(self.tok, tokens, lengths, gold, spec)
        roll = {**build_roll(tokens, lengths, scored, self.mesh, comps), **logp}
        t2 = time.perf_counter()
        jax.block_until_ready(roll)
        t3 = time.perf_counter()
        _wait(self._ahead, 1)
        updates = []
        for _ in range(spec.num_iterations):
            trainable, opt_state, step, m = self.step_fn(trainable, frozen, opt_state, step, batch, roll)
            updates.append(jax.device_get(m))
        t4 = time.perf_counter()
        self._ahead = ()  # waited for once; later cycles find their programs built
        sampler_lp = to_host(result.logprobs)
        record = {**rollout_metrics(scored, lengths),
                  "rollout/sampler_logprob_mean": float(sampler_lp.sum() / max(int(lengths.sum()), 1)),
                  "time/rollout_s": t1 - t0, "time/rewards_s": t2 - (tq if logp else t1),
                  "time/reference_s": t3 - (t1 if logp else t2), "time/update_s": t4 - t3, "time/step_s": t4 - t0}
        for k in ("loss", "kl", "clip_frac", "clip_frac_low", "clip_frac_high"):
            record[f"train/{k}"] = float(np.mean([m[k] for m in updates]))
        record["train/grad_norm"] = float(updates[-1]["grad_norm"])
        return trainable, opt_state, step, record, updates

    def _logprobs(self, trainable, batch, comps: dict, lower: bool = False) -> dict:
        """Dispatches the log-prob passes a rollout needs (reference when beta != 0, old policy when several updates
        share it) and returns {name: (R, N) log-probs}; with `lower`, compiles them instead and returns their
        outputs' abstract values (`_start_compiling`)."""
        spec, frozen, out = self.spec, self.frozen, {}
        calls = []
        if spec.beta != 0.0:
            if self.full_finetune:
                calls.append(("ref_logp", self.logprobs_fn, self.initial))
            else:  # LoRA: the same weights with every branch left out (`jit_logprobs(base=True)`)
                calls.append(("ref_logp", self.ref_logprobs_fn, trainable))
        if spec.num_iterations > 1:
            calls.append(("old_logp", self.logprobs_fn, trainable))
        for name, fn, weights in calls:
            out[name] = (_abstract_out(fn.lower(weights, frozen, batch, comps).compile()) if lower
                         else fn(weights, frozen, batch, comps))
        return out

    def _start_compiling(self, trainable, opt_state, step, batch) -> tuple:
        """Lowers and compiles (or reads back from the compilation cache) the log-prob and update programs on a
        thread while the first rollout traces, runs and is scored: they need only the shapes of a rollout, which the
        sampling config fixes. Why: a resumed 3B run spent ~4 s of its first step tracing, lowering and loading the
        update after the rollout, with the host otherwise waiting on the device (docs/PERFORMANCE.md). jit reuses
        what `lower(...).compile()` built, so the calls below build nothing again; a failure here is logged and
        the call compiles as it always did."""
        import concurrent.futures
        import threading

        frozen, sampling = self.frozen, self.sampling
        B, G, N = batch["input_ids"].shape[0], sampling.num_samples, sampling.max_new_tokens
        tokens, lengths = np.zeros((B, G, N), np.int32), np.full((B, G), N, np.int32)
        comps = completion_arrays(tokens, lengths, self.mesh)
        roll = build_roll(tokens, lengths, {"advantages": np.zeros((B, G), np.float32), "valid": np.ones(B, bool)},
                          self.mesh, comps)

        def logprobs():  # the signatures `__call__` calls them with
            return self._logprobs(trainable, batch, comps, lower=True)

        def update(logp):
            self.step_fn.lower(trainable, frozen, opt_state, step, batch, {**roll, **logp.result()}).compile()

        first, second = concurrent.futures.Future(), concurrent.futures.Future()

        def work():  # a daemon thread: a run that fails meanwhile exits without waiting for these compiles
            for future, fn in ((first, logprobs), (second, lambda: update(first))):
                try:
                    future.set_result(fn())
                except BaseException as e:  # noqa: BLE001 - handed to the waiting call
                    future.set_exception(e)

        threading.Thread(target=work, name="grpo-compile-ahead", daemon=True).start()
        return first, second


def _abstract_out(compiled):
    """A compiled program's one output as the abstract value (shape, dtype, sharding) a later program takes."""
    info, sharding = compiled.out_info, compiled.output_shardings
    return jax.ShapeDtypeStruct(info.shape, info.dtype, sharding=sharding)


def _wait(ahead, i: int) -> None:
    """Waits for program `i` compiled ahead; a failure is logged once (the update fails with the log-probs)."""
    if not ahead:
        return
    e = ahead[i].exception()
    if e is not None and not (i == 1 and ahead[0].exception() is not None):
        log.warning("compiling the GRPO programs ahead failed (%s: %s); they compile when called",
                    type(e).__name__, e)


def schedule(cfg: GRPOConfig) -> Callable[[int, Any], run_lib.Schedule]:
    """GRPO's length in rollout batches: enough for `run.max_steps` optimizer updates (each rollout gives
    `grpo.num_iterations` micro-steps), else `run.num_epochs` over the records."""
    mu, accum = cfg.grpo.num_iterations, cfg.optim.grad_accum_steps

    def length(n_records: int, pcfg) -> run_lib.Schedule:
        per_epoch = max(n_records // pcfg.batch_size, 1)
        total = (int(math.ceil(cfg.run.max_steps * accum / mu)) if cfg.run.max_steps
                 else int(math.ceil(cfg.run.num_epochs * per_epoch)))
        return run_lib.Schedule(total, max(total * mu // accum, 1))
    return length


def train(cfg: GRPOConfig, *, progress: bool = True, stop_after: int | None = None) -> dict:
    """Runs GRPO as configured on the shared run skeleton (`training.run`); returns final metrics, state and
    tokenizer.

    `stop_after` behaves like a preemption after that many rollout batches (save, return). Checkpoints,
    preemption and held-out evaluation (`run.eval_every`, counted in rollout batches) follow SFT's rules. Resume
    precedence as in SFT: the newest checkpoint in `run.workdir`, else `model.hf_path` (e.g. the SFT model exported
    by `omnirrm export`) or a preset."""
    spec = cfg.grpo
    full_reference = cfg.model.full_finetune and spec.beta != 0
    run = run_lib.setup(cfg, mode="grpo", schedule=schedule(cfg), progress=progress,
                        start_of=lambda meta: int(meta["rollout"]), keep_initial=full_reference)
    total, tok = run.schedule.total, run.tok
    constraint = None
    if spec.constrained:
        constraint = judgement_constraint(tok, run.thinker_cfg.text.vocab_size)
    cycle = RolloutUpdate.build(run.state, run.tx, spec, run.shardings, tok=tok, mesh=run.mesh,
                                full_finetune=cfg.model.full_finetune, constraint=constraint,
                                initial=run.initial_trainable)
    base_key = jax.random.key(cfg.run.seed)
    guard = NonFiniteGuard(cfg.run.max_consecutive_nonfinite)
    lr_fn = run.lr_fn
    history: list[dict] = []

    def step(n, host, batch):
        s = run.state
        trainable, opt_state, count, record, updates = cycle(s.trainable, s.opt_state, s.step, batch,
                                                             jax.random.fold_in(base_key, n - 1))
        run.state = TrainState(s.graphdef, trainable, s.frozen, opt_state, count)
        for m in updates:
            guard.update(bool(m["finite"]), n, host)
        record.update({"train/lr": optim.applied_learning_rate(lr_fn, updates[-1]["updates"]),
                       "train/skipped_nonfinite": guard.total,
                       **run.compiles.metrics()})
        history.append(record)
        if n % cfg.run.log_every == 0 or n == total:
            record.update(data_counts(run.iterator))  # the iterator's state: read when logged, not every rollout
            run.writer.write(n, record)
            if progress and is_main():
                print(f"grpo {n}/{total} reward {record['reward/total_mean']:+.3f} "
                      f"acc {record['rollout/verdict_accuracy']:.2f} kl {record['train/kl']:.4f} "
                      f"len {record['rollout/completion_length']:.0f} "
                      f"({record['time/step_s']:.1f} s: rollout {record['time/rollout_s']:.1f})", flush=True)

    mu = spec.num_iterations
    done = run_lib.loop(run, step, save_meta=lambda n: {"rollout": n, "micro_step": n * mu}, stop_after=stop_after)
    return {"rollouts": done, "preempted": done < total, "history": history, "eval": run.last_eval,
            "state": run.state, "tokenizer": tok, "thinker_config": run.thinker_cfg}
