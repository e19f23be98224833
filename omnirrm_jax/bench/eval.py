"""`omnirrm bench eval`: judgements per second on a VL-RewardBench-like mix, ours next to transformers, same card,
same process.

The mix: N image judge prompts, each the VL-RewardBench prompt's length in text (~750 tokens of rubric, question and
two answers, varied) plus one image at one of three sizes inside the inference limit MAX_PIXELS 1003520 (256, 768 or
1260 image tokens); random weights at real dimensions (7B by default) and random ids: speed depends on shapes, not
values. Every judgement decodes exactly `new` tokens (no stop token) on every side, sampled as the VL-RewardBench
protocol samples (temperature 0.7, top-p 0.9), so all sides do the same generation work.

* ours: `omnirrm eval`'s path on the device: rows sorted by length, batches of B left-padded to the runner's
  bucketed length, `generate`, then the verdict-probability pass (`eval.verdict.candidate_logprobs`: one more
  teacher-forced pass over prompt + judgement, which HF does not do at all). Timed over the whole mix after a warm
  pass that compiles every shape (the compile time is reported separately).
* (a) the reference's way: transformers `generate`, one row at a time (its PtEngine ran max_batch_size=1);
  timed on `--hf-single-rows` rows and reported per row.
* (b) transformers batched `generate`: the same batches of B, left-padded.
Each side runs in its own process (`--side`), so neither inherits the other's memory pool.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from omnirrm_jax.cli import Parser

# (t, h, w) patch grids of the three image sizes: 448x448, 672x896 and 980x1008 pixels (14-pixel patches)
GRIDS = ((1, 32, 32), (1, 48, 64), (1, 70, 72))


def make_mix(cfg, n: int, seed: int = 0) -> list[dict]:
    """n rows: {"ids" (L,), "grid" (t, h, w), "pixels" (t*h*w, 1176)}; image placeholders between vision markers."""
    rng = np.random.default_rng(seed)
    patch_dim = cfg.vision.in_channels * cfg.vision.temporal_patch_size * cfg.vision.patch_size ** 2
    special = (cfg.image_token_id, cfg.video_token_id, cfg.audio_token_id, cfg.vision_start_token_id,
               cfg.vision_end_token_id, cfg.audio_start_token_id, cfg.audio_end_token_id)
    top = min(cfg.text.vocab_size - 20, 20000, *special)  # text ids below every special id
    rows = []
    for i in range(n):
        grid = GRIDS[i % len(GRIDS)]
        n_img = int(np.prod(grid)) // cfg.vision.spatial_merge_size ** 2
        before, after = int(rng.integers(20, 40)), int(rng.integers(650, 1100))
        text = lambda k: rng.integers(1, top, k)  # noqa: E731
        ids = np.concatenate([text(before), [cfg.vision_start_token_id], np.full(n_img, cfg.image_token_id),
                              [cfg.vision_end_token_id], text(after)]).astype(np.int32)
        rows.append({"ids": ids, "grid": grid,
                     "pixels": rng.standard_normal((int(np.prod(grid)), patch_dim)).astype(np.float32)})
    return rows


def batches(rows: list[dict], batch: int) -> list[list[dict]]:
    ordered = sorted(rows, key=lambda r: len(r["ids"]))
    return [ordered[i:i + batch] for i in range(0, len(ordered), batch)]


def _left_pad(group: list[dict], length: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.zeros((len(group), length), np.int32)
    mask = np.zeros_like(ids)
    for b, r in enumerate(group):
        ids[b, length - len(r["ids"]):] = r["ids"]
        mask[b, length - len(r["ids"]):] = 1
    return ids, mask


def bench_ours(cfg, model, rows: list[dict], batch: int, new: int) -> dict:
    import jax

    from omnirrm_jax.decoding.sampler import SamplingConfig, generate
    from omnirrm_jax.eval.pairs import seq_bucket
    from omnirrm_jax.eval.verdict import VerdictSite, candidate_logprobs
    from omnirrm_jax.models.thinker import prepare_inputs

    sampling = SamplingConfig(max_new_tokens=new, temperature=0.7, top_p=0.9, top_k=0, stop_token_ids=())
    prepared = []
    for group in batches(rows, batch):
        ids, mask = _left_pad(group, seq_bucket(max(len(r["ids"]) for r in group)))
        prepared.append(prepare_inputs(cfg, ids, mask, pixel_values=np.concatenate([r["pixels"] for r in group]),
                                       image_grid_thw=np.array([r["grid"] for r in group])))

    def one_pass(seed: int) -> int:
        n = 0
        for k, inputs in enumerate(prepared):
            out = generate(model, inputs, sampling, jax.random.key(seed + k))
            toks = np.asarray(out.tokens)[:, 0]
            # the verdict pass: condition on the first ~third of each judgement, score three one-token labels
            sites = [VerdictSite(prefix=tuple(int(t) for t in row[:new // 3]), candidates=((32,), (33,), (34,)))
                     for row in toks]
            jax.block_until_ready(candidate_logprobs(model, inputs, sites))
            n += len(toks)
        return n

    t = time.perf_counter()
    one_pass(0)
    first = time.perf_counter() - t
    t = time.perf_counter()
    n = one_pass(100)
    seconds = time.perf_counter() - t
    return {"rows": n, "seconds": seconds, "judgements_per_s": n / seconds, "first_pass_s": first}


def _hf_model(cfg):
    import torch
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

    from omnirrm_jax.models.config import to_hf_dict

    hf_cfg = Qwen2_5OmniThinkerConfig(**{k: v for k, v in to_hf_dict(cfg).items() if k != "architectures"})
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2_5OmniThinkerForConditionalGeneration(hf_cfg).eval()
    torch.set_default_dtype(torch.float32)
    return model


def bench_hf(model, group_list: list[list[dict]], new: int, warm: bool = True) -> dict:
    """transformers `generate` over groups (a group of one = the reference's one-at-a-time engine)."""
    import torch

    dev = next(model.parameters()).device
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=True, temperature=0.7, top_p=0.9, top_k=0,
              eos_token_id=None, pad_token_id=0)

    def run(group):
        ids, mask = _left_pad(group, max(len(r["ids"]) for r in group))
        pv = torch.tensor(np.concatenate([r["pixels"] for r in group]), device=dev, dtype=torch.bfloat16)
        grid = torch.tensor(np.array([r["grid"] for r in group]), device=dev)
        with torch.no_grad():
            out = model.generate(input_ids=torch.tensor(ids, device=dev, dtype=torch.long),
                                 attention_mask=torch.tensor(mask, device=dev), pixel_values=pv,
                                 image_grid_thw=grid, **kw)
        return out.shape[0]

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if warm:
        run(group_list[0])
        sync()
    t = time.perf_counter()
    n = sum(run(g) for g in group_list)
    sync()
    seconds = time.perf_counter() - t
    return {"rows": n, "seconds": seconds, "judgements_per_s": n / seconds, "attn": model.config._attn_implementation}


