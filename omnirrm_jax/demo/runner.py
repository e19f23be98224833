"""`run_demo`: the demo's stages in order, timed, with the report written at the end (each stage lives in its
own module of this package)."""

from __future__ import annotations

import json
import os
import time

from omnirrm_jax.demo import criteria as C
from omnirrm_jax.demo import evaluate as E
from omnirrm_jax.demo import grpo as demo_grpo
from omnirrm_jax.demo import report as R
from omnirrm_jax.demo import sft as demo_sft
from omnirrm_jax.demo.config import DemoConfig
from omnirrm_jax.demo.data import DemoData, prepare_data, train_tokenizer
from omnirrm_jax.demo.workdir import start_clean


def run_demo(cfg: DemoConfig = DemoConfig()) -> dict:
    """Runs the whole demo under `cfg.workdir` (an earlier demo run's outputs there are removed first: a rerun
    reproduces the demo, it does not resume), prints progress and results; returns the report it writes to
    `demo_report.json` (per-modality rows "sft"/"grpo", "checkpoint", "control", "grpo_checkpoint",
    "grpo_training", "examples", timings and load averages)."""
    t0 = time.time()
    seconds = {}  # per stage, in the report: the whole demo has a CPU time budget
    # the demo's time depends on what else the (shared) machine runs: 1-minute load average after each stage
    load = {"start": os.getloadavg()}
    n = 4 + int(cfg.control) + int(cfg.grpo is not None)  # stages printed as [i/n]
    env = R.environment()
    print(f"omnirrm demo, seed {cfg.seed}: {R.environment_line(env)}", flush=True)

    def lap(name):
        seconds[name] = round(time.time() - t0 - sum(seconds.values()), 1)
        load[name] = round(os.getloadavg()[0], 2)

    removed = start_clean(cfg.workdir)
    if removed:
        print(f"starting clean: removed the earlier demo run's {', '.join(removed)} from {cfg.workdir}", flush=True)
    print(f"[1/{n}] generating and preparing demo data (images, mp4 videos, wav audio, arithmetic)", flush=True)
    real = prepare_data(cfg, "data", blank=False)
    tok, tok_path = train_tokenizer(cfg, real.root)
    lap("data")
    print(f"[2/{n}] SFT of a tiny thinker from random weights ({cfg.steps} steps)", flush=True)
    out, workdir = demo_sft.train(cfg, real, tok_path, "sft")
    thinker_cfg = out["thinker_config"]
    lap("sft")
    print(f"[3/{n}] checkpoint reload and held-out evaluation (greedy judgements)", flush=True)
    model, reload_ok, step = demo_sft.reload(out, workdir)
    results = {"sft": E.evaluate(model, tok, thinker_cfg, real.shards, cfg)}
    report = {"checkpoint": {"reloaded_equal": reload_ok, "step": step}}
    lap("sft_eval")
    blank = None
    if cfg.control:
        print(f"[4/{n}] control: the same training on blanked media", flush=True)
        blank = prepare_data(cfg, "data_blank", blank=True)
        out_c, _ = demo_sft.train(cfg, blank, tok_path, "sft_control")
        results["control"] = E.evaluate(out_c["state"].model(), tok, thinker_cfg, blank.shards, cfg)
        report["control"] = results["control"]
        lap("control")
    report = {"sft": R.rows(results["sft"], results.get("control")), **report}
    if cfg.grpo is not None:
        model = _grpo(cfg, model, tok, tok_path, thinker_cfg, real, blank, results, report, n)
        lap("grpo")
    print(f"[{n}/{n}] results (held-out pairwise accuracy / valid-JSON rate / mean combined reward)\n"
          + R.table(results), flush=True)
    examples = E.one_judgement_per_modality(model, tok, thinker_cfg, real.shards, cfg)
    for modality, text in examples.items():
        print(f"\n--- {modality} ---\n{text}")
    report["examples"] = examples
    lap("examples")
    report = {"environment": env, "seed": cfg.seed, **report}  # first in demo_report.json
    checks = C.check(report)
    report["criteria"] = [{"passed": ok, "check": text} for ok, text in checks]
    report["passed"] = all(ok for ok, _ in checks)
    print("\n" + C.lines(checks), flush=True)
    report["seconds"] = time.time() - t0
    report["seconds_by_stage"] = seconds
    report["load_average"] = {**load, "end": os.getloadavg()}
    with open(os.path.join(cfg.workdir, "demo_report.json"), "w") as f:
        json.dump(report, f, indent=2)
    failed = sum(not ok for ok, _ in checks)
    print(f"\nreport: {os.path.join(cfg.workdir, 'demo_report.json')} ({report['seconds']:.0f} s, "
          f"load average {load['start'][0]:.1f} -> {report['load_average']['end'][0]:.1f}); "
          + (f"{failed} of {len(checks)} criteria FAILED" if failed else f"all {len(checks)} criteria passed"))
    return report


def _grpo(cfg: DemoConfig, sft_model, tok, tok_path: str, thinker_cfg, real: DemoData, blank: DemoData | None,
          results: dict, report: dict, n: int):
    """The GRPO stage (`demo.grpo`); adds report["grpo"] (rows like "sft", from the reloaded export; its
    blank_media_accuracy is this judge's accuracy on the blanked held-out set, not a second control run),
    report["grpo_checkpoint"] and report["grpo_training"]. Returns the reloaded GRPO judge."""
    g = cfg.grpo
    print(f"[{n - 1}/{n}] GRPO: LoRA on the SFT judge, rubric rewards ({g.rollouts} rollouts of {g.prompts_per_rollout} "
          f"prompts x {g.num_generations} samples), merged export reloaded, held-out evaluation", flush=True)
    stage = demo_grpo.run_grpo_stage(cfg, sft_model, tok, tok_path, real, g)
    model = stage["model"]
    results["grpo"] = E.evaluate(model, tok, thinker_cfg, real.shards, cfg)
    on_blank = E.evaluate(model, tok, thinker_cfg, blank.shards, cfg) if blank else None
    report["grpo"] = R.rows(results["grpo"], on_blank)
    report["grpo_checkpoint"] = {"reloaded_equal": stage["reloaded_equal"], "rollouts": stage["rollouts"],
                                 "export_dir": stage["export_dir"]}
    report["grpo_training"] = {**R.history_summary(stage["history"]), "prompts": stage["prompts"],
                               "seconds": stage["seconds"]}
    print(f"GRPO export {stage['export_dir']} reloaded: parameters equal the trained merged model: "
          f"{stage['reloaded_equal']} (probe {stage['seconds']['probe']:.0f} s, training "
          f"{stage['seconds']['train']:.0f} s)", flush=True)
    return model
