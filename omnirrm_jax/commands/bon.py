"""`omnirrm bon`: Best-of-N with the judge on MMMU, Video-MME and AVQA, from the release's files.

  omnirrm bon sample POLICY --bench B --data FILE --output CANDS.jsonl [-n 10] [--temperature 0.7]
      draws N answers per question from a policy checkpoint (any Qwen2.5-Omni thinker; the N samples of a question
      share its prefill) with the reference's multiple-choice prompt; writes the rows with qwen_all_runs etc.
  omnirrm bon select [JUDGE] --bench B --data FILE --out DIR [--strategies ...] [--max-n 10]
      picks one candidate per question with each strategy, for N = 2 .. max N: DIR/report.md, report.json,
      report.png (beside the published curves). FILE: the release's file when it carries candidates (MMMU's
      qwen_all_runs) or what `bon sample` wrote. Without JUDGE only first, majority and oracle run.

Strategies: elimination (the reference), tournament, knockout, reward, reward_ref, first, majority, oracle
(`omnirrm_jax/bon/strategies.py`). Reference quirks: --answer-form, --distinct, --short-rows, --letters.
Heavy imports happen inside the commands so `omnirrm --help` stays instant.
"""

from __future__ import annotations

import argparse

from omnirrm_jax.commands._model import DTYPES

BENCHES = ("mmmu", "videomme", "avqa")
STRATEGIES = ("elimination", "tournament", "knockout", "reward", "reward_ref", "first", "majority", "oracle")


