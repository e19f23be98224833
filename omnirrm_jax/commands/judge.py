"""`omnirrm judge`: judge one pair from flags, or a JSONL of pairs, with a trained thinker.

Why a command: the judge is the product; users need it without writing code. One pair prints its judgement JSON
and verdict probabilities. A JSONL file is judged in batches with static shapes (bucketed lengths, so a long run
compiles a few programs, never one per row) and written as one JSON line per input row, appended batch by batch:
a rerun skips rows already in the output (by input line number and a hash of the line's bytes, "row_sha"), so a
killed run resumes where it stopped; a partial last line is cut off and that row judged again; an output made from
other or edited input rows is refused. A row that cannot be judged (missing file or field, undecodable media, too
long) becomes an error record in the output and the run goes on, unless more than --max-error-ratio of the rows
fail; --retry-errors judges the error rows again. --output may not be the --input file.

Output record: {"line", "row_sha", "id", "modality", "judgement" (the parsed JSON object or null), "text", "ok",
"parse_error", "better", "probs" (P(A), P(B), P(equal) at the verdict field, `eval.verdict`), "reward" (P(A) - P(B)),
"verdict_mass", "verdict_field"}; gold `better` in the row adds "gold" and "correct". With --swap the pair is also
judged as (B, A) - same prompt builder, answers exchanged - and "swap" holds that judgement with its verdict and
probabilities mapped back to the original labels, and "combined" the mean probabilities, their reward and
verdict, and whether the two verdicts agree ("consistent"). Error record: {"line", "row_sha", "id",
"error": {"reason", "detail"}}.

Heavy imports happen inside the functions so `omnirrm --help` stays instant.
"""

from __future__ import annotations

import argparse

from omnirrm_jax.commands._model import DTYPES
from omnirrm_jax.rubric.vocab import MODALITIES


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("judge", help="judge answer pairs with a checkpoint (one pair from flags, or --input JSONL)",
                       description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="HF thinker dir (config.json + *.safetensors), Orbax dir from `omnirrm convert` "
                   "or `export`, or an sft/grpo run's workdir (its newest checkpoint, LoRA merged)")
    p.add_argument("--lora", help="PEFT / ms-swift LoRA adapter dir merged into an HF checkpoint")
    p.add_argument("--tokenizer", help="SentencePiece .model file or HF tokenizer dir (default: the checkpoint dir)")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="parameter/compute dtype")
    one = p.add_argument_group("one pair")
    one.add_argument("--question", help="the question (audio prompts default to the reference's own)")
    one.add_argument("--answer-a", help="answer A")
    one.add_argument("--answer-b", help="answer B")
    for kind in ("image", "video", "audio"):
        one.add_argument(f"--{kind}", action="append", default=[], metavar="PATH", help=f"{kind} file (repeatable)")
    many = p.add_argument_group("batch")
    many.add_argument("--input", help="JSONL of pairs: question, answer_a, answer_b, images/videos/audios, modality, id")
    many.add_argument("--output", help="JSONL of results (appended; rows already there are skipped)")
    many.add_argument("--media-root", help="media paths of --input resolve under this dir (default: its dir)")
    many.add_argument("--batch-size", type=int, default=8, help="prompts per batch (a swapped pair is two)")
    many.add_argument("--retry-errors", action="store_true",
                      help="judge again the rows whose records in --output are errors (after fixing the cause)")
    many.add_argument("--max-error-ratio", type=float, default=0.25,
                      help="stop once more than this share of the rows tried (32 at least) could not be judged; "
                           "1 never stops (default 0.25)")
    p.add_argument("--modality", choices=MODALITIES, help="judge prompt modality (default: from the media)")
    p.add_argument("--template", help="a reference template name instead of the modality's default")
    p.add_argument("--swap", action="store_true", help="also judge (B, A) and combine (position-bias control)")
    p.add_argument("--constrained", action="store_true", help="schema-constrained decoding (always parses)")
    p.add_argument("--max-new-tokens", type=int, default=1024, help="judgement length cap")
    p.add_argument("--max-length", type=int, default=8192, help="longer prompts are refused (error record)")
    p.add_argument("--media-limits", choices=("inference", "sft"), default="inference",
                   help="image/video limits: the reference inference scripts' (MAX_PIXELS 1003520, VIDEO_MAX_PIXELS "
                        "50176, 20 frames at 2 fps) or the SFT run's")
    p.add_argument("--verdict-field", choices=("better", "final_verdict"), default="better",
                   help="where verdict probabilities are read (see omnirrm_jax/eval/verdict.py)")
    return p


def judge_settings(args: argparse.Namespace) -> dict:
    """What decides a record's judgement: the model and the judging options. Each --output record keeps it, and a
    resume with other settings is refused (their records would pass as this run's)."""
    from omnirrm_jax.eval.runner import model_identity

    return {"model": model_identity(args.checkpoint, lora=args.lora, tokenizer=args.tokenizer, dtype=args.dtype),
            **{k: getattr(args, k) for k in ("modality", "template", "swap", "constrained", "max_new_tokens",
                                             "media_limits", "verdict_field")}}  # not max_length: it only refuses


def run(args: argparse.Namespace) -> int:
    import json
    import os
    import sys

    from omnirrm_jax.commands._model import load_judge_or_run
    from omnirrm_jax.eval.judge_runner import Judge, TooManyErrors, UsageError, check_paths

    if args.input or args.output:
        if not (args.input and args.output):
            raise UsageError("--input and --output go together")
        if args.question or args.answer_a or args.answer_b or args.image or args.video or args.audio:
            raise UsageError("give either one pair (--question/--answer-a/--answer-b/media) or --input, not both")
        check_paths(args.input, args.output)  # before the model loads
        judge = Judge.from_args(args, load=load_judge_or_run)
        try:
            summary = judge.run_file(args.input, args.output, media_root=args.media_root,
                                     retry_errors=args.retry_errors, max_error_ratio=args.max_error_ratio,
                                     settings=judge_settings(args))
        except TooManyErrors as e:
            print(f"omnirrm judge: {e}", file=sys.stderr)
            return 1
        print(json.dumps(summary, ensure_ascii=False))
        return 0
    if args.answer_a is None or args.answer_b is None:
        raise UsageError("one pair needs --answer-a and --answer-b (or use --input/--output)")
    row = {"answer_a": args.answer_a, "answer_b": args.answer_b, "question": args.question,
           "images": [os.path.abspath(p) for p in args.image], "videos": [os.path.abspath(p) for p in args.video],
           "audios": [os.path.abspath(p) for p in args.audio]}
    if args.template:
        row["template"] = args.template
    judge = Judge.from_args(args, batch_size=2 if args.swap else 1, load=load_judge_or_run)
    record = judge.judge_rows([(None, row)], media_root=os.sep)[0]
    print(json.dumps(record, indent=2, ensure_ascii=False))
    return 1 if "error" in record else 0
