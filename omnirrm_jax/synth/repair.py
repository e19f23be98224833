"""Teacher replies -> judgements in the reference schema, mending what chat models get wrong.

First `rubric.parse.parse_judgement` (code fences, JSON inside prose); then the reference annotation scripts'
repairs (`extract_json` of "Omni Preference Construction/*/doubao_example.py"): control characters removed,
unquoted keys quoted, trailing commas dropped, "<integer>" placeholders read as 0; and a few more: single-quoted
JSON, scores written as strings ("8"), reasoning not wrapped in <think> (wrapped, as the reference does), a missing
or disagreeing final_verdict rebuilt from `better`. Unlike the reference, a reply that still has no usable
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


def _mend(s: str) -> str:
    s = _CTRL.sub(" ", s).replace("<integer>", "0")
    s = _UNQUOTED_KEY.sub(r'\1"\2"\3:', s)
    return _TRAILING_COMMA.sub(r"\1", s)


def _load(text: str):
    for cand in _candidates(text.strip()):
        for variant in (cand, _mend(cand), _mend(cand.replace("'", '"'))):
            try:
                obj = json.loads(variant, strict=False)
            except (ValueError, RecursionError):
                continue
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
    better = obj.get("better")
    better = better.strip() if isinstance(better, str) else better
    if better in ("a", "b"):
        better = better.upper()
    if a is None or b is None:
        return None, "bad_scores", True
    if better not in schema.VERDICTS:
        return None, "bad_verdict", True
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
