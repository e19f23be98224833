"""`omnirrm eval`: measure a judge on the paper's benchmarks, by the reference's protocol and by ours.

  omnirrm eval BENCH CHECKPOINT --data FILE --judgements OUT.jsonl [--media-root DIR] [--json REPORT.json]
      judges every row of a released benchmark file (both A/B orders by default), resumable, then scores it
  omnirrm eval score BENCH --data FILE --judgements OUT.jsonl [--json REPORT.json]
      recomputes both metrics from saved judgements, no model
  omnirrm eval suite CONFIG
      all benchmarks of a config (configs/eval_paper.yaml), one model load: report.md, report.json, report.png

BENCH: vl_rewardbench, mm_rewardbench, sharegpt_video, audio_hh_rlhf, ta2t, hh_rlhf. Each runs with the reference's
prompt, decoding and inference media limits (`omnirrm_jax/eval/benchmarks.py`); flags override them. Metrics:
`reference` = the number the reference's own scripts print on the same texts; `omnirrm` = every labelled row counted,
both orders, swap consistency, the scalar reward's accuracy, parse failures, a bootstrap 95 % interval.
Heavy imports happen inside the commands so `omnirrm --help` stays instant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from omnirrm_jax.commands._model import DTYPES

BENCHES = ("vl_rewardbench", "mm_rewardbench", "sharegpt_video", "audio_hh_rlhf", "ta2t", "hh_rlhf")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="HF thinker dir (config.json + *.safetensors), Orbax dir from `omnirrm convert` "
                   "or `export`, or an sft/grpo run's workdir (its newest checkpoint, LoRA merged)")
    p.add_argument("--lora", help="PEFT / ms-swift LoRA adapter dir merged into an HF checkpoint")
    p.add_argument("--tokenizer", help="SentencePiece .model file or HF tokenizer dir (default: the checkpoint dir)")
    p.add_argument("--dtype", default="bfloat16", choices=DTYPES, help="parameter/compute dtype")


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--orders", choices=("both", "reference"), default="both",
                   help="both: AB and BA for every row (needed by the omnirrm metric); reference: only the order the "
                        "reference script shows")
    p.add_argument("--seed", type=int, default=0, help="sampling seed and VL-RewardBench's A/B order seed")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per batch (a row in both orders is two)")
    p.add_argument("--max-new-tokens", type=int, help="override the protocol's judgement length cap")
    p.add_argument("--greedy", action="store_true", default=None, help="greedy decoding for every benchmark")
    p.add_argument("--temperature", type=float, help="override the protocol's sampling temperature")
    p.add_argument("--top-p", type=float, help="override the protocol's top-p")
    p.add_argument("--max-length", type=int, default=16384, help="longer prompts become error lines")
    p.add_argument("--max-error-ratio", type=float, default=0.5, help="stop when more rows than this fail")


def _data_args(p: argparse.ArgumentParser, judgements_help: str) -> None:
    p.add_argument("--data", required=True, help="the benchmark file as released")
    p.add_argument("--judgements", required=True, help=judgements_help)
    p.add_argument("--media-root", help="media paths resolve under this dir (default: the data file's dir)")
    p.add_argument("--limit", type=int, help="only the first N rows (a re-score: as the run's --limit)")
    p.add_argument("--json", help="also write the scores here")
    p.add_argument("--literal-labels", action="store_true", help="reference metric: read HH labels as stored")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="benchmark a judge (reference and omnirrm metrics): `omnirrm eval --help`",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = p.add_subparsers(dest="eval_command", metavar="BENCH|score|suite")
    for name in BENCHES:
        b = verbs.add_parser(name, help=f"judge and score {name}")
        _model_args(b)
        _data_args(b, "JSONL written here (appended; resumable)")
        _run_args(b)
        b.set_defaults(verb=_cmd_bench, bench=name)
    s = verbs.add_parser("score", help="both metrics from saved judgements (no model)")
    s.add_argument("bench", choices=BENCHES)
    _data_args(s, "the judgements JSONL of `omnirrm eval BENCH`")
    s.set_defaults(verb=_cmd_score)
    u = verbs.add_parser("suite", help="every benchmark of a config: report.md, report.json, report.png")
    u.add_argument("config", help="YAML (see configs/eval_paper.yaml)")
    u.add_argument("--no-progress", action="store_true", help="no progress bars")
    u.set_defaults(verb=_cmd_suite)
    p.set_defaults(verb=lambda a: (p.print_help(), 0)[1])  # no verb: the help
    return p


def run(args: argparse.Namespace) -> int:
    return args.verb(args)


def _options(args: argparse.Namespace):
    from omnirrm_jax.eval.runner import RunOptions, model_identity

    return RunOptions(orders=args.orders, seed=args.seed, batch_size=args.batch_size,
                      max_new_tokens=args.max_new_tokens, greedy=args.greedy, temperature=args.temperature,
                      top_p=args.top_p, max_length=args.max_length, max_error_ratio=args.max_error_ratio,
                      model=model_identity(args.checkpoint, lora=args.lora, tokenizer=args.tokenizer,
                                           dtype=args.dtype))


def _dump(report: dict, path: str | None) -> None:
    text = json.dumps(report, indent=2, ensure_ascii=False)
    print(text)
    if path:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text + "\n")


def _cmd_bench(args: argparse.Namespace) -> int:
    from omnirrm_jax.commands._model import load_judge_or_run
    from omnirrm_jax.eval import benchmarks as B
    from omnirrm_jax.eval.judge_runner import Judge
    from omnirrm_jax.eval.readers import read_benchmark
    from omnirrm_jax.eval.runner import BenchmarkRun, RunStopped, read_lines
    from omnirrm_jax.eval.score import score

    proto = B.protocol(args.bench)
    media_root = args.media_root or os.path.dirname(os.path.abspath(args.data))
    stopped = None
    rows = read_benchmark(args.bench, args.data, media_root=media_root, limit=args.limit)
    model, cfg, tok = load_judge_or_run(args.checkpoint, lora=args.lora, tokenizer=args.tokenizer, dtype=args.dtype)
    judge = Judge(model, cfg, tok, batch_size=args.batch_size)
    run = BenchmarkRun(judge, proto, _options(args), media_root=media_root, output=args.judgements)
    try:
        summary = run.run(rows)
    except RunStopped as e:  # what was judged is still scored, and the reason printed
        stopped, summary = str(e), {**e.summary, "stopped": str(e)}
    report = score(proto, rows, read_lines(args.judgements), path=args.judgements,
                   literal_labels=args.literal_labels, subset=args.limit is not None)
    _dump({**report, "run": summary}, args.json)
    if stopped is not None:  # the scores above are partial
        print(f"omnirrm eval: stopped: {stopped}", file=sys.stderr)
        return 1
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from omnirrm_jax.eval import benchmarks as B
    from omnirrm_jax.eval.score import score_files

    media_root = args.media_root or os.path.dirname(os.path.abspath(args.data))
    report = score_files(B.protocol(args.bench), args.data, args.judgements, media_root=media_root,
                         literal_labels=args.literal_labels, limit=args.limit)
    _dump(report, args.json)
    return 0


def _cmd_suite(args: argparse.Namespace) -> int:
    from omnirrm_jax.commands._model import load_judge_or_run
    from omnirrm_jax.eval import suite

    out = suite.run_suite(args.config, progress=not args.no_progress, load=load_judge_or_run)
    print(f"report: {out['report_md']}\n        {out['report_json']}\n        {out['report_png']}")
    return 0
