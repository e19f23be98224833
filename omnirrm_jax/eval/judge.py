"""Judging with a trained thinker: greedy (optionally schema-constrained) judgements, parsed into verdicts
and scored against gold labels per modality.

Used by SFT/GRPO held-out evaluation, the demo and `omnirrm judge`.
"""

from __future__ import annotations

import collections
from typing import Iterable

import jax
import numpy as np

from omnirrm_jax.decoding.sampler import SamplingConfig, generate
from omnirrm_jax.rubric.parse import parse_judgement

MODALITIES = ("text", "image", "video", "audio")
VERDICT_CODES = {"A": 0, "B": 1, "equal": 2}


def decode_texts(tok, tokens_BGN: np.ndarray, lengths_BG: np.ndarray, stop_ids: Iterable[int]) -> list[list[str]]:
    """Generated ids -> strings (stop token and padding removed)."""
    stop = set(int(s) for s in stop_ids)
    out = []
    for b in range(tokens_BGN.shape[0]):
        row = []
        for g in range(tokens_BGN.shape[1]):
            ids = [int(t) for t in tokens_BGN[b, g, :int(lengths_BG[b, g])] if int(t) not in stop]
            row.append(tok.decode(ids, skip_special_tokens=False))
        out.append(row)
    return out


def judge_batch(model, tok, batch: dict, *, max_new_tokens: int, constrained: bool = False,
                rng: jax.Array | None = None) -> list[dict]:
    """Greedy judgements for a prompt batch (GRPO-mode pipeline batch or `prepare_inputs` output)."""
    from omnirrm_jax.training.sft import model_inputs

    stop = (tok.special_ids["im_end"],)
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, greedy=True, stop_token_ids=stop,
                              pad_token_id=tok.special_ids["pad"])
    rng = jax.random.key(0) if rng is None else rng
    inputs = model_inputs(batch)
    if constrained:
        from omnirrm_jax.decoding.constrained import generate_judgements

        result, texts = generate_judgements(model, tok, inputs, sampling, rng)
    else:
        result = generate(model, inputs, sampling, rng)
        texts = decode_texts(tok, np.asarray(result.tokens), np.asarray(result.lengths), stop)
    out = []
    for b, row in enumerate(texts):
        parsed = parse_judgement(row[0])
        out.append({"text": row[0], "ok": parsed.ok, "better": parsed.better if parsed.ok else None,
                    "error": parsed.error})
    return out


def pairwise_accuracy(model, tok, batches: Iterable[dict], *, max_new_tokens: int, constrained: bool = False,
                      modality_names: tuple[str, ...] = MODALITIES) -> dict[str, dict[str, float]]:
    """Per modality: accuracy of the judged `better` against gold and the rate of valid JSON judgements.

    A row counts as correct only when the judgement parses and its verdict equals the gold verdict;
    "equal" verdicts are wrong unless gold is "equal" (the benchmark rule).
    """
    stats: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for batch in batches:
        judged = judge_batch(model, tok, batch, max_new_tokens=max_new_tokens, constrained=constrained)
        valid = np.asarray(batch.get("valid", np.ones(len(judged), bool)))
        for j, v, gold, mod in zip(judged, valid, np.asarray(batch["gold_better"]), np.asarray(batch["modality"])):
            if not v:
                continue
            name = modality_names[int(mod)]
            stats[name]["n"] += 1
            stats[name]["valid_json"] += int(j["ok"])
            stats[name]["correct"] += int(j["ok"] and VERDICT_CODES.get(j["better"], -1) == int(gold))
    return {m: {"accuracy": c["correct"] / c["n"], "valid_json": c["valid_json"] / c["n"], "n": c["n"]}
            for m, c in stats.items() if c["n"]}
