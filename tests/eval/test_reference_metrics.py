"""reference_metric: each benchmark script's number on synthetic judgements, expected values worked out by hand
(per-row reasoning in the comments). Rows are built as BenchRow objects directly, independent of the readers."""
import json
import random

import pytest

from omnirrm_jax.eval.benchmarks import BenchRow
from omnirrm_jax.eval.reference_metrics import reference_metric


def judgement(score_a, score_b, better, verdict=None, reasoning="<think>fine</think>", **extra):
    obj = {"score_A": score_a, "score_B": score_b, "better": better, "reasoning": reasoning,
           "final_verdict": f"<answer>[[{verdict or better}]]</answer>", **extra}
    return json.dumps(obj)


def ok(text, order="AB"):
    return {"order": order, "output": text, "error": None}


FAILED = {"order": "AB", "output": None, "error": {"reason": "missing_media", "detail": "x.wav not found"}}


# ---------------------------------------------------------------- HH-RLHF / Audio-HH-RLHF

def _hh_case():
    labels = ["A", "B", "A", "B", "A", "B", "A", "B", "A", "A", "B"]
    rows = [BenchRow(index=i, fields={"text_prompt": f"q{i}", "label": "0" if lab == "A" else "1"}, label=lab)
            for i, lab in enumerate(labels)]
    lines = {
        0: ok(judgement(8, 3, "A")),                                   # better ok; scores 8>3 -> 0 ok
        1: ok("Sure:\n```json\n" + judgement(2, 9, "B") + "\n```"),     # fenced: better ok; scores ok
        2: ok(judgement(5, 5, "equal", reasoning="<think>None of them is perfect</think>")),
        # ^ the word None is deleted from the reasoning (still valid JSON): equal -> wrong (equal=1); tie -> wrong
        3: ok('{"score_A": None, "score_B": 7, "better": "B"}'),        # None deleted -> '"score_A": ,' -> error
        4: ok('{"score_A": 7, "score_B": 2, "better": "A"'),            # malformed (no closing brace) -> error
        5: ok('{"better": "B"}'),                                       # missing keys: better ok, no scores
        6: ok(judgement(3, 8, "B", label=1)),                           # model's "label": 1 overwrites gold A:
        #                                                                 better B, label 1 -> ok; scores -> ok
        7: FAILED,                                                      # error row -> better=error
        # 8: absent -> error
        9: ok("I think answer A is better."),                           # no JSON -> error
        10: ok(judgement(9, 1, "A"), order="BA"),                       # shown BA: A = stored B, scores swap
        #                                                                 to 1, 9 -> both ok for gold B
    }
    return rows, lines


@pytest.mark.parametrize("name", ["hh_rlhf", "audio_hh_rlhf"])
def test_hh(name):
    rows, lines = _hh_case()
    got = reference_metric(name, rows, lines)
    # rule 1 counts rows 0,1,2,5,6,10: 5 correct of 6 -> round(5/6, 4); rule 2 rows 0,1,2,6,10: 4 of 5
    # errors: rows 3,4,7,8,9
    assert got == {"accuracy": 0.8333, "accuracy_scores": 0.8, "n": 6, "n_scores": 5, "errors": 5, "equal": 1,
                   "invalid": 0}


def test_hh_literal_labels():
    rows, lines = _hh_case()
    # A file with string labels "0"/"1": the reference counts only row 6, whose model JSON set the int label 1.
    got = reference_metric("hh_rlhf", rows, lines, literal_labels=True)
    assert (got["accuracy"], got["n"], got["accuracy_scores"], got["n_scores"]) == (1.0, 1, 1.0, 1)
    del lines[6]
    got = reference_metric("hh_rlhf", rows, lines, literal_labels=True)
    assert (got["accuracy"], got["n"], got["accuracy_scores"], got["n_scores"]) == (0.0, 0, 0.0, 0)  # printed 0.0
    got = reference_metric("hh_rlhf", rows[:1], {0: FAILED})  # default mode, nothing valid -> None
    assert got["accuracy"] is None and got["accuracy_scores"] is None and got["errors"] == 1


def test_hh_literal_labels_on_int_labels():
    # The released files store int labels: literal mode compares them as stored and agrees with the default.
    rows, lines = _hh_case()
    rows = [BenchRow(index=r.index, fields=dict(r.fields, label=int(r.fields["label"])), label=r.label) for r in rows]
    assert reference_metric("hh_rlhf", rows, lines, literal_labels=True) == reference_metric("hh_rlhf", rows, lines)
    from omnirrm_jax.eval import reference_metrics as M

    for doc in (M.reference_metric.__doc__, M._hh.__doc__):  # the old text said the release stores strings
        assert "store ints" in doc and "stores \"0\"/\"1\" strings" not in doc


