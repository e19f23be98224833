"""The suite's report: this model's accuracies beside the published rows, as Markdown, JSON and a PNG chart.

Accuracies are stored as fractions (`eval.metrics`, `eval.reference_metrics`) and shown in percent, like the paper.
"overall" is the mean of the five published columns, shown only when all five were run.
"""

from __future__ import annotations

import math
from typing import Any

from omnirrm_jax.eval.benchmarks import PROTOCOLS, PUBLISHED, PUBLISHED_COLUMNS

COLUMNS = (*PUBLISHED_COLUMNS, "hh_rlhf")


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def model_rows(name: str, scores: dict[str, dict]) -> dict[str, dict[str, float | None]]:
    """{"<name> (reference)": {col: fraction}, "<name> (omnirrm)": {...}} incl. "overall" when all five ran."""
    out = {}
    for metric in ("reference", "omnirrm"):
        row = {c: scores[c][metric]["accuracy"] for c in COLUMNS if c in scores}
        five = [row.get(c) for c in PUBLISHED_COLUMNS]
        row["overall"] = sum(five) / 5 if all(v is not None for v in five) else None
        out[f"{name} ({metric})"] = row
    return out


def markdown(name: str, scores: dict[str, dict], meta: dict[str, Any]) -> str:
    cols = [c for c in COLUMNS if c in scores or c in PUBLISHED_COLUMNS]
    head = ["model", *(PROTOCOLS[c].title for c in cols), "overall"]
    lines = [f"# Judge evaluation: {name}", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += ["", "## Accuracy (%) beside the published numbers", "",
              "`reference`: what the reference's own scripts print on these judgements (their exclusions); "
              "`omnirrm`: every labelled row counted, mean of both A/B orders. Published rows: Omni-RRM README.", "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ours = model_rows(name, scores)
    for label, row in ours.items():
        lines.append("| " + " | ".join([f"**{label}**", *(_pct(row.get(c)) for c in cols),
                                        _pct(row.get("overall"))]) + " |")
    for label, row in PUBLISHED.items():
        lines.append("| " + " | ".join([label, *(f"{row[c]:.1f}" if c in row else "-" for c in cols),
                                        f"{row['overall']:.1f}"]) + " |")
    lines += ["", "## Per benchmark", "",
              "| benchmark | rows | reference (n) | omnirrm [95% CI] | AB | BA | swap consistency | reward acc "
              "| parse failures | error rows | missing |", "|" + "---|" * 11]
    for c in COLUMNS:
        if c not in scores:
            continue
        r, o = scores[c]["reference"], scores[c]["omnirrm"]
        ci = o.get("ci95")
        lines.append("| " + " | ".join([
            PROTOCOLS[c].title, str(scores[c]["rows"]), f"{_pct(r.get('accuracy'))} ({r.get('n')})",
            f"{_pct(o.get('accuracy'))} [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else _pct(o.get("accuracy")),
            _pct(o.get("accuracy_ab")), _pct(o.get("accuracy_ba")), _pct(o.get("swap_consistency")),
            _pct(o.get("reward_accuracy")), _pct(o.get("parse_failure_rate")),
            str(sum((o.get("errors") or {}).values())), str(o.get("missing"))]) + " |")
    extra = []
    if "hh_rlhf" in scores or "audio_hh_rlhf" in scores:
        extra.append("HH-RLHF / Audio-HH-RLHF reference score rule (higher score wins, a tie is wrong): " + ", ".join(
            f"{PROTOCOLS[c].title} {_pct(scores[c]['reference'].get('accuracy_scores'))}"
            for c in ("hh_rlhf", "audio_hh_rlhf") if c in scores))
    if "ta2t" in scores:
        extra.append(f"TA2T with ties (reference rule): {_pct(scores['ta2t']['reference'].get('accuracy_with_tie'))}; "
                     f"omnirrm without ties: {_pct(scores['ta2t']['omnirrm'].get('accuracy_without_ties'))}")
    if "mm_rewardbench" in scores:
        ref_cat = scores["mm_rewardbench"]["reference"].get("by_category", {})
        own_cat = scores["mm_rewardbench"]["omnirrm"].get("by_category", {})
        extra += ["", "Multimodal RewardBench by category (reference / omnirrm, %): " + "; ".join(
            f"{cat} {_pct(v.get('accuracy'))} / {_pct(own_cat.get(cat, {}).get('accuracy'))} (n={v.get('n')})"
            for cat, v in sorted(ref_cat.items(), key=lambda kv: str(kv[0])))]
    stopped = [f"{PROTOCOLS[c].title} stopped early: {s['run']['stopped']}" for c, s in scores.items()
               if (s.get("run") or {}).get("stopped")]
    if stopped:
        extra += ["", "**Incomplete:** " + " ".join(stopped)]
    if extra:
        lines += [""] + extra
    return "\n".join(lines) + "\n"


def chart(name: str, scores: dict[str, dict], path: str) -> None:
    """Grouped bars per benchmark: this model's two metrics beside every published row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cols = [*PUBLISHED_COLUMNS, "overall"]
    series = {k: v for k, v in model_rows(name, scores).items()}
    series.update({k: {c: v[c] / 100 for c in cols} for k, v in PUBLISHED.items()})
    x = np.arange(len(cols))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(13, 5.5))
    for i, (label, row) in enumerate(series.items()):
        vals = [100 * row[c] if row.get(c) is not None else np.nan for c in cols]  # not run: no bar
        ours = label.startswith(name + " (")
        ax.bar(x - 0.4 + (i + 0.5) * width, vals, width, label=label, edgecolor="black" if ours else None,
               linewidth=1.2 if ours else 0, hatch="//" if label.endswith("(omnirrm)") else None)
    ax.set_xticks(x, [PROTOCOLS[c].title.replace(" ", "\n", 1) if c in PROTOCOLS else "Overall\n(mean of 5)"
                      for c in cols])
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.axhline(50, color="grey", linewidth=0.8, linestyle=":")
    ax.set_title(f"{name} beside the published Omni-RRM results")
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
