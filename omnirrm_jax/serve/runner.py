"""The device side of the server: one batch of judge pairs, reward pairs or chat prompts -> results, always at one
of a bounded set of static shapes, and the warm-up that compiles that set before the first request.

Why a fixed set: every new (batch, length) shape is a new XLA program, seconds to minutes of compile in the middle
of someone's request. So the batch is always `max_batch` rows (padding rows are free to skip), prompts are padded
to a power of two between 128 and --max-prompt-tokens (`length_buckets`; coarser than the offline judge's, which
only changes padding, not results), judgements decode `max_new_tokens`, the verdict pass pads every judgement to
the longest prefix (one program per prompt length, where the offline judge compiles one per power of two), chat
decodes one of `chat_buckets` lengths, cut to the request's `max_tokens`; a sampled chat batch carries each row's
temperature and top_p as data (`RowSampling`), so any values run one of three programs (`chat_mode`: greedy,
temperature alone, temperature and top-p). `warm_up` compiles, for every length bucket: the judge's decode and
verdict passes, the reward pass, and the three chat programs for every chat length. What it leaves out, compiled on first use and counted in `omnirrm_serve_compiles_total`:
media batches (their patch and audio buckets, powers of two)."""

from __future__ import annotations

import copy
import logging
import time

import jax
import numpy as np

from omnirrm_jax.decoding.sampler import RowSampling, SamplingConfig, generate
from omnirrm_jax.eval import pairs, reward, verdict
from omnirrm_jax.eval.judge import _decodable, judge_with_verdicts
from omnirrm_jax.models.thinker import model_inputs

log = logging.getLogger(__name__)
MIN_BUCKET = 128
VERDICT_MIN_PREFIX = 16


CHAT_MODES = ("greedy", "temperature", "top_p")
GREEDY_BELOW = 1e-4  # a temperature under this is greedy (its limit): dividing logits by it would overflow


def chat_mode(temperature: float, top_p: float) -> str:
    """Which chat program a request runs: "greedy" (temperature 0, or small enough to be its limit),
    "temperature" (sampling, top_p 1: no sort over the vocabulary) or "top_p"."""
    if temperature < GREEDY_BELOW:
        return "greedy"
    return "temperature" if top_p >= 1.0 else "top_p"


def length_buckets(max_prompt_tokens: int) -> list[int]:
    """Prompt lengths the server pads to: powers of two from 128 up to the first >= max_prompt_tokens."""
    out = [MIN_BUCKET]
    while out[-1] < max_prompt_tokens:
        out.append(out[-1] * 2)
    return out


def chat_buckets(max_tokens: int) -> list[int]:
    """Decode lengths of chat batches: 16, 64, 256, ... below the cap, then the cap."""
    out = [n for n in (16 << 2 * i for i in range(16)) if n < max_tokens]
    return out + [max_tokens]


def _verdict_buckets(max_new_tokens: int) -> list[int]:
    out = [VERDICT_MIN_PREFIX]
    while out[-1] < max_new_tokens:
        out.append(out[-1] * 2)
    return out


def _tokens_through_stop(tok, ids, stops) -> int:
    """How many of `ids` a decoder that stopped at the first stop string would have generated (the usage count):
    the shortest prefix whose text holds a stop string (binary search: a longer prefix's text holds a shorter's)."""
    lo, hi = 1, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        text = tok.decode(ids[:mid])
        if any(s in text for s in stops):
            hi = mid
        else:
            lo = mid + 1
    return hi


