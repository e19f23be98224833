"""Selection strategies on synthetic items whose right pick is known: a scorer built from hand-set verdict logits
(turned into probabilities by `eval.verdict.to_probs`, the judge's own code) sits at the boundary between "judge a
pair" and "select"; everything after it is the real selection code."""
import pytest

from omnirrm_jax.bon import run as R
from omnirrm_jax.bon import strategies as S
from omnirrm_jax.bon.items import BonItem
from omnirrm_jax.eval.verdict import to_probs


def _item(key, candidates, gold, bench="mmmu"):
    return BonItem(key=key, where=f"synthetic line {key + 1}", id=str(key), bench=bench, question="q?",
                   options=("w", "x", "y", "z"), gold=gold, media={}, candidates=tuple(candidates), record={})


class LogitScorer:
    """Verdict logits from a hidden quality per answer: logit(A) = quality(A) + bias, logit(B) = quality(B),
    logit(equal) = fixed. `bias` > 0 is a judge that prefers whatever is shown first."""

    def __init__(self, quality, bias=0.0, equal=-5.0):
        self.quality, self.bias, self.equal = quality, bias, equal
        self.asked = []

    def probs(self, r):
        return to_probs([self.quality[r.answer_a] + self.bias, self.quality[r.answer_b], self.equal], "better").probs

    def verdicts(self, requests):
        self.asked += [(r.answer_a, r.answer_b) for r in requests]
        return [max(p, key=p.get) for p in map(self.probs, requests)]

    def rewards(self, requests):
        self.asked += [(r.answer_a, r.answer_b) for r in requests]
        return [p["A"] - p["B"] for p in map(self.probs, requests)]


QUALITY = {"A": 0.0, "B": 3.0, "C": 1.0, "D": -1.0}


def _run(items, scorer, names=R.DEFAULT_STRATEGIES, **kw):
    return R.run_selection(items, scorer, R.SelectOptions(strategies=tuple(names), **kw))


def test_unbiased_judge_every_judge_strategy_finds_the_best():
    items = [_item(0, "ACBDA", "B"), _item(1, "DDCAB", "B"), _item(2, "CADC", "C")]
    out = _run(items, LogitScorer(QUALITY), max_n=5)
    assert out["ns"] == [2, 3, 4, 5]
    for name in ("elimination", "tournament", "knockout", "reward"):
        picks = out["strategies"][name]["picks"]
        assert [items[k].candidates[p] for k, p in enumerate(picks[5])] == ["B", "B", "C"], name
        assert [items[k].candidates[p] for k, p in enumerate(picks[2])] == ["C", "D", "C"], name
    ref = out["strategies"]["reward_ref"]["picks"]
    assert [items[k].candidates[p] for k, p in enumerate(ref[5])] == ["B", "B", "C"]
    acc = out["strategies"]["elimination"]["accuracy"]
    assert acc[2] == pytest.approx(1 / 3) and acc[5] == 1.0
    assert out["strategies"]["oracle"]["accuracy"][5] == 1.0
    assert out["strategies"]["first"]["accuracy"][5] == pytest.approx(1 / 3)  # only item 2 starts right
    assert out["strategies"]["majority"]["picks"][5] == [0, 0, 0]  # A x2 (first seen), D x2 first, C x2


def test_elimination_is_the_reference_loop():
    """(incumbent = A, challenger = B); only "B" replaces; the pick for N is the incumbent after N candidates."""
    scorer = LogitScorer(QUALITY)
    out = _run([_item(0, "ABCB", "B")], scorer, names=["elimination"], max_n=4)
    assert scorer.asked == [("A", "B"), ("B", "C")]  # B v B is identical text: no call
    assert out["strategies"]["elimination"]["picks"] == {2: [1], 3: [1], 4: [1]}
    assert out["strategies"]["elimination"]["comparisons"] == 3 and out["strategies"]["elimination"]["judge_calls"] == 2


class EqualScorer(LogitScorer):
    def verdicts(self, requests):
        return ["equal" if r.answer_b != "garbage" else "not json" for r in requests]


def test_equal_or_unparseable_keeps_the_incumbent():
    out = _run([_item(0, ["A", "B", "garbage"], "B")], EqualScorer(QUALITY), names=["elimination"], max_n=3)
    assert out["strategies"]["elimination"]["picks"] == {2: [0], 3: [0]}


def test_position_bias_fools_elimination_not_the_two_order_strategies():
    """A judge that adds +4 to whatever is shown as A, and the best answer (B) only 3 above the first (A): elimination
    keeps the first; the round robin and the scalar judge both orders, so the bias cancels and B wins."""
    quality = {"A": 0.0, "B": 3.0, "C": -3.0, "D": -4.0}
    items = [_item(0, "ACDB", "B"), _item(1, "ADBC", "B")]
    out = _run(items, LogitScorer(quality, bias=4.0), names=["elimination", "tournament", "reward"], max_n=4)
    assert out["strategies"]["elimination"]["picks"][4] == [0, 0]
    for name in ("tournament", "reward"):
        assert out["strategies"][name]["accuracy"][4] == 1.0, name


def test_distinct_elimination_as_the_videomme_script():
    """Over distinct answers in first-appearance order; the pick for N uses the distinct answers among the first N."""
    scorer = LogitScorer(QUALITY)
    items = [_item(0, "CCABB", "B", bench="videomme")]
    out = _run(items, scorer, names=["elimination"], max_n=5)
    assert out["strategies"]["elimination"]["picks"] == {2: [0], 3: [0], 4: [3], 5: [3]}
    assert scorer.asked == [("C", "A"), ("C", "B")]


def test_short_items_and_majority_ties():
    items = [_item(0, "BA", "A"), _item(1, "B", "B"), _item(2, "", "C")]
    out = _run(items, None, names=["first", "majority", "oracle"], max_n=10)
    assert out["ns"] == [2]
    assert out["strategies"]["majority"]["picks"][2] == [0, 0, None]
    assert out["strategies"]["oracle"]["correct"][2] == 2 and out["strategies"]["first"]["correct"][2] == 1


def test_answer_form_text_shows_the_option():
    scorer = LogitScorer({"A. w": 0.0, "B. x": 2.0})
    _run([_item(0, "AB", "B")], scorer, names=["elimination"], max_n=2, answer_form="text")
    assert scorer.asked == [("A. w", "B. x")]


def test_bad_options_are_user_errors():
    items = [_item(0, "AB", "A")]
    with pytest.raises(R.BonOptionError, match="unknown strategy nope"):
        _run(items, None, names=["nope"])
    with pytest.raises(R.BonOptionError, match="need a judge"):
        _run(items, None, names=["elimination"])
    with pytest.raises(R.BonOptionError, match="at least 2"):
        _run(items, None, names=["first"], max_n=1)
    with pytest.raises(R.BonOptionError, match="bon sample"):
        R.run_selection([_item(0, "AB", "A").__class__(**{**_item(0, "AB", "A").__dict__, "candidates": None})],
                        None, R.SelectOptions(strategies=("first",)))
    assert set(S.USES_JUDGE) < set(S.STRATEGIES)
