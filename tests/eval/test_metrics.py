"""The `omnirrm` metric on hand-built rows: every expected number is worked out in the comments."""
import json

import pytest

from omnirrm_jax.eval.benchmarks import BenchRow
from omnirrm_jax.eval.metrics import judged_verdict, omnirrm_metric
from omnirrm_jax.rubric.schema import format_judgement

SCORES = {"A": (8, 3), "B": (3, 8), "equal": (5, 5)}
BROKEN = '{"score_A": 8, "score_B"'


def J(better):
    """A well-formed judgement saying `better` (in the shown labels)."""
    return format_judgement(*SCORES[better], better, "Fluency: fine. Accuracy: fine.")


def L(order, output=None, error=None, probs=None):
    return {"order": order, "output": output, "error": error, "probs": probs}


def rows_of(*labels, categories=None):
    cats = categories or [None] * len(labels)
    return [BenchRow(index=i, label=lab, category=c) for i, (lab, c) in enumerate(zip(labels, cats))]


def MM(s1, s2, better, **extra):
    obj = {"score_1": s1, "score_2": s2, "better": better, "reasoning": "<think>Accuracy: fine.</think>",
           "final_verdict": f"<answer>[[{better}]]</answer>", **extra}
    return json.dumps(obj)


def test_two_orders_every_failure_counts():
    rows = rows_of("A", "A", "B", "B")
    lines = {
        (0, "AB"): L("AB", J("A")), (0, "BA"): L("BA", J("B")),    # right twice (BA's shown B is stored A): 1
        (1, "AB"): L("AB", J("A")), (1, "BA"): L("BA", J("A")),    # BA's shown A = stored B, wrong: 0.5
        (2, "AB"): L("AB", BROKEN),                                # parse failure: wrong
        (2, "BA"): L("BA", error={"reason": "oom", "detail": "x"}),  # error line: wrong -> row 0
        (3, "AB"): L("AB", J("B")),                                # right; BA missing -> 0.5
    }
    m = omnirrm_metric(rows, lines, bootstrap=0)
    assert m["orders"] == ["AB", "BA"]
    assert (m["n"], m["n_rows"], m["unlabelled"]) == (4, 4, 0)
    assert m["accuracy_ab"] == 0.75     # rows 0, 1, 3
    assert m["accuracy_ba"] == 0.25     # row 0 only
    assert m["accuracy"] == 0.5         # (1 + 0.5 + 0 + 0.5) / 4
    assert m["accuracy_without_ties"] == 0.5 and m["n_ties"] == 0
    assert m["swap_consistency"] == 0.5 and m["n_consistency"] == 2  # rows 0 (A/A) and 1 (A/B)
    assert m["parse_failure_rate"] == pytest.approx(1 / 6)  # 6 outputs present, 1 fails
    assert (m["parse_failures"], m["n_judged"]) == (1, 6)
    assert m["errors"] == {"oom": 1} and m["missing"] == 1
    assert m["reward_accuracy"] is None and m["ci95"] is None  # no probs in the run; bootstrap=0
    assert "by_category" not in m
    json.dumps(m)


def test_single_order_run():
    rows = rows_of("A", "B", "B", None)
    lines = {(0, "AB"): L("AB", J("A")), (1, "AB"): L("AB", J("A")), (3, "AB"): L("AB", J("A"))}
    m = omnirrm_metric(rows, lines, bootstrap=0)
    assert m["orders"] == ["AB"]
    # row 0 right, row 1 wrong, row 2 missing; row 3 is unlabelled and not scored: 1/3
    assert m["accuracy"] == m["accuracy_ab"] == pytest.approx(1 / 3)
    assert m["accuracy_ba"] is None and m["swap_consistency"] is None and m["n_consistency"] == 0
    assert m["missing"] == 1 and (m["n"], m["n_rows"], m["unlabelled"]) == (3, 4, 1)


def test_only_exchanged_order_run():
    rows = rows_of("A", "B")
    lines = {(0, "BA"): L("BA", J("B")), (1, "BA"): L("BA", J("A"))}  # both right once mapped back
    m = omnirrm_metric(rows, lines, bootstrap=0)
    assert m["orders"] == ["BA"] and m["accuracy_ab"] is None
    assert m["accuracy"] == m["accuracy_ba"] == 1.0 and m["missing"] == 0


def test_ties_with_and_without():
    rows = rows_of("A", "equal", "equal", "B")
    lines = {
        (0, "AB"): L("AB", J("A")), (0, "BA"): L("BA", J("B")),          # 1
        (1, "AB"): L("AB", J("equal")), (1, "BA"): L("BA", J("equal")),  # equal stays equal: 1
        (2, "AB"): L("AB", J("A")), (2, "BA"): L("BA", J("equal")),      # 0.5
        (3, "AB"): L("AB", J("A")), (3, "BA"): L("BA", J("B")),          # stored A twice, gold B: 0
    }
    m = omnirrm_metric(rows, lines, bootstrap=0)
    assert m["accuracy"] == 0.625                  # 2.5 / 4
    assert m["accuracy_without_ties"] == 0.5       # rows 0 and 3: (1 + 0) / 2
    assert m["n_ties"] == 2
    assert m["accuracy_ab"] == 0.5 and m["accuracy_ba"] == 0.75
    assert m["swap_consistency"] == 0.75           # rows 0, 1, 3 agree; row 2 (A vs equal) does not


