"""What the demo promises, checked on its own report: one PASS or FAIL line per criterion, so a run that misses
one says so in words (which modality, which number, which threshold) instead of leaving it to the reader of the
table. `omnirrm demo` exits 1 when any line is a FAIL.

  SFT      every modality's held-out accuracy >= MIN_ACCURACY
  control  the judge trained on blanked media scores <= MAX_CONTROL on each media modality (text has no media:
           its control number is no perception test and is not checked)
  GRPO     no modality's held-out accuracy lower than after SFT; the mean held-out reward not lower; the mean
           training-rollout reward higher over the last rollouts than over the first - unless it started at the
           ceiling (>= 0.99 of the most a judgement earns: almost every group is uncontested, GRPO has almost no
           advantage to follow), where it must only stay there
"""

from __future__ import annotations

MIN_ACCURACY = 0.9
MAX_CONTROL = 0.6
CEILING_TOLERANCE = 0.01  # sampling noise of the training rollouts' mean reward (temperature 1) near reward 1
MEDIA = ("image", "video", "audio")


def check(report: dict) -> list[tuple[bool, str]]:
    """(passed, line) per criterion that applies to `report` (a demo_report.json; stages it skipped are not
    checked)."""
    out = []
    sft = report["sft"]
    for m, row in sft.items():
        out.append((row["accuracy"] >= MIN_ACCURACY,
                    f"SFT {m}: held-out accuracy {row['accuracy']:.2f} (needs >= {MIN_ACCURACY})"))
    if "control" in report:
        for m in MEDIA:
            if m in report["control"]:
                a = report["control"][m]["accuracy"]
                out.append((a <= MAX_CONTROL, f"control {m}: accuracy on blanked media {a:.2f} "
                                              f"(needs <= {MAX_CONTROL})"))
    if "grpo" in report:
        grpo = report["grpo"]
        for m in sft:
            before, after = sft[m]["accuracy"], grpo[m]["accuracy"]
            out.append((after >= before, f"GRPO {m}: held-out accuracy {before:.2f} -> {after:.2f} (must not fall)"))
        before, after = _mean_reward(sft), _mean_reward(grpo)
        if before is not None and after is not None:
            out.append((after >= before, f"GRPO: mean held-out reward {before:.3f} -> {after:.3f} (must not fall)"))
        t = report.get("grpo_training", {})
        first, last = t.get("first_reward"), t.get("last_reward")
        if first is not None and last is not None:
            trend = f"mean training-rollout reward {first:.3f} (first rollouts) -> {last:.3f} (last)"
            if first < 1.0 - CEILING_TOLERANCE:
                out.append((last > first, f"GRPO: {trend} (must rise)"))
            else:  # already at the ceiling (reward 1 is the most a judgement earns): nothing to raise, keep it
                out.append((last >= first - CEILING_TOLERANCE,
                            f"GRPO: {trend}; the SFT judge started at the ceiling, so there was nothing to raise "
                            f"(must not fall by more than {CEILING_TOLERANCE})"))
    return out


def _mean_reward(rows: dict) -> float | None:
    if any(r.get("mean_reward") is None for r in rows.values()):
        return None
    n = sum(r["n"] for r in rows.values())
    return sum(r["mean_reward"] * r["n"] for r in rows.values()) / n


def lines(results: list[tuple[bool, str]]) -> str:
    return "\n".join(("PASS " if ok else "FAIL ") + text for ok, text in results)
