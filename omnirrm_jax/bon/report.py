"""The Best-of-N report: accuracy against N per strategy as a markdown table and JSON, and a PNG plot beside the
published curves.

Published (the Omni-RRM paper, accuracy % at N = 2 and N = 10; only these end points are quoted, so the plot joins
them with a straight dashed line, which says nothing about the N in between):

  MMMU       Omni-RRM 52.9 -> 56.4   majority vote 52.6 -> 54.5
  Video-MME  Omni-RRM 51.7 -> 54.1   majority vote 51.2 -> 52.4
  AVQA       Omni-RRM 76.9 -> 80.3   majority vote 75.8 -> 77.7
"""

from __future__ import annotations

import json
import os
from typing import Any

PUBLISHED = {  # bench -> curve -> {N: accuracy %}
    "mmmu": {"Omni-RRM (paper)": {2: 52.9, 10: 56.4}, "majority vote (paper)": {2: 52.6, 10: 54.5}},
    "videomme": {"Omni-RRM (paper)": {2: 51.7, 10: 54.1}, "majority vote (paper)": {2: 51.2, 10: 52.4}},
    "avqa": {"Omni-RRM (paper)": {2: 76.9, 10: 80.3}, "majority vote (paper)": {2: 75.8, 10: 77.7}},
}
TITLES = {"mmmu": "MMMU", "videomme": "Video-MME", "avqa": "AVQA"}


def markdown(result: dict[str, Any], bench: str, judge: str = "judge") -> str:
    """The table: one row per strategy, accuracy % for each N, then judge calls and wall time; the published end
    points below it."""
    ns = result["ns"]
    head = "| strategy | " + " | ".join(f"N={n}" for n in ns) + " | judge calls | comparisons | seconds |"
    lines = [f"Best-of-N on {TITLES.get(bench, bench)}: {result['items']} questions, judge {judge}", "", head,
             "|---" * (len(ns) + 4) + "|"]
    for name, s in result["strategies"].items():
        accs = " | ".join(f"{100 * s['accuracy'][n]:.1f}" for n in ns)
        lines.append(f"| {name} | {accs} | {s['judge_calls']} | {s['comparisons']} | {s['seconds']:.1f} |")
    if result.get("judge_errors"):
        lines += ["", "Comparisons the judge could not judge (counted equal, as the reference does): " + ", ".join(
            f"{k} x{v}" for k, v in sorted(result["judge_errors"].items()))]
    pub = PUBLISHED.get(bench, {})
    if pub:
        lines += ["", "Published (paper), N=2 -> N=10: " + "; ".join(
            f"{name} {c[2]} -> {c[10]}" for name, c in pub.items())]
    return "\n".join(lines) + "\n"


def to_json(result: dict[str, Any], bench: str, extra: dict | None = None) -> dict[str, Any]:
    """JSON-ready: N keys as strings, picks kept per strategy."""
    strategies = {}
    for name, s in result["strategies"].items():
        strategies[name] = {"accuracy": {str(n): a for n, a in s["accuracy"].items()},
                            "correct": {str(n): c for n, c in s["correct"].items()},
                            "judge_calls": s["judge_calls"], "comparisons": s["comparisons"], "seconds": s["seconds"],
                            "picks": {str(n): p for n, p in s["picks"].items()},
                            **({"model_calls": s["model_calls"]} if "model_calls" in s else {})}
    return {"bench": bench, "ns": result["ns"], "items": result["items"], "strategies": strategies,
            "published": {k: {str(n): v for n, v in c.items()} for k, c in PUBLISHED.get(bench, {}).items()},
            **(extra or {})}


def plot(result: dict[str, Any], bench: str, path: str, judge: str = "judge") -> str:
    """Accuracy % against N for every strategy (solid) and the published end points (dashed); writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ns = result["ns"]
    for name, s in result["strategies"].items():
        ax.plot(ns, [100 * s["accuracy"][n] for n in ns], marker="o", label=f"{name} ({judge})")
    for name, curve in PUBLISHED.get(bench, {}).items():
        xs = sorted(curve)
        ax.plot(xs, [curve[x] for x in xs], linestyle="--", marker="x", label=name)
    ax.set_xlabel("N (candidates per question)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Best-of-N, {TITLES.get(bench, bench)} ({result['items']} questions)")
    ax.set_xticks(sorted(set(ns) | {n for c in PUBLISHED.get(bench, {}).values() for n in c}))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write(result: dict[str, Any], bench: str, out_dir: str, judge: str = "judge",
          extra: dict | None = None) -> dict[str, str]:
    """report.md, report.json and report.png in `out_dir`; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f"report.{k}") for k in ("md", "json", "png")}
    with open(paths["md"], "w", encoding="utf-8") as f:
        f.write(markdown(result, bench, judge))
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(to_json(result, bench, extra), f, indent=2, ensure_ascii=False)
        f.write("\n")
    plot(result, bench, paths["png"], judge)
    return paths
