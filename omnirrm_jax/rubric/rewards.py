"""GRPO rewards: format validity, preference/score correctness, rubric coverage — as the reference scores them.

`mode="reference"` reproduces `MMFormatORM`, `MMContentORM` and `MMRubricORM` of the published plugin
(tmfk418/Omni-RRM `train/new_plugin.py`) value for value, the same float operations in the same order, so
a GRPO run here optimises the same signal. The code, not its summary, is the specification; where the
usual summary ("format = six weighted rules; content = 0.6·direction + 0.4·closeness, −1 on failure;
rubric = 0.8·coverage + 0.2·comparison gain") hides behaviour, the function docstrings say so.

Inputs arrive the way ms-swift hands them to the plugin: `completions` is a list of strings — ms-swift
passes ``messages[-1]['content']`` of each rollout, so a completion given as a chat-message list is reduced
to its last message's content first — and dataset columns are per-sample lists.

Deliberate deviations, all on inputs ms-swift never produces: a bare string for `completions` and gold
lists of the wrong length raise ValueError/TypeError (the plugin would iterate characters or silently
`zip`-truncate); a tuple of gold values is treated as per-sample like a list (the plugin broadcasts it as
one value).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from omnirrm_jax.rubric import schema

MODES: tuple[str, ...] = ("reference",)
DEFAULT_WEIGHTS: tuple[float, float, float] = (0.4, 0.4, 0.2)  # train/grpo_7b.sh --reward_weights
# MMFormatORM's default rule weights, in its rule order (the order of the float additions matters).
FORMAT_RULE_WEIGHTS: tuple[tuple[str, float], ...] = (
    ("json_valid", 0.20), ("required_keys", 0.20), ("field_values", 0.15),
    ("reasoning_tag", 0.15), ("verdict_tag", 0.15), ("consistency", 0.15),
)
_W_DIR, _W_SCORE = 0.6, 0.4  # MMContentORM defaults
_W_COVER, _W_CMP = 0.8, 0.2  # MMRubricORM defaults


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown reward mode {mode!r}; supported: {', '.join(MODES)}")


def completion_text(completion: Any) -> Any:
    """What the plugin receives for one rollout: a message list becomes its last message's content."""
    if isinstance(completion, (list, tuple)) and completion and isinstance(completion[-1], dict) \
            and "content" in completion[-1]:
        return completion[-1]["content"]
    return completion


def _texts(completions: Sequence[Any]) -> list[Any]:
    if isinstance(completions, (str, bytes)):
        raise TypeError("completions must be a list of completions, not a single string")
    return [completion_text(c) for c in completions]


def _per_sample(name: str, value: Any, n: int) -> list[Any]:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} values for {n} completions")
        return list(value)
    return [value] * n  # the plugin broadcasts a single value


# ------------------------------------------------------------------------------------------------------
# Format (MMFormatORM)
# ------------------------------------------------------------------------------------------------------


def _format_obj(raw: Any) -> dict | None:
    """MMFormatORM._parse_obj: strip the fence, json.loads, take element 0 of *any* list starting with a dict."""
    text = schema.FENCE_RE.sub("", str(raw).strip())
    try:
        obj = json.loads(text)
    except Exception:  # noqa: BLE001 - as the reference
        return None
    if isinstance(obj, list) and obj and isinstance(obj[0], dict):
        obj = obj[0]
    return obj if isinstance(obj, dict) else None


def _field_values(obj: dict) -> bool:
    try:
        a, b = obj["score_A"], obj["score_B"]
        if not (isinstance(a, int) and 0 <= a <= 10):  # bool is an int: true/false pass as 1/0
            return False
        if not (isinstance(b, int) and 0 <= b <= 10):
            return False
        return obj.get("better") in {"A", "B", "equal"}  # an unhashable value raises -> False below
    except Exception:  # noqa: BLE001
        return False