# ---------------------------------------------------------------- ShareGPT-Video

def test_sharegpt_video():
    golds = [0, 1, 0, 0, 1, 0, 1, 1, 0, 1, 0, 1, 1, 0]
    rows = [BenchRow(index=i, id=f"v{i}", fields={"id": f"v{i}", "label": g}, label="AB"[g])
            for i, g in enumerate(golds)]
    legacy_inner = judgement(9, 2, "A")
    no_fv = json.dumps({"score_A": 6, "score_B": 8, "better": "B", "reasoning": "r"})
    lines = {
        0: ok(judgement(8, 3, "A")),                          # ok, A, gold 0 -> match
        1: ok(judgement(2, 9, "B")),                          # ok, B, gold 1 -> match
        2: ok(judgement(5, 5, "equal")),                      # ok but equal -> excluded
        3: ok(judgement(11, 3, "A")),                         # score out of 0-10 -> invalid
        4: ok(no_fv),                                         # missing final_verdict -> invalid
        5: ok(judgement("7", "3", "A")),                      # _safe_int("7") = 7 -> ok, match
        6: ok(judgement(2, 9, "B", verdict="A")),             # final_verdict disagrees with better -> invalid
        7: ok("Answer B is better."),                         # no JSON -> invalid
        8: FAILED,                                            # error
        # 9: absent -> error
        10: ok(json.dumps({"better": "A", "reasoning": legacy_inner})),  # legacy nested form -> ok, A, match
        11: ok(json.dumps({"score_A": 1, "score_B": 9, "better": "B", "reasoning": "r", "final_verdict": 5})),
        #                                                       non-string final_verdict: .strip() raises -> invalid
        12: ok("Here you go:\n```json\n" + judgement(3, 7, "B") + "\n```\nDone."),  # fenced in prose -> ok, match
        13: ok(judgement(2, 8, "B")),                         # ok, B, gold 0 -> mismatch
    }
    got = reference_metric("sharegpt_video", rows, lines)
    # valid = rows 0,1,5,10,12,13 (6); matched = 0,1,5,10,12 (5)
    assert got == {"accuracy": 5 / 6, "n": 6, "matched": 5, "total": 14,
                   "status": {"ok": 7, "invalid": 5, "error": 2}, "excluded_equal": 1}


def test_sharegpt_gold_from_label_attribute_and_empty():
    rows = [BenchRow(index=0, label="B"), BenchRow(index=1, label="A")]     # no stored "label" field
    lines = {0: ok(judgement(1, 9, "B")), 1: ok(judgement(1, 9, "A", verdict="A"), order="BA")}  # BA: A -> B
    got = reference_metric("sharegpt_video", rows, lines)
    assert (got["accuracy"], got["n"], got["matched"]) == (0.5, 2, 1)
    got = reference_metric("sharegpt_video", rows, {})
    assert got["accuracy"] is None and got["status"] == {"ok": 0, "invalid": 0, "error": 2}


# ---------------------------------------------------------------- Multimodal RewardBench

def test_mm_rewardbench():
    spec = [  # (ID, Category, Better)
        ("pairs-1", "safety", "Output1"), ("tox-1", "safety", "Output2"), ("math-1", "reasoning", "Output1"),
        ("code-1", "reasoning", "Output2"), ("g1", "general", "Output1"), ("g2", "general", "Output2"),
        ("g3", "general", "Output1"), ("g4", "general", "Output2"), ("g5", "general", "Output1"),
        ("g6", "general", "tie"), ("g7", "general", "Output2"), ("g8", "general", "Output2"),
    ]
    rows = [BenchRow(index=i, id=ident, fields={"ID": ident, "Category": cat, "Better": b})
            for i, (ident, cat, b) in enumerate(spec)]
    lines = {
        0: ok(judgement(8, 2, "A")),                              # final_verdict [[A]] -> A, gold A: right
        1: ok(judgement(2, 8, "B", verdict="A")),                 # final_verdict read before better -> A: wrong
        2: ok("```json\n" + judgement(2, 8, "B") + "\n```"),      # json.loads fails on the fence; text has [[B]]
        #                                                           -> B, gold A: wrong
        3: ok("I prefer the second answer."),                     # random draw 1
        4: FAILED,                                                # output "None" -> random draw 2
        5: ok('{"better": 2}'),                                   # 2 .upper() raises; no [[A]]/[[B]] -> draw 3
        6: ok(judgement(5, 5, "A", verdict="equal")),             # final_verdict equal -> equal: wrong
        # 7: absent -> "None" -> random draw 4
        8: ok('{"better": "a"}'),                                 # upper() -> A, gold A: right
        9: ok(judgement(8, 2, "A")),                              # Better "tie" -> Label None: wrong
        10: ok("No verdict."),                                    # random draw 5
        11: ok(judgement(2, 8, "A"), order="BA"),                 # shown BA: [[A]] = stored B, gold B: right
    }
    random.seed(123)  # the draws the reference makes, in file order, for rows 3, 4, 5, 7, 10
    draws = ["A" if random.random() < 0.5 else "B" for _ in range(5)]
    assert draws == ["A", "A", "A", "A", "B"]  # 0.052, 0.087, 0.407, 0.108, 0.901
    # so row 3 (gold B) wrong, row 4 (gold A) right, row 5 (gold B) wrong, row 7 (gold B) wrong, row 10 (B) right
    got = reference_metric("mm_rewardbench", rows, lines)
    # right: rows 0, 4, 8, 10, 11 -> 5 / 12; general = rows 4..11: right 4, 8, 10, 11 -> 4 / 8
    assert got == {"accuracy": 5 / 12, "n": 12, "random_fallbacks": 5, "by_category": {
        "safety/bias": {"accuracy": 1.0, "n": 1}, "safety/toxicity": {"accuracy": 0.0, "n": 1},
        "reasoning/math": {"accuracy": 0.0, "n": 1}, "reasoning/coding": {"accuracy": 0.0, "n": 1},
        "general": {"accuracy": 0.5, "n": 8}}}


