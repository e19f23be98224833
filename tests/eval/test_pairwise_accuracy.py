"""pairwise_accuracy's bookkeeping: per-modality accuracy, valid-JSON rate and mean GRPO reward of the judgements
(decoding is replaced by fixed texts, so the numbers are known)."""
import numpy as np
import pytest

from omnirrm_jax.eval import judge
from omnirrm_jax.rubric import rewards, schema

GOOD_A = schema.format_judgement(8, 3, "A", "Fluency: A and B are both clear. Safety: A and B are harmless.")
GOOD_B = schema.format_judgement(2, 9, "B", "Fluency: A and B are both clear.")
BROKEN = '{"score_A": 8, "score_B"'


def test_accuracy_valid_json_and_mean_reward(monkeypatch):
    texts = iter([GOOD_A, GOOD_B, BROKEN, GOOD_A])

    def fake_judge(model, tok, batch, **kw):
        out = []
        for _ in batch["modality"]:
            t = next(texts)
            p = judge.parse_judgement(t)
            out.append({"text": t, "ok": p.ok, "better": p.better if p.ok else None, "error": p.error})
        return out

    monkeypatch.setattr(judge, "judge_batch", fake_judge)
    batches = [{"modality": np.array([0, 0]), "valid": np.array([True, True]), "gold_better": np.array([0, 0]),
                "gold_score_A": np.array([9, 8]), "gold_score_B": np.array([2, 3])},
               {"modality": np.array([1, 1]), "valid": np.array([True, False]), "gold_better": np.array([1, 1]),
                "gold_score_A": np.array([3, 3]), "gold_score_B": np.array([8, 8])}]
    res = judge.pairwise_accuracy(None, None, batches, max_new_tokens=8)
    assert res["text"]["n"] == 2 and res["image"]["n"] == 1  # the padding row is not counted
    assert res["text"]["accuracy"] == 0.5 and res["text"]["valid_json"] == 1.0  # GOOD_B says B, gold says A
    assert res["image"]["accuracy"] == 0.0 and res["image"]["valid_json"] == 0.0
    want_text = rewards.combined_reward([GOOD_A, GOOD_B], better=["A", "A"], score_A=[9, 8], score_B=[2, 3])
    assert res["text"]["mean_reward"] == pytest.approx(np.mean(want_text))
    want_image = rewards.combined_reward([BROKEN], better=["B"], score_A=[3], score_B=[8])
    assert res["image"]["mean_reward"] == pytest.approx(want_image[0]) and want_image[0] < 0
