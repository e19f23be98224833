"""The rewards must equal the published plugin's values (tests/rubric/reference_plugin.py is the oracle)."""
import json
import math
import random

import pytest

from omnirrm_jax.rubric import (
    combined_reward, content_reward, format_checks, format_reward, gold_from_solution, reward_components,
    rubric_counts, rubric_reward,
)
from tests.rubric.cases import BASE, CASES, FULL, PERFECT, J
from tests.rubric.reference_plugin import MMContentORM, MMFormatORM, MMRubricORM

FMT, CNT, RUB = MMFormatORM(), MMContentORM(), MMRubricORM()


def plugin_input(c):
    """What ms-swift hands the plugin: messages[-1]['content'] of a rollout, or the string itself."""
    return c[-1]["content"] if isinstance(c, list) and c and isinstance(c[-1], dict) else c


def oracle(completions, golds, cmp_gt):
    xs = [plugin_input(c) for c in completions]
    better, sa, sb = (list(t) for t in zip(*golds))
    rub = RUB(xs) if cmp_gt is None else RUB(xs, cmp_gt=cmp_gt)
    return FMT(xs), CNT(xs, better=better, score_A=sa, score_B=sb), rub


def ours(completions, golds, cmp_gt):
    better, sa, sb = (list(t) for t in zip(*golds))
    return (format_reward(completions), content_reward(completions, better=better, score_A=sa, score_B=sb),
            rubric_reward(completions, cmp_gt=cmp_gt))


def assert_same(got, want, ctx):
    for name, g, w in zip(("format", "content", "rubric"), got, want):
        assert len(g) == len(w), (ctx, name)
        for i, (x, y) in enumerate(zip(g, w)):
            assert abs(x - y) <= 1e-9, f"{ctx} [{i}] {name}: ours {x!r} != reference {y!r}"


def test_table_is_large():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_case_matches_reference(case):
    name, completion, gold, cmp_gt = case
    assert_same(ours([completion], [gold], cmp_gt), oracle([completion], [gold], cmp_gt), name)


def test_whole_table_as_one_batch():
    """Per-sample gold lists, one batch: the same values as case by case (cmp_gt is per batch)."""
    for cmp_gt in (None, 0.2):
        comps = [c[1] for c in CASES]
        golds = [c[2] for c in CASES]
        assert_same(ours(comps, golds, cmp_gt), oracle(comps, golds, cmp_gt), f"batch cmp_gt={cmp_gt}")


def test_hand_checked_values():
    """A few values worked out by hand, so the oracle itself is pinned too."""
    assert format_reward([PERFECT]) == [pytest.approx(1.0)]
    assert content_reward([PERFECT], better=["A"], score_A=[8], score_B=[6]) == [pytest.approx(1.0)]
    # direction wrong (-0.6) + 0.4 * (1 - 2 * (|8-4| + |6-9|) / 20) = -0.6 + 0.4 * 0.3
    assert content_reward([PERFECT], better=["B"], score_A=[4], score_B=[9]) == [pytest.approx(-0.48)]
    # all five dimensions covered and compared: 0.8 + 0.2; with cmp_gt 0.3: 0.8 + 0.2 * 0.7
    assert rubric_reward([PERFECT]) == [pytest.approx(1.0)]
    assert rubric_reward([PERFECT], cmp_gt=0.3) == [pytest.approx(0.94)]
    # fenced: format full marks, rubric -1 (it json.loads the raw text)
    fenced = "```json\n" + PERFECT + "\n```"
    assert format_reward([fenced]) == [pytest.approx(1.0)] and rubric_reward([fenced]) == [-1.0]
    # bool scores pass the format check; 7.9 vs 7.2 truncate to a tie and fail content's consistency
    assert format_checks(J(score_A=True, score_B=False))["field_values"] is True
    assert content_reward([J(score_A=7.9, score_B=7.2)], better="A", score_A=8, score_B=6) == [-1.0]
    # the article "a" counts as a mention of answer A
    assert rubric_counts("Fluency: a clear reply, b not.") == (1, 1)
    # a per-sample cmp_gt list is ignored like in the plugin
    assert rubric_reward([PERFECT], cmp_gt=[0.9]) == rubric_reward([PERFECT])


def test_combined_and_components():
    comps = [c[1] for c in CASES]
    golds = [c[2] for c in CASES]
    better, sa, sb = (list(t) for t in zip(*golds))
    parts = reward_components(comps, better=better, score_A=sa, score_B=sb, cmp_gt=0.25)
    f, c, r = oracle(comps, golds, 0.25)
    assert parts["format"] == f and parts["content"] == c and parts["rubric"] == r
    want = [0.4 * a + 0.4 * b + 0.2 * d for a, b, d in zip(f, c, r)]
    assert parts["total"] == combined_reward(comps, better=better, score_A=sa, score_B=sb, cmp_gt=0.25)
    assert all(abs(x - y) <= 1e-12 for x, y in zip(parts["total"], want))
    w = combined_reward([PERFECT], better="A", score_A=8, score_B=6, weights=(1.0, 0.0, 0.0))
    assert w == format_reward([PERFECT])


def test_scalar_gold_is_broadcast_like_the_plugin():
    comps = [PERFECT, J(score_A=2, score_B=9, better="B", final_verdict="<answer>[[B]]</answer>")]
    assert content_reward(comps, better="A", score_A=8, score_B=6) == CNT(comps, better="A", score_A=8, score_B=6)