def _reasoning_tag(obj: dict) -> bool:
    reasoning = obj.get("reasoning", "")
    return isinstance(reasoning, str) and schema.THINK_RE.match(reasoning.strip()) is not None


def _verdict_tag(obj: dict) -> bool:
    verdict = obj.get("final_verdict", "")
    return isinstance(verdict, str) and schema.VERDICT_RE.match(verdict.strip()) is not None


def _consistency(obj: dict) -> bool:
    m = schema.VERDICT_RE.match(str(obj.get("final_verdict", "")).strip())  # str(): a non-string never matches
    return m is not None and m.group(1) == obj.get("better")


_FORMAT_CHECKS = {
    "json_valid": lambda obj: True,
    "required_keys": lambda obj: set(obj.keys()) == schema.REQUIRED_KEYS,
    "field_values": _field_values,
    "reasoning_tag": _reasoning_tag,
    "verdict_tag": _verdict_tag,
    "consistency": _consistency,
}


def _format_rules(obj: dict | None) -> dict[str, bool]:
    passed = {}
    for name, _ in FORMAT_RULE_WEIGHTS:
        try:  # as in the reference, a rule that raises just fails
            passed[name] = obj is not None and bool(_FORMAT_CHECKS[name](obj))
        except Exception:  # noqa: BLE001
            passed[name] = False
    return passed


def format_checks(completion: Any) -> dict[str, bool]:
    """The six MMFormatORM rules for one completion, by name (for logging which rule failed)."""
    return _format_rules(_format_obj(completion_text(completion)))


def format_reward(completions: Sequence[Any], *, mode: str = "reference") -> list[float]:
    """Format reward in [0, 1]: the weights of the MMFormatORM rules that pass, summed in rule order.

    Rules: json_valid .20 (one JSON object after stripping a ```/```json fence, or a list whose first
    element is an object — any length, not just one), required_keys .20 (exactly the five keys; an extra key
    fails), field_values .15 (scores are ints 0–10 — JSON true/false pass, 7.0 and "7" fail — and better in
    A|B|equal), reasoning_tag .15 (starts with <think> and closes it; text may follow), verdict_tag .15
    (starts with <answer>[[A|B|equal]]</answer>; text may follow), consistency .15 (that tag equals better).
    All six are 0 when the JSON does not parse, so prose around the JSON scores 0.
    """
    _check_mode(mode)
    rewards = []
    for raw in _texts(completions):
        passed = _format_rules(_format_obj(raw))
        score = 0.0
        for name, weight in FORMAT_RULE_WEIGHTS:
            if passed[name]:
                score += weight
        rewards.append(score)
    return rewards


# ------------------------------------------------------------------------------------------------------
# Content (MMContentORM)
# ------------------------------------------------------------------------------------------------------


def _safe_int(x: Any) -> int:
    """MMContentORM._safe_int: int(x) then clip to [0, 10]; floats truncate, "7" parses, True is 1."""
    try:
        v = int(x)
    except Exception:  # noqa: BLE001
        raise ValueError("Failed to parse score") from None
    return max(0, min(10, v))


def _content_one(raw: Any, g_pref: Any, g_a: Any, g_b: Any) -> float:
    try:
        text = schema.FENCE_RE.sub("", raw.strip())  # a non-string completion fails here -> -1
        obj = json.loads(text)
        if isinstance(obj, list) and obj and isinstance(obj[0], dict):
            obj = obj[0]
        if not isinstance(obj, dict):
            return -1.0
        p_a, p_b, p_pref = _safe_int(obj["score_A"]), _safe_int(obj["score_B"]), str(obj["better"])
        consistent = {"A": p_a > p_b, "B": p_b > p_a, "equal": p_a == p_b}.get(p_pref, False)
        if not consistent:
            return -1.0
        c_dir = 1.0 if p_pref == str(g_pref) else -1.0
        g_a, g_b = _safe_int(g_a), _safe_int(g_b)
        err = (abs(p_a - g_a) + abs(p_b - g_b)) / 20.0
        c_score = 1.0 - 2.0 * err
        r = _W_DIR * c_dir + _W_SCORE * c_score
        return float(max(-1.0, min(1.0, r)))
    except Exception:  # noqa: BLE001 - the reference scores every failure -1
        return -1.0


