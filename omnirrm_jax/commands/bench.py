"""`omnirrm bench NAME [options]`: the benchmarks (`omnirrm_jax/bench/`); each parses its own options, so the
rest of the command line goes to it unparsed (`omnirrm bench NAME --help` is the benchmark's help)."""

from __future__ import annotations

import argparse

# name -> what it measures (the first line of omnirrm_jax/bench/NAME.py; the list `omnirrm bench --help` prints)
BENCHMARKS = {
    "attention": "microseconds per layer of the shared-prefix decode attention (kernel and combine)",
    "decode": "generated tokens/s of our jitted sampler next to HF transformers `generate`",
    "data": "samples/s of the Grain input pipeline over prepared shards, padding waste per bucket",
    "eval": "judgements per second on a VL-RewardBench-like mix, ours next to transformers",
    "grpo": "one GRPO step (rollout -> rewards -> reference log-probs -> update) of our trainer",
    "pack": "effective (non-padding) tokens/s of packed SFT next to the bucketed path, on the real mix",
    "bon": "Best-of-N candidates ranked per second, the scalar reward next to the reference's elimination",
    "serve": "/v1/judge judgements/s and p50/p99 latency at 1/16/64 clients, and the offline judge's",
    "sft": "tokens/s and MFU of our LoRA SFT step next to HF transformers + PEFT",
}


def add_parser(sub) -> argparse.ArgumentParser:
    listing = "\n".join(f"  {name:<8}{what}" for name, what in BENCHMARKS.items())
    p = sub.add_parser("bench", help="benchmarks (decode, ...): `omnirrm bench NAME --help`",
                       description=f"benchmarks; each takes its own options (`omnirrm bench NAME --help`):\n{listing}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=list(BENCHMARKS), help="which benchmark")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="the benchmark's own options")
    return p


def run(args: argparse.Namespace) -> int:
    import importlib

    return importlib.import_module(f"omnirrm_jax.bench.{args.name}").main(args.rest)
