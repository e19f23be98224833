"""Stage 5 of `omnirrm synth`: the kept pairs as ms-swift JSONL for SFT and GRPO, ready for `omnirrm prep`.

The user turn is the reference's judge prompt of the modality with its media tag (`data_prep.make_demo.
judge_content`, what the demo data and the released Omni-Preference rows hold); the SFT assistant turn is the chosen
teacher's judgement in the reference schema (`rubric.schema.format_judgement`), and a GRPO row carries the same
judgement as `solution` with its `better`, `score_A` and `score_B`. The A/B order was fixed before the teachers saw
the pair (`run.order_pairs`: per modality, half the pairs show the strong writer's answer first, picked with the
seed and kept across runs), so the teachers' position bias is averaged out and the labels come out balanced;
`label_balance` checks it.
"""

from __future__ import annotations

import collections

from omnirrm_jax.synth.repair import judgement_text
from omnirrm_jax.synth.sources import MEDIA_KEY


def rows(pair: dict, judgement: dict) -> tuple[dict, dict]:
    """(SFT row, GRPO row) of a kept pair."""
    from data_prep.make_demo import judge_content

    user = {"role": "user", "content": judge_content(pair["modality"], pair["question"], pair["answer_a"],
                                                     pair["answer_b"])}
    target = judgement_text(judgement)
    media = {MEDIA_KEY[pair["modality"]]: [pair["media"]]} if pair["media"] else {}
    meta = {"id": pair["id"], "modality": pair["modality"]}
    sft = {"messages": [user, {"role": "assistant", "content": target}], **media, **meta}
    grpo = {"messages": [user], **media, **meta, "better": judgement["better"], "score_A": judgement["score_A"],
            "score_B": judgement["score_B"], "solution": target}
    return sft, grpo


def label_balance(kept_rows: list[dict]) -> dict:
    """{modality | "all": {"A", "B", "A_share"}} of the GRPO rows."""
    counts: dict = collections.defaultdict(collections.Counter)
    for r in kept_rows:
        counts[r["modality"]][r["better"]] += 1
        counts["all"][r["better"]] += 1
    return {m: {"A": c["A"], "B": c["B"], "A_share": round(c["A"] / (c["A"] + c["B"]), 4) if c["A"] + c["B"]
                else None} for m, c in sorted(counts.items())}


def cost(teacher_tokens: dict, prices: dict) -> float:
    """USD from {teacher: {prompt_tokens, completion_tokens}} and {teacher: (input, output) per 1M tokens}."""
    total = 0.0
    for t, u in teacher_tokens.items():
        p_in, p_out = prices.get(t, (0.0, 0.0))
        total += u.get("prompt_tokens", 0) * p_in / 1e6 + u.get("completion_tokens", 0) * p_out / 1e6
    return round(total, 6)
