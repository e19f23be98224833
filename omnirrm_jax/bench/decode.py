"""`omnirrm bench decode`: generated tokens/s of our jitted sampler next to HF transformers `generate`,
on the same card in the same process, plus the HBM-bandwidth floor of a decode step.

Random weights at real dimensions (3B by default) and random prompt ids: decode speed depends on shapes,
not on values. Both sides decode greedily for exactly `new` tokens (no stop token), so they do the same
work. The floor is (weight bytes + KV bytes read per step) / measured device copy bandwidth.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _copy_bandwidth_gbs() -> float:
    """Device-to-device copy bandwidth (bytes read + written) of a 1 GiB buffer."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones((256, 1024, 1024), jnp.float32)
    f = jax.jit(lambda a: a + 1.0)
    f(x).block_until_ready()
    t = time.perf_counter()
    for _ in range(10):
        y = f(x)
    y.block_until_ready()
    return 2 * x.nbytes * 10 / (time.perf_counter() - t) / 1e9


def _init_model(cfg):
    import jax
    from flax import nnx

    from omnirrm_jax.models.thinker import Thinker

    abstract = nnx.eval_shape(lambda: Thinker(cfg, rngs=nnx.Rngs(0)))
    graphdef, _ = nnx.split(abstract)
    state = jax.jit(lambda: nnx.state(Thinker(cfg, rngs=nnx.Rngs(0))))()
    return nnx.merge(graphdef, state)


def bench_ours(cfg, batch: int, prompt: int, new: int, repeats: int = 2) -> dict:
    import jax

    from omnirrm_jax.decoding.sampler import SamplingConfig, generate
    from omnirrm_jax.models.thinker import prepare_inputs

    model = _init_model(cfg)
    ids = np.random.default_rng(0).integers(1, min(cfg.text.vocab_size - 20, 20000), (batch, prompt))
    inputs = prepare_inputs(cfg, ids)
    sampling = SamplingConfig(max_new_tokens=new, greedy=True, stop_token_ids=())
    t = time.perf_counter()
    out = generate(model, inputs, sampling, jax.random.key(0))
    jax.block_until_ready(out.tokens)
    compile_s = time.perf_counter() - t
    times = []
    for r in range(repeats):
        t = time.perf_counter()
        out = generate(model, inputs, sampling, jax.random.key(r + 1))
        jax.block_until_ready(out.tokens)
        times.append(time.perf_counter() - t)
    best = min(times)
    # Prefill + first token alone, to report decode-only speed (what the bandwidth floor bounds).
    one = SamplingConfig(max_new_tokens=1, greedy=True, stop_token_ids=())
    jax.block_until_ready(generate(model, inputs, one, jax.random.key(0)).tokens)
    prefill = []
    for r in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(generate(model, inputs, one, jax.random.key(r)).tokens)
        prefill.append(time.perf_counter() - t)
    decode_s = best - min(prefill)
    return {"seconds": best, "tokens_per_s": batch * new / best, "first_call_s": compile_s,
            "prefill_s": min(prefill), "decode_tokens_per_s": batch * (new - 1) / decode_s,
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


def floor_tokens_per_s(cfg, batch: int, prompt: int, new: int, bandwidth_gbs: float) -> float:
    """Upper bound on tokens/s if every step only streamed the text weights and the mean KV cache once."""
    t = cfg.text
    weight_bytes = 2 * (t.num_layers * (t.hidden_size * (t.num_heads + 2 * t.num_kv_heads) * t.head_dim
                                        + t.num_heads * t.head_dim * t.hidden_size
                                        + 3 * t.hidden_size * t.intermediate_size)
                        + t.vocab_size * t.hidden_size)
    mean_len = prompt + new / 2
    kv_bytes = 2 * batch * mean_len * t.num_layers * 2 * t.num_kv_heads * t.head_dim
    step_s = (weight_bytes + kv_bytes) / (bandwidth_gbs * 1e9)
    return batch / step_s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="omnirrm bench decode", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="omni_3b")
    p.add_argument("--batch", default="16,64", help="comma-separated batch sizes")
    p.add_argument("--prompt", type=int, default=1024)
    p.add_argument("--new", type=int, default=256)
    p.add_argument("--no-hf", action="store_true", help="skip the transformers baseline")
    p.add_argument("--json", default=None, help="also write results here")
    args = p.parse_args(argv)

    import jax

    from omnirrm_jax.models import config as C

    cfg = C.PRESETS[args.preset](dtype="bfloat16", param_dtype="bfloat16")
    device = jax.devices()[0].device_kind
    bw = _copy_bandwidth_gbs()
    rows = []
    for b in (int(x) for x in args.batch.split(",")):
        row = {"batch": b, "prompt": args.prompt, "new": args.new, "ours": bench_ours(cfg, b, args.prompt, args.new)}
        if not args.no_hf:
            row["hf"] = bench_hf(cfg, b, args.prompt, args.new)
        row["floor_tokens_per_s"] = floor_tokens_per_s(cfg, b, args.prompt, args.new, bw)
        rows.append(row)
        hf = row.get("hf", {}).get("tokens_per_s")
        print(f"[{device}] {args.preset} batch {b} prompt {args.prompt} new {args.new}: "
              f"ours {row['ours']['tokens_per_s']:.0f} tok/s"
              + (f", HF generate {hf:.0f} tok/s ({row['ours']['tokens_per_s'] / hf:.1f}x)" if hf else "")
              + f"; decode only (prefill {row['ours']['prefill_s']:.2f} s excluded): "
              f"{row['ours']['decode_tokens_per_s']:.0f} tok/s = "
              f"{100 * row['ours']['decode_tokens_per_s'] / row['floor_tokens_per_s']:.0f}% of the "
              f"{row['floor_tokens_per_s']:.0f} tok/s floor", flush=True)
    result = {"device": device, "preset": args.preset, "copy_bandwidth_GBps": bw, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0
