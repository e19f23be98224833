"""The host side of a GRPO rollout: the sampling settings, completions decoded and scored with the rubric rewards
against the gold labels, group-relative advantages, the rollout's metrics, and the scored rollout put back on the
mesh for the update. Pure numpy and Python but for the transfers in and out.
"""

from __future__ import annotations

import jax
import numpy as np

from omnirrm_jax.decoding.sampler import SamplingConfig
from omnirrm_jax.eval.judge import decode_texts
from omnirrm_jax.rubric.parse import parse_judgement
from omnirrm_jax.rubric.rewards import reward_components
from omnirrm_jax.training import grpo_loss
from omnirrm_jax.rubric.vocab import VERDICTS as VERDICT_NAMES  # gold codes index it (vocab.VERDICT_CODES)
from omnirrm_jax.training.grpo_config import GRPOSpec
from omnirrm_jax.parallel.distributed import to_host  # noqa: F401  (grpo.py imports it from here)
from omnirrm_jax.parallel.sharding import batch_sharding


def sampling_config(spec: GRPOSpec, tok) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=spec.max_completion_length, temperature=spec.temperature,
                          top_p=spec.top_p, top_k=spec.top_k, num_samples=spec.num_generations,
                          stop_token_ids=(tok.special_ids["im_end"],), pad_token_id=tok.special_ids["pad"],
                          shared_prefix=spec.shared_prefix, shared_prefix_kernel=spec.shared_prefix_kernel,
                          fold_lora=spec.fold_lora)


def score_rollout(tok, tokens_BGN: np.ndarray, lengths_BG: np.ndarray, host_batch: dict, spec: GRPOSpec) -> dict:
    """Decodes the completions and scores them: rewards (B, G) per component and total, advantages,
    parse success and verdict correctness against gold (`host_batch`: gold_better/gold_score_A/gold_score_B
    and optionally valid, one entry per prompt)."""
    B, G, _ = tokens_BGN.shape
    texts = decode_texts(tok, tokens_BGN, lengths_BG, (tok.special_ids["im_end"],))
    flat = [t for row in texts for t in row]
    gold_b = np.repeat(np.asarray(host_batch["gold_better"]), G)
    gold_a = np.repeat(np.asarray(host_batch["gold_score_A"]), G)
    gold_s = np.repeat(np.asarray(host_batch["gold_score_B"]), G)
    comps = reward_components(flat, better=[VERDICT_NAMES[int(c)] for c in gold_b],
                              score_A=[int(a) for a in gold_a], score_B=[int(s) for s in gold_s],
                              weights=spec.reward_weights, mode=spec.reward_mode)
    parsed = [parse_judgement(t) for t in flat]
    valid_B = np.asarray(host_batch.get("valid", np.ones(B, bool)), bool)
    out = {k: np.asarray(v, np.float64).reshape(B, G) for k, v in comps.items()}
    out["parsed"] = np.asarray([p.ok for p in parsed]).reshape(B, G)
    out["correct"] = np.asarray([p.ok and VERDICT_NAMES.index(p.better) == int(g) if p.ok and p.better in
                                 VERDICT_NAMES else False for p, g in zip(parsed, gold_b)]).reshape(B, G)
    out["advantages"] = grpo_loss.group_advantages(out["total"], spec.scale_rewards, valid_B)
    out["valid"] = valid_B
    out["texts"] = texts
    return out


def rollout_metrics(scored: dict, lengths_BG: np.ndarray) -> dict:
    v = scored["valid"]
    out = {}
    for name in ("format", "content", "rubric", "total"):
        r = scored[name][v]
        out[f"reward/{name}_mean"] = float(r.mean()) if r.size else 0.0
        out[f"reward/{name}_std"] = float(r.std()) if r.size else 0.0
    out["rollout/parse_failure_rate"] = float(1.0 - scored["parsed"][v].mean()) if v.any() else 0.0
    out["rollout/verdict_accuracy"] = float(scored["correct"][v].mean()) if v.any() else 0.0
    out["rollout/completion_length"] = float(lengths_BG[v].mean()) if v.any() else 0.0
    return out


def _put(x: np.ndarray, sharding) -> jax.Array:
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def completion_arrays(result_tokens, result_lengths, mesh) -> dict:
    """The rollout's completions and their mask, (B * G, N) global arrays on `mesh` (rows sharded over the data
    axes): what the log-prob passes read, known before the rollout is scored."""
    tokens = to_host(result_tokens)
    B, G, N = tokens.shape
    lengths = to_host(result_lengths)
    mask = np.arange(N)[None, None, :] < lengths[..., None]
    arrays = {"completions": tokens.reshape(B * G, N).astype(np.int32),
              "completion_mask": mask.reshape(B * G, N).astype(np.int32)}
    return {k: _put(v, batch_sharding(mesh, v.ndim)) for k, v in arrays.items()}


def build_roll(result_tokens, result_lengths, scored: dict, mesh, completions: dict | None = None) -> dict:
    """The scored rollout as global arrays on `mesh` (rows sharded over the data axes); `completions`: those of
    `completion_arrays`, when already placed."""
    tokens = to_host(result_tokens)
    G = tokens.shape[1]
    arrays = {"advantages": scored["advantages"].reshape(-1).astype(np.float32),
              "row_valid": np.repeat(scored["valid"], G).astype(np.int32)}
    placed = {k: _put(v, batch_sharding(mesh, v.ndim)) for k, v in arrays.items()}
    return {**(completions or completion_arrays(tokens, result_lengths, mesh)), **placed}
