"""The run skeleton both trainers share, in big_vision's order:

  preflight -> mesh -> data -> abstract state -> shardings -> sharded init and weight loading -> (trainer: jitted
  step with donation and out-shardings) -> resume -> evaluation -> loop

`setup` builds everything up to the trainer's own programs and resumes from the newest checkpoint; `loop` runs the
steps with what SFT and GRPO share around them (preemption agreed by every process, periodic held-out evaluation,
checkpoints every `run.save_every` steps and at the end). A trainer supplies only its step (SFT: one micro-step;
GRPO: one rollout -> rewards -> update cycle) and its metrics. Steps are counted in the trainer's own unit.

Resume precedence: the newest finished checkpoint in `run.workdir/checkpoints` wins; without one the run starts
from `model.hf_path` (+ `model.lora_path`) or a fresh preset; the data iterator resumes from the state stored with
the checkpoint, so the next batch is the one the interrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from omnirrm_jax import compile_cache
from omnirrm_jax.data import pipeline, shards
from omnirrm_jax.data import tokenizer as tok_lib
from omnirrm_jax.models import config as model_config
from omnirrm_jax.models import params as P
from omnirrm_jax.training import config as config_lib
from omnirrm_jax.training import optim, preflight
from omnirrm_jax.parallel import sharding as S
from omnirrm_jax.training.loop import PeriodicEval, Preemption, RunCheckpoints
from omnirrm_jax.training.metrics import CompileCounter, MetricWriter
from omnirrm_jax.training.state import TrainState, create_run_state

log = logging.getLogger(__name__)


def resolve_thinker_config(spec, tok) -> model_config.ThinkerConfig:
    """The model config: from the HF checkpoint, or a preset resized to the tokenizer's vocabulary."""
    runtime = dict(dtype=spec.dtype, param_dtype=spec.param_dtype, attention_backend=spec.attention_backend,
                   remat=spec.remat, scan_layers=spec.scan_layers)
    if spec.hf_path:
        return P.read_config(spec.hf_path, **runtime)
    cfg = model_config.PRESETS[spec.preset](**runtime)
    text = dataclasses.replace(cfg.text, vocab_size=max(cfg.text.vocab_size, tok.vocab_size)
                               if spec.preset not in ("tiny", "demo") else tok.vocab_size)
    return dataclasses.replace(cfg, text=text, **tok_lib.thinker_token_ids(tok))


@dataclasses.dataclass
class Schedule:
    """How long a run is: `total` steps in the trainer's unit, `updates` optimizer updates (the LR schedule's
    length)."""

    total: int
    updates: int


@dataclasses.dataclass
class Run:
    """One training run's parts. `state` is the live train state: the trainer's step replaces it."""

    cfg: Any
    mesh: Mesh
    tok: Any
    thinker_cfg: model_config.ThinkerConfig
    pcfg: pipeline.PipelineConfig
    schedule: Schedule
    tx: optax.GradientTransformation
    state: TrainState
    shardings: tuple  # (trainable, frozen) state shardings: jit and restore targets
    writer: MetricWriter
    evaluate: PeriodicEval
    ckpt: RunCheckpoints
    iterator: Any
    start: int  # steps already done (from the resumed checkpoint)
    resumed_meta: dict | None
    meta_base: dict
    initial_trainable: Any = None  # with `keep_initial`: the trainable state as the run started, before any resume
    compiles: CompileCounter | None = None  # counts from the loop's start (the trainer's own setup not included)
    last_eval: dict = dataclasses.field(default_factory=dict)

    @property
    def lr_fn(self) -> Callable[[int], Any]:
        return optim.learning_rate_schedule(self.cfg.optim, self.schedule.updates)

    def save(self, n: int, meta: dict) -> None:
        self.ckpt.save(n, self.state, self.iterator, {**self.meta_base, **meta})

    def close(self) -> None:
        self.ckpt.close()
        self.writer.close()
        if self.compiles is not None:
            log.info("compiles: %s", self.compiles.summary())
            self.compiles.close()


