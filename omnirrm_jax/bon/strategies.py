"""Selection strategies for Best-of-N: each picks one candidate per item, for every N at once, through a scorer
(`bon.scorers.PairScorer`: verdicts or scalar rewards of (shown A, shown B) pairs).

  elimination  the reference: the first candidate is the incumbent; each later one is compared as
               (incumbent = A, challenger = B) with the {"better": ...} prompt at temperature 0, and replaces the
               incumbent only on "B" ("equal" or an unparseable reply keeps it). The pick for N is the incumbent
               after candidate N, so one pass gives every N. `distinct=True` runs over the distinct answers in order of
               first appearance, as the Video-MME script does (it iterates over `qwen_votes`' keys).
  tournament   round robin, every pair in both orders: a verdict gives its winner 1 point ("equal" 1/2 each); the
               most points wins. Free of order bias: each candidate is A as often as B.
  knockout     a bracket in draw order (1 v 2, 3 v 4, ...; an odd one out goes through), each match judged in both
               orders; ties go to the earlier candidate. N - 1 matches.
  reward       the scalar P(A) - P(B) at the verdict token (no generation), summed pairwise in both orders.
  reward_ref   the same scalar against a fixed reference answer, the first candidate: each other candidate's
               (r(c, ref) - r(ref, c)) / 2, the reference's own 0; the highest wins.
  first, majority, oracle   baselines without the judge: the first sample; the most frequent answer (ties: the one
               drawn first, as `Counter.most_common`); correct if any of the N is (the ceiling).

Comparing two identical texts cannot change what is picked, so such pairs are "equal" / 0 without a judge call; a
pair already judged is not judged again (greedy verdicts and the scalar are deterministic). `Comparisons` counts both:
`comparisons` (what the strategy asked) and `judge_calls` (prompts the judge ran). Ties between candidates always go to
the earliest.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Callable, Sequence

from omnirrm_jax.bon.answers import majority
from omnirrm_jax.bon.items import BonItem
from omnirrm_jax.bon.scorers import PairRequest, PairScorer

Triple = tuple[int, int, int]  # (item position, candidate shown as A, candidate shown as B)


@dataclasses.dataclass
class Context:
    """items; shown[k][i]: the text of item k's candidate i as the judge sees it; answers[k][i]: as scored;
    ns: the N values to report."""

    items: Sequence[BonItem]
    shown: Sequence[Sequence[str]]
    answers: Sequence[Sequence[str]]
    ns: Sequence[int]


class Comparisons:
    """A scorer with a memo and counters, for one strategy."""

    def __init__(self, scorer: PairScorer, ctx: Context):
        self.scorer, self.ctx = scorer, ctx
        self._memo: dict = {}
        self.counts: collections.Counter = collections.Counter()

    def _ask(self, kind: str, triples: Sequence[Triple], same) -> dict[Triple, object]:
        out, todo = {}, {}
        for t in triples:
            k, i, j = t
            a, b = self.ctx.shown[k][i], self.ctx.shown[k][j]
            self.counts["comparisons"] += 1
            key = (kind, k, a, b)
            if a == b:
                out[t] = same
            elif key in self._memo:
                out[t] = self._memo[key]
            else:
                todo.setdefault(key, []).append(t)
        if todo:
            keys = list(todo)
            reqs = [PairRequest(self.ctx.items[k], a, b) for _, k, a, b in keys]
            values = self.scorer.verdicts(reqs) if kind == "verdict" else self.scorer.rewards(reqs)
            self.counts["judge_calls"] += len(keys)
            for key, v in zip(keys, values):
                self._memo[key] = v
                for t in todo[key]:
                    out[t] = v
        return out

    def verdicts(self, triples: Sequence[Triple]) -> dict[Triple, str]:
        return self._ask("verdict", triples, "equal")

    def rewards(self, triples: Sequence[Triple]) -> dict[Triple, float]:
        return self._ask("reward", triples, 0.0)


Picks = dict[int, list]  # N -> per item the picked candidate index (None: no candidates)


def _argmax(scores: Sequence[float]) -> int:
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def _points(v: dict, k: int, i: int, j: int) -> float:
    """Points of candidate i against j from the verdicts in both orders (i as A, then j as A)."""
    ab, ba = v[(k, i, j)], v[(k, j, i)]
    return (1.0 if ab == "A" else 0.0 if ab == "B" else 0.5) + (1.0 if ba == "B" else 0.0 if ba == "A" else 0.5)


def _all_pairs(ctx: Context, upto: int) -> list[Triple]:
    return [(k, i, j) for k in range(len(ctx.items)) for i in range(min(upto, len(ctx.shown[k])))
            for j in range(min(upto, len(ctx.shown[k]))) if i != j]


def _by_total(ctx: Context, pair_score: Callable[[int, int, int], float]) -> Picks:
    picks: Picks = {}
    for n in ctx.ns:
        row = []
        for k in range(len(ctx.items)):
            m = min(n, len(ctx.shown[k]))
            row.append(None if m == 0 else _argmax([sum(pair_score(k, i, j) for j in range(m) if j != i)
                                                    for i in range(m)]))
        picks[n] = row
    return picks


def elimination(ctx: Context, comps: Comparisons, distinct: bool = False) -> Picks:
    seqs = []
    for shown in ctx.shown:
        seen: dict[str, int] = {}
        seqs.append([seen.setdefault(s, i) for i, s in enumerate(shown) if s not in seen] if distinct
                    else list(range(len(shown))))
    incumbent = [seq[0] if seq else None for seq in seqs]
    history = [[inc] if inc is not None else [] for inc in incumbent]
    for r in range(1, max((len(s) for s in seqs), default=0)):
        triples = [(k, incumbent[k], seq[r]) for k, seq in enumerate(seqs) if len(seq) > r]
        verdicts = comps.verdicts(triples)
        for t in triples:
            if verdicts[t] == "B":
                incumbent[t[0]] = t[2]
            history[t[0]].append(incumbent[t[0]])
    picks: Picks = {}
    for n in ctx.ns:
        picks[n] = [None if not seq else history[k][sum(1 for i in seq if i < n) - 1] for k, seq in enumerate(seqs)]
    return picks


def tournament(ctx: Context, comps: Comparisons) -> Picks:
    v = comps.verdicts(_all_pairs(ctx, max(ctx.ns)))
    return _by_total(ctx, lambda k, i, j: _points(v, k, i, j))


def knockout(ctx: Context, comps: Comparisons) -> Picks:
    picks: Picks = {}
    for n in ctx.ns:
        alive = [list(range(min(n, len(s)))) for s in ctx.shown]
        while any(len(a) > 1 for a in alive):
            matches = [(k, a[x], a[x + 1]) for k, a in enumerate(alive) for x in range(0, len(a) - 1, 2)]
            v = comps.verdicts([t for k, i, j in matches for t in ((k, i, j), (k, j, i))])
            winners: dict[tuple[int, int], int] = {}
            for k, i, j in matches:
                winners[(k, i)] = i if _points(v, k, i, j) >= 1.0 else j
            alive = [[winners[(k, a[x])] for x in range(0, len(a) - 1, 2)] + (a[-1:] if len(a) % 2 else [])
                     if len(a) > 1 else a for k, a in enumerate(alive)]
        picks[n] = [a[0] if a else None for a in alive]
    return picks


def reward(ctx: Context, comps: Comparisons) -> Picks:
    r = comps.rewards(_all_pairs(ctx, max(ctx.ns)))
    return _by_total(ctx, lambda k, i, j: 0.5 * (r[(k, i, j)] - r[(k, j, i)]))


def reward_ref(ctx: Context, comps: Comparisons) -> Picks:
    top = max(ctx.ns)
    triples = [t for k, s in enumerate(ctx.shown) for i in range(1, min(top, len(s))) for t in ((k, i, 0), (k, 0, i))]
    r = comps.rewards(triples)
    score = [[0.0] + [0.5 * (r[(k, i, 0)] - r[(k, 0, i)]) for i in range(1, min(top, len(s)))]
             for k, s in enumerate(ctx.shown)]
    return {n: [None if not s else _argmax(s[:n]) for s in score] for n in ctx.ns}


def first(ctx: Context, comps: Comparisons) -> Picks:
    return {n: [0 if s else None for s in ctx.answers] for n in ctx.ns}


def _votes(item: BonItem) -> dict | None:
    """The vote counts when the candidates are `qwen_votes`' keys (no per-run answers): each key is one distinct
    answer, so a majority over the keys would just be the first key."""
    rec = item.record
    return rec["qwen_votes"] if not rec.get("qwen_all_runs") and isinstance(rec.get("qwen_votes"), dict) else None


def majority_vote(ctx: Context, comps: Comparisons) -> Picks:
    """The most frequent answer among the first N runs; for a votes-only file, the key with the most votes among
    the first N keys (its counts are over every run the file was made from; ties go to the first key)."""
    out: Picks = {}
    for n in ctx.ns:
        picks = []
        for item, s in zip(ctx.items, ctx.answers):
            votes = _votes(item)
            if votes is None or not s:
                picks.append(majority(list(s[:n])))
            else:
                counts = [v if isinstance(v := votes.get(c), (int, float)) else 0 for c in item.candidates[:n]]
                picks.append(counts.index(max(counts)))
        out[n] = picks
    return out


def oracle(ctx: Context, comps: Comparisons) -> Picks:
    out: Picks = {}
    for n in ctx.ns:
        out[n] = [next((i for i, a in enumerate(s[:n]) if a == item.gold), 0) if s else None
                  for item, s in zip(ctx.items, ctx.answers)]
    return out


STRATEGIES: dict[str, Callable[[Context, Comparisons], Picks]] = {
    "elimination": elimination, "tournament": tournament, "knockout": knockout, "reward": reward,
    "reward_ref": reward_ref, "first": first, "majority": majority_vote, "oracle": oracle,
}
USES_JUDGE = ("elimination", "tournament", "knockout", "reward", "reward_ref")
