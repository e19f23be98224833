"""The `omnirrm` metric: our own, stricter accounting of a judge on a benchmark, reported beside the reference's.

Why a second metric: the reference scripts drop rows whose output did not parse ("error" rows) and read one order
only, so a judge that fails often or always picks the first answer can still score well. Here every labelled row is
in the denominator: a missing judgement, an error line or an output that fails the strict parse counts as wrong, and
both orders (as stored and exchanged) are scored when the run asked for both. What was missing, failed or errored is
counted next to the accuracy, so nobody mistakes an incomplete run for a weak judge.

All counts are over the labelled rows (the accuracy's population); unlabelled rows are only counted. Accuracies are
fractions in [0, 1]. Pure Python + numpy (no JAX), so a judgement file is re-scored without a model.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import numpy as np

from omnirrm_jax.eval.benchmarks import ORDERS, BenchRow, swap_label
from omnirrm_jax.rubric.parse import parse_judgement

# Multimodal RewardBench's prompt asks for these score keys instead of score_A / score_B.
_MM_RENAME = {"score_1": "score_A", "score_2": "score_B"}
_NO_CATEGORY = "(none)"


def judged_verdict(output: str | None, template: str | None = None) -> tuple[str | None, str | None]:
    """(verdict in the shown labels, None) for a judgement that passes the strict parse, else (None, why).

    For the "mm_rewardbench" template an object with score_1/score_2 (what that prompt asks for) and no
    score_A/score_B has those keys renamed, in place, and is parsed again: the prompt's own key names must not
    count as a format failure, while everything else stays as strict as for the other benchmarks.
    """
    if output is None:
        return None, "no output"
    parsed = parse_judgement(output)
    obj = parsed.obj
    if (not parsed.ok and template == "mm_rewardbench" and isinstance(obj, dict)
            and all(k in obj for k in _MM_RENAME) and not any(k in obj for k in _MM_RENAME.values())):
        parsed = parse_judgement(json.dumps({_MM_RENAME.get(k, k): v for k, v in obj.items()}, ensure_ascii=False))
    return (parsed.better, None) if parsed.ok else (None, parsed.error)


def _reward(probs: Any, order: str) -> float | None:
    """r = P(A) - P(B) in stored labels (an exchanged order's shown B is the stored A); None without probs."""
    if not isinstance(probs, dict) or probs.get("A") is None or probs.get("B") is None:
        return None
    r = float(probs["A"]) - float(probs["B"])
    return -r if order == "BA" else r


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _bootstrap_ci(scores: list[float], n_resamples: int, seed: int) -> list[float] | None:
    """Percentile 95% interval of the mean row score, resampling rows with replacement."""
    if n_resamples <= 0 or not scores:
        return None
    rng = np.random.default_rng(seed)
    arr = np.asarray(scores, dtype=np.float64)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, 256):  # chunks keep memory at 256 x n for large benchmarks
        stop = min(start + 256, n_resamples)
        means[start:stop] = arr[rng.integers(0, len(arr), size=(stop - start, len(arr)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return [float(lo), float(hi)]


def omnirrm_metric(rows: list[BenchRow], lines: dict[tuple[int, str], dict], *, template: str | None = None,
                   bootstrap: int = 1000, seed: int = 0, categories: bool = False,
                   expected: dict[int, tuple[str, ...]] | None = None) -> dict[str, Any]:
    """Score a judge's lines on `rows` (see the module docstring for why every labelled row counts).

    Args:
      rows: the benchmark rows; those with label None are only counted ("unlabelled").
      lines: judgement lines keyed by (row.index, order); a line has "output" (raw text in the shown order or
        None), "error" (None or {"reason", "detail"}) and "probs" (None or {"A", "B", "equal"} in shown labels).
      template: the prompt template ("mm_rewardbench" accepts its score_1/score_2 keys).
      bootstrap / seed: resamples and seed of the percentile CI of `accuracy` (0 resamples: no CI).
      categories: also report accuracy per `row.category`.
      expected: the orders each row was to be judged in (a run of only the reference's order shows VL-RewardBench
        rows in one order each, some "AB", some "BA"); None: the orders the lines use, for every row.
    Returns:
      A JSON-serialisable dict. The run's orders are those its lines use ("AB" alone when none is "BA"); a row's
      score is the mean correctness over those orders, and an order a row lacks is a wrong, "missing" judgement.
    """
    present = {order for (_, order) in lines} if expected is None else {o for os_ in expected.values() for o in os_}
    orders = [o for o in ORDERS if o in present] or ["AB"]
    orders_of = (lambda row: orders) if expected is None else (lambda row: expected.get(row.index, orders))  # noqa: E731
    labelled = [r for r in rows if r.label is not None]

    correct: dict[str, list[float]] = {o: [] for o in orders}
    scores: list[float] = []
    errors: Counter[str] = Counter()
    missing = judged = parse_failures = consistent = n_consistency = 0
    reward_hits: list[float] = []
    any_probs = False
    by_cat: dict[str, list[float]] = {}
    for row in labelled:
        verdicts: dict[str, str | None] = {}
        rewards: list[float] = []
        mine = orders_of(row)
        for order in mine:
            line = lines.get((row.index, order))
            verdict = None
            if line is None:
                missing += 1
            elif line.get("error"):
                err = line["error"]
                errors[str(err.get("reason", "unknown")) if isinstance(err, dict) else str(err)] += 1
            elif line.get("output") is None:
                errors["no output"] += 1  # neither an error nor an output: a broken line, counted as such
            else:
                judged += 1
                shown, _ = judged_verdict(line["output"], template)
                parse_failures += shown is None
                verdict = swap_label(shown) if order == "BA" else shown
            if line is not None and not line.get("error"):
                r = _reward(line.get("probs"), order)
                if r is not None:
                    rewards.append(r)
            verdicts[order] = verdict
            correct[order].append(float(verdict == row.label))
        score = float(np.mean([correct[o][-1] for o in mine]))
        scores.append(score)
        if categories:
            by_cat.setdefault(row.category if row.category is not None else _NO_CATEGORY, []).append(score)
        if len(mine) == 2 and None not in verdicts.values():
            n_consistency += 1
            consistent += verdicts["AB"] == verdicts["BA"]
        any_probs = any_probs or bool(rewards)
        if row.label != "equal":  # a tie has no sign to get right: not in the reward accuracy
            r = float(np.mean(rewards)) if rewards else 0.0
            reward_hits.append(float((r > 0 and row.label == "A") or (r < 0 and row.label == "B")))

    non_tie = [s for s, r in zip(scores, labelled) if r.label != "equal"]
    out: dict[str, Any] = {
        "orders": orders,
        "n_rows": len(rows),
        "n": len(labelled),
        "unlabelled": len(rows) - len(labelled),
        "accuracy": _mean(scores),
        "accuracy_ab": _mean(correct["AB"]) if "AB" in correct else None,
        "accuracy_ba": _mean(correct["BA"]) if "BA" in correct else None,
        "accuracy_without_ties": _mean(non_tie),
        "n_ties": len(labelled) - len(non_tie),
        "ci95": _bootstrap_ci(scores, bootstrap, seed),
        "swap_consistency": consistent / n_consistency if n_consistency else None,
        "n_consistency": n_consistency,
        # None when no line carries probs (the run did not compute them), rather than a misleading 0.
        "reward_accuracy": _mean(reward_hits) if any_probs else None,
        "n_reward": len(reward_hits),
        "parse_failure_rate": parse_failures / judged if judged else None,
        "parse_failures": parse_failures,
        "n_judged": judged,
        "errors": dict(sorted(errors.items())),
        "missing": missing,
    }
    if categories:
        out["by_category"] = {c: {"accuracy": float(np.mean(s)), "n": len(s)} for c, s in sorted(by_cat.items())}
    return out