def test_bad_arguments_raise_clearly():
    with pytest.raises(ValueError, match="3 values for 2"):
        content_reward([PERFECT, PERFECT], better=["A"] * 3, score_A=[8, 8], score_B=[6, 6])
    with pytest.raises(TypeError, match="not a single string"):
        format_reward(PERFECT)
    with pytest.raises(ValueError, match="unknown reward mode"):
        format_reward([PERFECT], mode="strict")
    with pytest.raises(ValueError, match="3 entries"):
        combined_reward([PERFECT], better="A", score_A=8, score_B=6, weights=(0.5, 0.5))


def test_gold_from_solution():
    sols = [json.dumps({"better": "A", "score_A": 8, "score_B": 6}), {"better": "B", "score_A": 1, "score_B": 9}]
    assert gold_from_solution(sols) == {"better": ["A", "B"], "score_A": [8, 1], "score_B": [6, 9]}
    with pytest.raises(ValueError, match=r"solution\[1\]"):
        gold_from_solution([sols[0], "not json"])


# ---------------------------------------------------------------- property-style random comparison

_WORDS = ("fluency", "coherent", "flow", "relevance", "related", "alignment", "accuracy", "correct", "precision",
          "reasoning", "analysis", "logical", "inference", "safety", "safe", "ethical", "toxic", "harmless",
          "Answer A", "Answer B", "A", "B", "a", "b", "both", "each", "responses", "candidates", "better", "worse",
          "more accurate", "less clear", "outperforms", "superior", "and", "the", "is", ".", ",", ":", "\n",
          "relevant", "fluent", "complete", "ethics", "Model", "option B", "A's", "AB", "Ａ", "é")
_SCORES = (0, 1, 5, 7, 8, 10, -1, 11, 7.5, 7.0, "7", " 3", "x", True, False, None, [3], 10**20)
_BETTER = ("A", "B", "equal", "a", "Equal", None, "C", "", ["A"], 1)
_VERDICT = ("<answer>[[A]]</answer>", "<answer>[[B]]</answer>", "<answer>[[equal]]</answer>", "[[A]]",
            " <answer>[[A]]</answer> x", "<answer>[[a]]</answer>", None, 3, ["<answer>[[B]]</answer>"], "")


def _random_reasoning(rng):
    words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(0, 40)))
    wrap = rng.random()
    if wrap < 0.6:
        return f"<think>{words}</think>"
    if wrap < 0.7:
        return f"<THINK> {words} </think>"
    if wrap < 0.8:
        return words
    return rng.choice((None, 5, {"fluency": words}, f"<think>{words}", f"x <think>{words}</think> y"))


def _random_completion(rng):
    roll = rng.random()
    if roll < 0.05:
        return "".join(chr(rng.randint(0, 0x2FFF)) for _ in range(rng.randint(0, 60)))
    obj = {"score_A": rng.choice(_SCORES), "score_B": rng.choice(_SCORES), "better": rng.choice(_BETTER),
           "reasoning": _random_reasoning(rng), "final_verdict": rng.choice(_VERDICT)}
    if rng.random() < 0.4:  # make it well-formed and self-consistent more often than chance would
        a, b = rng.randint(0, 10), rng.randint(0, 10)
        obj.update(score_A=a, score_B=b, better="A" if a > b else "B" if b > a else "equal")
        obj["final_verdict"] = f"<answer>[[{obj['better']}]]</answer>"
    for k in list(obj):
        if rng.random() < 0.07:
            del obj[k]
    if rng.random() < 0.1:
        obj["extra"] = 1
    text = json.dumps(obj, ensure_ascii=rng.random() < 0.5)
    shape = rng.random()
    if shape < 0.1:
        text = f"```json\n{text}\n```"
    elif shape < 0.15:
        text = f"```\n{text}```"
    elif shape < 0.22:
        text = f"[{text}]"
    elif shape < 0.27:
        text = text[: rng.randint(0, len(text))]
    elif shape < 0.3:
        text = "Sure! " + text
    elif shape < 0.33:
        return [{"role": "assistant", "content": text}]
    return text


@pytest.mark.parametrize("seed", range(4))
def test_random_completions_match_reference(seed):
    rng = random.Random(seed)
    comps = [_random_completion(rng) for _ in range(400)]
    golds = [(rng.choice(("A", "B", "equal", "x", None)), rng.choice((0, 4, 8, 10, 12, "5", 6.6)),
              rng.choice((0, 3, 9, -2, "7"))) for _ in comps]
    cmp_gt = rng.choice((None, 0.0, 0.35, 1.0, "0.6", [0.2], "nan"))
    assert_same(ours(comps, golds, cmp_gt), oracle(comps, golds, cmp_gt), f"seed {seed}")
    # the values are what they should be: in range and finite
    f, c, r = ours(comps, golds, cmp_gt)
    assert all(0.0 <= x <= 1.0 + 1e-12 for x in f) and all(-1.0 <= x <= 1.0 for x in c)
    assert all(x == -1.0 or 0.0 <= x <= 1.0 + 1e-12 for x in r) and all(map(math.isfinite, f + c + r))


def test_base_fixture_is_what_the_prompts_ask_for():
    assert set(BASE) == {"score_A", "score_B", "better", "reasoning", "final_verdict"}
    assert FULL.startswith("<think>") and FULL.endswith("</think>")