def content_reward(completions: Sequence[Any], *, better: Any, score_A: Any, score_B: Any,
                   mode: str = "reference") -> list[float]:
    """Preference/score reward in [-1, 1] against per-sample gold labels (MMContentORM).

    −1 when the output does not parse (same fence/list tolerance as the format reward, but a completion
    that is not a string fails), lacks score_A/score_B/better, has a score `int()` rejects, or when
    `better` disagrees with the scores (A needs score_A > score_B, equal needs equality). Otherwise
    0.6·(+1 if better == str(gold better) else −1) + 0.4·(1 − 2·(|ΔA| + |ΔB|)/20).
    Not in the usual summary: predicted *and* gold scores go through int() and are clipped to 0–10 first,
    so 12 counts as 10, 7.9 as 7, "8" as 8 and true as 1 (out-of-range scores are clipped, not
    penalised); `final_verdict` and `reasoning` are ignored; the final clip to [−1, 1] never binds.

    Args:
      completions: model outputs.
      better, score_A, score_B: gold values, one per completion (a single value is broadcast, as the plugin
        does). `gold_from_solution` turns a `solution` column into these.
    """
    _check_mode(mode)
    texts = _texts(completions)
    n = len(texts)
    golds = zip(_per_sample("better", better, n), _per_sample("score_A", score_A, n),
                _per_sample("score_B", score_B, n))
    return [_content_one(raw, *g) for raw, g in zip(texts, golds)]


def gold_from_solution(solution: Sequence[Any]) -> dict[str, list[Any]]:
    """Per-sample gold `better`/`score_A`/`score_B` from a `solution` column of JSON strings.

    The plugin falls back to `solution` when the dataset has no better/score_A/score_B columns, but reads
    only ``solution[0]`` and applies that row's labels to every completion of the call (harmless in the
    reference run, whose per-device batch held one rollout; wrong for G > 1 samples of different prompts
    in one call). This helper parses every row instead; a row that is not a JSON object with the three
    keys raises ValueError naming the row.
    """
    out: dict[str, list[Any]] = {"better": [], "score_A": [], "score_B": []}
    for i, sol in enumerate(solution):
        try:
            obj = sol if isinstance(sol, dict) else json.loads(sol)
            for k in out:
                out[k].append(obj[k])
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"solution[{i}] is not a JSON object with better/score_A/score_B: {e}") from e
    return out


# ------------------------------------------------------------------------------------------------------
# Rubric (MMRubricORM)
# ------------------------------------------------------------------------------------------------------


def _cmp_gt_value(cmp_gt: Any) -> float | None:
    """MMRubricORM: clip(float(cmp_gt), 0, 1), or None when float() fails — None and lists included."""
    try:
        return max(0.0, min(1.0, float(cmp_gt)))
    except Exception:  # noqa: BLE001
        return None


def rubric_counts(reasoning: str) -> tuple[int, int]:
    """(dimensions covered, dimensions compared) for a reasoning string, by the reference's rules.

    A dimension is covered when one of its keywords occurs. Its segment runs from that first keyword to
    the first keyword of any *other* dimension found after it; the dimension is compared when the segment
    mentions both A and B (explicit) or has a collective word and a comparative (implicit).
    """
    patterns = list(schema.DIMENSION_PATTERNS.values())
    cover = compared = 0
    for rg in patterns:
        m = rg.search(reasoning)
        if not m:
            continue
        cover += 1
        start = m.start()
        nexts = [m2.start() for other in patterns if other is not rg
                 for m2 in [other.search(reasoning, start + 1)] if m2]
        segment = reasoning[start:min(nexts) if nexts else len(reasoning)]
        explicit = schema.MENTION_A_RE.search(segment) and schema.MENTION_B_RE.search(segment)
        implicit = schema.COLLECTIVE_RE.search(segment) and schema.COMPARATIVE_RE.search(segment)
        if explicit or implicit:
            compared += 1
    return cover, compared


