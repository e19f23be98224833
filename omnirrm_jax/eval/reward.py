"""Scalar rewards without generation: P(A) - P(B) read at a forced verdict site, in one teacher-forced pass.

Why: an RL trainer scoring thousands of rollouts per step wants a reward, not a written judgement. `eval.verdict`
reads the verdict distribution where a *generated* judgement writes its label; here nothing is generated, so the
judgement prefix up to the label is forced instead. What exactly is scored, per prompt (the same judge prompt
`omnirrm judge` builds): the assistant turn starts with the forced text `{"better": "` and the three label
spellings A / B / equal are scored after it (`verdict.candidate_logprobs`: prefill, the prefix as one chunk, the
labels as a second), normalised over the three. The schema's own order puts `score_A` / `score_B` before `better`;
they are skipped, so this is the model's verdict *before* it commits to scores, and it differs from the `reward`
of a written judgement (conditioned on the scores the model wrote). Per order: one forward, no decode loop.
"""

from __future__ import annotations

from typing import Sequence

from omnirrm_jax.eval import pairs, verdict
from omnirrm_jax.models.thinker import model_inputs

FORCED_PREFIX = {"better": '{"better": "', "final_verdict": '{"final_verdict": "<answer>[['}


def forced_site(tok, field: str = "better") -> verdict.VerdictSite:
    """The verdict site of the forced prefix: its ids, then each label's spelling."""
    site = verdict.locate(tok, tok.encode(FORCED_PREFIX[field]), field)
    if site is None:
        raise ValueError(f"the tokenizer does not spell the forced prefix {FORCED_PREFIX[field]!r} back")
    return site


def forced_verdicts(model, tok, batch: dict, n_rows: int | None = None,
                    field: str = "better") -> list[verdict.VerdictProbs | None]:
    """The forced-site verdict probabilities of each row of a prompt batch; None for padding rows (those past
    `n_rows`, or, without it, those whose batch["valid"] is False)."""
    B = batch["input_ids"].shape[0]
    valid = [bool(v) for v in batch["valid"]] if n_rows is None else [b < n_rows for b in range(B)]
    site = forced_site(tok, field)
    lp = verdict.candidate_logprobs(model, model_inputs(batch), [site if v else None for v in valid])
    return [verdict.to_probs(lp[b], field) if v else None for b, v in enumerate(valid)]


def reward_records(judge, prepared: Sequence[pairs.PreparedPair], seq_len: int | None = None) -> list[dict]:
    """Prepared pairs (at most judge.batch_size examples) -> {"id", "reward", "probs", "verdict_mass"} each, with
    "swap" (the (B, A) order mapped back) and "combined" (mean probabilities) for pairs prepared in both orders."""
    exs = [ex for p in prepared for ex in p.examples]
    batch = pairs.make_batch(exs, judge.batch_size, judge.tok, judge.cfg, seq_len)
    vps = forced_verdicts(judge.model, judge.tok, batch, len(exs), judge.field)
    out, i = [], 0
    for p in prepared:
        ab = vps[i]
        rec = {"id": p.id, "reward": ab.reward, "probs": dict(ab.probs), "verdict_mass": ab.mass}
        if len(p.examples) > 1:
            back = verdict.unswap_probs(vps[i + 1].probs)
            both = verdict.combine_orders(ab.probs, vps[i + 1].probs)
            rec["swap"] = {"reward": back["A"] - back["B"], "probs": back, "verdict_mass": vps[i + 1].mass}
            rec["combined"] = {"reward": both["A"] - both["B"], "probs": both}
        out.append(rec)
        i += len(p.examples)
    return out
