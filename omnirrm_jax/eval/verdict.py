"""Verdict probabilities P(A), P(B), P(equal) of a written judgement, read from the thinker's own distribution.

Why: a judgement's `better` is one hard label, but RLHF and Best-of-N users want a graded preference. The
model's next-token distribution at the place where it writes the verdict gives one, at the cost of a single
teacher-forced forward per batch.

Which field is read: by default `better`, the first place a judgement commits to a verdict (schema order is
score_A, score_B, better, reasoning, final_verdict). `final_verdict` (the `<answer>[[X]]` label at the end,
after the rationale) can be read instead. Both are *conditioned on what the model wrote before them*: at
`better` the two scores are already on the page (and an SFT-trained judge makes `better` agree with them), at
`final_verdict` the whole rationale too. The probabilities are the unconstrained model's, even when the
judgement itself was written under the schema constraint (which forces `better` from the scores and would
make the constrained distribution a one-hot).

How (per judgement, host side, `locate`): find the character where the verdict label starts in the decoded
judgement; condition on the longest run of generated tokens whose text ends at or before it, and score the
rest - the characters of that token-boundary gap plus the label - as the tokenizer's own spelling of each label
(`tok.encode(gap + label)`; multi-token spellings add their log-probs). With Qwen's byte-level BPE the gap is
empty and each label is whole pre-token, so these are exactly the tokens an SFT target contains. Only that one
spelling is counted; other tokenizations of the same characters (never produced by the tokenizer) are not.

Device side (`candidate_logprobs`, one jitted program): prefill the prompt (media towers run once), feed the
conditioned prefix as one chunk into the KV cache, fan the cache out to the three labels (as the sampler fans
out G samples) and feed each label's tokens as a second chunk; logits are taken only where a label token is
predicted, so no (rows, tokens, vocab) tensor is built. Then P(label) = softmax over the three summed log-probs;
`mass` (their unnormalised total) says how much of the model's probability the three labels hold at all.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from omnirrm_jax.decoding.cache import init_cache
from omnirrm_jax.eval.benchmarks import swap_label
from omnirrm_jax.models.thinker import model_inputs
from omnirrm_jax.rubric.schema import VERDICTS

FIELDS = ("better", "final_verdict")
# What precedes the label. A key inside the free-text rationale is written with escaped quotes (\"better\"),
# which these patterns do not match, so only the real keys are found.
_FIELD_RE = {"better": re.compile(r'"better"\s*:\s*"'),
             "final_verdict": re.compile(r'"final_verdict"\s*:\s*"<answer>\[\[')}
_SWAP = {"A": "B", "B": "A", "equal": "equal"}


@dataclasses.dataclass(frozen=True)
class VerdictSite:
    """Where one judgement decides its verdict: `prefix` generated ids conditioned on, then `candidates[i]` the
    ids spelling the rest up to and including label VERDICTS[i]."""

    prefix: tuple[int, ...]
    candidates: tuple[tuple[int, ...], ...]


@dataclasses.dataclass(frozen=True)
class VerdictProbs:
    """probs: P(label) normalised over A/B/equal; logprobs: the summed log-prob of each label's tokens; mass:
    sum of exp(logprobs) (<= 1); reward: P(A) - P(B) in [-1, 1], the scalar for RLHF / Best-of-N."""

    probs: dict[str, float]
    logprobs: dict[str, float]
    mass: float
    field: str

    @property
    def reward(self) -> float:
        return self.probs["A"] - self.probs["B"]

    @property
    def verdict(self) -> str:
        return max(VERDICTS, key=lambda v: self.probs[v])

    def to_json(self) -> dict[str, Any]:
        return {"probs": dict(self.probs), "logprobs": dict(self.logprobs), "mass": self.mass, "field": self.field,
                "reward": self.reward, "verdict": self.verdict}


# ----------------------------------------------------------------------------------------------------
# Host side: where the verdict is decided
# ----------------------------------------------------------------------------------------------------

def locate(tok, generated: Sequence[int], field: str = "better") -> VerdictSite | None:
    """The verdict site of one generated judgement (ids without the stop token); None if the field is absent.

    `better` takes the first match, `final_verdict` the last (it closes the object).
    """
    if field not in _FIELD_RE:
        raise ValueError(f"unknown verdict field {field!r}; expected one of {', '.join(FIELDS)}")
    ids = [int(i) for i in generated]
    text = tok.decode(ids)
    matches = list(_FIELD_RE[field].finditer(text))
    if not matches:
        return None
    head = text[:(matches[0] if field == "better" else matches[-1]).end()]
    k, done = 0, ""
    for i in range(1, len(ids) + 1):
        t = tok.decode(ids[:i])
        if head.startswith(t):
            k, done = i, t
        elif len(t) > len(head) + 8:  # past the label (+ slack for transient U+FFFD of partial UTF-8)
            break
    gap = head[len(done):]
    cands = tuple(tuple(int(x) for x in tok.encode(gap + v)) for v in VERDICTS)
    if not all(cands) or len(set(cands)) != len(cands):
        raise ValueError(f"tokenizer cannot spell the verdict labels distinctly after {gap!r}: {cands}")
    return VerdictSite(prefix=tuple(ids[:k]), candidates=cands)


def _bucket(n: int, minimum: int) -> int:
    """Next power of two >= max(n, minimum): a few chunk shapes per run, so the program is reused."""
    n = max(int(n), int(minimum), 1)
    return 1 << (n - 1).bit_length()


# ----------------------------------------------------------------------------------------------------
# Device side: one teacher-forced pass
# ----------------------------------------------------------------------------------------------------

def _candidate_logprobs(model, inputs: dict[str, Any], prefix_BK: jax.Array, prefix_len_B: jax.Array,
                        cand_BCM: jax.Array, cand_len_BC: jax.Array) -> jax.Array:
    ids_BS, mask_BS = jnp.asarray(inputs["input_ids"]), jnp.asarray(inputs["attention_mask"])
    B, S = ids_BS.shape
    K = prefix_BK.shape[1]
    C, M = cand_BCM.shape[1:]
    R = B * C
    last_3B = jnp.asarray(inputs["position_ids"])[:, :, -1]  # left-padded: the last column is the last real token
    cache = init_cache(model.config, B, S + K + M, prompt_mask_BT=mask_BS)
    # The prefix chunk is right-padded per row: its padding slots are invisible to everything after them.
    real_BK = jnp.arange(K)[None] < prefix_len_B[:, None]
    cache = dataclasses.replace(cache, kv_mask=cache.kv_mask.at[:, S:S + K].set(real_BK))
    hidden_BSD, cache = model.forward(inputs, cache=cache, cache_index=0, return_hidden=True)
    # Generated tokens continue from the last prompt position, +1 per token on all three mRoPE axes (as sampled).
    pos_3BK = last_3B[..., None] + 1 + jnp.arange(K)
    h_BKD, cache, _ = model.model(model.model.embed_tokens(prefix_BK), pos_3BK, cache=cache, cache_index=S)
    h_last_BD = jnp.take_along_axis(h_BKD, jnp.maximum(prefix_len_B - 1, 0)[:, None, None], 1)[:, 0]
    h0_BD = jnp.where((prefix_len_B > 0)[:, None], h_last_BD, hidden_BSD[:, -1])  # predicts each label's 1st token
    # Fan out to the C labels (adjacent per row) and feed each label's tokens.
    cache = jax.tree.map(lambda a: jnp.repeat(a, C, axis=0), cache)
    cand_RM = cand_BCM.reshape(R, M)
    pos_3RM = jnp.repeat(last_3B + 1 + prefix_len_B, C, axis=1)[..., None] + jnp.arange(M)
    h_RMD, _, _ = model.model(model.model.embed_tokens(cand_RM), pos_3RM, cache=cache, cache_index=S + K)
    pred_RMD = jnp.concatenate([jnp.repeat(h0_BD, C, axis=0)[:, None], h_RMD[:, :-1]], axis=1)
    logp_RMV = jax.nn.log_softmax(model.logits(pred_RMD).astype(jnp.float32), axis=-1)
    tok_RM = jnp.take_along_axis(logp_RMV, cand_RM[..., None], axis=-1)[..., 0]
    real_RM = jnp.arange(M)[None] < cand_len_BC.reshape(R, 1)
    return jnp.sum(jnp.where(real_RM, tok_RM, 0.0), axis=-1).reshape(B, C)


_candidate_logprobs_jit = nnx.jit(_candidate_logprobs)


def candidate_logprobs(model, inputs: dict[str, Any], sites: Sequence[VerdictSite | None], *,
                       min_prefix: int = 16, min_label: int = 4) -> np.ndarray:
    """(B, 3) summed log-probs of each row's label spellings (NaN for rows whose site is None).

    Args:
      model: a `Thinker`.
      inputs: the left-padded prompt batch the judgements were generated from (`prepare_inputs` / pipeline keys).
      sites: per row, `locate`'s result.
      min_prefix, min_label: smallest chunk lengths; longer ones round up to powers of two (bounded compiles).
    """
    inputs = model_inputs(inputs)  # batch bookkeeping keys would change the program
    B = np.asarray(inputs["input_ids"]).shape[0]
    if len(sites) != B:
        raise ValueError(f"{len(sites)} verdict sites for a batch of {B} prompts")
    live = [s for s in sites if s is not None]
    if not live:  # nothing to score: skip the device pass
        return np.full((B, len(VERDICTS)), np.nan)
    K = _bucket(max((len(s.prefix) for s in live), default=0), min_prefix)
    M = _bucket(max((len(c) for s in live for c in s.candidates), default=0), min_label)
    prefix = np.zeros((B, K), np.int32)
    prefix_len = np.zeros((B,), np.int32)
    cand = np.zeros((B, len(VERDICTS), M), np.int32)
    cand_len = np.ones((B, len(VERDICTS)), np.int32)
    for b, s in enumerate(sites):
        if s is None:
            continue
        prefix[b, :len(s.prefix)], prefix_len[b] = s.prefix, len(s.prefix)
        for c, ids in enumerate(s.candidates):
            cand[b, c, :len(ids)], cand_len[b, c] = ids, len(ids)
    out = np.asarray(_candidate_logprobs_jit(model, inputs, prefix, prefix_len, cand, cand_len), np.float64)
    out[np.array([s is None for s in sites], bool)] = np.nan
    return out


def to_probs(logprobs: Sequence[float], field: str) -> VerdictProbs:
    """Summed label log-probs (A, B, equal) -> normalised probabilities."""
    lp = [float(x) for x in logprobs]
    top = max(lp)
    z = sum(math.exp(x - top) for x in lp)
    return VerdictProbs(probs={v: math.exp(x - top) / z for v, x in zip(VERDICTS, lp)},
                        logprobs=dict(zip(VERDICTS, lp)), mass=math.exp(top) * z, field=field)


def verdict_probabilities(model, tok, inputs: dict[str, Any], generated: Sequence[Sequence[int] | None], *,
                          field: str = "better", **buckets: int) -> list[VerdictProbs | None]:
    """P(A), P(B), P(equal) for each row's generated judgement (None where the row has no judgement or the field
    is missing).

    Args:
      model, tok: the thinker and its tokenizer.
      inputs: the prompt batch the judgements continue.
      generated: per row, the generated ids without the stop token (None for padding rows).
      field: "better" or "final_verdict" (see the module docstring).
      buckets: `candidate_logprobs`' min_prefix / min_label.
    """
    sites = [None if g is None else locate(tok, g, field) for g in generated]
    lp = candidate_logprobs(model, inputs, sites, **buckets)
    return [None if s is None else to_probs(lp[b], field) for b, s in enumerate(sites)]


# ----------------------------------------------------------------------------------------------------
# Position-bias control: (A, B) and (B, A)
# ----------------------------------------------------------------------------------------------------

def unswap_probs(probs: dict[str, float]) -> dict[str, float]:
    """Probabilities judged on the swapped prompt, in the original labels."""
    return {v: probs[_SWAP[v]] for v in VERDICTS}


def combine_orders(p_ab: dict[str, float], p_ba: dict[str, float]) -> dict[str, float]:
    """Mean of the (A, B)-order probabilities and the mapped-back (B, A)-order ones."""
    back = unswap_probs(p_ba)
    return {v: 0.5 * (p_ab[v] + back[v]) for v in VERDICTS}


def swap_consistency(pairs: Sequence[tuple[str | None, str | None]]) -> tuple[float | None, int]:
    """Fraction of (verdict on (A, B), verdict on (B, A)) pairs that agree once the second is mapped back, over
    the pairs where both orders gave a verdict; returns (fraction or None, number of such pairs)."""
    both = [(a, b) for a, b in pairs if a is not None and b is not None]
    if not both:
        return None, 0
    return sum(a == swap_label(b) for a, b in both) / len(both), len(both)