def _rubric_one(raw: Any, cmp_gt_val: float | None) -> float:
    try:
        obj = json.loads(raw)  # no fence stripping here, unlike the other two rewards
        reasoning = schema.STRIP_THINK_RE.sub("", obj.get("reasoning", "").strip())
    except Exception:  # noqa: BLE001
        return -1.0
    cover, compared = rubric_counts(reasoning)
    c_cover, c_cmp = cover / 5.0, compared / 5.0
    gain = max(0.0, c_cmp - cmp_gt_val) if cmp_gt_val is not None else c_cmp
    return float(_W_COVER * c_cover + _W_CMP * gain)


def rubric_reward(completions: Sequence[Any], *, cmp_gt: Any = None, mode: str = "reference") -> list[float]:
    """Rubric reward (MMRubricORM): 0.8·covered/5 + 0.2·comparison gain, or −1.

    −1 when ``json.loads`` of the *raw* completion fails or its value has no `.get` (a fenced or
    list-wrapped output, which the other two rewards accept, scores −1 here) or `reasoning` is not a string
    (e.g. the five-key object the project page shows). The reasoning itself is never JSON-parsed — the
    summary's "json.loads of the reasoning" does not exist in the code. A missing `reasoning` scores 0.
    Gain = max(0, compared/5 − cmp_gt) when cmp_gt is given, else compared/5.

    Args:
      cmp_gt: one number (or numeric string) for the whole batch, clipped to [0, 1]. Anything `float()`
        rejects — None, and also a per-sample list, which is what ms-swift passes for a dataset column —
        is ignored, exactly as in the plugin; so in the published run a `cmp_gt` column had no effect.
        ("nan" clips to 1.0.)
    """
    _check_mode(mode)
    cmp_gt_val = _cmp_gt_value(cmp_gt)
    return [_rubric_one(raw, cmp_gt_val) for raw in _texts(completions)]


# ------------------------------------------------------------------------------------------------------
# Combined
# ------------------------------------------------------------------------------------------------------


def reward_components(completions: Sequence[Any], *, better: Any, score_A: Any, score_B: Any, cmp_gt: Any = None,
                      weights: Sequence[float] = DEFAULT_WEIGHTS, mode: str = "reference") -> dict[str, list[float]]:
    """All three rewards and their weighted sum, per completion.

    Returns:
      {"format": [...], "content": [...], "rubric": [...], "total": [...]}, total = w0·format + w1·content +
      w2·rubric summed left to right in float64. ms-swift forms the same sum in float32 on the device, so
      totals agree with the reference run to float32 precision (~1e-7), the components exactly.
    """
    if len(weights) != 3:
        raise ValueError(f"weights must have 3 entries (format, content, rubric); got {len(weights)}")
    fmt = format_reward(completions, mode=mode)
    cnt = content_reward(completions, better=better, score_A=score_A, score_B=score_B, mode=mode)
    rub = rubric_reward(completions, cmp_gt=cmp_gt, mode=mode)
    w0, w1, w2 = (float(w) for w in weights)
    total = [w0 * f + w1 * c + w2 * r for f, c, r in zip(fmt, cnt, rub)]
    return {"format": fmt, "content": cnt, "rubric": rub, "total": total}


def combined_reward(completions: Sequence[Any], *, better: Any, score_A: Any, score_B: Any, cmp_gt: Any = None,
                    weights: Sequence[float] = DEFAULT_WEIGHTS, mode: str = "reference") -> list[float]:
    """The GRPO reward: weights (default 0.4, 0.4, 0.2) · (format, content, rubric). See `reward_components`."""
    return reward_components(completions, better=better, score_A=score_A, score_B=score_B, cmp_gt=cmp_gt,
                             weights=weights, mode=mode)["total"]
