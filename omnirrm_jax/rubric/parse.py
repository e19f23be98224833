"""Reading judgements back: a never-raising parser, and the reference's benchmark extraction and accuracy.

Two different jobs live here on purpose, next to each other so their differences stay visible:

* `parse_judgement` is *our* parser: tolerant where the reference tools are tolerant (code fences, a JSON
  list holding one object, JSON embedded in prose), strict about the schema, and it explains every failure.
  Eval, GRPO debugging and the constrained decoder's tests use it.
* `reference_output_fields`, `evaluate_judgements`, `verdict_correct`, `scores_correct` reproduce what the
  published benchmark scripts do (`inference/HH-RLHF_final/infer_lora.py` + `eval.py`, identical for
  Audio-HH-RLHF), quirks included, so accuracies are comparable with the paper's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from omnirrm_jax.rubric import schema
from omnirrm_jax.rubric.schema import ParseResult

# infer_lora.py's extractor: the first fenced {...} block, else the outermost {...} span.
_REF_FENCED_JSON_RE = re.compile(r"```(?:json)?\s*(\{[\s\S]*?\})\s*```", re.DOTALL)
_ANY_FENCE_RE = re.compile(r"```[A-Za-z0-9_-]*\s*([\s\S]*?)\s*```")
_MAX_SHOWN = 60


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 1] + "…"


_NOT_FOUND = object()


def _load_object(text: str) -> tuple[Any, str, str]:
    """Find the judgement JSON in `text`. Returns (value, source, error); value is _NOT_FOUND on failure."""
    stripped = text.strip()
    if not stripped:
        return _NOT_FOUND, "", "empty output"
    # 1. The whole text (after the plugin's fence stripping) is JSON — what the rewards accept.
    first_error = ""
    try:
        return json.loads(schema.FENCE_RE.sub("", stripped)), "json", ""
    except (ValueError, RecursionError) as e:
        first_error = f"not valid JSON ({e})"
    # 2. A fenced block anywhere (```json, ```JSON, bare ```), as the benchmark scripts look for one.
    for m in _ANY_FENCE_RE.finditer(stripped):
        try:
            return json.loads(m.group(1)), "fenced", ""
        except (ValueError, RecursionError):
            continue
    # 3. The outermost {...} span, as infer_lora.py's extract_json falls back to.
    s, e = stripped.find("{"), stripped.rfind("}")
    if s != -1 and e > s:
        try:
            return json.loads(stripped[s : e + 1]), "embedded", ""
        except (ValueError, RecursionError):
            pass
    if s == -1:
        return _NOT_FOUND, "", f"no JSON object found (no '{{' in the output; {first_error})"
    return _NOT_FOUND, "", first_error


def _check_score(name: str, value: Any, errors: list[str]) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        kind = "bool" if isinstance(value, bool) else type(value).__name__
        errors.append(f"{name} must be an integer {schema.SCORE_MIN}-{schema.SCORE_MAX}, got {_show(value)} ({kind})")
        return None
    if not schema.SCORE_MIN <= value <= schema.SCORE_MAX:
        errors.append(f"{name} out of range {schema.SCORE_MIN}-{schema.SCORE_MAX}: {value}")
        return None
    return value


def _parse(text: Any) -> ParseResult:
    if not isinstance(text, str):
        return ParseResult(ok=False, errors=(f"output is {type(text).__name__}, not a string",))
    value, source, err = _load_object(text)
    if value is _NOT_FOUND:
        return ParseResult(ok=False, errors=(err,))
    errors: list[str] = []
    if isinstance(value, list):
        if len(value) == 1 and isinstance(value[0], dict):
            value = value[0]
        else:
            return ParseResult(ok=False, source=source, errors=(
                f"top-level JSON is a list of {len(value)} item(s); expected one object",))
    if not isinstance(value, dict):
        return ParseResult(ok=False, source=source, errors=(
            f"top-level JSON is {type(value).__name__} {_show(value)}; expected an object",))
    obj: dict[str, Any] = value

    missing = [k for k in schema.KEYS if k not in obj]
    extra = sorted(k for k in obj if k not in schema.REQUIRED_KEYS)
    if missing:
        errors.append("missing key(s): " + ", ".join(missing))
    if extra:
        errors.append("unexpected key(s): " + ", ".join(extra))

    score_a = _check_score("score_A", obj["score_A"], errors) if "score_A" in obj else None
    score_b = _check_score("score_B", obj["score_B"], errors) if "score_B" in obj else None

    better = obj.get("better")
    if "better" in obj and better not in schema.VERDICTS:
        errors.append(f"better must be one of A, B, equal; got {_show(better)}")
        better = None

    reasoning = obj.get("reasoning")
    dimensions: tuple[str, ...] = ()
    if "reasoning" in obj:
        if not isinstance(reasoning, str):
            errors.append(f"reasoning must be a string, got {type(reasoning).__name__}")
            reasoning = None
        else:
            inner = reasoning.strip()
            if not (inner.startswith("<think>") and inner.endswith("</think>")):
                errors.append("reasoning must be wrapped in <think>…</think>")
            dimensions = schema.covered_dimensions(reasoning)

    final_verdict = obj.get("final_verdict")
    verdict = None
    if "final_verdict" in obj:
        if not isinstance(final_verdict, str):
            errors.append(f"final_verdict must be a string, got {type(final_verdict).__name__}")
            final_verdict = None
        else:
            m = schema.VERDICT_RE.fullmatch(final_verdict.strip())
            if m is None:
                errors.append(f"final_verdict must be <answer>[[A|B|equal]]</answer>, got {_show(final_verdict)}")
            else:
                verdict = m.group(1)
                if better is not None and verdict != better:
                    errors.append(f"final_verdict says {verdict} but better is {better}")

    if better is not None and score_a is not None and score_b is not None:
        consistent = {"A": score_a > score_b, "B": score_b > score_a, "equal": score_a == score_b}[better]
        if not consistent:
            errors.append(f"better is {better} but score_A={score_a}, score_B={score_b}")

    return ParseResult(ok=not errors, errors=tuple(errors), score_A=score_a, score_B=score_b, better=better,
                       reasoning=reasoning, final_verdict=final_verdict, verdict=verdict,
                       dimensions=dimensions, obj=obj, source=source)


def parse_judgement(text: Any) -> ParseResult:
    """Parse one judge output; never raises.

    Args:
      text: the model's output (anything; non-strings are reported, not raised on).
    Returns:
      A `ParseResult`; `.ok` tells whether it is a complete, self-consistent judgement and `.error` why not.
    """
    try:
        return _parse(text)
    except Exception as e:  # noqa: BLE001 - the contract is "never raises"; keep the reason
        return ParseResult(ok=False, errors=(f"internal parser error: {type(e).__name__}: {e}",))


# ------------------------------------------------------------------------------------------------------
# Reference benchmark pipeline (infer_lora.py + eval.py of HH-RLHF / Audio-HH-RLHF)
# ------------------------------------------------------------------------------------------------------


def reference_extract_json(txt: str) -> str:
    """`extract_json` of the reference inference scripts, exactly.

    The first ```-fenced {...} block, else the span from the first '{' to the last '}', else the whole
    text; then every word "None" is deleted (so "None of them" inside the reasoning becomes " of them").
    """
    m = _REF_FENCED_JSON_RE.search(txt)
    if m:
        candidate = m.group(1)
    else:
        s, e = txt.find("{"), txt.rfind("}")
        candidate = txt[s : e + 1] if s != -1 and e != -1 and e > s else txt
    return re.sub(r"\bNone\b", "", candidate)


def reference_output_fields(text: str) -> dict[str, Any]:
    """The fields the reference merges into a benchmark row for one model output.

    `run_inference` returns `json.loads(extract_json(text))`, or {"better": "error", "reasoning": <message>}
    when that raises; the caller does `row.update(result)`, so *every* key of the model's JSON lands in the
    row (a model that writes a "label" key overwrites the gold label — reproduced, not fixed). One
    deviation: a JSON value that is not an object (a bare list or number) would crash the reference's
    `row.update`; here it is reported as an error row instead.
    """
    try:
        result = json.loads(reference_extract_json(text))
    except Exception as e:  # noqa: BLE001 - the reference catches everything here
        return {"better": "error", "reasoning": str(e)}
    if not isinstance(result, dict):
        return {"better": "error", "reasoning": f"model output is {type(result).__name__}, not an object"}
    return result


def verdict_correct(label: Any, better: Any) -> bool:
    """Benchmark rule 1: correct iff better == "A" for label 0 or "B" for label 1 ("equal" is wrong)."""
    return (label == 0 and better == "A") or (label == 1 and better == "B")


def scores_correct(label: Any, score_A: Any, score_B: Any) -> bool:
    """Benchmark rule 2: the higher score must be the labelled answer; a tie is wrong."""
    if score_A == score_B:
        return False
    return (0 if score_A > score_B else 1) == label


def evaluate_judgements(rows: Iterable[Mapping[str, Any] | str], debug_samples: int = 5) -> dict[str, Any]:
    """`evaluate_custom` of the reference eval.py, over rows instead of a file.

    Args:
      rows: merged benchmark rows (gold `label` plus the model's `better`/`score_A`/`score_B`), as dicts or
        as JSONL lines; a line that fails to parse counts as invalid, as in the reference.
      debug_samples: how many per-row details to keep.
    Returns:
      The reference's report dict, same keys. Rows with better == "error" are excluded; rule 1 counts rows
      with better in A|B|equal and label in {0, 1}; rule 2 counts rows whose scores are int/float (bools
      included, since Python's bool is an int); accuracies are rounded to 4 places.
    """
    total_1 = matched_1 = total_2 = matched_2 = 0
    error_count = invalid_count = equal_count = 0
    debug: list[dict[str, Any]] = []
    for row in rows:
        try:
            data = json.loads(row) if isinstance(row, (str, bytes)) else row
            label, better = data.get("label"), data.get("better")
            score_a, score_b = data.get("score_A"), data.get("score_B")
            if better == "error":
                error_count += 1
                continue
            if better in ["A", "B", "equal"] and label in [0, 1]:
                total_1 += 1
                correct = verdict_correct(label, better)
                matched_1 += correct
                equal_count += (not correct) and better == "equal"
                if len(debug) < debug_samples:
                    debug.append({"type": "better_match", "label": label, "better": better, "correct": correct})
            if isinstance(score_a, (int, float)) and isinstance(score_b, (int, float)) and label in [0, 1]:
                total_2 += 1
                predicted = None if score_a == score_b else (0 if score_a > score_b else 1)
                correct = scores_correct(label, score_a, score_b)
                matched_2 += correct
                if len(debug) < debug_samples:
                    debug.append({"type": "score_match", "label": label, "score_A": score_a, "score_B": score_b,
                                  "predicted": predicted, "correct": correct})
        except Exception as e:  # noqa: BLE001 - reference: any failure on a line counts it invalid
            invalid_count += 1
            if len(debug) < debug_samples:
                debug.append({"type": "error", "error": str(e), "line": str(row)[:100]})
    return {
        "valid_samples_label_vs_better": total_1,
        "matched_label_vs_better": matched_1,
        "accuracy_label_vs_better": round(matched_1 / total_1, 4) if total_1 > 0 else 0.0,
        "valid_samples_label_vs_scores": total_2,
        "matched_label_vs_scores": matched_2,
        "accuracy_label_vs_scores": round(matched_2 / total_2, 4) if total_2 > 0 else 0.0,
        "error_count (better=error)": error_count,
        "equal_count (better=equal_as_wrong)": equal_count,
        "invalid_lines (json_parse_fail)": invalid_count,
        "debug_samples": debug,
    }