def _model_args(p: argparse.ArgumentParser, what: str, optional: bool = False) -> None:
    p.add_argument("checkpoint", nargs="?" if optional else None, help=f"{what}: HF thinker dir, Orbax dir, or an "
                   "sft/grpo run's workdir")
    p.add_argument("--lora", help="PEFT / ms-swift LoRA adapter dir merged into an HF checkpoint")
    p.add_argument("--tokenizer", help="SentencePiece .model file or HF tokenizer dir (default: the checkpoint dir)")
    p.add_argument("--dtype", default="bfloat16", choices=DTYPES, help="parameter/compute dtype")


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bench", required=True, choices=BENCHES, help="which release file format")
    p.add_argument("--data", required=True, help="the benchmark file (as released, or written by `bon sample`)")
    p.add_argument("--media-root", help="media resolve under this dir (default: the data file's dir)")
    p.add_argument("--limit", type=int, help="only the first N rows")
    p.add_argument("--max-bad-ratio", type=float, default=0.1, help="refuse the file past this share of bad rows")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per device batch")
    p.add_argument("--max-length", type=int, default=16384, help="longer prompts make the row an error")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("bon", help="Best-of-N with the judge (sample candidates, select, report): "
                       "`omnirrm bon --help`", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = p.add_subparsers(dest="bon_command", metavar="sample|select")
    s = verbs.add_parser("sample", help="draw N answers per question from a policy checkpoint")
    _model_args(s, "the policy")
    _data_args(s)
    s.add_argument("--output", required=True, help="JSONL: the rows with qwen_all_runs, qwen_votes, qwen_majority")
    s.add_argument("-n", "--num-samples", type=int, default=10, help="answers per question (default 10)")
    s.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (the reference's 0.7)")
    s.add_argument("--max-new-tokens", type=int, help="reply cap (default: the reference's 128/256/32 per bench)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--letters", choices=("double", "single"), default="double",
                   help="AVQA options: 'double' = the reference's 'A. A. motorcycle', 'single' strips the stored letter")
    s.set_defaults(verb=_cmd_sample)
    c = verbs.add_parser("select", help="select with every strategy; accuracy vs N table and plot")
    _model_args(c, "the judge", optional=True)
    _data_args(c)
    c.add_argument("--out", required=True, help="report folder (report.md, report.json, report.png)")
    c.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated (default: all)")
    c.add_argument("--max-n", type=int, default=10, help="largest N (capped at the candidates available)")
    c.add_argument("--answer-form", choices=("letter", "text"), default="letter",
                   help="what the judge is shown: the bare letter (the reference) or letter + option text")
    c.add_argument("--distinct", choices=("auto", "on", "off"), default="auto",
                   help="elimination over distinct answers only (auto: Video-MME, as its script)")
    c.add_argument("--short-rows", choices=("reference", "skip", "keep"), default="reference",
                   help="rows with fewer than two candidates: as the benchmark's script (MMMU, AVQA skip them; "
                   "Video-MME keeps one distinct answer), skip, or keep (counted)")
    c.add_argument("--max-error-ratio", type=float, default=0.25,
                   help="stop when the judge cannot judge more than this share of comparisons (missing media...)")
    c.set_defaults(verb=_cmd_select)
    p.set_defaults(verb=lambda a: (p.print_help(), 0)[1])
    return p


def run(args: argparse.Namespace) -> int:
    return args.verb(args)


def _items(args: argparse.Namespace, short_rows: str):
    import logging
    import os

    from omnirrm_jax.bon.items import ReadOptions, read_items

    media_root = args.media_root or os.path.dirname(os.path.abspath(args.data))
    res = read_items(args.bench, args.data, media_root=media_root,
                     options=ReadOptions(short_rows=short_rows, max_bad_ratio=args.max_bad_ratio, limit=args.limit))
    if res.bad:
        logging.getLogger("omnirrm_jax.bon").warning("%s: skipped %d bad rows (%s); first: %s", args.data,
                                                     sum(res.bad.values()), res.bad, res.bad_examples[0])
    return res, media_root


def _cmd_sample(args: argparse.Namespace) -> int:
    import json
    import os

    from omnirrm_jax.bon.candidates import sample_candidates
    from omnirrm_jax.commands._model import load_judge_or_run
    from omnirrm_jax.eval.judge_runner import UsageError

    if args.num_samples < 1:
        raise UsageError(f"-n must be at least 1, got {args.num_samples}")
    if os.path.exists(args.output) and os.path.samefile(args.output, args.data):
        raise UsageError(f"--output {args.output} is the --data file; choose another output file")
    res, media_root = _items(args, "keep")
    model, cfg, tok = load_judge_or_run(args.checkpoint, lora=args.lora, tokenizer=args.tokenizer, dtype=args.dtype)
    drawn = sample_candidates(model, cfg, tok, res.items, n=args.num_samples, media_root=media_root,
                              temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                              batch_size=args.batch_size, seed=args.seed, letters=args.letters,
                              max_length=args.max_length)
    errors = 0
    with open(args.output, "w", encoding="utf-8") as f:
        for item, new in zip(res.items, drawn):
            errors += "error" in new
            f.write(json.dumps({**item.record, **new}, ensure_ascii=False) + "\n")
    print(json.dumps({"rows": res.rows, "sampled": len(res.items) - errors, "errors": errors, "bad_rows": res.bad,
                      "output": args.output}))
    return 0


def _cmd_select(args: argparse.Namespace) -> int:
    import json
    import os

    from omnirrm_jax.bon import report
    from omnirrm_jax.bon.run import SelectOptions, check_strategies, run_selection
    from omnirrm_jax.bon.scorers import ModelScorer
    from omnirrm_jax.bon.strategies import USES_JUDGE

    names = check_strategies([s.strip() for s in args.strategies.split(",") if s.strip()])
    if args.checkpoint is None:
        names = tuple(n for n in names if n not in USES_JUDGE)
    res, media_root = _items(args, args.short_rows)
    scorer = None
    if args.checkpoint is not None and any(n in USES_JUDGE for n in names):
        from omnirrm_jax.commands._model import load_judge_or_run

        model, cfg, tok = load_judge_or_run(args.checkpoint, lora=args.lora, tokenizer=args.tokenizer,
                                            dtype=args.dtype)
        scorer = ModelScorer(model, cfg, tok, media_root=media_root, batch_size=args.batch_size,
                             max_length=args.max_length)
    opts = SelectOptions(strategies=names, max_n=args.max_n, answer_form=args.answer_form, distinct=args.distinct,
                         max_error_ratio=args.max_error_ratio)
    result = run_selection(res.items, scorer, opts)
    judge = os.path.basename(os.path.normpath(args.checkpoint)) if args.checkpoint else "none"
    paths = report.write(result, args.bench, args.out, judge=judge, extra={
        "data": args.data, "rows": res.rows, "bad_rows": res.bad, "short_rows": res.short,
        "judge_errors": result.get("judge_errors", {}),
        "options": {"answer_form": args.answer_form, "distinct": args.distinct, "short_rows": args.short_rows}})
    print(report.markdown(result, args.bench, judge))
    print(json.dumps(paths))
    return 0
