"""Held-out evaluation of a demo judge: pairwise accuracy per modality from greedy judgements, and one example
judgement per modality for the report."""

from __future__ import annotations

import os

import numpy as np

from omnirrm_jax.demo.config import DemoConfig
from omnirrm_jax.demo.data import pipeline_config


def _eval_paths(shards: str) -> list[str]:
    return sorted(os.path.join(shards, f) for f in os.listdir(shards) if f.startswith("eval-"))


def evaluate(model, tok, thinker_cfg, shards: str, cfg: DemoConfig, *, constrained: bool = False) -> dict:
    """`eval.judge.pairwise_accuracy` of `model` on the `eval-` shards: per modality accuracy, valid JSON, reward."""
    from omnirrm_jax.data import pipeline
    from omnirrm_jax.eval.judge import pairwise_accuracy

    pcfg = pipeline_config("grpo", 64, num_epochs=1, drop_remainder=False, shuffle_seed=None)
    batches = pipeline.make_dataset(_eval_paths(shards), tok, thinker_cfg, pcfg)
    return pairwise_accuracy(model, tok, batches, max_new_tokens=cfg.max_new_tokens, constrained=constrained)


def one_judgement_per_modality(model, tok, thinker_cfg, shards: str, cfg: DemoConfig) -> dict:
    """{modality: the text of the first greedy judgement of a held-out prompt of that modality}."""
    from omnirrm_jax.data import pipeline
    from omnirrm_jax.eval.judge import MODALITIES, judge_batch

    pcfg = pipeline_config("grpo", 8, num_epochs=1, drop_remainder=False, shuffle_seed=None)
    seen = {}
    for batch in pipeline.make_dataset(_eval_paths(shards), tok, thinker_cfg, pcfg):
        judged = judge_batch(model, tok, batch, max_new_tokens=cfg.max_new_tokens)
        for j, mod, v in zip(judged, np.asarray(batch["modality"]), np.asarray(batch["valid"])):
            name = MODALITIES[int(mod)]
            if v and name not in seen:
                seen[name] = j["text"]
        if len(seen) == 4:
            break
    return seen
