"""Benchmark accuracy as the reference eval.py computes it, on real HH-RLHF rows with hand-made judgements."""
import json
from pathlib import Path

import pytest

from omnirrm_jax.rubric import (
    evaluate_judgements, reference_extract_json, reference_output_fields, scores_correct, verdict_correct,
)
from tests.rubric.reference_eval import evaluate_custom
from tests.rubric.reference_prompts import extract_json as ref_extract_json

BENCH = Path("/work/shared/benchmarks/hh_rlhf_2000.jsonl")


def _judge(a, b, better, reasoning="<think>x</think>", **extra):
    obj = {"score_A": a, "score_B": b, "better": better, "reasoning": reasoning,
           "final_verdict": f"<answer>[[{better}]]</answer>", **extra}
    return json.dumps(obj)


# Model outputs for the first ten HH-RLHF rows (gold labels 0 1 1 0 1 0 1 1 1 0) and what the reference
# makes of them: rule 1 = better vs label, rule 2 = higher score vs label.
OUTPUTS = [
    _judge(8, 3, "A"),                                                # label 0: both rules right
    "```json\n" + _judge(2, 9, "B") + "\n```",                         # label 1: fenced, both right
    "Sure. " + _judge(6, 6, "equal") + " Done.",                      # label 1: equal and tie, both wrong
    _judge(7, 7, "A"),                                                # label 0: verdict right, tie wrong
    '{"score_A": None, "score_B": 5, "better": "B"}',                 # None deleted -> invalid -> error row
    "I cannot decide.",                                               # no JSON -> error row
    _judge(9, 1, "A", reasoning="<think>None of B is right</think>"),  # label 1: both wrong
    _judge(4, 8, "B", label=0),                                       # label 1 overwritten to 0: both wrong
    _judge(True, False, "A"),                                         # label 1: bools are numbers; both wrong
    '{"better": "C", "score_A": "8", "score_B": 1}',                  # label 0: neither rule counts it
]


def _rows():
    with BENCH.open(encoding="utf-8") as f:
        rows = [json.loads(next(f)) for _ in OUTPUTS]
    merged = []
    for row, text in zip(rows, OUTPUTS):
        row = dict(row)
        row.update(reference_output_fields(text))   # what infer_lora.py writes
        merged.append(row)
    return rows, merged


@pytest.mark.skipif(not BENCH.exists(), reason="benchmark samples not present")
def test_accuracy_matches_reference_eval(tmp_path):
    _, merged = _rows()
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in merged) + "not json\n", encoding="utf-8")
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    assert evaluate_judgements(lines, debug_samples=50) == evaluate_custom(str(path), debug_samples=50)
    clean = tmp_path / "clean.jsonl"
    clean.write_text("".join(json.dumps(r) + "\n" for r in merged), encoding="utf-8")
    assert evaluate_judgements(merged) == evaluate_custom(str(clean))


@pytest.mark.skipif(not BENCH.exists(), reason="benchmark samples not present")
def test_accuracy_by_hand():
    rows, merged = _rows()
    assert [r["label"] for r in rows] == [0, 1, 1, 0, 1, 0, 1, 1, 1, 0]
    report = evaluate_judgements(merged)
    assert report["error_count (better=error)"] == 2
    assert (report["valid_samples_label_vs_better"], report["matched_label_vs_better"]) == (7, 3)
    assert report["accuracy_label_vs_better"] == round(3 / 7, 4)
    assert report["equal_count (better=equal_as_wrong)"] == 1
    assert (report["valid_samples_label_vs_scores"], report["matched_label_vs_scores"]) == (7, 2)
    assert report["invalid_lines (json_parse_fail)"] == 0
    assert merged[7]["label"] == 0   # overwritten by the model's own "label" key, as in the reference
    assert merged[6]["reasoning"] == "<think> of B is right</think>"   # extract_json deletes the word None


def test_rules():
    assert verdict_correct(0, "A") and verdict_correct(1, "B")
    assert not verdict_correct(0, "equal") and not verdict_correct(1, "A")
    assert scores_correct(0, 9, 2) and scores_correct(1, 2, 9)
    assert not scores_correct(0, 5, 5) and not scores_correct(1, 9, 2)


@pytest.mark.parametrize("text", [
    "```json\n{\"a\": 1}\n```", "x {\"a\": {\"b\": None}} y", "no braces", "} backwards {", "```{\"a\":1}```",
    "None", "{\"k\": \"None of them\"}",
])
def test_extract_json_is_the_reference_one(text):
    assert reference_extract_json(text) == ref_extract_json(text)
