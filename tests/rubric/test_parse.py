"""parse_judgement: never raises, says why, reads what the reference tools read."""
import json
import random

import pytest

from omnirrm_jax.rubric import ParseResult, format_judgement, parse_judgement, verdict_tag
from tests.rubric.cases import CASES, FULL, PERFECT, J


def test_perfect_judgement():
    r = parse_judgement(PERFECT)
    assert r.ok and r.error == "" and r.source == "json"
    assert (r.score_A, r.score_B, r.better, r.verdict) == (8, 6, "A", "A")
    assert r.reasoning == FULL and r.final_verdict == "<answer>[[A]]</answer>"
    assert r.dimensions == ("fluency", "relevance", "accuracy", "reasoning", "safety")


@pytest.mark.parametrize("text,source", [
    ("```json\n" + PERFECT + "\n```", "json"),
    ("```JSON\n" + PERFECT + "\n```", "fenced"),
    ("Here you go:\n```\n" + PERFECT + "\n```\nDone.", "fenced"),
    ("My judgement: " + PERFECT + " Thanks!", "embedded"),
    ("[" + PERFECT + "]", "json"),
    ("\n  " + PERFECT + "\n", "json"),
])
def test_tolerated_wrappers(text, source):
    r = parse_judgement(text)
    assert r.ok, r.error
    assert r.source == source and r.better == "A"


@pytest.mark.parametrize("text,reason", [
    ("", "empty output"),
    ("Answer A is better.", "no JSON object found"),
    (PERFECT[:-10], "not valid JSON"),
    ("[" + PERFECT + ", " + PERFECT + "]", "list of 2 item(s)"),
    ("7", "top-level JSON is int"),
    (J(score_A=True), "score_A must be an integer 0-10, got true (bool)"),
    (J(score_B="6"), "score_B must be an integer"),
    (J(score_A=7.0), "(float)"),
    (J(score_A=12), "score_A out of range 0-10: 12"),
    (json.dumps({k: v for k, v in json.loads(PERFECT).items() if k != "final_verdict"}),
     "missing key(s): final_verdict"),
    ("null", "top-level JSON is NoneType"),
    (J(confidence=1), "unexpected key(s): confidence"),
    (J(better="a"), "better must be one of A, B, equal; got 'a'"),
    (J(reasoning="no tags"), "reasoning must be wrapped in <think>…</think>"),
    (J(reasoning={"fluency": "x"}), "reasoning must be a string, got dict"),
    (J(final_verdict="[[A]]"), "final_verdict must be <answer>[[A|B|equal]]</answer>"),
    (J(final_verdict="<answer>[[A]]</answer> extra"), "final_verdict must be"),
    (J(final_verdict="<answer>[[B]]</answer>"), "final_verdict says B but better is A"),
    (J(score_A=3), "better is A but score_A=3, score_B=6"),
    (None, "output is NoneType, not a string"),
    (b"{}", "output is bytes"),
])
def test_failures_are_explained(text, reason):
    r = parse_judgement(text)
    assert not r.ok and reason in r.error, r.error


def test_fields_survive_partial_failure():
    r = parse_judgement(J(extra=1, final_verdict="<answer>[[B]]</answer>"))
    assert not r.ok and r.better == "A" and r.verdict == "B" and r.score_A == 8
    assert len(r.errors) == 2


def test_every_table_case_parses_without_raising():
    for name, completion, _, _ in CASES:
        r = parse_judgement(completion)
        assert isinstance(r, ParseResult), name
        assert r.ok or r.error, name


def _garbage(rng):
    kind = rng.randrange(5)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(200))).decode("utf-8", "surrogateescape")
    if kind == 1:
        return "".join(chr(rng.randrange(0x110000)) for _ in range(rng.randrange(100)))
    if kind == 2:  # JSON-ish soup
        alphabet = '{}[]":,0123456789 truefalsnul\\u"<think></think>[[A]]`'
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(300)))
    if kind == 3:  # a real judgement with random bytes flipped
        s = list(PERFECT)
        for _ in range(rng.randint(1, 5)):
            s[rng.randrange(len(s))] = chr(rng.randrange(0x80))
        return "".join(s)
    return rng.choice(["[" * 10000, "{" * 3000 + "}" * 3000, "```", "```json\n```", "\x00", "\ud800"])


def test_parser_never_raises_on_garbage():
    rng = random.Random(0)
    for _ in range(3000):
        text = _garbage(rng)
        r = parse_judgement(text)
        assert r.ok or r.error, repr(text)[:80]


def test_format_judgement_round_trips():
    text = format_judgement(9, 2, "A", "Fluency: A better than B.")
    r = parse_judgement(text)
    assert r.ok and r.reasoning == "<think>Fluency: A better than B.</think>"
    assert list(json.loads(text)) == ["score_A", "score_B", "better", "reasoning", "final_verdict"]
    assert verdict_tag("equal") == "<answer>[[equal]]</answer>"
    with pytest.raises(ValueError):
        format_judgement(True, 2, "A", "x")
    with pytest.raises(ValueError):
        verdict_tag("C")
