"""`omnirrm bench attention`: microseconds per layer of the shared-prefix decode attention (kernel and combine)

GRPO's rollouts attend once per layer and step through `decoding.shared_prefix`; this times that call alone at the
rollout's shape for a few filled suffix lengths and kernel variants, so a kernel change can be
judged in seconds instead of a whole decode. Each timing runs the call `layers` times chained in one jitted loop
(the output feeds the next query, as layer feeds layer) and reports the best of `repeats` divided by `layers`. Off
GPU the kernel is interpreted: the numbers then say nothing about speed (the CPU test only runs the harness).

Variants: `SPLITSxBLOCK` (programs per (prompt, kv head) sharing out the blocks, then the combine), optionally with
`:STAGES` (Triton pipeline stages, 2 by default).
"""

from __future__ import annotations

import functools
import json
import time

from omnirrm_jax.cli import Parser


def time_attention(fn, q, t: int, layers: int, repeats: int) -> float:
    """Microseconds per call of `fn(q, t)`, `layers` calls chained in one program, best of `repeats`."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def run(q, t):
        return jax.lax.fori_loop(0, layers, lambda i, q: fn(q, t).astype(q.dtype), q)

    t_ = jnp.asarray(t, jnp.int32)
    run(q, t_).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run(q, t_).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return best / layers * 1e6


def parse_variant(text: str) -> dict:
    """"8x128" / "8x128:3" -> {"splits", "block", "stages"}."""
    body, _, stages = text.partition(":")
    splits, block = body.split("x")
    out = {"splits": int(splits), "block": int(block), "stages": int(stages) if stages else 2}
    if min(out["splits"], out["block"], out["stages"]) < 1:
        raise ValueError(text)
    return out


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="omnirrm bench attention", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="omni_3b", help="head counts and head size from this model config")
    p.add_argument("--batch", default="8x8", help="B prompts x G samples")
    p.add_argument("--prompt", type=int, default=1024)
    p.add_argument("--new", type=int, default=512)
    p.add_argument("--filled", default="16,256,500", help="comma-separated filled suffix lengths (decode steps)")
    p.add_argument("--variants", default="8x128,8x128:3,8x64:3",
                   help="comma-separated kernel variants SPLITSxBLOCK, each optionally :STAGES (the first is compared "
                        "with the rest)")
    p.add_argument("--layers", type=int, default=None, help="chained calls per timing (default: the model's layers)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    try:
        variants = [parse_variant(v) for v in args.variants.split(",")]
        filled = [int(x) for x in args.filled.split(",")]
        B, G = (int(x) for x in args.batch.split("x"))
    except ValueError:
        p.error("--variants takes SPLITSxBLOCK (optionally :STAGES), --filled integers, --batch BxG")
    if not all(1 <= f <= args.new for f in filled):
        p.error(f"--filled must lie in [1, --new={args.new}]")

    import jax
    import jax.numpy as jnp

    from omnirrm_jax.decoding import shared_prefix as SP
    from omnirrm_jax.models import config as C

    t = C.PRESETS[args.preset]().text
    K, Hq, H = t.num_kv_heads, t.num_heads, t.head_dim
    rows = []
    device = jax.devices()[0].device_kind
    S, N = SP.padded_sizes(args.prompt, args.new, G, "pallas")  # the cache the sampler allocates
    X = N * G
    bad = sorted({v["block"] for v in variants if S % v["block"] or X % v["block"]})
    if bad:
        p.error(f"blocks of {bad} do not divide the cache the sampler allocates here (prefix {S}, suffix rows {X})")
    ks = jax.random.split(jax.random.key(0), 5)  # one cache for every variant
    q = jax.random.normal(ks[0], (B * G, Hq, H), jnp.bfloat16)
    pk, pv = (jax.random.normal(k, (B, K, S, H), jnp.bfloat16) for k in ks[1:3])
    sk, sv = (jax.random.normal(k, (B, K, X, H), jnp.bfloat16) for k in ks[3:5])
    start = jnp.full((B,), S - args.prompt, jnp.int32)
    for v in variants:
        kern = functools.partial(SP._pallas_attention, G=G, scale=H ** -0.5, splits=v["splits"], block=v["block"],
                                 num_stages=v["stages"])
        us = [time_attention(lambda q, n: kern(q, pk, pv, sk, sv, start, n), q, f, args.layers or t.num_layers,
                             args.repeats) for f in filled]
        rows.append({**v, "us_per_layer": dict(zip(map(str, filled), us))})
        print(f"[{device}] {args.preset} {B}x{G} prompt {args.prompt}: {v['splits']} splits, blocks of {v['block']}, "
              f"{v['stages']} stages: "
              + ", ".join(f"{u:.1f} us at {f} filled" for f, u in zip(filled, us)), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "preset": args.preset, "batch": args.batch, "prompt": args.prompt,
                       "new": args.new, "rows": rows}, f, indent=2)
    return 0
