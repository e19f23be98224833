"""`omnirrm bench decode`: generated tokens/s of our jitted sampler next to HF transformers `generate`,
on the same card in the same process, plus the HBM-bandwidth floor of a decode step.

Random weights at real dimensions (3B by default) and random prompt ids: decode speed depends on shapes,
not on values. Both sides decode greedily for exactly `new` tokens (no stop token), so they do the same
work. The floor is (weight bytes + KV bytes read per step) / measured device copy bandwidth; ours is timed
end to end (`generate`) and per program (`prefill`, then `decode`, whose tokens/s the floor bounds).
"""

from __future__ import annotations

import functools
import json
import os
import time

import numpy as np

from omnirrm_jax.cli import Parser


def copy_bandwidth_gbs(repeats: int = 3, iters: int = 10, mib: int = 1024) -> float:
    """Device-to-device copy bandwidth (bytes read + written) of a `mib` MiB buffer (1 GiB: far past any cache),
    best of `repeats`. The buffer is donated, so no timed iteration allocates (with on-demand allocation, two fresh
    1 GiB buffers per run once made this read 5x low)."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones((mib // 4, 1024, 1024), jnp.float32)
    nbytes = x.nbytes
    f = jax.jit(lambda a: a + 1.0, donate_argnums=0)
    x = f(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(iters):
            x = f(x)
        x.block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes * iters / best / 1e9


def _init_model(cfg, make=None):
    """Random weights at real dimensions, drawn leaf by leaf (one tiny program per distinct shape): speed
    depends on shapes, not values, and jitting the whole constructor at 3B spent about 2.5 minutes of an H200
    machine before the first measurement."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from omnirrm_jax.models import abstract as A
    from omnirrm_jax.models.thinker import Thinker

    graphdef, abstract = nnx.split(A.eval_shape(make or (lambda: Thinker(cfg, rngs=nnx.Rngs(0)))))
    draw = functools.lru_cache(lambda shape, dtype: jax.jit(
        lambda key: (0.02 * jax.random.normal(key, shape, jnp.float32)).astype(dtype)))
    leaves, treedef = jax.tree.flatten(abstract)
    keys = jax.random.split(jax.random.key(0), len(leaves))
    values = [draw(a.shape, a.dtype)(k) if len(a.shape) >= 2 else jnp.ones(a.shape, a.dtype)
              for a, k in zip(leaves, keys)]
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, values))


def _lora_maker(cfg, rank: int):
    """A Thinker constructor with LoRA r=`rank` (alpha 4r) on GRPO's default targets: the model its rollouts run."""
    from flax import nnx

    from omnirrm_jax.models.thinker import Thinker
    from omnirrm_jax.training import lora

    def make():
        model = Thinker(cfg, rngs=nnx.Rngs(0))
        lora.apply_lora(model, lora.LoraConfig(rank=rank, alpha=4 * rank), nnx.Rngs(1))
        return model
    return make


def bench_ours(cfg, batch: int, prompt: int, new: int, repeats: int = 2, samples: int = 1, model=None,
               profile_dir: str | None = None, draw: str = "greedy", fold_lora: bool = True) -> dict:
    """End to end (`generate`) and its two programs alone: `prefill` (towers + prompts) and `decode` (the
    sampling loop, what the bandwidth floor bounds). Each is compiled once, then timed best of `repeats`.
    With `profile_dir`, one more `decode` runs under the profiler; its kernel summary is returned as "profile"."""
    import jax

    from omnirrm_jax.decoding.sampler import SamplingConfig, decode, generate, prefill
    from omnirrm_jax.models.thinker import prepare_inputs

    model = _init_model(cfg) if model is None else model
    ids = np.random.default_rng(0).integers(1, min(cfg.text.vocab_size - 20, 20000), (batch, prompt))
    inputs = prepare_inputs(cfg, ids)
    # greedy, or GRPO's rollout draw (SamplingConfig's defaults: temperature 1, top-k 50, top-p 0.95) among the
    # top-k candidates ("candidates") or over the masked vocabulary ("vocab")
    sampling = SamplingConfig(max_new_tokens=new, greedy=draw == "greedy", stop_token_ids=(), num_samples=samples,
                              fold_lora=fold_lora, **({} if draw == "greedy" else {"draw": draw}))

    def best(fn):
        times = []
        for r in range(repeats):
            t = time.perf_counter()
            out = fn(r)
            jax.block_until_ready(out)
            times.append(time.perf_counter() - t)
        return min(times), out

    t = time.perf_counter()
    pre = jax.block_until_ready(prefill(model, inputs))
    out = jax.block_until_ready(decode(model, pre, sampling, jax.random.key(0)))
    compile_s = time.perf_counter() - t
    prefill_s, pre = best(lambda r: prefill(model, inputs))
    decode_s, _ = best(lambda r: decode(model, pre, sampling, jax.random.key(r + 1)).tokens)
    total_s, out = best(lambda r: generate(model, inputs, sampling, jax.random.key(r + 1)))
    prof = None
    if profile_dir:
        from omnirrm_jax.bench import profile

        with profile.trace(profile_dir):
            jax.block_until_ready(decode(model, pre, sampling, jax.random.key(repeats + 1)).tokens)
        prof = profile.summarize(profile_dir)
        profile.print_summary(prof)
    rows = batch * samples
    return {**({"profile": prof} if prof else {}), "seconds": total_s, "tokens_per_s": rows * new / total_s, "first_call_s": compile_s,
            "prefill_s": prefill_s, "decode_s": decode_s, "decode_tokens_per_s": rows * (new - 1) / decode_s,
            "generated": int(np.asarray(out.lengths).sum())}


