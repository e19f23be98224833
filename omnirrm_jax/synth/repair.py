"""Teacher replies -> judgements in the reference schema, mending what chat models get wrong.

First `rubric.parse.parse_judgement` (code fences, JSON inside prose); then the reference annotation scripts'
repairs (`extract_json` of "Omni Preference Construction/*/doubao_example.py"): control characters removed,
unquoted keys quoted, trailing commas dropped, "<integer>" placeholders read as 0; and a few more: single-quoted
JSON, scores written as strings ("8"), reasoning not wrapped in <think> (wrapped, as the reference does), a missing
final_verdict rebuilt from `better` (or `better` read from final_verdict when only that names the winner; when
the two disagree the reply is a failure, "verdict_conflict"), "Equal" in any case, Python-style dicts read as
literals; mending never touches the inside of strings. Unlike the reference, a reply that still has no usable
scores and verdict is a failure with a reason, never a default "equal".
"""

from __future__ import annotations

import json
import re

from omnirrm_jax.rubric import parse, schema

_CTRL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_UNQUOTED_KEY = re.compile(r'(?<=[{,])(\s*)([A-Za-z_][A-Za-z0-9_]*)(\s*):')
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_FENCE = re.compile(r"```[A-Za-z0-9_-]*\s*([\s\S]*?)\s*```")


def _candidates(text: str):
    """Strings that may hold the JSON object, most literal first."""
    yield text
    for m in _FENCE.finditer(text):
        yield m.group(1)
    s, e = text.find("{"), text.rfind("}")
    if s != -1 and e > s:
        yield text[s:e + 1]


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)


def _outside_strings(s: str, fn) -> str:
    """`fn` applied to the text between double-quoted strings only: a reasoning that says "Fluency: fine, accuracy:
    A" must not have its words quoted as keys or its commas dropped."""
    out, at = [], 0
    for m in _STRING.finditer(s):
        out += [fn(s[at:m.start()]), m.group(0)]
        at = m.end()
    return "".join(out + [fn(s[at:])])


def _mend_code(code: str) -> str:
    return _TRAILING_COMMA.sub(r"\1", _UNQUOTED_KEY.sub(r'\1"\2"\3:', code.replace("<integer>", "0")))


def _mend(s: str) -> str:
    return _outside_strings(_CTRL.sub(" ", s), _mend_code)


def _python_literal(s: str):
    """Python-style dicts ({'better': 'A', 'reasoning': "A doesn't ..."}): read as a literal, never run."""
    import ast
    try:
        return ast.literal_eval(_CTRL.sub(" ", s)) if len(s) < 100_000 else None
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def _json(s: str):
    try:
        return json.loads(s, strict=False)
    except (ValueError, RecursionError):
        return None


def _readings(cand: str):
    """The candidate read as it is, mended, as a Python literal, then with ' for " (lazily, most literal first)."""
    yield _json(cand)
    yield _json(_mend(cand))
    yield _python_literal(cand)
    yield _json(_mend(cand.replace("'", '"')))


def _load(text: str):
    for cand in _candidates(text.strip()):
        for obj in _readings(cand):
            if isinstance(obj, list) and len(obj) == 1:
                obj = obj[0]
            if isinstance(obj, dict):
                return obj
    return None


def _score(v):
    if isinstance(v, bool):
        return None
    if isinstance(v, str) and re.fullmatch(r"\s*\d{1,3}\s*", v):  # 3 digits: scores are 1-10 (no 5000-digit int)
        v = int(v)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return v if isinstance(v, int) and schema.SCORE_MIN <= v <= schema.SCORE_MAX else None


_FINAL = re.compile(r"\[\[\s*([A-Za-z]+)\s*\]\]")


def _verdict(v):
    """"A" / "b" / " Equal " -> the schema's spelling; anything else -> None."""
    if not isinstance(v, str):
        return None
    v = v.strip()
    return v.upper() if v.lower() in ("a", "b") else "equal" if v.lower() == "equal" else None


def repair_judgement(text) -> tuple[dict | None, str, bool]:
    """A teacher reply -> (judgement {score_A, score_B, better, reasoning, final_verdict} or None, failure reason
    ("" when usable), whether it needed mending). The scores may disagree with `better`: consensus judges that."""
    if not isinstance(text, str) or not text.strip():
        return None, "empty_reply", False
    first = parse.parse_judgement(text)
    obj = _load(text)
    if obj is None:
        return None, "no_json", False
    a, b = _score(obj.get("score_A")), _score(obj.get("score_B"))
    better = _verdict(obj.get("better"))
    stated = _verdict(m.group(1)) if isinstance(obj.get("final_verdict"), str) and \
        (m := _FINAL.search(obj["final_verdict"])) else None
    if better is None:
        better = stated  # the verdict written only in final_verdict
    if a is None or b is None:
        return None, "bad_scores", True
    if better not in schema.VERDICTS:
        return None, "bad_verdict", True
    if stated is not None and stated != better:
        return None, "verdict_conflict", True  # "better" and final_verdict name different winners
    reasoning = obj.get("reasoning")
    if not isinstance(reasoning, str) or not reasoning.strip():
        return None, "no_reasoning", True
    body = reasoning.strip()
    if not (body.startswith("<think>") and body.endswith("</think>")):
        body = f"<think>{body.removeprefix('<think>').removesuffix('</think>').strip()}</think>"
    out = {"score_A": a, "score_B": b, "better": better, "reasoning": body,
           "final_verdict": schema.verdict_tag(better)}
    mended = not (first.ok and first.score_A == a and first.score_B == b and first.better == better)
    return out, "", mended


def judgement_text(j: dict) -> str:
    """The judgement as the SFT target: the reference schema, keys in prompt order."""
    return schema.format_judgement(j["score_A"], j["score_B"], j["better"], j["reasoning"])
