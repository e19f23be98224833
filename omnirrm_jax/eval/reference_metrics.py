"""The `reference` metric: the number each Omni-RRM benchmark script prints, computed on our generated texts.

Why: the paper's accuracies come from per-benchmark scripts (tmfk418/Omni-RRM, `inference/*/infer_lora*.py` to
parse, `eval.py` to count), each with its own parse cascade and quirks. Comparing with the paper means repeating
them exactly, so each cascade below is re-implemented with the same semantics (same regexes, same order, the same
operations on whatever `json.loads` returns, so the same things raise and fall through).

Input: the benchmark's `BenchRow`s in file order and `lines[row.index]`, the judgement line the reference protocol
produced ({"order": "AB"|"BA", "output": text|None, "error": None|{...}}). A row with no line, an error or no
output is a row the reference failed on, and is counted the way its script counts such a row.

A verdict shown in "BA" order is mapped back to stored labels (A<->B, score_A<->score_B) before it meets the gold.
The reference always shows "AB" except VL-RewardBench.

Deviations, all deliberate:
* VL-RewardBench: the published eval.py compares the *shown*-order choice with the *stored*-order human ranking
  (wrong for every swapped row). Here the choice is un-swapped (stored = flag-1 if shown "AB", else 2-flag). The
  good answer is eval.py's: 0 if ranking[0] <= ranking[1] else 1 (ranks as int()), so a tied ranking counts answer
  A as the good one (infer_lora_vl.py's 1 - argmax would say B; eval.py prints the number, so its rule is used).
* HH/Audio-HH: a model JSON that is not an object (it would crash the reference's `row.update`) is an error row
  (`rubric.parse.reference_output_fields`).
Accuracies are fractions in [0, 1]: HH/Audio-HH rounded to 4 places as evaluate_custom prints them, the others
unrounded. An accuracy over zero rows is None (HH in literal mode: 0.0, which is what the reference prints).
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

from omnirrm_jax.eval.benchmarks import BENCHMARKS, BenchRow, mm_category, mm_label, swap_label, vl_preferred
from omnirrm_jax.rubric.parse import evaluate_judgements, reference_output_fields

_MISSING = object()


def _judged(line: dict | None) -> tuple[str | None, str]:
    """(raw output, shown order); output None when the reference would have failed on the row."""
    if not line or line.get("error") or not isinstance(line.get("output"), str):
        return None, (line or {}).get("order") or "AB"
    return line["output"], line.get("order") or "AB"


def _ab_index(label: Any) -> int | None:
    return {"A": 0, "B": 1}.get(label) if isinstance(label, str) else None


def _ratio(k: int, n: int) -> float | None:
    return k / n if n else None


# ---------------------------------------------------------------- HH-RLHF / Audio-HH-RLHF (infer_lora.py + eval.py)

def _hh(rows: list[BenchRow], lines: dict[int, dict], literal: bool) -> dict:
    """Rows merged as the reference writes them (`item.update(run_inference(item))`), then `evaluate_custom`.

    Gold: the reference counts a row only if `label in [0, 1]`. The released files (HH-RLHF train.jsonl,
    Audio-HH-RLHF final_data_with_audio.jsonl) store ints 0/1, so both modes agree on them. Default: the int from
    row.label (whatever form the file used); literal: the stored `label` field compared as stored (a file with
    string labels "0"/"1" would make the reference count nothing). A model JSON key "label" overwrites the gold
    either way, as in the reference.
    """
    merged = []
    for row in rows:
        item = dict(row.fields)
        item["label"] = row.fields.get("label") if literal else _ab_index(row.label)
        text, order = _judged(lines.get(row.index))
        result = {"better": "error", "reasoning": "not judged"} if text is None else dict(reference_output_fields(text))
        if text is not None and order == "BA":
            if "better" in result:
                result["better"] = swap_label(result["better"])
            sa, sb = result.pop("score_A", _MISSING), result.pop("score_B", _MISSING)
            if sb is not _MISSING:
                result["score_A"] = sb
            if sa is not _MISSING:
                result["score_B"] = sa
        item.update(result)
        merged.append(item)
    rep = evaluate_judgements(merged)
    n, n2 = rep["valid_samples_label_vs_better"], rep["valid_samples_label_vs_scores"]
    acc, acc2 = rep["accuracy_label_vs_better"], rep["accuracy_label_vs_scores"]
    return {"accuracy": acc if n or literal else None, "accuracy_scores": acc2 if n2 or literal else None,
            "n": n, "n_scores": n2, "errors": rep["error_count (better=error)"],
            "equal": rep["equal_count (better=equal_as_wrong)"], "invalid": rep["invalid_lines (json_parse_fail)"]}


# ---------------------------------------------------------------- ShareGPT-Video (msrvtt/infer_lora.py + eval.py)

_SG_JSON = re.compile(r"\{.*\}", re.S)  # greedy: first '{' to last '}'
_SG_KEYS = {"score_A", "score_B", "better", "reasoning", "final_verdict"}


def _sg_int(value: Any) -> int | None:
    try:
        return int(value)  # as `_safe_int`: "7" -> 7, 7.9 -> 7, True -> 1
    except Exception:  # noqa: BLE001
        return None


def _sg_validate(obj: dict, outer_better: Any) -> str:
    """`validate_result`; raises (a non-string final_verdict) where it does, the caller then says invalid."""
    if not _SG_KEYS.issubset(obj):
        return "invalid"
    sa, sb = _sg_int(obj["score_A"]), _sg_int(obj["score_B"])
    if sa is None or sb is None or not (0 <= sa <= 10) or not (0 <= sb <= 10):
        return "invalid"
    if obj["better"] not in ("A", "B", "equal"):
        return "invalid"
    if obj["final_verdict"].strip() != f"<answer>[[{obj['better']}]]</answer>":
        return "invalid"
    if outer_better and outer_better != obj["better"]:
        return "invalid"
    return "ok"


def _sg_parse(text: str) -> dict:
    """`parse_model_output`: the flat JSON, or the legacy {better, reasoning: "<json string>"} form."""
    m = _SG_JSON.search(text)
    if not m:
        return {"status": "invalid"}
    try:
        obj = json.loads(m.group(0))
        if isinstance(obj, dict) and {"score_A", "score_B"}.issubset(obj):
            return {**obj, "status": _sg_validate(obj, "")}
        if "better" in obj and "reasoning" in obj and isinstance(obj["reasoning"], str):
            inner_m = _SG_JSON.search(obj["reasoning"])
            if inner_m:
                inner = json.loads(inner_m.group(0))
                return {**inner, "status": _sg_validate(inner, obj.get("better"))}
    except Exception:  # noqa: BLE001 - the reference logs and falls through
        pass
    return {"status": "invalid"}


def _sharegpt(rows: list[BenchRow], lines: dict[int, dict]) -> dict:
    """eval.py: rows with status ok and better in A/B; expected = "A" if the stored `label` == 0 else "B"."""
    status = {"ok": 0, "invalid": 0, "error": 0}
    valid = matched = equal = 0
    for row in rows:
        text, order = _judged(lines.get(row.index))
        res = {"status": "error"} if text is None else _sg_parse(text.strip())
        st, better = res.get("status", "error"), res.get("better", "error")
        status[st] = status.get(st, 0) + 1
        if order == "BA":
            better = swap_label(better)
        if st != "ok":
            continue
        if better not in ("A", "B"):
            equal += better == "equal"
            continue
        gold = row.fields["label"] if "label" in row.fields else _ab_index(row.label)
        valid += 1
        matched += better == ("A" if gold == 0 else "B")
    return {"accuracy": _ratio(matched, valid), "n": valid, "matched": matched, "total": len(rows),
            "status": status, "excluded_equal": equal}


# ---------------------------------------------------------------- Multimodal RewardBench (eval.py)

def _mm_judgment(judgment: str, rng: random.Random) -> tuple[str, bool]:
    """`extract_judgment` on the raw stored output: (verdict, whether it was the random fallback)."""
    try:
        data = json.loads(judgment)
        if "final_verdict" in data:
            fv = data["final_verdict"]
            if "[[A]]" in fv:
                return "A", False
            elif "[[B]]" in fv:
                return "B", False
            elif "equal" in fv.lower():
                return "equal", False
        if "better" in data:
            b = data["better"].upper()  # raises on a non-string: falls to the text search, as in the reference
            if b in ("A", "B"):
                return b, False
            if b == "EQUAL":
                return "equal", False
    except Exception:  # noqa: BLE001
        pass
    if "[[A]]" in judgment:
        return "A", False
    if "[[B]]" in judgment:
        return "B", False
    return ("A" if rng.random() < 0.5 else "B"), True


def _mm_category(row: BenchRow) -> str:
    """The key compute_acc prints: the stored Category as infer_lora_multimodal.py writes it into Meta
    (`ex.get("Category", "unknown")`: absent -> "unknown", null -> None, printed "None"), split by ID prefix for
    safety/reasoning. Without a stored field, row.category (the reader's, same rule), else "unknown". Always a
    string: the printed form of the key."""
    if "Category" in row.fields:
        cat = row.fields["Category"]
    else:
        cat = row.category if row.category is not None else "unknown"
    return mm_category(cat, row.fields.get("ID", row.id))


def _mm_rewardbench(rows: list[BenchRow], lines: dict[int, dict]) -> dict:
    """compute_acc: `random.seed(123)` once, then one draw per unparseable row in file order. A row that failed
    (missing image, inference error) was stored as output "None", which always falls back. Label as
    infer_lora_multimodal.py writes it: "A"/"B" from the stored `Better` ("Output1"/"Output2"), else None."""
    rng = random.Random(123)  # the same stream as random.seed(123), without touching the global generator
    accs: dict[str, list[int]] = {}
    fallbacks = 0
    for row in rows:
        text, order = _judged(lines.get(row.index))
        pred, fell_back = _mm_judgment("None" if text is None else text.strip(), rng)
        fallbacks += fell_back
        if order == "BA":
            pred = swap_label(pred)
        gold = mm_label(row.fields["Better"]) if "Better" in row.fields else row.label
        acc = int(pred == gold)
        for key in ("all", _mm_category(row)):
            accs.setdefault(key, []).append(acc)
    every = accs.pop("all", [])
    return {"accuracy": _ratio(sum(every), len(every)), "n": len(every),
            "by_category": {k: {"accuracy": sum(v) / len(v), "n": len(v)} for k, v in accs.items()},
            "random_fallbacks": fallbacks}


# ---------------------------------------------------------------- VL-RewardBench (infer_lora_vl.py + eval.py)

_VL_ANSWER = re.compile(r"(?:Overall\s*Judgment|Final\s*Decision|Therefore)?[^\n]*?Answer\s*([12])\s*"
                        r"(?:is\s*)?(?:the\s*)?(?:slightly\s*)?(?:better|superior)", re.I)
_VL_BETTER_NUM = re.compile(r'"better"\s*:\s*"?(1|2)"?', re.I)
_VL_FENCE = re.compile(r"```(?:json)?\s*(\{.*?})\s*```", re.S)
_VL_JSON_BLOCK = re.compile(r"\{[^{}]*\"better\"[^{}]*\}", re.S)
_VL_BETTER_AB = re.compile(r'"better"\s*:\s*"?([AaBb]|equal)"?', re.I)
_VL_EVAL_ANSWER = re.compile(r"Answer\s*([12])", re.I)
_VL_NUM = {"a": 1, "1": 1, "b": 2, "2": 2}


def _vl_parse_flag(raw: str) -> int:
    """`_parse_flag`'s answer number (1, 2, or -1 for doesntMatch), on the stripped output."""
    m = _VL_JSON_BLOCK.search(raw)
    if m:
        try:  # a flat JSON block naming "better" decides, even when its value is unusable ("equal" -> -1)
            return _VL_NUM.get(str(json.loads(m.group(0)).get("better", "")).lower(), -1)
        except Exception:  # noqa: BLE001
            pass
    fence = _VL_FENCE.search(raw)
    for candidate in (raw, fence.group(1) if fence else None):  # whole text, then the fenced block
        if candidate is None:
            continue
        try:
            num = _VL_NUM.get(str(json.loads(candidate).get("better", "")).lower())
        except Exception:  # noqa: BLE001
            num = None
        if num:
            return num
    m = _VL_BETTER_AB.search(raw)
    if m:
        return 1 if m.group(1).lower() == "a" else 2  # "equal" lands here as 2, as in the reference
    m = _VL_BETTER_NUM.search(raw) or _VL_ANSWER.search(raw)
    return int(m.group(1)) if m else -1


def _vl_eval_flag(raw: str) -> int:
    """eval.py's `get_flag_number` after filter_number = -1: JSON better 1/2 (0 -> 1), else "Answer 1|2"."""
    try:
        better = json.loads(raw).get("better")
        if isinstance(better, int):
            if better in (1, 2):
                return int(better)
            if better in (0, 1):
                return int(better) + 1
        if isinstance(better, str):
            if better in ("1", "2"):
                return int(better)
            if better in ("0", "1"):
                return int(better) + 1
    except Exception:  # noqa: BLE001
        pass
    m = _VL_EVAL_ANSWER.search(raw)
    return int(m.group(1)) if m else -1


def _vl_good(row: BenchRow) -> int | None:
    """Stored index of the preferred answer by eval.py's rule (the script that prints the number): the ranking as
    `parse_ranking` reads it (two entries, each int()), then good = 0 if ranking[0] <= ranking[1] else 1, so a tie
    makes answer A (index 0) the good one; infer_lora_vl.py's 1 - argmax would pick B, but it only logs. From the
    stored field when the row keeps it, else row.label. None: no usable ranking (eval.py: invalid)."""
    if "human_ranking" not in row.fields:
        return _ab_index(row.label)
    try:
        return vl_preferred(row.fields["human_ranking"])  # infer_lora_vl.py writes list(human_ranking)
    except Exception:  # noqa: BLE001
        return None


def _vl_rewardbench(rows: list[BenchRow], lines: dict[int, dict]) -> dict:
    """agree / (agree + reject); the flag is filter_number (from `_parse_flag`) or eval.py's own fallback."""
    agree = reject = invalid = 0
    for row in rows:
        text, order = _judged(lines.get(row.index))
        flag = -1
        if text is not None:
            raw = text.strip()
            flag = -1 if raw.startswith("[LOCAL_ERROR]") else _vl_parse_flag(raw)
            if flag not in (1, 2):
                flag = _vl_eval_flag(raw)
        good = _vl_good(row)
        if flag not in (1, 2) or good is None:
            invalid += 1
            continue
        chosen = flag - 1 if order == "AB" else 2 - flag
        agree += chosen == good
        reject += chosen != good
    return {"accuracy": _ratio(agree, agree + reject), "agree": agree, "reject": reject, "invalid": invalid,
            "n": agree + reject}


# ---------------------------------------------------------------- TA2T (Omni-RewardBench's rule; no reference script)

def _ta2t(rows: list[BenchRow], lines: dict[int, dict]) -> dict:
    """HH's parse (`reference_output_fields`), predicted better vs label. "accuracy": non-tie rows only;
    "accuracy_with_tie": every labelled row, "equal" must meet a tie. Unparseable or failed rows are wrong."""
    n = k = n_tie = k_tie = 0
    for row in rows:
        if row.label not in ("A", "B", "equal"):
            continue
        text, order = _judged(lines.get(row.index))
        pred = None if text is None else reference_output_fields(text).get("better")
        if order == "BA":
            pred = swap_label(pred)
        correct = isinstance(pred, str) and pred == row.label
        n_tie, k_tie = n_tie + 1, k_tie + correct
        if row.label != "equal":
            n, k = n + 1, k + correct
    return {"accuracy": _ratio(k, n), "n": n, "accuracy_with_tie": _ratio(k_tie, n_tie), "n_with_tie": n_tie}


def reference_metric(benchmark: str, rows: list[BenchRow], lines: dict[int, dict], *,
                     literal_labels: bool = False) -> dict:
    """The reference script's numbers for one benchmark.

    Args:
      benchmark: a name of `benchmarks.BENCHMARKS`.
      rows: the benchmark's rows in file order (order matters: Multimodal RewardBench's random fallback).
      lines: judgement line per row index; missing = the row failed.
      literal_labels: HH/Audio-HH only: compare the stored `label` field as stored, as the reference does (the
        released files store ints 0/1, so this matches the default; a file with string labels "0"/"1" would make
        the reference count nothing and print 0.0). Default: the label from row.label.
    Returns:
      A per-benchmark dict (see the helpers); "accuracy" is always the headline number.
    """
    if benchmark in ("hh_rlhf", "audio_hh_rlhf"):
        return _hh(rows, lines, literal_labels)
    if benchmark == "sharegpt_video":
        return _sharegpt(rows, lines)
    if benchmark == "mm_rewardbench":
        return _mm_rewardbench(rows, lines)
    if benchmark == "vl_rewardbench":
        return _vl_rewardbench(rows, lines)
    if benchmark == "ta2t":
        return _ta2t(rows, lines)
    raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {', '.join(BENCHMARKS)}")
