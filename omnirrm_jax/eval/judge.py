"""Judging with a trained thinker: greedy (optionally schema-constrained) judgements, parsed into verdicts
and scored against gold labels per modality.

Used by SFT/GRPO held-out evaluation, the demo and `omnirrm judge` (which adds verdict probabilities:
`judge_with_verdicts`, `eval.verdict`).
"""

from __future__ import annotations

import collections
from typing import Iterable

import jax
import numpy as np

from omnirrm_jax.decoding.constrained import decode_outputs, generate_judgements
from omnirrm_jax.decoding.sampler import SamplingConfig, generate
from omnirrm_jax.eval import verdict
from omnirrm_jax.models.thinker import model_inputs
from omnirrm_jax.parallel.distributed import to_host
from omnirrm_jax.rubric.parse import parse_judgement
from omnirrm_jax.rubric.rewards import combined_reward, format_reward
from omnirrm_jax.rubric.vocab import MODALITIES, VERDICT_CODES


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
        texts = decode_texts(tok, to_host(result.tokens), to_host(result.lengths), stop)
    out = []
    for b, row in enumerate(texts):
        parsed = parse_judgement(row[0])
        out.append({"text": row[0], "ok": parsed.ok, "better": parsed.better if parsed.ok else None,
                    "error": parsed.error})
    return out


def _decodable(tok, ids) -> list[int]:
    """Generated ids up to the first one the tokenizer lacks (the model's vocab is padded past the tokenizer's;
    an id there has no text, so the judgement ends before it and fails to parse rather than crashing decode)."""
    ids = [int(t) for t in ids]
    bad = [i for i, t in enumerate(ids) if not 0 <= t < tok.vocab_size]
    return ids[:bad[0]] if bad else ids


def judge_with_verdicts(model, tok, batch: dict, *, max_new_tokens: int, constrained: bool = False,
                        field: str = "better", rng: jax.Array | None = None,
                        decoding: dict | None = None, verdict_min_prefix: int = 16) -> list[dict | None]:
    """Greedy (optionally constrained) judgements plus their verdict probabilities (`verdict`), per row.

    `decoding`: sample instead ({"temperature", "top_p"}, and "top_k" (default 0 = off, as the reference's
    RequestConfig leaves it)), drawn with `rng`. `verdict_min_prefix`: the verdict pass pads the judgement up to
    the verdict to a power of two at least this long (one compiled program per length; a server passes the
    longest, so one program serves every judgement).
    Returns per row None for padding rows (batch["valid"] False), else {"text", "parsed" (`ParseResult`),
    "verdict" (`VerdictProbs` or None when the judgement never reached `field`)}.
    """
    stop = tok.special_ids["im_end"]
    draw = dict(greedy=True) if decoding is None else dict(greedy=False, **{"top_k": 0, **decoding})
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, stop_token_ids=(stop,),
                              pad_token_id=tok.special_ids["pad"], **draw)
    rng = jax.random.key(0) if rng is None else rng
    inputs = model_inputs(batch)
    if constrained:
        from omnirrm_jax.decoding.constrained import generate_judgements

        result, _ = generate_judgements(model, tok, inputs, sampling, rng)
    else:
        result = generate(model, inputs, sampling, rng)
    tokens, lengths = np.asarray(result.tokens)[:, 0], np.asarray(result.lengths)[:, 0]
    finished = np.asarray(result.finished)[:, 0]
    valid = np.asarray(batch.get("valid", np.ones(len(tokens), bool)))
    generated = [_decodable(tok, tokens[b, :lengths[b] - int(finished[b])]) if valid[b] else None
                 for b in range(len(tokens))]
    probs = verdict.verdict_probabilities(model, tok, inputs, generated, field=field, min_prefix=verdict_min_prefix)
    out = []
    for ids, p in zip(generated, probs):
        if ids is None:
            out.append(None)
            continue
        text = tok.decode(ids)
        out.append({"text": text, "parsed": parse_judgement(text), "verdict": p})
    return out


