"""Stage 4 of `omnirrm synth`: keep a pair only when both teachers agree.

A pair is kept when both teachers' replies were mended into judgements, both name the same winner ("A" or "B"; a
shared "equal" teaches no preference), and each teacher's own scores agree with its verdict (the winner scored
strictly higher). Everything else is rejected with the first reason that applies, in this order: teacher_missing (a
teacher never answered: its failure is in the teacher counts), teacher_unparseable, disagree, tie,
scores_contradict_verdict. Agreement rates per modality are over the pairs both teachers judged usably.
"""

from __future__ import annotations

import collections
import dataclasses


@dataclasses.dataclass
class ConsensusResult:
    kept: list                    # (pair, {teacher: judgement})
    rejected: dict                # reason -> count
    rejected_sample: list         # the first few rejected pairs with both teachers' verdicts
    by_modality: dict             # modality -> {pairs, judged_by_both, same_verdict, agreement, kept, kept_rate}


def _consistent(j: dict) -> bool:
    a, b = j["score_A"], j["score_B"]
    return (a > b) if j["better"] == "A" else (b > a) if j["better"] == "B" else a == b


def decide(judgements: dict) -> str:
    """{teacher: cache row or None} -> "" (keep) or the rejection reason."""
    rows = list(judgements.values())
    if any(r is None for r in rows):
        return "teacher_missing"
    if any(r.get("judgement") is None for r in rows):
        return "teacher_unparseable"
    js = [r["judgement"] for r in rows]
    if js[0]["better"] != js[1]["better"]:
        return "disagree"
    if js[0]["better"] == "equal":
        return "tie"
    if not all(_consistent(j) for j in js):
        return "scores_contradict_verdict"
    return ""


def consensus(pairs: list[dict], cache: dict, teacher_names: tuple[str, ...], sample: int = 20) -> ConsensusResult:
    kept, rejected, shown = [], collections.Counter(), []
    stats: dict = collections.defaultdict(collections.Counter)
    for pair in pairs:
        rows = {t: cache.get(pair["keys"][t]) for t in teacher_names}
        m = stats[pair["modality"]]
        m["pairs"] += 1
        usable = all(r is not None and r.get("judgement") for r in rows.values())
        if usable:
            m["judged_by_both"] += 1
            m["same_verdict"] += len({r["judgement"]["better"] for r in rows.values()}) == 1
        why = decide(rows)
        if not why:
            m["kept"] += 1
            kept.append((pair, {t: r["judgement"] for t, r in rows.items()}))
            continue
        rejected[why] += 1
        if len(shown) < sample:
            shown.append({"pair": pair["id"], "modality": pair["modality"], "reason": why, "verdicts": {
                t: (r["judgement"] and [r["judgement"]["better"], r["judgement"]["score_A"],
                                        r["judgement"]["score_B"]] if r else None) for t, r in rows.items()}})
    by_modality = {}
    for mod, m in sorted(stats.items()):
        by_modality[mod] = {**dict(m), "agreement": round(m["same_verdict"] / m["judged_by_both"], 4)
                            if m["judged_by_both"] else None,
                            "kept_rate": round(m["kept"] / m["pairs"], 4) if m["pairs"] else None}
    return ConsensusResult(kept, dict(rejected), shown, by_modality)
