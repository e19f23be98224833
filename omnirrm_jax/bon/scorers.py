"""Judging one pair of candidates, the boundary the selection strategies (`bon.strategies`) see.

A scorer answers batches of `PairRequest`s (an item, the text shown as answer A, the text shown as B) in two ways:

* `verdicts`: the reference's comparison. Its Best-of-N prompt (`bon_mmmu` / `bon_videomme` / `bon_avqa`, which
  asks for `{"better": "A"|"B"|"equal"}`) decoded greedily (temperature 0) for at most 64 tokens, the reply read with
  `json.loads(text.strip()).get("better", "equal")`; anything that does not parse is "equal" (as the scripts'
  `except` returns it).
* `rewards`: the scalar P(A) - P(B), with no generation: the same prompt, then the reply's opening `{"better": "`
  teacher-forced, and the three verdict labels scored at that token (`eval.verdict.candidate_logprobs`: one prefill
  of the prompt per pair, one chunk for the opening, one for the labels). These are exactly the probabilities
  `eval.verdict.verdict_probabilities` reads from a judgement that wrote that opening.

Deviation, not yet switchable: the Video-MME selection script sends the judge 8 uniformly sampled frames as
*images* (OpenCV, `--max_frames 8`); here the video goes through the inference video settings of `omnirrm eval`
(`eval.benchmarks.INFERENCE_MEDIA_ENV`) as a video. MMMU and AVQA media are sent as the reference sends them.

`ModelScorer` runs a `Thinker`; tests put hand-built verdicts behind the same two methods. Prompts are built by the
judge's own pipeline (`eval.pairs`): each item's media decoded once (kept for the item's later pairs), the prompt
through the chat template, batches with bucketed static shapes.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
from typing import Protocol, Sequence

import jax
import numpy as np

from omnirrm_jax.bon.items import BonItem
from omnirrm_jax.eval import pairs
from omnirrm_jax.eval.reward import FORCED_PREFIX, forced_verdicts

log = logging.getLogger(__name__)
JUDGE_TEMPLATES = {"mmmu": "bon_mmmu", "videomme": "bon_videomme", "avqa": "bon_avqa"}
VERDICT_OPENING = FORCED_PREFIX["better"]
JUDGE_MAX_NEW_TOKENS = 64  # the selection scripts' --max_new_tokens


@dataclasses.dataclass(frozen=True)
class PairRequest:
    item: BonItem
    answer_a: str
    answer_b: str


class PairScorer(Protocol):
    def verdicts(self, requests: Sequence[PairRequest]) -> list[str]: ...

    def rewards(self, requests: Sequence[PairRequest]) -> list[float]: ...


def reference_verdict(text: str) -> str:
    """The selection scripts' reading of a reply: its "better" value, "equal" when it is not a JSON object."""
    try:
        value = json.loads(text.strip()).get("better", "equal")
    except (ValueError, AttributeError, TypeError, RecursionError):
        return "equal"
    return value if isinstance(value, str) else "equal"


def judge_row(item: BonItem, answer_a: str, answer_b: str, template: str | None = None) -> dict:
    """A `PairRequest` as an `eval.pairs` pair (the reference's judge prompt for the item's benchmark)."""
    modality = "video" if "videos" in item.media else "image" if "images" in item.media else "text"
    return {"question": item.question, "answer_a": answer_a, "answer_b": answer_b, "modality": modality,
            "template": template or JUDGE_TEMPLATES[item.bench], "id": item.id,
            **{k: list(v) for k, v in item.media.items()}}


class ModelScorer:
    """A thinker judging pairs in batches (see the module docstring)."""

    def __init__(self, model, cfg, tok, *, media_root: str, media=None, batch_size: int = 8, max_length: int = 8192,
                 max_new_tokens: int = JUDGE_MAX_NEW_TOKENS, cache_items: int = 64):
        from data_prep.rows import RowOptions
        from omnirrm_jax.data.media import MediaConfig
        from omnirrm_jax.eval.benchmarks import INFERENCE_MEDIA_ENV

        self.model, self.cfg, self.tok = model, cfg, tok
        self.opts = RowOptions(media_root=media_root, media=media or MediaConfig.from_env(dict(INFERENCE_MEDIA_ENV)))
        self.batch_size, self.max_length, self.max_new_tokens = batch_size, max_length, max_new_tokens
        self._records: collections.OrderedDict = collections.OrderedDict()
        self._cache_items = cache_items
        self.model_calls = 0  # prompts sent to the device
        self.errors: collections.Counter = collections.Counter()
        self._warned: set = set()

    def _record(self, item: BonItem, pair: dict) -> dict:
        key = (item.bench, item.key, item.where)
        if key not in self._records:
            from omnirrm_jax.rubric import prompts

            self._records[key] = pairs.media_record(pair, prompts.user_content(pair["template"], ""), self.opts)
            if len(self._records) > self._cache_items:
                self._records.popitem(last=False)
        return self._records[key]

    def examples(self, requests: Sequence[PairRequest]) -> list[dict | None]:
        """One prompt example per request; None for a request whose item cannot be judged (media missing or
        unreadable, prompt too long), counted in `errors` by reason: the selection scripts' `except` turns such a
        comparison into "equal", and so does `verdicts` (`rewards`: 0)."""
        out = []
        for r in requests:
            try:
                pair = pairs.check_pair(judge_row(r.item, r.answer_a, r.answer_b))
                rec = self._record(r.item, pair)
                out += pairs.prompt_examples(rec, [[pairs.user_message(pair)]], r.item.key, self.tok, self.cfg,
                                             max_length=self.max_length)
            except pairs.PairError as e:
                if (r.item.where, e.reason) not in self._warned:
                    self._warned.add((r.item.where, e.reason))
                    log.warning("%s: cannot judge (%s); its comparisons count as equal", r.item.where, e)
                self.errors[e.reason] += 1
                out.append(None)
        return out

    def _batches(self, requests: Sequence[PairRequest]):
        exs = self.examples(requests)
        order = sorted((i for i in range(len(exs)) if exs[i] is not None), key=lambda i: int(exs[i]["cost"][0]))
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            self.model_calls += len(idx)
            yield idx, pairs.make_batch([exs[i] for i in idx], self.batch_size, self.tok, self.cfg)

    def verdicts(self, requests: Sequence[PairRequest]) -> list[str]:
        from omnirrm_jax.decoding.sampler import SamplingConfig, generate
        from omnirrm_jax.eval.judge import _decodable
        from omnirrm_jax.models.thinker import model_inputs

        stop = (self.tok.special_ids["im_end"],)
        sampling = SamplingConfig(max_new_tokens=self.max_new_tokens, greedy=True, stop_token_ids=stop,
                                  pad_token_id=self.tok.special_ids["pad"])
        out: list[str] = ["equal"] * len(requests)
        for idx, batch in self._batches(requests):
            result = generate(self.model, model_inputs(batch), sampling, jax.random.key(0))
            tokens, lengths = np.asarray(result.tokens)[:, 0], np.asarray(result.lengths)[:, 0]
            for b, i in enumerate(idx):
                ids = [t for t in _decodable(self.tok, tokens[b, :lengths[b]]) if t not in stop]
                out[i] = reference_verdict(self.tok.decode(ids))
        return out

    def rewards(self, requests: Sequence[PairRequest]) -> list[float]:
        out: list[float] = [0.0] * len(requests)
        for idx, batch in self._batches(requests):
            for i, vp in zip(idx, forced_verdicts(self.model, self.tok, batch)):
                out[i] = vp.reward
        return out
