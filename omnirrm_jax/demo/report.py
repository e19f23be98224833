"""The demo's report: demo_report.json's per-modality rows, the printed results table, and the GRPO stage's
training trend."""

from __future__ import annotations

import importlib.metadata
import os
import platform

import numpy as np

# What decides the demo's numbers besides its code: the array stack, the media decoders, the tokenizer.
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy", "pillow", "av", "librosa",
            "sentencepiece", "transformers")


def environment() -> dict:
    """Python, the packages above (None: not installed), the processor and its core count, for the top of the
    report: the same seed can train differently on another processor or package version."""
    def version(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"python": platform.python_version(), "packages": {p: version(p) for p in PACKAGES},
            "cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform()}


def environment_line(env: dict) -> str:
    pk = ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v is not None)
    return f"Python {env['python']}, {pk}; {env['cpu']}, {env['cores']} cores"


def table(results: dict) -> str:
    """Held-out accuracy / valid-JSON rate / mean reward per run (rows) and modality (columns), plus the change
    the GRPO stage made when both "sft" and "grpo" are there."""
    mods = ("text", "image", "video", "audio")
    lines = [f"{'run':<10}" + "".join(f"{m:>24}" for m in mods),
             " " * 10 + "".join(f"{'acc / json / reward':>24}" for _ in mods)]
    for run, res in results.items():
        cells = "".join(f"{res[m]['accuracy']:>8.2f} / {res[m]['valid_json']:.2f} / "
                        f"{res[m].get('mean_reward', np.nan):+.3f}" if m in res else f"{'-':>24}" for m in mods)
        lines.append(f"{run:<10}{cells}")
    if "sft" in results and "grpo" in results:  # what the GRPO stage changed
        before, after = results["sft"], results["grpo"]
        cells = "".join(f"{after[m]['accuracy'] - before[m]['accuracy']:>+7.2f} / "
                        f"{after[m]['valid_json'] - before[m]['valid_json']:+.2f} / "
                        f"{after[m].get('mean_reward', np.nan) - before[m].get('mean_reward', np.nan):+.3f}"
                        if m in before and m in after else f"{'-':>24}" for m in mods)
        lines.append(f"{'grpo-sft':<10}{cells}")
    return "\n".join(lines)


def rows(real: dict, control: dict | None) -> dict:
    """demo_report.json's per-modality rows: held-out accuracy, valid-JSON rate and mean GRPO reward
    (`combined_reward`) of the greedy judgements, and the accuracy on blanked media (`control`)."""
    return {m: {"accuracy": r["accuracy"], "valid_json": r["valid_json"],
                "blank_media_accuracy": control[m]["accuracy"] if control and m in control else None,
                "mean_reward": r.get("mean_reward"), "n": r["n"]} for m, r in real.items()}


def history_summary(history: list[dict], k: int = 5) -> dict:
    """Mean training-rollout reward and verdict accuracy over the first and last `k` rollouts (a trend only:
    these are sampled judgements of different train prompts, not the held-out evaluation)."""
    def mean(rows, key):
        return round(float(np.mean([h[key] for h in rows])), 4) if rows else None

    first, last = history[:k], history[-k:]
    return {"rollouts": len(history), "first_reward": mean(first, "reward/total_mean"),
            "last_reward": mean(last, "reward/total_mean"), "first_accuracy": mean(first, "rollout/verdict_accuracy"),
            "last_accuracy": mean(last, "rollout/verdict_accuracy"), "last_kl": mean(last, "train/kl")}
