"""`omnirrm synth CONFIG`: Omni-Preference-style training data, built automatically (`omnirrm_jax/synth/`).

Prompts (image / video / audio / JSONL sources) -> answers from a strong and a weak checkpoint -> two teachers over
an OpenAI-compatible chat API (the reference's annotation prompt) -> consensus filter -> ms-swift JSONL for SFT
and GRPO (`omnirrm prep` reads them) and synth_report.json. Every stage resumes: rerun the same command after a
kill or a budget stop and only what is missing is done (teachers are never asked twice for a cached pair).
Teacher keys come from the environment variable the config names (`api_key_env`) and are never logged.
"""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("synth", help="build preference data (candidates, two teachers, consensus): "
                       "`omnirrm synth --help`", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML run config (see README, 'Synthesizing preference data')")
    return p


def run(args: argparse.Namespace) -> int:
    import json

    from omnirrm_jax.synth import config as C
    from omnirrm_jax.synth.run import run as synth_run

    cfg = C.load(args.config)

    def load(policy):
        from omnirrm_jax.commands._model import load_judge_or_run
        from omnirrm_jax.errors import UserError

        if not policy.checkpoint:
            raise UserError(f"candidates.{policy.label}.checkpoint is not set, and answers are missing")
        return load_judge_or_run(policy.checkpoint, lora=policy.lora, tokenizer=policy.tokenizer,
                                 dtype=policy.dtype)

    report = synth_run(cfg, load)
    this_run = report["teachers"]["this_run"]
    failed = {name: t["failed"] for name, t in this_run.items() if t["failed"]}
    print(json.dumps({**{k: report[k] for k in ("prompts", "consensus", "output", "cost_usd")},
                      "teacher_failures": failed}, indent=1))
    stopped = [name for name, f in failed.items() if f.get("teacher_stopped")]
    if stopped:
        import sys
        print(f"omnirrm synth: teacher(s) {', '.join(stopped)} stopped after teacher_run.max_failures_in_a_row "
              f"failed requests in a row ({cfg.out_dir}/synth_report.json names the reasons); the output holds the "
              "pairs judged so far. Rerun once the endpoint answers: cached judgements are not asked again.",
              file=sys.stderr)
        return 1
    return 0
