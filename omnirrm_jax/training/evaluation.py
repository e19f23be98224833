"""Held-out evaluation inside a training run: eval loss and pairwise accuracy from greedy judgements.

Why both: the loss says whether the model fits unseen judgements token by token; only the judgements it
actually writes say whether it *decides* right (a model can copy the rubric boilerplate perfectly and still
pick the wrong answer). The same `data.eval` shards serve both: records with an assistant judgement give the
loss (SFT mode), records with gold labels give the accuracy (GRPO mode, prompt only). A shard may hold one
kind or both, so each side skips the other kind's records; an eval set that yields neither is an error.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import jax
from flax import nnx

from omnirrm_jax.data import pipeline
from omnirrm_jax.data.shards import expand_paths
from omnirrm_jax.eval.judge import pairwise_accuracy
from omnirrm_jax.parallel.distributed import any_process
from omnirrm_jax.training import losses
from omnirrm_jax.parallel import sharding as S

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    paths: tuple[str, ...]
    max_batches: int | None  # None: the whole eval set
    max_new_tokens: int


def _loss_sums(graphdef, trainable, frozen, batch, window=None):
    loss, aux = losses.sft_loss(trainable, frozen, graphdef, batch, window)
    return loss * aux["target_tokens"], aux["target_tokens"]


class HeldOutEval:
    """Built once per run (one jitted loss program per batch shape); called with the current state."""

    def __init__(self, spec: EvalSpec, tok, thinker_cfg, pcfg, mesh, graphdef):
        self.spec, self.tok, self.thinker_cfg, self.mesh, self.graphdef = spec, tok, thinker_cfg, mesh, graphdef
        # Finite, unshuffled, every row kept, and skips allowed: the other kind's records are skipped on purpose.
        # Unpacked: GRPO-mode batches (pairwise accuracy) are never packed, and the eval loss is the same either way.
        self.pcfg = dataclasses.replace(pcfg, num_epochs=1, shuffle_seed=None, drop_remainder=False,
                                        max_skip_ratio=1.0, worker_count=0, pack=False)
        self._loss = jax.jit(S.traced_on(mesh, functools.partial(_loss_sums, graphdef,
                                                                   window=pcfg.max_target_length)))

    def _batches(self, mode: str):
        """Global batches on the mesh. Every process yields the same number: the eval set is finite and each
        process reads its own share (skipping the other kind's records), so one may run out first; it then feeds
        all-padding batches until every process has (each batch's step is collective)."""
        cfg = dataclasses.replace(self.pcfg, mode=mode)
        local = iter(pipeline.make_dataset(list(self.spec.paths), self.tok, self.thinker_cfg, cfg))
        pad_id = self.tok.special_ids["pad"]
        for _ in itertools.count() if self.spec.max_batches is None else range(self.spec.max_batches):
            host = next(local, None)
            if not any_process(host is not None):
                return
            if host is None:
                host = pipeline.padding_batch(cfg, self.thinker_cfg, pad_id)
            yield pipeline.to_global_arrays(host, self.mesh, pad_id)

    def __call__(self, trainable, frozen) -> dict[str, float]:
        """Metrics under "eval/": loss and target_tokens (if the set has judgements), accuracy and valid_json
        overall and per modality (if it has gold labels), examples counted."""
        out: dict[str, float] = {}
        total, tokens = 0.0, 0.0
        for batch in self._batches("sft"):
            s, n = self._loss(trainable, frozen, batch)
            total, tokens = total + float(s), tokens + float(n)
        if tokens:
            out["eval/loss"], out["eval/target_tokens"] = total / tokens, tokens
        model = nnx.merge(self.graphdef, trainable, frozen)
        with S.activations_on(self.mesh):  # as the training steps: one sharding for the attention inputs
            per_mod = pairwise_accuracy(model, self.tok, self._batches("grpo"),
                                        max_new_tokens=self.spec.max_new_tokens)
        n_all = sum(r["n"] for r in per_mod.values())
        if n_all:
            out["eval/accuracy"] = sum(r["accuracy"] * r["n"] for r in per_mod.values()) / n_all
            out["eval/valid_json"] = sum(r["valid_json"] * r["n"] for r in per_mod.values()) / n_all
            out["eval/examples"] = float(n_all)
            for m, r in per_mod.items():
                out[f"eval/accuracy_{m}"] = r["accuracy"]
        if not out:
            raise ValueError(f"data.eval {list(self.spec.paths)} gave no example: its records have neither an "
                             "assistant judgement (eval loss) nor gold labels (pairwise accuracy)")
        return out


def make_held_out_eval(cfg, tok, thinker_cfg, pcfg, mesh, graphdef) -> HeldOutEval | None:
    """The run's evaluator, or None when `run.eval_every` is 0. `data.eval` must be set when it is not."""
    run = cfg.run
    if not run.eval_every:
        return None
    if not cfg.data.eval:
        raise ValueError(f"run.eval_every={run.eval_every} needs data.eval shards (none given)")
    spec = EvalSpec(tuple(expand_paths(cfg.data.eval)), run.eval_batches, run.eval_max_new_tokens)
    return HeldOutEval(spec, tok, thinker_cfg, pcfg, mesh, graphdef)
