"""Every selection strategy over the same items, for N = 2 .. max N: accuracy, judge calls and wall time each.

The candidates for N are the first N drawn (an item with fewer uses all it has). A pick is correct when the picked
candidate equals the item's gold answer (the reference's `pred == gt`; MMMU's open questions, whose gold is not a
letter, are never correct, as in the reference). Each strategy gets its own memo, so its judge calls and time are its
own.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Sequence

from omnirrm_jax.bon import strategies as S
from omnirrm_jax.bon.answers import display
from omnirrm_jax.bon.items import BonItem
from omnirrm_jax.bon.scorers import PairScorer
from omnirrm_jax.errors import UserError

log = logging.getLogger(__name__)
DEFAULT_STRATEGIES = ("first", "majority", "oracle", "elimination", "tournament", "knockout", "reward", "reward_ref")


class BonOptionError(UserError):
    """Unknown strategy names or an unusable N."""


@dataclasses.dataclass(frozen=True)
class SelectOptions:
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    max_n: int = 10
    answer_form: str = "letter"     # what the judge is shown: "letter" (the reference) or "text" (letter + option)
    distinct: str = "auto"          # elimination over distinct answers: "auto" = Video-MME only (its script), on, off
    max_error_ratio: float = 0.25   # comparisons the judge could not judge (missing media...), over which we stop


def check_strategies(names: Sequence[str]) -> tuple[str, ...]:
    unknown = [n for n in names if n not in S.STRATEGIES]
    if unknown:
        raise BonOptionError(f"unknown strategy {', '.join(unknown)}; expected some of {', '.join(S.STRATEGIES)}")
    return tuple(names)


def context(items: Sequence[BonItem], opts: SelectOptions) -> S.Context:
    if opts.max_n < 2:
        raise BonOptionError(f"--max-n must be at least 2, got {opts.max_n}")
    if opts.answer_form not in ("letter", "text"):
        raise BonOptionError(f"answer_form must be 'letter' or 'text', got {opts.answer_form!r}")
    missing = [it.where for it in items if it.candidates is None]
    if missing:
        raise BonOptionError(f"{len(missing)} rows have no candidates (first: {missing[0]}); draw them with "
                             "`omnirrm bon sample` first")
    answers = [list(it.candidates[:opts.max_n]) for it in items]
    shown = [[display(a, it.options, opts.answer_form) for a in ans] for it, ans in zip(items, answers)]
    top = max([len(a) for a in answers] + [0])
    if top < 2:
        raise BonOptionError("no item has two or more candidates: nothing to select")
    return S.Context(items=items, shown=shown, answers=answers, ns=tuple(range(2, min(opts.max_n, top) + 1)))


def run_selection(items: Sequence[BonItem], scorer: PairScorer | None, opts: SelectOptions = SelectOptions()) -> dict:
    """{"ns", "items", "strategies": {name: {"accuracy": {N: acc}, "correct": {N: count}, "judge_calls",
    "comparisons", "seconds", "picks": {N: [index]}}}}. `scorer` may be None when no strategy needs the judge."""
    names = check_strategies(opts.strategies)
    ctx = context(items, opts)
    if scorer is None and any(n in S.USES_JUDGE for n in names):
        raise BonOptionError(f"strategies {', '.join(n for n in names if n in S.USES_JUDGE)} need a judge checkpoint")
    out = {"ns": list(ctx.ns), "items": len(items), "strategies": {}}
    for name in names:
        comps = S.Comparisons(scorer, ctx)
        calls0 = getattr(scorer, "model_calls", 0)
        t0 = time.perf_counter()
        if name == "elimination":
            distinct = opts.distinct == "on" or (opts.distinct == "auto" and items and items[0].bench == "videomme")
            picks = S.elimination(ctx, comps, distinct=distinct)
        else:
            picks = S.STRATEGIES[name](ctx, comps)
        seconds = time.perf_counter() - t0
        correct = {}
        for n in ctx.ns:
            correct[n] = sum(1 for item, ans, p in zip(items, ctx.answers, picks[n])
                             if p is not None and (any(a == item.gold for a in ans[:n]) if name == "oracle"
                                                   else ans[p] == item.gold))
        out["strategies"][name] = {
            "accuracy": {n: correct[n] / len(items) for n in ctx.ns}, "correct": correct,
            "judge_calls": comps.counts["judge_calls"], "comparisons": comps.counts["comparisons"],
            "seconds": seconds, "picks": picks}
        if hasattr(scorer, "errors") and name in S.USES_JUDGE:  # a ModelScorer (test scorers count nothing)
            out["strategies"][name]["model_calls"] = scorer.model_calls - calls0
            _check_judge_errors(scorer, opts.max_error_ratio)
        log.info("%s: accuracy %s, %d judge calls, %.1f s", name,
                 " ".join(f"N={n}:{correct[n] / len(items):.3f}" for n in ctx.ns), comps.counts["judge_calls"],
                 seconds)
    if hasattr(scorer, "errors"):
        out["judge_errors"] = dict(scorer.errors)  # comparisons counted "equal" because the judge could not run
    return out


def _check_judge_errors(scorer, max_ratio: float) -> None:
    """A judge that cannot load an item's media answers "equal" for it, as the reference's `except` does; past
    `max_ratio` of the comparisons that is no longer a judge strategy but "first" in disguise, so the run stops."""
    failed = sum(scorer.errors.values())
    tried = failed + scorer.model_calls
    if tried >= 20 and failed > max_ratio * tried:
        common = ", ".join(f"{k} x{v}" for k, v in scorer.errors.most_common(3))
        raise BonOptionError(f"the judge could not judge {failed} of {tried} comparisons ({common}), more than "
                             f"--max-error-ratio {max_ratio}; check --media-root (or raise --max-error-ratio)")
