"""What the SFT and GRPO loops share around their steps, so the two trainers cannot drift apart.

  Preemption      SIGTERM/SIGINT -> finish the step, save, exit 0; agreed by every process at each step boundary
  NonFiniteGuard  skipped non-finite updates counted; abort after too many in a row
  RunCheckpoints  the checkpoint policy: trainable (LoRA-only for LoRA runs) + optimizer + step + data-iterator
                  positions, the frozen base only with `run.save_frozen`; resume restores onto the run's shardings
  PeriodicEval    held-out evaluation every `run.eval_every` steps and at the end, logged with the train metrics
  data_counts     the pipeline's records read and skipped (by reason), logged with the train metrics
"""

from __future__ import annotations

import logging
import os
import signal

import jax
import numpy as np

from omnirrm_jax.checkpoint.manager import CheckpointManager, abstract_like
from omnirrm_jax.data.pipeline import skip_counts
from omnirrm_jax.parallel.distributed import any_process
from omnirrm_jax.training.evaluation import make_held_out_eval
from omnirrm_jax.training.state import TrainState

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------
# Stopping
# ----------------------------------------------------------------------------------------------------

class Preemption:
    """SIGTERM/SIGINT set a flag; the loop finishes the current step, saves and exits 0.

    Several processes must stop together: a scheduler may signal one host only, or all of them at different
    moments, and a process that saves and leaves alone hangs the others in their next collective (the checkpoint,
    written by every process, would never complete). So `should_stop` agrees at each step boundary: when any
    process was signalled, all stop after the same step."""

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

    def should_stop(self, step: int, stop_after: int | None = None) -> bool:
        """Whether every process stops after `step` (all processes must call it at every step).

        `stop_after` (tests, time-sliced schedulers) counts as a request of this process once `step` reaches it."""
        local = self.requested or (stop_after is not None and step >= stop_after)
        agreed = any_process(local)
        if agreed and not local:
            log.warning("another process was asked to stop: stopping after step %d with it", step)
        return agreed

    def restore(self):
        for sig, old in self._old.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


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
        ids = np.asarray(batch.get("example_index", []))
        ids = ids[ids >= 0].tolist() if ids.ndim == 2 else ids.tolist()  # packed: (B, segments), -1 past the last
        log.warning("non-finite loss/gradient at step %d (examples %s): update skipped", step, ids)
        if self.in_a_row >= self.limit:
            raise FloatingPointError(f"{self.in_a_row} consecutive non-finite updates; last at step {step}, "
                                     f"batch examples {ids}")


def data_counts(iterator) -> dict[str, int]:
    """Records this process's pipeline has read and skipped, by reason ("data/skipped_too_long", ...): how much of
    the data a run is not training on (past `max_skip_ratio` the pipeline stops the run itself)."""
    counts = skip_counts(iterator.get_state())
    return {"data/records_seen": int(counts["seen"]),
            **{f"data/skipped_{reason}": int(n) for reason, n in sorted(counts["skipped"].items())}}


# ----------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------

def jsonable_state(state) -> dict:
    """A Grain iterator state (bytes or a dict) as JSON."""
    if isinstance(state, bytes):
        return {"bytes": state.decode("utf-8")}
    return {"state": state}


def from_jsonable(d: dict):
    return d["bytes"].encode("utf-8") if "bytes" in d else d.get("state")


class RunCheckpoints:
    """`run.workdir/checkpoints` with the trainers' policy. By default a checkpoint holds what training changes
    (LoRA runs: the LoRA factors and their optimizer state, a few MB for a 7B base); `run.save_frozen` also
    stores the frozen base, so the checkpoint is self-contained, and a resume then takes the base from it."""

    def __init__(self, run, shardings):
        self.mngr = CheckpointManager(os.path.join(run.workdir, "checkpoints"), keep=run.keep_checkpoints)
        self.save_frozen = run.save_frozen
        self.shardings = shardings  # (trainable, frozen), the restore targets' placement

    def latest_step(self) -> int | None:
        return self.mngr.latest_step()

    def save(self, n: int, state: TrainState, iterator, meta: dict) -> None:
        """Saves step `n` (every process calls it; the iterator state is this process's)."""
        items = {"trainable": state.trainable, "opt_state": state.opt_state, "step": state.step}
        if self.save_frozen:
            items["frozen"] = state.frozen
        self.mngr.save(n, state=items, data_state=jsonable_state(iterator.get_state()), meta=meta, force=True)

    def restore(self, state: TrainState, iterator) -> tuple[TrainState, dict] | None:
        """The newest checkpoint as a TrainState on `state`'s shardings, with `iterator` moved to the position
        stored with it, and the checkpoint's meta; None when there is no checkpoint yet."""
        if self.latest_step() is None:
            return None
        target = {"trainable": abstract_like(state.trainable, self.shardings[0]),
                  "opt_state": abstract_like(state.opt_state), "step": abstract_like(state.step)}
        if self.save_frozen:
            target["frozen"] = abstract_like(state.frozen, self.shardings[1])
        restored, data_state, meta = self.mngr.restore(None, abstract_state=target)
        iterator.set_state(from_jsonable(data_state))
        return TrainState(state.graphdef, restored["trainable"], restored.get("frozen", state.frozen),
                          restored["opt_state"], restored["step"]), meta

    def close(self) -> None:
        self.mngr.close()


# ----------------------------------------------------------------------------------------------------
# Held-out evaluation
# ----------------------------------------------------------------------------------------------------

class PeriodicEval:
    """Runs the held-out evaluation (`evaluation.HeldOutEval`) every `run.eval_every` steps and at the last step
    (steps in the trainer's own unit: SFT micro-steps, GRPO rollout batches), written to the run's metric stream
    at that step. A no-op when `run.eval_every` is 0."""

    def __init__(self, cfg, tok, thinker_cfg, pcfg, mesh, graphdef, writer, *, progress: bool):
        self.every = cfg.run.eval_every
        self.evaluator = make_held_out_eval(cfg, tok, thinker_cfg, pcfg, mesh, graphdef)
        self.writer, self.progress, self.last = writer, progress, {}

    def __call__(self, step: int, total: int, trainable, frozen) -> dict:
        """Evaluates when `step` is due; returns the latest evaluation's metrics ({} before the first)."""
        if self.evaluator is None or (step % self.every and step != total):
            return self.last
        self.last = self.evaluator(trainable, frozen)
        self.writer.write(step, self.last)
        if self.progress and jax.process_index() == 0:
            print(f"eval {step}/{total} " + " ".join(f"{k[5:]} {v:.4g}" for k, v in self.last.items()), flush=True)
        return self.last
