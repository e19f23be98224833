"""`omnirrm bench pack`: effective (non-padding) tokens/s of packed SFT next to the bucketed path, on the real mix

The goal (issue 25): packed SFT at >= 1.8x the bucketed path's effective tokens/s on the length mix of real judge
examples. Both sides train on the same examples (`bench.length_mix`: HH-RLHF and ShareGPT-Video pairs with the
reference prompts, judgements and video tokens) with the same jitted step; only the batching differs, and both
batch exactly as the pipeline does (`data.pipeline.batch_examples`, examples in the same order):
  bucketed  windows of `--batch` examples, each batch left-padded to the smallest seq bucket holding its longest
            example (`--group-window` > 1: length-sorted windows, as `PipelineConfig.group_window`);
  packed    first-fit into rows of `--row-len` tokens from seeded-shuffled buffers of `--pack-buffer` examples, with
            segment ids, each batch padded to the bucket of its fullest row.
Both keep the pipeline's media budget (its largest media bucket per batch) and use every example exactly once: the
last, partly filled batches are kept, their empty rows counted as padding. Examples over the length limit
(max(seq buckets), and --row-len) are skipped on both sides, as the pipeline skips them.

What runs: the trainer's SFT step (`training.sft.jit_sft_step`, LoRA r=8 on every linear layer, AdamW, clipping)
on random weights at the preset's dimensions; the packed step takes `segment_ids` and no loss window, as the
trainer runs it with `pack`. Token ids are random at the real lengths (a step's time depends on shapes); positions
and the loss mask (the judgement and its end token) are the examples' own. The vision and audio towers are not run:
a media position is an ordinary token position in the LLM, and the towers encode each example's media whichever way
the text is batched (only their per-batch padding to a media bucket would differ; it is left out). Every shape
compiles first (untimed; each program also runs once), all batches are put on the device, then one timed pass over
all of them per side, packed first (the input pipeline's speed is `omnirrm bench
data`'s).

MFU counts the model FLOPs the real tokens need, the same numerator on both sides: `training.metrics.
flops_per_token` of each example at its own length (4·N per token, head on every position, causal attention over
the example alone), summed, over the side's seconds x peak x devices. Padding, and the attention a packed row
computes across its segments before the mask drops it, are work a side does, not work the task needs.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import time

import numpy as np

from omnirrm_jax.cli import Parser

SIDES = ("bucketed", "packed")
SMALL_EXAMPLES, SMALL_BATCH = 16, 2  # --small: enough for both modalities and for packing to show
_KEYS = ("input_ids", "attention_mask", "position_ids", "rope_deltas", "loss_mask")


def _pipeline_cfg(packed: bool, args, buckets: tuple[int, ...]):
    from omnirrm_jax.data.pipeline import PipelineConfig

    if packed:  # the pipeline packs into rows of max(seq_buckets)
        buckets = tuple(b for b in buckets if b < args.row_len) + (args.row_len,)
    return PipelineConfig(mode="sft", batch_size=args.batch, seq_buckets=buckets, group_window=args.group_window,
                          pack=packed, pack_buffer=args.pack_buffer, pack_max_segments=args.pack_max_segments,
                          shuffle_seed=args.seed, num_epochs=1,
                          drop_remainder=False)


def host_batches(examples: list[dict], pcfg, *, patch_dim: int, pad_id: int, segment_mask: bool = False) -> list[dict]:
    """The pipeline's batches of `examples` (text arrays only; the media arrays are dropped with the towers) and each
    batch's example indices (-1: an empty row or segment column). `segment_mask`: packed batches without their
    segment lengths, so attention takes the dense segment mask (the path before per-segment cuDNN attention)."""
    from omnirrm_jax.data.pipeline import batch_examples

    keys = _KEYS + ((("segment_ids",) if segment_mask else ("segment_ids", "segment_lengths")) if pcfg.pack else ())
    return [{"data": {k: b[k] for k in keys}, "example_index": np.asarray(b["example_index"]).ravel()}
            for b in batch_examples(examples, pcfg, patch_dim=patch_dim, pad_id=pad_id)]


def accounting(batches: list[dict], n_examples: int) -> dict:
    """What a side computes, counted on its host batches: steps, shapes, real / padding tokens, targets, and
    whether every example appears exactly once."""
    seen = np.concatenate([b["example_index"] for b in batches])
    seen = np.sort(seen[seen >= 0])
    slots = sum(b["data"]["input_ids"].size for b in batches)
    real = sum(int(b["data"]["attention_mask"].sum()) for b in batches)
    shapes = collections.Counter(int(b["data"]["input_ids"].shape[1]) for b in batches)
    return {"steps": len(batches), "shapes": {str(k): v for k, v in sorted(shapes.items())},
            "examples": int(len(seen)), "each_example_once": bool(np.array_equal(seen, np.arange(n_examples))),
            "real_tokens": real, "padding_tokens": slots - real, "padding_fraction": (slots - real) / slots,
            "target_tokens": sum(int(b["data"]["loss_mask"].sum()) for b in batches)}


def time_side(step_fn, batches: list[dict], carry: tuple, frozen, mesh) -> tuple[dict, tuple]:
    """Compiles (and runs once) every shape of `batches`, puts them all on the device, then times one pass.
    `carry` = (trainable, opt_state, step), threaded through (donated) and returned."""
    import jax

    from omnirrm_jax.parallel import sharding as S

    def put(host):
        return {k: jax.device_put(v, S.batch_sharding(mesh, v.ndim, batch_axis=1 if k == "position_ids" else 0))
                for k, v in host.items()}

    def run(fn, data, carry):
        trainable, opt_state, step = carry
        trainable, opt_state, step, m = fn(trainable, frozen, opt_state, step, data)
        return (trainable, opt_state, step), m

    programs, t0 = {}, time.perf_counter()
    for b in batches:
        shape = b["data"]["input_ids"].shape
        if shape not in programs:
            data = put(b["data"])
            programs[shape] = step_fn.lower(carry[0], frozen, carry[1], carry[2], data).compile()
            carry, m = run(programs[shape], data, carry)
            jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    on_device = [(programs[b["data"]["input_ids"].shape], put(b["data"])) for b in batches]
    jax.block_until_ready([d for _, d in on_device])
    losses = []
    t0 = time.perf_counter()
    for fn, data in on_device:
        carry, m = run(fn, data, carry)
        losses.append(m["loss"])
    jax.block_until_ready(carry)
    seconds = time.perf_counter() - t0
    losses = np.asarray(jax.device_get(losses), np.float64)
    return {"compile_s": compile_s, "programs": len(programs), "seconds": seconds,
            "mean_loss": float(losses.mean()), "finite": bool(np.isfinite(losses).all())}, carry


def table(res: dict) -> str:
    mix, b, p = res["mix"], res["bucketed"], res["packed"]
    mods = ", ".join(f"{m} {v['examples']} ({v['fraction_of_examples']:.0%} of examples, {v['fraction_of_tokens']:.0%}"
                     f" of tokens; media {v['media_tokens'].get('median', 0):.0f} tokens median)"
                     for m, v in mix["modalities"].items())
    t, j = mix["tokens"], mix["judgement_tokens"]
    lines = [f"`omnirrm bench pack` on {res['device']} x{res['devices']}, {res['preset']}, remat {res['remat']}, "
             f"{res['batch']} rows per step, seq buckets {res['buckets']}, packed rows of {res['row_len']} (at most "
             f"{res.get('pack_max_segments')} examples; attention "
             f"{'with the dense segment mask' if res.get('segment_mask') else 'per segment'})",
             f"Length mix: {mix['examples']} examples ({mods}); tokens per example min {t['min']} / median "
             f"{t['median']:.0f} / p90 {t['p90']:.0f} / max {t['max']}; judgement tokens median {j['median']:.0f}; "
             f"tokenizer: {res['tokenizer']} ({res['chars_per_token']:.2f} characters per prompt token)"
             + (f"; skipped {res['skipped']}" if res["skipped"] else ""),
             "", "| path | steps | shapes (seq: steps) | real tokens | padding tokens | padding | seconds | "
                 "effective tokens/s | MFU |", "|---|---|---|---|---|---|---|---|---|"]
    for name, s in (("bucketed", b), ("packed", p)):
        mfu = "n/a" if s["mfu"] is None else f"{s['mfu']:.1%}"
        shapes = ", ".join(f"{k}: {v}" for k, v in s["shapes"].items())
        lines.append(f"| {name} | {s['steps']} | {shapes} | {s['real_tokens']:,} | {s['padding_tokens']:,} | "
                     f"{s['padding_fraction']:.1%} | {s['seconds']:.2f} | {s['effective_tokens_per_s']:,.0f} | "
                     f"{mfu} |")
    lines.append(f"\npacked / bucketed effective tokens/s: **{res['packed_over_bucketed']:.2f}x** (goal >= 1.8x; the "
                 f"padding alone would give {res['padding_bound']:.2f}x if a computed position cost the same on both "
                 "sides)")
    return "\n".join(lines)


def dry_run_table(args, info: dict, sides: dict) -> str:
    """--dry-run: the batching alone, and the ratio the padding alone would allow."""
    t = info["mix"]["tokens"]
    lines = [f"Length mix: {info['mix']['examples']} examples, tokens per example min {t['min']} / median "
             f"{t['median']:.0f} / p90 {t['p90']:.0f} / max {t['max']}; {args.batch} rows per step, packed rows of "
             f"{args.row_len}", "", "| path | steps | shapes (seq: steps) | real tokens | padding |", "|---|---|---|---|---|"]
    for name in SIDES:
        s = sides[name]
        shapes = ", ".join(f"{k}: {v}" for k, v in s["shapes"].items())
        lines.append(f"| {name} | {s['steps']} | {shapes} | {s['real_tokens']:,} | {s['padding_fraction']:.1%} |")
    bound = (1 - sides["packed"]["padding_fraction"]) / (1 - sides["bucketed"]["padding_fraction"])
    lines.append(f"\npadding alone: packed / bucketed effective tokens/s <= {bound:.2f}x if a computed position cost "
                 "the same on both sides")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None):
    """The options, with `buckets` (a tuple), `row_len` and `examples` resolved; usage errors exit here."""
    from omnirrm_jax.bench import length_mix
    from omnirrm_jax.data.pipeline import PipelineConfig

    default = PipelineConfig()
    p = Parser(prog="omnirrm bench pack", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="omni_3b")
    p.add_argument("--batch", type=int, default=None,
                   help=f"rows per step on both sides (global, over all devices; default 4, --small {SMALL_BATCH})")
    p.add_argument("--buckets", default=",".join(map(str, default.seq_buckets)),
                   help="the bucketed path's seq buckets (default: the pipeline's)")
    p.add_argument("--row-len", type=int, default=None, help="packed row length (default: the largest bucket, as "
                                                              "the pipeline packs)")
    p.add_argument("--group-window", type=int, default=default.group_window,
                   help="bucketed: length-sort windows of this many batches (the pipeline's group_window)")
    p.add_argument("--pack-buffer", type=int, default=default.pack_buffer, help="packed: first-fit buffer size")
    p.add_argument("--pack-max-segments", type=int, default=default.pack_max_segments,
                   help="packed: most examples per row")
    p.add_argument("--segment-mask", action="store_true",
                   help="packed: attention with the dense causal-and-segment mask instead of per-segment sequences")
    p.add_argument("--examples", type=int, default=None,
                   help=f"how many examples (default: every pair of both files, --small {SMALL_EXAMPLES}; fewer keep "
                        "the files' proportion)")
    p.add_argument("--benchmarks", default=str(length_mix.default_benchmarks()),
                   help="folder with hh_rlhf_2000.jsonl and sharegpt_video_msrvtt_200.jsonl")
    p.add_argument("--tokenizer", default=None,
                   help="a real tokenizer (Qwen2.5-Omni folder); default: SentencePiece trained on the prompts")
    p.add_argument("--remat", default="none")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--loss-window", type=int, default=None, metavar="K",
                   help="bucketed side only, as the trainer (data.pipeline.max_target_length; off with pack): the "
                        "output head on each row's last K positions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--devices", type=int, default=None, help="use the first N local devices (default: all; --small 1)")
    p.add_argument("--small", action="store_true",
                   help=f"a CPU smoke test: tiny dims, fp32, {SMALL_EXAMPLES} examples, {SMALL_BATCH} rows per step, "
                        "one device")
    p.add_argument("--dry-run", action="store_true",
                   help="only the length mix and both sides' batching (steps, padding): no model, no device")
    p.add_argument("--json", default=None, help="also write the result here")
    args = p.parse_args(argv)
    try:
        args.buckets = tuple(int(b) for b in args.buckets.split(","))
    except ValueError:
        p.error(f"--buckets {args.buckets!r} is not a comma-separated list of integers")
    args.row_len = args.row_len or max(args.buckets)
    if args.small:
        args.examples = args.examples or SMALL_EXAMPLES
    args.batch = args.batch or (SMALL_BATCH if args.small else 4)
    args.devices = args.devices or (1 if args.small else None)
    if args.examples is not None and args.examples < 1:
        p.error(f"--examples {args.examples} must be >= 1")
    try:
        args.pipelines = {s: _pipeline_cfg(s == "packed", args, args.buckets) for s in SIDES}
    except ValueError as e:
        p.error(str(e))
    return args


def prepare_examples(args, vocab_size: int) -> tuple[list[dict], dict]:
    """(examples, info): the length mix of `args` (`bench.length_mix`), numbered 0..n-1 in pipeline order, with
    random token ids below `vocab_size` at their real lengths; info = mix statistics, skips, tokenizer."""
    from omnirrm_jax.bench import length_mix
    from omnirrm_jax.data.tokenizer import thinker_token_ids
    from omnirrm_jax.errors import UserError
    from omnirrm_jax.models import config as C

    pairs = length_mix.load_pairs(args.benchmarks)
    tok, tok_name = length_mix.make_tokenizer(pairs, args.tokenizer)
    preset = C.PRESETS[args.preset]()  # host-side dims: patch and merge sizes, the audio window
    chosen = length_mix.select(pairs, args.examples, args.seed)
    limit, max_media = min(max(args.buckets), args.row_len), args.pipelines["bucketed"].max_media
    examples, skipped = length_mix.build_examples(chosen, tok, dataclasses.replace(preset, **thinker_token_ids(tok)),
                                                  max_length=limit, max_media=max_media, seed=args.seed)
    if not examples:
        raise UserError(f"no example fits {limit} tokens (skipped: {skipped})")
    longest_target = max(e["n_target"] for e in examples)
    if args.loss_window is not None and longest_target > args.loss_window:
        raise UserError(f"--loss-window {args.loss_window} is shorter than the longest judgement ({longest_target} "
                        "tokens); the pipeline would skip those examples")
    ids = np.random.default_rng([args.seed, 1])
    for i, e in enumerate(examples):  # renumbered after the skips, for the once-each check
        e.update(index=i, input_ids=ids.integers(1, min(vocab_size - 20, 20000), len(e["input_ids"]), dtype=np.int32))
    prompts = [length_mix.user_content(q) for q in chosen]
    info = {"mix": length_mix.stats(examples, preset.vision.spatial_merge_size ** 2), "skipped": skipped,
            "tokenizer": tok_name, "judgement_tokens_drawn": list(length_mix.JUDGEMENT_TOKENS),
            "chars_per_token": sum(map(len, prompts)) / sum(len(tok.encode_text(t)) for t in prompts)}
    return examples, info


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # on demand, up to 95 % of the card (as `bench sft`): the 3B step at 4 x 3072 tokens peaks near JAX's 75 % cap
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")

    import jax

    from omnirrm_jax.bench.sft import lora_train_state
    from omnirrm_jax.errors import UserError
    from omnirrm_jax.models import config as C
    from omnirrm_jax.parallel import sharding as S
    from omnirrm_jax.training.metrics import flops_per_token, peak_flops_per_device
    from omnirrm_jax.training.sft import jit_sft_step

    devices = jax.devices()[:args.devices] if args.devices else jax.devices()
    n_dev = len(devices)
    if args.batch % n_dev and not args.dry_run:
        raise UserError(f"--batch {args.batch} is not divisible by {n_dev} devices (--devices picks fewer)")
    cfg = C.tiny(dtype="float32", param_dtype="float32") if args.small else \
        C.PRESETS[args.preset](dtype="bfloat16", param_dtype="bfloat16")
    cfg = dataclasses.replace(cfg, remat=args.remat)
    examples, info = prepare_examples(args, cfg.text.vocab_size)
    batches = {s: host_batches(examples, args.pipelines[s], patch_dim=cfg.vision.patch_dim, pad_id=0,
                                  segment_mask=args.segment_mask) for s in SIDES}
    sides = {s: accounting(batches[s], len(examples)) for s in SIDES}
    if args.dry_run:
        print(dry_run_table(args, info, sides), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"bench": "pack", "dry_run": True, "batch": args.batch, "row_len": args.row_len, **info,
                           **sides}, f, indent=2)
        return 0

    mesh = S.make_mesh(S.MeshConfig(data=-1), devices=devices)
    state, shardings, tx = lora_train_state(cfg, mesh, lora_rank=args.lora_rank,
                                            total_steps=sum(len(b) for b in batches.values()) + 16)
    carry = (state.trainable, state.opt_state, state.step)
    peak = peak_flops_per_device()
    task_flops = float(sum(len(e["input_ids"]) * flops_per_token(cfg, len(e["input_ids"])) for e in examples))
    for s in reversed(SIDES):  # packed first: its attention (the segment mask) is the less tried path on a GPU
        step_fn = jit_sft_step(state, tx, shardings, loss_window=None if s == "packed" else args.loss_window)
        timing, carry = time_side(step_fn, batches[s], carry, state.frozen, mesh)
        sides[s].update(timing, effective_tokens_per_s=sides[s]["real_tokens"] / timing["seconds"],
                        mfu=task_flops / (timing["seconds"] * peak * n_dev) if peak else None)
        print(f"{s}: {json.dumps(sides[s])}", flush=True)
    real = {s: 1 - sides[s]["padding_fraction"] for s in SIDES}
    result = {"bench": "pack", "device": devices[0].device_kind, "devices": n_dev,
              "preset": "small" if args.small else args.preset, "remat": args.remat, "batch": args.batch,
              "pack_max_segments": args.pack_max_segments, "segment_mask": args.segment_mask,
              "buckets": list(args.buckets), "row_len": args.row_len, "group_window": args.group_window,
              "pack_buffer": args.pack_buffer, "media_budget": list(args.pipelines["packed"].max_media),
              "loss_window": args.loss_window, "seed": args.seed, **info,
              "task_flops": task_flops, "peak_flops_per_device": peak, **sides,
              # what the padding alone would give if a computed position cost the same on both sides
              "padding_bound": real["packed"] / real["bucketed"],
              "packed_over_bucketed": sides["packed"]["effective_tokens_per_s"]
              / sides["bucketed"]["effective_tokens_per_s"]}
    print(table(result), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0
