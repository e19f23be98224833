"""Several demo runs (one per seed) as one table: min / median / max of each held-out number per modality, and
which criteria failed on which seed, for docs/RESULTS.md.

  python -m omnirrm_jax.demo.seeds runs/demo-s*/demo_report.json
"""

from __future__ import annotations

import argparse
import json
import statistics

from omnirrm_jax.demo import criteria

MODALITIES = ("text", "image", "video", "audio")
ROWS = (  # (label, stage in the report, key in its per-modality row)
    ("SFT accuracy", "sft", "accuracy"),
    ("SFT valid JSON", "sft", "valid_json"),
    ("SFT mean reward", "sft", "mean_reward"),
    ("control (blanked media) accuracy", "sft", "blank_media_accuracy"),
    ("GRPO accuracy", "grpo", "accuracy"),
    ("GRPO valid JSON", "grpo", "valid_json"),
    ("GRPO mean reward", "grpo", "mean_reward"),
)


def _cell(values: list, fmt: str = ".2f") -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    lo, mid, hi = min(values), statistics.median(values), max(values)
    return f"{lo:{fmt}}" if lo == hi else f"{lo:{fmt}} / {mid:{fmt}} / {hi:{fmt}}"


def table(reports: list[dict]) -> str:
    """Markdown: one row per number, one column per modality; a cell is min / median / max over the reports (one
    value when all agree). Then the GRPO training reward and the seconds, and every FAIL line with its seed."""
    seeds = ", ".join(str(r.get("seed")) for r in reports)
    lines = [f"| {len(reports)} seeds ({seeds}): min / median / max | " + " | ".join(MODALITIES) + " |",
             "|---|" + "---|" * len(MODALITIES)]
    for label, stage, key in ROWS:
        if not any(stage in r for r in reports):
            continue
        values = [[r[stage][m].get(key) for r in reports if stage in r and m in r[stage]] for m in MODALITIES]
        if all(v is None for column in values for v in column):
            continue
        cells = [_cell(column) for column in values]
        if label.startswith("control"):
            cells[0] += " (no media: not a perception test)"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    training = [r["grpo_training"] for r in reports if "grpo_training" in r]
    extra = []
    if training:
        extra.append(f"GRPO training-rollout reward, first -> last rollouts: "
                     f"{_cell([t['first_reward'] for t in training], '.3f')} -> "
                     f"{_cell([t['last_reward'] for t in training], '.3f')}")
    extra.append(f"seconds by the demo's clock: {_cell([r['seconds'] for r in reports], '.0f')}")
    # checked again here, so every seed is judged by the same (current) criteria
    fails = [f"seed {r.get('seed')}: {text}" for r in reports for ok, text in criteria.check(r) if not ok]
    extra.append("criteria: " + ("every one passed on every seed" if not fails else "FAIL " + "; FAIL ".join(fails)))
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {e}" for e in extra)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m omnirrm_jax.demo.seeds", description=__doc__.split("\n")[0])
    p.add_argument("reports", nargs="+", help="demo_report.json files")
    args = p.parse_args(argv)
    reports = []
    for path in args.reports:
        with open(path) as f:
            reports.append(json.load(f))
    print(table(reports))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