def test_reward_accuracy_unswaps_exchanged_probs():
    rows = rows_of("A", "B", "A", "B", "equal", "A")
    out = J("A")
    lines = {
        # r_AB = .7 - .2 = .5; BA shown {A: .4, B: .5} -> stored P(A) = .5, P(B) = .4: r = .1; mean .3 > 0 -> A, right
        (0, "AB"): L("AB", out, probs={"A": .7, "B": .2, "equal": .1}),
        (0, "BA"): L("BA", out, probs={"A": .4, "B": .5, "equal": .1}),
        # r_AB = .3; BA shown {A: .1, B: .8} -> stored r = .8 - .1 = .7; mean .5 -> A, gold B: wrong
        # (without the un-swap r_BA would be -.7, mean -.2 -> "right")
        (1, "AB"): L("AB", out, probs={"A": .6, "B": .3, "equal": .1}),
        (1, "BA"): L("BA", out, probs={"A": .1, "B": .8, "equal": .1}),
        (2, "AB"): L("AB", out), (2, "BA"): L("BA", out),                  # no probs: wrong
        # r_AB = -.5 -> B, right; the error line's probs are not read
        (3, "AB"): L("AB", out, probs={"A": .2, "B": .7, "equal": .1}),
        (3, "BA"): L("BA", error={"reason": "timeout", "detail": ""}, probs={"A": .0, "B": 1.0, "equal": .0}),
        (4, "AB"): L("AB", out, probs={"A": .9, "B": .05, "equal": .05}),  # gold tie: not in reward accuracy
        (5, "AB"): L("AB", out, probs={"A": .4, "B": .4, "equal": .2}),    # r == 0: wrong
    }
    m = omnirrm_metric(rows, lines, bootstrap=0)
    assert m["n_reward"] == 5
    assert m["reward_accuracy"] == pytest.approx(0.4)  # rows 0 and 3 of 5
    assert m["errors"] == {"timeout": 1} and m["missing"] == 2  # rows 4 and 5 lack BA


def test_mm_rewardbench_score_keys():
    text = MM(8, 3, "A")
    assert judged_verdict(text, "mm_rewardbench") == ("A", None)
    v, err = judged_verdict(text)  # other templates stay strict
    assert v is None and "missing key(s): score_A, score_B" in err
    assert judged_verdict(f"```json\n{MM(2, 9, 'B')}\n```", "mm_rewardbench") == ("B", None)
    # the renamed object is still checked: scores that contradict `better`, or both key spellings at once
    v, err = judged_verdict(MM(2, 9, "A"), "mm_rewardbench")
    assert v is None and "better is A but score_A=2, score_B=9" in err
    v, err = judged_verdict(MM(8, 3, "A", score_A=8), "mm_rewardbench")
    assert v is None and "unexpected key(s)" in err
    assert judged_verdict(J("B"), "mm_rewardbench") == ("B", None)  # the standard keys pass too
    assert judged_verdict(None) == (None, "no output")

    rows = rows_of("A", "B")
    lines = {(0, "AB"): L("AB", MM(8, 3, "A")), (0, "BA"): L("BA", MM(3, 8, "B")),
             (1, "AB"): L("AB", MM(3, 8, "B")), (1, "BA"): L("BA", MM(8, 3, "A"))}
    assert omnirrm_metric(rows, lines, template="mm_rewardbench", bootstrap=0)["accuracy"] == 1.0
    strict = omnirrm_metric(rows, lines, bootstrap=0)
    assert strict["accuracy"] == 0.0 and strict["parse_failure_rate"] == 1.0


def test_line_without_output_or_error_is_counted():
    m = omnirrm_metric(rows_of("A"), {(0, "AB"): L("AB")}, bootstrap=0)
    assert m["accuracy"] == 0.0 and m["errors"] == {"no output": 1} and m["n_judged"] == 0
    assert m["parse_failure_rate"] is None


def _twenty():
    # 12 of 20 rows right in both orders, 8 wrong in both: accuracy 0.6
    rows = rows_of(*["A"] * 20)
    lines = {}
    for i in range(20):
        lines[(i, "AB")] = L("AB", J("A" if i < 12 else "B"))
        lines[(i, "BA")] = L("BA", J("B" if i < 12 else "A"))
    return rows, lines


def test_bootstrap_ci_brackets_and_is_deterministic():
    rows, lines = _twenty()
    m = omnirrm_metric(rows, lines, bootstrap=500, seed=3)
    lo, hi = m["ci95"]
    assert m["accuracy"] == 0.6 and lo < 0.6 < hi
    assert 0.3 < lo and hi < 0.9  # sd of the mean ~ sqrt(.24 / 20) = .11
    assert omnirrm_metric(rows, lines, bootstrap=500, seed=3)["ci95"] == [lo, hi]
    assert omnirrm_metric(rows, lines, bootstrap=0)["ci95"] is None
    assert omnirrm_metric(rows[:12], lines, bootstrap=100)["ci95"] == [1.0, 1.0]  # all right: no spread
    assert all(type(x) is float for x in m["ci95"])


def test_by_category():
    rows = rows_of("A", "A", "B", "B", categories=["safety", "safety", "reasoning", None])
    lines = {(0, "AB"): L("AB", J("A")), (1, "AB"): L("AB", J("B")),
             (2, "AB"): L("AB", J("B")), (3, "AB"): L("AB", J("B"))}
    m = omnirrm_metric(rows, lines, bootstrap=0, categories=True)
    assert m["by_category"] == {"(none)": {"accuracy": 1.0, "n": 1}, "reasoning": {"accuracy": 1.0, "n": 1},
                                "safety": {"accuracy": 0.5, "n": 2}}
    assert m["accuracy"] == 0.75
    json.dumps(m)


def test_empty_run():
    m = omnirrm_metric(rows_of(None), {}, bootstrap=100)
    assert m["n"] == 0 and m["unlabelled"] == 1 and m["accuracy"] is None and m["ci95"] is None
    assert m["orders"] == ["AB"] and m["missing"] == 0
