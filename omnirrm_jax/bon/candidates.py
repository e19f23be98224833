"""N candidate answers per question from a policy checkpoint (any Qwen2.5-Omni thinker), as the reference drew them.

The reference's policy scripts (`inference/*/qwen2.5omni.py`) ask each question five times, one request at a time, at
temperature 0.7 (no top-k / top-p: ms-swift's RequestConfig leaves them off), with the multiple-choice prompt of
`bon.answers.policy_prompt`, and keep the runs that parse to a letter. Here the N draws of a question are one prompt
with G = N samples: the media towers and the prompt run once, the N samples share that prefill
(`decoding.sampler.generate`, `num_samples=N`), and B questions go in one batch with bucketed static shapes.

Each item gets `qwen_all_runs` (the parsed letters in draw order, "error" runs dropped, as the reference stores
them), `qwen_votes`, `qwen_majority`, and `runs_raw` (every reply text, unparsed ones included).
"""

from __future__ import annotations

import collections
from typing import Sequence

import jax
import numpy as np

from omnirrm_jax.bon.answers import MAX_NEW_TOKENS, majority, parse_answer, policy_prompt
from omnirrm_jax.bon.items import BonItem
from omnirrm_jax.data import examples as E
from omnirrm_jax.eval import pairs

MODALITY = {"mmmu": "image", "videomme": "video", "avqa": "mixed"}


def item_example(item: BonItem, tok, cfg, opts, *, letters: str = "double", max_length: int = 8192) -> dict:
    """The policy prompt of one item as a prompt-only example (raises `pairs.PairError`)."""
    prefix, text = policy_prompt(item.bench, item.question, item.options, letters)
    row = {"modality": MODALITY[item.bench], "id": item.id, **{k: list(v) for k, v in item.media.items()}}
    if row["modality"] == "mixed":
        row.pop("modality")
    rec = pairs.media_record(row, prefix, opts)
    msgs = [{"role": "user", "content": E.swift_items(prefix) + [{"type": "text", "text": text}]}]
    return pairs.prompt_examples(rec, [msgs], item.key, tok, cfg, max_length=max_length)[0]


def sample_candidates(model, cfg, tok, items: Sequence[BonItem], *, n: int, media_root: str, temperature: float = 0.7,
                      max_new_tokens: int | None = None, batch_size: int = 4, seed: int = 0, letters: str = "double",
                      max_length: int = 8192, media=None) -> list[dict]:
    """Per item, in order: {"qwen_all_runs", "qwen_votes", "qwen_majority", "runs_raw"}, plus "error": {reason,
    detail} (and no runs) for an item whose media or prompt cannot be used."""
    from data_prep.rows import RowOptions
    from omnirrm_jax.data.media import MediaConfig
    from omnirrm_jax.eval.benchmarks import INFERENCE_MEDIA_ENV

    opts = RowOptions(media_root=media_root, media=media or MediaConfig.from_env(dict(INFERENCE_MEDIA_ENV)))
    out: list[dict | None] = [None] * len(items)
    ready = []
    for pos, item in enumerate(items):
        try:
            ready.append((pos, item_example(item, tok, cfg, opts, letters=letters, max_length=max_length)))
        except pairs.PairError as e:
            # no runs, as the reference stores a question it could not ask (its rows with qwen_majority "error")
            out[pos] = {"qwen_all_runs": [], "qwen_votes": {}, "qwen_majority": "error", "runs_raw": [],
                        "error": {"reason": e.reason, "detail": e.detail}}
    caps = [max_new_tokens or MAX_NEW_TOKENS[items[pos].bench] for pos, _ in ready]
    replies = generate_texts(model, cfg, tok, [(pos, ex, cap) for (pos, ex), cap in zip(ready, caps)], n=n,
                             temperature=temperature, batch_size=batch_size, seed=seed)
    for pos, texts in replies.items():
        letters_ = [parse_answer(items[pos].bench, t) for t in texts]
        runs = [a for a in letters_ if a != "error"]
        m = majority(runs)
        out[pos] = {"qwen_all_runs": runs, "qwen_votes": dict(collections.Counter(runs)),
                    "qwen_majority": "error" if m is None else runs[m], "runs_raw": texts}
    return out  # type: ignore[return-value]


def generate_texts(model, cfg, tok, jobs: Sequence[tuple], *, n: int = 1, temperature: float = 0.7,
                   batch_size: int = 4, seed: int = 0) -> dict:
    """Replies to prompt-only examples with the jitted engine: `jobs` = (key, example, max new tokens) triples;
    returns {key: [n reply texts]}. Prompts are sorted by length and grouped by token cap, B per batch at bucketed
    static shapes, the n samples of a prompt sharing its prefill (`decoding.sampler.generate`, num_samples=n);
    sampling is plain temperature sampling (no top-k / top-p), greedy at temperature 0."""
    from omnirrm_jax.decoding.sampler import SamplingConfig, generate
    from omnirrm_jax.eval.judge import _decodable
    from omnirrm_jax.models.thinker import model_inputs

    stop = (tok.special_ids["im_end"],)
    by_cap: dict[int, list] = collections.defaultdict(list)
    for key_, ex, cap in sorted(jobs, key=lambda j: int(j[1]["cost"][0])):
        by_cap[int(cap)].append((key_, ex))
    key = jax.random.key(seed)
    step, out = 0, {}
    for cap, group in by_cap.items():
        greedy = temperature <= 0
        sampling = SamplingConfig(max_new_tokens=cap, temperature=1.0 if greedy else temperature, top_k=0,
                                  top_p=1.0, num_samples=n, greedy=greedy, stop_token_ids=stop,
                                  pad_token_id=tok.special_ids["pad"])
        for s in range(0, len(group), batch_size):
            chunk = group[s:s + batch_size]
            batch = pairs.make_batch([ex for _, ex in chunk], batch_size, tok, cfg)
            result = generate(model, model_inputs(batch), sampling, jax.random.fold_in(key, step))
            step += 1
            tokens, lengths = np.asarray(result.tokens), np.asarray(result.lengths)
            for b, (k, _) in enumerate(chunk):
                out[k] = [tok.decode([t for t in _decodable(tok, tokens[b, g, :lengths[b, g]]) if t not in stop])
                          for g in range(n)]
    return out