def _side(args, side: str) -> dict:
    """One side in its own process: JAX's allocator keeps its pool after a model is dropped, and transformers then
    runs out of memory beside it (seen on an H100)."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, f"{side}.json")
        argv = [sys.executable, "-m", "omnirrm_jax.cli", "bench", "eval", "--side", side, "--preset", args.preset,
                "--rows", str(args.rows), "--batch", str(args.batch), "--new", str(args.new),
                "--hf-single-rows", str(args.hf_single_rows), "--json", out]
        subprocess.run(argv, check=True)
        with open(out) as f:
            return json.load(f)


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="omnirrm bench eval", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="omni_7b")
    p.add_argument("--rows", type=int, default=48, help="rows in the mix (ours and HF batched)")
    p.add_argument("--batch", type=int, default=8, help="prompts per batch (ours and HF batched)")
    p.add_argument("--new", type=int, default=512, help="tokens per judgement")
    p.add_argument("--hf-single-rows", type=int, default=3, help="rows timed one at a time for baseline (a)")
    p.add_argument("--side", choices=("all", "ours", "hf"), default="all",
                   help="all: each side in its own process (the default), then the comparison")
    p.add_argument("--no-hf", action="store_true")
    p.add_argument("--json", default=None, help="also write results here")
    args = p.parse_args(argv)
    if args.side == "all":
        result = _side(args, "ours")
        if not args.no_hf:
            hf = _side(args, "hf")
            result.update({k: hf[k] for k in ("hf_batched", "hf_single")})
            ours = result["ours"]["judgements_per_s"]
            result["speedup_vs_single"] = ours / result["hf_single"]["judgements_per_s"]
            result["speedup_vs_batched"] = ours / result["hf_batched"]["judgements_per_s"]
            print(f"[{result['device']}] {args.preset}: ours {ours:.2f} judgements/s = "
                  f"{result['speedup_vs_single']:.1f}x HF one at a time, {result['speedup_vs_batched']:.1f}x HF "
                  f"batched (B={args.batch})", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
        return 0
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    from omnirrm_jax.bench.decode import _init_model
    from omnirrm_jax.models import config as C

    cfg = C.PRESETS[args.preset](dtype="bfloat16", param_dtype="bfloat16")
    rows = make_mix(cfg, args.rows)
    result = {"preset": args.preset, "rows": args.rows, "batch": args.batch, "new": args.new,
              "mean_prompt_tokens": float(np.mean([len(r["ids"]) for r in rows]))}
    if args.side == "ours":
        result["device"] = jax.devices()[0].device_kind
        result["ours"] = bench_ours(cfg, _init_model(cfg), rows, args.batch, args.new)
        print(f"[{result['device']}] ours: {result['ours']['judgements_per_s']:.3f} judgements/s", flush=True)
    else:
        import torch

        result["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        hf = _hf_model(cfg)
        result["hf_batched"] = bench_hf(hf, batches(rows, args.batch), args.new)
        print(f"[{result['device']}] HF batched generate: {result['hf_batched']['judgements_per_s']:.3f} "
              "judgements/s", flush=True)
        # rows of each image size, one at a time (a row's cost does not depend on the others)
        result["hf_single"] = bench_hf(hf, [[r] for r in rows[:args.hf_single_rows]], args.new)
        print(f"[{result['device']}] HF one at a time: {result['hf_single']['judgements_per_s']:.3f} judgements/s",
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0