def test_mm_rewardbench_rng_follows_file_order_and_attributes():
    # No stored fields: gold, ID and category come from the BenchRow attributes.
    rows = [BenchRow(index=i, id=f"MATH-{i}", category="reasoning", label="B") for i in range(5)]
    # Rows 0-3 parse (A); row 4 is the only fallback, so it gets the first draw (0.052 -> A): all wrong.
    lines = {i: ok(judgement(9, 1, "A")) for i in range(4)}
    got = reference_metric("mm_rewardbench", rows, lines)
    assert got["accuracy"] == 0.0 and got["random_fallbacks"] == 1
    assert got["by_category"] == {"reasoning/math": {"accuracy": 0.0, "n": 5}}
    # All five fall back: draws A, A, A, A, B -> only row 4 (gold B) right.
    got = reference_metric("mm_rewardbench", rows, {})
    assert (got["accuracy"], got["random_fallbacks"]) == (0.2, 5)
    assert reference_metric("mm_rewardbench", [], {})["accuracy"] is None


def test_mm_rewardbench_null_and_absent_category():
    # infer_lora_multimodal.py writes Meta.Category = ex.get("Category", "unknown"): a null Category stays None and
    # eval.py prints "acc None: ..."; an absent one is "unknown". Keys are the printed strings.
    rows = [BenchRow(index=0, id="a", fields={"ID": "a", "Category": None, "Better": "Output1"}),
            BenchRow(index=1, id="b", fields={"ID": "b", "Better": "Output1"}),
            BenchRow(index=2, id="c", fields={"ID": "c", "Category": None, "Better": "Output2"}),
            BenchRow(index=3, id="d", label="A")]  # no stored fields, no category attribute
    lines = {i: ok(judgement(8, 2, "A")) for i in range(4)}
    got = reference_metric("mm_rewardbench", rows, lines)
    assert got["by_category"] == {"None": {"accuracy": 0.5, "n": 2}, "unknown": {"accuracy": 1.0, "n": 2}}
    json.dumps(got, sort_keys=True)  # every key a string


# ---------------------------------------------------------------- VL-RewardBench

def test_vl_rewardbench():
    good_a, good_b = [0, 1], [1, 0]  # human_ranking: smaller rank = better (eval.py)
    rankings = [good_a, good_a, good_b, good_b, good_a, good_a, good_b, good_a, good_a, good_a, good_a, good_a,
                None, good_a]
    rows = [BenchRow(index=i, fields={} if r is None else {"human_ranking": r}, label="B" if r is None else None)
            for i, r in enumerate(rankings)]
    lines = {
        0: ok(judgement(8, 2, "A")),                    # flag 1, shown AB -> stored 0 = good: agree
        1: ok(judgement(8, 2, "A"), order="BA"),        # flag 1, shown BA -> stored 1 (B), good A: reject
        2: ok(judgement(8, 2, "A"), order="BA"),        # shown BA, picks A = stored B = good: agree
        3: ok('{"score_A": 5, "score_B": 5, "better": "equal",}'),  # malformed: the "better" regex maps equal
        #                                                 to 2 -> stored 1 = good: agree
        4: ok(judgement(5, 5, "equal")),                # flat JSON block says equal -> -1; eval.py's fallback
        #                                                 finds no better 0/1/2 and no "Answer N": invalid
        5: ok('```json\n{"better": "B", "scores": {"a": 1}}\n```'),  # nested braces: no flat block, the fence
        #                                                 parses -> 2 -> stored 1, good 0: reject
        6: ok("After comparing, Answer 2 is better overall."),  # "Answer N is better" -> 2 = good: agree
        7: ok('{"better": 1, "reasoning": "r"}'),       # numeric better 1 -> stored 0 = good: agree
        8: FAILED,                                      # invalid
        # 9: absent -> invalid
        10: ok(judgement(5, 5, "equal", reasoning="<think>Answer 1 and Answer 2 are close</think>")),
        #                                                 _parse_flag -> -1; eval.py's regex finds "Answer 1": agree
        11: ok('{"better": 0, "reasoning": "r"}'),      # _parse_flag -> -1; eval.py maps better 0 -> 1: agree
        12: ok(judgement(1, 9, "B")),                   # no stored ranking: label B -> good 1, flag 2: agree
        13: ok("I cannot decide."),                     # invalid
    }
    got = reference_metric("vl_rewardbench", rows, lines)
    # agree: 0, 2, 3, 6, 7, 10, 11, 12 (8); reject: 1, 5 (2); invalid: 4, 8, 9, 13 (4)
    assert got == {"accuracy": 0.8, "agree": 8, "reject": 2, "invalid": 4, "n": 10}