class Runner:
    """Runs batches for the engine (only ever from its one worker thread)."""

    def __init__(self, judge, *, max_prompt_tokens: int, max_tokens: int, metrics=None):
        # a copy: the verdict-prefix setting below is the server's, not the caller's judge's
        self.judge = judge = copy.copy(judge)
        self.tok, self.model, self.cfg = judge.tok, judge.model, judge.cfg
        self.batch_size = judge.batch_size
        self.lengths = length_buckets(max_prompt_tokens)
        self.chat_lengths = chat_buckets(max_tokens)
        self.max_tokens = max_tokens
        self.metrics = metrics
        # one verdict-pass program per prompt length: every judgement's prefix padded to the longest it can be
        # (a longer pass over at most max_new_tokens more positions, instead of one compile per power of two)
        judge.verdict_min_prefix = _verdict_buckets(judge.max_new_tokens)[-1]
        # unseeded requests: seeds from OS entropy, so no restart repeats them (a counter did, and 2**40 + k wrapped
        # to the client seed k without 64-bit mode); drawn on the host, so no new program compiles after warm-up
        self._unseeded = np.random.default_rng()

    def seq_len(self, exs) -> int:
        longest = max(int(ex["cost"][0]) for ex in exs)
        return next((b for b in self.lengths if b >= longest), self.lengths[-1])

    def chat_len(self, max_tokens: int) -> int:
        return next(n for n in self.chat_lengths if n >= min(max_tokens, self.max_tokens))

    def run(self, kind: str, key, items: list) -> list:
        """One batch of `kind` ("judge" | "reward" | "chat") jobs (their items) -> one result per item."""
        exs = [ex for it in items for ex in (it.examples if kind != "chat" else [it["example"]] * it["n"])]
        if self.metrics:
            self.metrics.batch(kind, len(exs), sum(int(ex["cost"][0]) for ex in exs))
        if kind == "judge":
            return self.judge.judge_prepared(items, self.seq_len(exs))
        if kind == "reward":
            return reward.reward_records(self.judge, items, self.seq_len(exs))
        return self._chat(key, items, exs)

    # ------------------------------------------------------------ chat

    def sampling(self, n_new: int, mode: str) -> SamplingConfig:
        """`mode` (`chat_mode`): "greedy", or sampling with each row's temperature as data (`RowSampling`), and its
        top_p too in mode "top_p" (mode "temperature": top_p 1 for all, no sort over the vocabulary). One program
        per mode and decode length serves every value; requests with different values share a batch."""
        s = self.tok.special_ids
        return SamplingConfig(max_new_tokens=n_new, greedy=mode == "greedy", per_row=True, top_k=0,
                              top_p=0.5 if mode == "top_p" else 1.0,  # per_row: only "on" (< 1) or "off" (1)
                              stop_token_ids=(s["im_end"],), pad_token_id=s["pad"])

    def rows(self, items: list) -> RowSampling:
        """Each batch row's temperature and top_p (every choice of an item; padding rows at 1, 1)."""
        t = [float(it["temperature"]) for it in items for _ in range(it["n"])]
        p = [float(it["top_p"]) for it in items for _ in range(it["n"])]
        pad = self.batch_size - len(t)
        return RowSampling.make(t + [1.0] * pad, p + [1.0] * pad)

    def _chat(self, key, items: list, exs: list) -> list:
        _, n_new, mode, seed = key
        rng = jax.random.key(seed[0] if seed is not None else int(self._unseeded.integers(2 ** 32)))
        batch = pairs.make_batch(exs, self.batch_size, self.tok, self.cfg, self.seq_len(exs))
        result = generate(self.model, model_inputs(batch), self.sampling(n_new, mode), rng,
                          rows=None if mode == "greedy" else self.rows(items))
        tokens, lengths = np.asarray(result.tokens)[:, 0], np.asarray(result.lengths)[:, 0]
        finished = np.asarray(result.finished)[:, 0]
        out, row = [], 0
        for it in items:
            choices = []
            for _ in range(it["n"]):
                n = int(lengths[row]) - int(finished[row])  # the stop token is not text
                ids = _decodable(self.tok, tokens[row, :n])
                reason = "stop" if finished[row] else "length"
                if len(ids) > it["max_tokens"]:
                    ids, reason = ids[:it["max_tokens"]], "length"
                text = self.tok.decode(ids)
                cut = [i for i in (text.find(s) for s in it["stop"]) if i >= 0]
                if cut:
                    text, reason = text[:min(cut)], "stop"
                    ids = ids[:_tokens_through_stop(self.tok, ids, it["stop"])]
                choices.append({"text": text, "finish_reason": reason, "tokens": len(ids)})
                row += 1
            out.append(choices)
        if self.metrics:
            self.metrics.generated(sum(c["tokens"] for cs in out for c in cs))
        return out

    # ------------------------------------------------------------ warm-up

    def warm_up(self, example: dict) -> float:
        """Compiles every program of the bounded set (module docstring) with `example` (a short text prompt)
        padded to each length bucket; returns the seconds it took."""
        t0 = time.perf_counter()
        site = reward.forced_site(self.tok, self.judge.field)
        for S in self.lengths:
            batch = pairs.make_batch([example], self.batch_size, self.tok, self.cfg, S)
            inputs = model_inputs(batch)
            judge_with_verdicts(self.model, self.tok, batch, max_new_tokens=self.judge.max_new_tokens,
                                constrained=self.judge.constrained, field=self.judge.field,
                                verdict_min_prefix=self.judge.verdict_min_prefix)
            fake = verdict.VerdictSite(prefix=(int(self.tok.special_ids["pad"]),), candidates=site.candidates)
            verdict.candidate_logprobs(self.model, inputs, [fake] + [None] * (self.batch_size - 1),
                                       min_prefix=self.judge.verdict_min_prefix)
            reward.forced_verdicts(self.model, self.tok, batch, 1, self.judge.field)
            ones = RowSampling.make(np.ones(self.batch_size), np.ones(self.batch_size))
            for n_new in self.chat_lengths:
                for mode in CHAT_MODES:
                    generate(self.model, inputs, self.sampling(n_new, mode), jax.random.key(0),
                             rows=None if mode == "greedy" else ones)
            log.info("warm-up: prompt length %d compiled (%.0f s so far)", S, time.perf_counter() - t0)
        return time.perf_counter() - t0