def pairwise_accuracy(model, tok, batches: Iterable[dict], *, max_new_tokens: int, constrained: bool = False,
                      modality_names: tuple[str, ...] = MODALITIES) -> dict[str, dict[str, float]]:
    """Per modality: accuracy of the judged `better` against gold, the rate of valid JSON judgements and, when
    the batches carry gold scores, the mean GRPO reward of the judgements (`rubric.rewards.combined_reward`:
    0.4 format + 0.4 content + 0.2 rubric, the reference plugin's values).

    A row counts as correct only when the judgement parses and its verdict equals the gold verdict;
    "equal" verdicts are wrong unless gold is "equal" (the benchmark rule).
    """
    labels = {code: name for name, code in VERDICT_CODES.items()}
    stats: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for batch in batches:
        judged = judge_batch(model, tok, batch, max_new_tokens=max_new_tokens, constrained=constrained)
        # every process scores the whole global batch (gathered): the same counts everywhere
        batch = {k: to_host(batch[k]) for k in ("valid", "gold_better", "gold_score_A", "gold_score_B", "modality")
                 if k in batch}
        valid = batch.get("valid", np.ones(len(judged), bool))
        for j, v, gold, mod in zip(judged, valid, batch["gold_better"], batch["modality"]):
            if not v:
                continue
            name = modality_names[int(mod)]
            stats[name]["n"] += 1
            stats[name]["valid_json"] += int(j["ok"])
            stats[name]["correct"] += int(j["ok"] and VERDICT_CODES.get(j["better"], -1) == int(gold))
        if "gold_score_A" in batch:
            rows = [b for b, v in enumerate(valid) if v]
            rewards = combined_reward([judged[b]["text"] for b in rows],
                                      better=[labels[int(batch["gold_better"][b])] for b in rows],
                                      score_A=[int(batch["gold_score_A"][b]) for b in rows],
                                      score_B=[int(batch["gold_score_B"][b]) for b in rows])
            for b, r in zip(rows, rewards):
                stats[modality_names[int(batch["modality"][b])]]["reward"] += r
    return {m: {"accuracy": c["correct"] / c["n"], "valid_json": c["valid_json"] / c["n"], "n": c["n"],
                **({"mean_reward": c["reward"] / c["n"]} if "reward" in c else {})}
            for m, c in stats.items() if c["n"]}


def sampled_parse_rates(model, tok, batches: Iterable[dict], *, samples: int, per_prompt: int, max_new_tokens: int,
                        seed: int = 0, temperature: float = 1.0) -> dict[str, dict[str, int]]:
    """How often *sampled* judgements (temperature 1, no top-k/top-p: the most adventurous setting) parse and
    are self-consistent, with the schema constraint and without: {"constrained"|"unconstrained": {"n", "parsed",
    "consistent"}}. `per_prompt` samples are drawn per prompt from successive batches until `samples` is reached.

    Greedy judgements of a trained judge hide failures that sampling (GRPO's rollouts) exposes; the constraint
    must hold for every sample. Parsed = `parse_judgement(...).ok` (which already requires the scores, `better`
    and `final_verdict` to agree); consistent = also the reference plugin's full format reward (1.0).
    """
    stop = (tok.special_ids["im_end"],)
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=0, top_p=1.0,
                              num_samples=per_prompt, stop_token_ids=stop, pad_token_id=tok.special_ids["pad"])
    counts = {k: collections.Counter() for k in ("constrained", "unconstrained")}
    key = jax.random.key(seed)
    for i, batch in enumerate(batches):
        if counts["constrained"]["n"] >= samples:
            break
        inputs = model_inputs(batch)
        valid = np.asarray(batch.get("valid", np.ones(np.asarray(inputs["attention_mask"]).shape[0], bool)))
        k = jax.random.fold_in(key, i)
        _, c_texts = generate_judgements(model, tok, inputs, sampling, k)
        free = generate(model, inputs, sampling, k)
        for name, texts in (("constrained", c_texts), ("unconstrained", decode_outputs(tok, free))):
            for row, v in zip(texts, valid):
                for text in row if v else ():
                    if counts[name]["n"] >= samples:
                        break
                    parsed = parse_judgement(text)
                    counts[name]["n"] += 1
                    counts[name]["parsed"] += int(parsed.ok)
                    counts[name]["consistent"] += int(parsed.ok and parsed.verdict == parsed.better
                                                      and format_reward([text]) == [1.0])
    return {name: {k: c[k] for k in ("n", "parsed", "consistent")} for name, c in counts.items()}