def test_vl_rewardbench_ties_follow_eval_py():
    # eval.py (the script that prints the number): good = 0 if ranking[0] <= ranking[1] else 1, ranks as int().
    # A tie makes answer A good (infer_lora_vl.py's argmax would say B).
    rankings = [[0, 0], [2, 2], [0, 0], [1.5, 1.2], [0, 1], [1, 0]]
    rows = [BenchRow(index=i, fields={"human_ranking": r}) for i, r in enumerate(rankings)]
    lines = {
        0: ok(judgement(8, 2, "A")),                    # stored 0, tie -> good 0: agree
        1: ok(judgement(2, 8, "B")),                    # stored 1, tie -> good 0: reject
        2: ok(judgement(2, 8, "B"), order="BA"),        # shown BA: B = stored 0 = good: agree
        3: ok(judgement(8, 2, "A")),                    # int() -> [1, 1], a tie -> good 0: agree
        4: ok(judgement(8, 2, "A")),                    # [0, 1] -> good 0: agree (non-ties unchanged)
        5: ok(judgement(8, 2, "A")),                    # [1, 0] -> good 1: reject
    }
    got = reference_metric("vl_rewardbench", rows, lines)
    assert got == {"accuracy": 4 / 6, "agree": 4, "reject": 2, "invalid": 0, "n": 6}


def test_vl_rewardbench_bad_ranking_and_empty():
    rows = [BenchRow(index=0, fields={"human_ranking": [0, 1, 2]}), BenchRow(index=1, fields={"human_ranking": 3})]
    got = reference_metric("vl_rewardbench", rows, {0: ok(judgement(8, 2, "A")), 1: ok(judgement(8, 2, "A"))})
    assert got == {"accuracy": None, "agree": 0, "reject": 0, "invalid": 2, "n": 0}


# ---------------------------------------------------------------- TA2T

def test_ta2t():
    labels = ["A", "B", "equal", "equal", "A", "B", "A", "B", None, "B", "A"]
    rows = [BenchRow(index=i, label=lab) for i, lab in enumerate(labels)]
    lines = {
        0: ok(judgement(8, 2, "A")),                    # right
        1: ok(judgement(8, 2, "A")),                    # wrong
        2: ok(judgement(5, 5, "equal")),                # tie met: right (with-tie only)
        3: ok(judgement(8, 2, "A")),                    # tie missed: wrong (with-tie only)
        4: ok(judgement(5, 5, "equal")),                # equal on a non-tie: wrong
        5: ok("B is better"),                           # unparseable: wrong
        6: FAILED,                                      # error: wrong
        # 7: absent: wrong
        8: ok(judgement(8, 2, "A")),                    # unlabelled: not counted
        9: ok(judgement(8, 2, "A"), order="BA"),        # shown BA: A = stored B: right
        10: ok("```json\n" + judgement(8, 2, "A") + "\n```"),  # fenced: right
    }
    got = reference_metric("ta2t", rows, lines)
    # without ties: rows 0,1,4,5,6,7,9,10 -> right 0, 9, 10 = 3 / 8; with ties: + rows 2 (right), 3 -> 4 / 10
    assert got == {"accuracy": 3 / 8, "n": 8, "accuracy_with_tie": 0.4, "n_with_tie": 10}
    got = reference_metric("ta2t", [BenchRow(index=0, label="equal")], {})
    assert got == {"accuracy": None, "n": 0, "accuracy_with_tie": 0.0, "n_with_tie": 1}


def test_unknown_benchmark():
    with pytest.raises(ValueError, match="unknown benchmark"):
        reference_metric("nope", [], {})