def bench_hf(cfg, batch: int, prompt: int, new: int, repeats: int = 2) -> dict:
    import torch
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

    from omnirrm_jax.models.config import to_hf_dict

    hf_cfg = Qwen2_5OmniThinkerConfig(**{k: v for k, v in to_hf_dict(cfg).items() if k != "architectures"})
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(dev):
        model = Qwen2_5OmniThinkerForConditionalGeneration(hf_cfg).eval()
    torch.set_default_dtype(torch.float32)
    ids = torch.tensor(np.random.default_rng(0).integers(1, min(cfg.text.vocab_size - 20, 20000), (batch, prompt)), device=dev)
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        model.generate(ids, **kw)
        sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
        sync()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            out = model.generate(ids, **kw)
            sync()
            times.append(time.perf_counter() - t)
    best = min(times)
    n = int(out.shape[1] - prompt)
    del model
    if dev == "cuda":
        torch.cuda.empty_cache()
    return {"seconds": best, "tokens_per_s": batch * n / best, "attn": hf_cfg._attn_implementation}


def floor_tokens_per_s(cfg, batch: int, prompt: int, new: int, bandwidth_gbs: float, samples: int = 1) -> float:
    """Upper bound on decode tokens/s if every step only streamed the text weights and the mean KV cache once.

    With `samples` > 1 each prompt's keys/values count once (what the shared-prefix decode reads; where its
    kernel is off or failed, the G copies it falls back to read more than this floor assumes: `shared_prefix_failed`
    in the row says so). Weights at the stored dtype's width, the cache at the compute dtype's.
    """
    import jax.numpy as jnp  # its dtypes know bfloat16

    t = cfg.text
    w_size, kv_size = jnp.dtype(cfg.param_dtype).itemsize, jnp.dtype(cfg.dtype).itemsize
    weight_bytes = w_size * (t.num_layers * (t.hidden_size * (t.num_heads + 2 * t.num_kv_heads) * t.head_dim
                                        + t.num_heads * t.head_dim * t.hidden_size
                                        + 3 * t.hidden_size * t.intermediate_size)
                        + t.vocab_size * t.hidden_size)
    rows = batch * samples
    kv_tokens = batch * prompt + rows * new / 2
    kv_bytes = kv_size * kv_tokens * t.num_layers * 2 * t.num_kv_heads * t.head_dim
    step_s = (weight_bytes + kv_bytes) / (bandwidth_gbs * 1e9)
    return rows / step_s


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="omnirrm bench decode", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="omni_3b")
    p.add_argument("--batch", default="16,64", help="comma-separated batch sizes; BxG = B prompts x G samples "
                   "sharing each prompt (GRPO's shape; no HF baseline: HF greedy cannot return G sequences)")
    p.add_argument("--prompt", type=int, default=1024)
    p.add_argument("--new", type=int, default=256)
    p.add_argument("--no-hf", action="store_true", help="skip the transformers baseline")
    p.add_argument("--sample", action="store_true", help="ours only: sample as GRPO's rollouts do (temperature 1, "
                   "top-k 50, top-p 0.95) instead of greedy decoding (= --draws candidates)")
    p.add_argument("--draws", default=None, help="comma-separated: greedy, candidates (GRPO's draw among the top-k "
                   "candidates), vocab (the same draw over the masked vocabulary); each is a row per batch")
    p.add_argument("--lora-rank", type=int, default=0, help="ours only: LoRA of this rank on GRPO's targets (the "
                   "model a rollout decodes)")
    p.add_argument("--lora-modes", default=None, help="with --lora-rank, comma-separated: fold (each product added "
                   "into its kernel before the loop; the default), branch (three matmuls per projection per step)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per measurement (best is reported)")
    p.add_argument("--json", default=None, help="also write results here")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="trace one more decode per batch into DIR/<batch> and print the top kernels")
    args = p.parse_args(argv)
    draws = (args.draws or ("candidates" if args.sample else "greedy")).split(",")
    bad = set(draws) - {"greedy", "candidates", "vocab"}
    if bad:  # before the bandwidth probe and the model (minutes at 3B)
        p.error(f"--draws takes greedy, candidates, vocab; got {sorted(bad)}")
    if args.lora_modes and not args.lora_rank:
        p.error("--lora-modes needs --lora-rank")
    modes = (args.lora_modes or "fold").split(",") if args.lora_rank else ["none"]
    if set(modes) - {"fold", "branch"} and args.lora_rank:
        p.error(f"--lora-modes takes fold, branch; got {args.lora_modes!r}")
    # transformers shares the card: JAX allocates on demand instead of taking 75 % of it up front (the batch-64
    # HF baseline ran out of memory next to a preallocated JAX pool on an 80 GB H100)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

    import jax

    from omnirrm_jax.models import config as C

    cfg = C.PRESETS[args.preset](dtype="bfloat16", param_dtype="bfloat16")
    device = jax.devices()[0].device_kind
    bw = copy_bandwidth_gbs()
    model = _init_model(cfg, _lora_maker(cfg, args.lora_rank) if args.lora_rank else None)
    rows = []
    for spec, draw, mode in ((s, d, m) for s in args.batch.split(",") for d in draws for m in modes):
        b, g = (int(x) for x in spec.split("x")) if "x" in spec else (int(spec), 1)
        prof = args.profile and os.path.join(args.profile, spec + ("" if draw == "greedy" else "-" + draw)
                                             + ("" if mode == "none" else "-lora-" + mode))
        row = {"batch": b, "samples": g, "prompt": args.prompt, "new": args.new, "sampled": draw != "greedy",
               "draw": draw, "lora": mode if args.lora_rank else None, "lora_rank": args.lora_rank,
               "ours": bench_ours(cfg, b, args.prompt, args.new, args.repeats, samples=g, model=model,
                                  profile_dir=prof, draw=draw, fold_lora=mode != "branch")}
        if not args.no_hf and draw == "greedy" and g == 1 and not args.lora_rank:
            row["hf"] = bench_hf(cfg, b, args.prompt, args.new, args.repeats)
        row["floor_tokens_per_s"] = floor_tokens_per_s(cfg, b, args.prompt, args.new, bw, samples=g)
        if g > 1:
            from omnirrm_jax.decoding import sampler

            row["shared_prefix_failed"] = bool(sampler._KERNEL_FAILED)
        rows.append(row)
        hf = row.get("hf", {}).get("tokens_per_s")
        ours = row["ours"]
        print(f"[{device}] {args.preset} batch {b}" + (f"x{g} samples" if g > 1 else "") + f" {draw}"
              + (f" LoRA r={args.lora_rank} {mode}" if args.lora_rank else "") + f" prompt {args.prompt} new {args.new}: ours {ours['tokens_per_s']:.0f} tok/s end to end"
              + (f", HF generate {hf:.0f} tok/s ({ours['tokens_per_s'] / hf:.1f}x)" if hf else "")
              + f"; prefill {ours['prefill_s']:.2f} s; decode alone {ours['decode_tokens_per_s']:.0f} tok/s"
              + (f" ({ours['decode_tokens_per_s'] / hf:.1f}x HF end to end)" if hf else "")
              + f" = {100 * ours['decode_tokens_per_s'] / row['floor_tokens_per_s']:.0f}% of the "
              f"{row['floor_tokens_per_s']:.0f} tok/s floor", flush=True)
    result = {"device": device, "preset": args.preset, "copy_bandwidth_GBps": bw, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0