def setup(cfg, *, mode: str, schedule: Callable[[int, pipeline.PipelineConfig], Schedule], progress: bool,
          meta: dict | None = None, start_of: Callable[[dict], int], keep_initial: bool = False) -> Run:
    """Everything before a trainer's own programs, then resume.

    Args:
      cfg: an `SFTConfig` or `GRPOConfig`.
      mode: the trainer, "sft" or "grpo": the pipeline mode (prompt + judgement; prompt + gold labels), and whose
        checkpoints the workdir may hold.
      schedule: (records in the training set, pipeline config) -> the run's length.
      meta: what the trainer adds to every checkpoint's meta (besides {"trainer": mode}).
      start_of: a resumed checkpoint's meta -> the steps it had done.
      keep_initial: keep a copy of the starting trainable state (`Run.initial_trainable`), taken before a resume
        replaces it (GRPO's KL reference under full fine-tuning is the starting weights, not the resumed ones).
    """
    run = cfg.run
    preflight.check_run(cfg, mode)  # before anything is written
    cache_dir = compile_cache.enable(compile_cache.for_run(run.compile_cache))  # before the first compile
    if cache_dir:
        log.info("persistent compilation cache: %s", cache_dir)
    # ---- mesh -------------------------------------------------------------------------------------
    mesh = S.make_mesh(cfg.mesh)
    pcfg = config_lib.pipeline_config(cfg.data.pipeline, mode)
    preflight.check_batch(pcfg.batch_size, mesh)
    log.info("mesh %s", S.describe(mesh))
    os.makedirs(run.workdir, exist_ok=True)
    # ---- data -------------------------------------------------------------------------------------
    tok = tok_lib.load_tokenizer(cfg.data.tokenizer)
    thinker_cfg = resolve_thinker_config(cfg.model, tok)
    train_paths = shards.expand_paths(cfg.data.train)
    length = schedule(shards.count_records(train_paths), pcfg)
    dataset = pipeline.make_dataset(train_paths, tok, thinker_cfg, dataclasses.replace(pcfg, num_epochs=None))
    # ---- abstract state, shardings, sharded init and weight loading -------------------------------
    accumulation = preflight.accumulation(cfg, mode)  # recorded in every checkpoint's meta, checked on resume
    tx = optim.make_optimizer(cfg.optim, length.updates, token_mean=accumulation == "token_mean")
    state, shardings = create_run_state(cfg.model, thinker_cfg, tx, mesh, run.seed)
    writer = MetricWriter(run.workdir)  # writes on process 0 only
    evaluate = PeriodicEval(cfg, tok, thinker_cfg, pcfg, mesh, state.graphdef, writer, progress=progress)
    # ---- resume -----------------------------------------------------------------------------------
    initial = jax.tree.map(jnp.copy, state.trainable) if keep_initial else None  # a copy: the step donates its input
    ckpt = RunCheckpoints(run, shardings)
    iterator = iter(dataset)
    start, resumed_meta = 0, None
    resumed = ckpt.restore(state, iterator)
    if resumed is not None:
        state, resumed_meta = resumed
        start = start_of(resumed_meta)
        log.info("resumed after step %d", start)
    meta_base = {"config": config_lib.to_dict(cfg), "thinker": model_config.to_hf_dict(thinker_cfg), "trainer": mode,
                 "accumulation": accumulation, **(meta or {})}
    return Run(cfg, mesh, tok, thinker_cfg, pcfg, length, tx, state, shardings, writer, evaluate, ckpt, iterator,
               start, resumed_meta, meta_base, initial)


def loop(run: Run, step: Callable[[int, dict, dict], None], *, save_meta: Callable[[int], dict],
         stop_after: int | None = None, flush: Callable[[], None] | None = None) -> int:
    """Runs steps `run.start + 1 ..` up to `run.schedule.total`; returns the last step done.

    `step(n, host, batch)` runs step n on one pipeline batch (`host`: this process's numpy rows; `batch`: the same
    as global arrays on the mesh) and replaces `run.state`. After each step: held-out evaluation when due, the stop
    every process agrees on (a signal, or `stop_after` steps: a simulated preemption), and a checkpoint every
    `run.save_every` steps or on stopping. `flush` runs after the last step, before the final checkpoint (SFT
    reads its last step's metrics there). Closes the run's writers and checkpoints, also on error."""
    preempt = Preemption()
    run.compiles = CompileCounter()  # logged: flat after each shape's first step
    n, total = run.start, run.schedule.total
    try:
        while n < total:
            host = next(run.iterator)
            batch = pipeline.to_global_arrays(host, run.mesh, run.tok.special_ids["pad"])
            n += 1
            step(n, host, batch)
            run.last_eval = run.evaluate(n, total, run.state.trainable, run.state.frozen)
            stop = preempt.should_stop(n, stop_after)
            if n % run.cfg.run.save_every == 0 or stop:
                run.save(n, save_meta(n))
            if stop:
                break
        if flush is not None:
            flush()
        if run.ckpt.latest_step() != n:
            run.save(n, save_meta(n))
    finally:
        run.close()
        preempt.restore()
    return n
