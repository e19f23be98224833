"""`omnirrm bench grpo`: one GRPO step (rollout -> rewards -> reference log-probs -> update) of our trainer
next to a loop built from HF transformers `generate` + a PEFT update, on the same card in the same process.

Random weights at real dimensions (3B by default), random text prompts; both sides sample exactly
`completion` tokens for every row (no stop token), so they do the same work: B prompts x G samples, LoRA r=8
on all linear layers, beta 0.04 (one reference forward with LoRA off), the `grpo` loss, AdamW. Ours is
`training.grpo.RolloutUpdate`, the exact cycle `omnirrm grpo` runs. The HF loop is what TRL's GRPOTrainer
does without vLLM: `generate(num_return_sequences=G)`, reference log-probs under `disable_adapter()`, then
forward/backward in micro-batches of `--hf-micro` rows with gradient checkpointing, and one optimizer step.
Both sides report peak device memory; with `--no-hf --preset omni_7b` it checks whether a 7B step fits
(e.g. 1 prompt of 6144 tokens x G=8 x 1024-token completions).

Beside our step it prints a lower bound built from this card's measured speeds (`bench.grpo_bound`), part by part
with measured/bound, so the gap is a number: the rollout's prefill and the reference pass and update at the model
FLOP/s of our SFT step (`omnirrm bench sft` on one row of prompt + completion tokens, LoRA r=8, loss on the
completion, in a process of its own before ours starts; or `--sft-mfu` x the card's peak), the rollout's decode
steps at the HBM floor of `bench decode` (the copy bandwidth, measured after the timed steps once their state is
freed). Neither slows nor enlarges the step. The bound leaves out: the rewards (host work, reported, run while the
reference pass is on the device; the step's ratio carries what is not hidden), sampling (top-k/top-p over the
vocabulary each decode step), launches and host round trips between programs, the media towers (none here: text
prompts), decode compute (the floor is bandwidth alone), and the gap between the copy-bandwidth floor and what a
decode step can reach (the decode table in docs/PERFORMANCE.md reaches about half).
The FLOP/s of a one-row training step is not a ceiling for the forward-only prefill and reference pass, nor for
the update, which runs `--rows-per-chunk` rows at once, so their ratios may fall below 1.
"""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np

from omnirrm_jax.cli import Parser


class _IdTokenizer:
    """Decodes ids to text so the reward functions run on every completion (as in training)."""

    special_ids = {"im_end": -1, "pad": 0}

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(map(str, ids))


def _ours_state(cfg, lora_rank: int, lr: float):
    import jax
    from flax import nnx

    from omnirrm_jax.models.thinker import Thinker
    from omnirrm_jax.training import lora, optim
    from omnirrm_jax.training.state import TrainState

    def make():
        m = Thinker(cfg, rngs=nnx.Rngs(0))
        lora.apply_lora(m, lora.LoraConfig(rank=lora_rank, alpha=4 * lora_rank), nnx.Rngs(1))
        return m

    from omnirrm_jax.bench.decode import _init_model

    graphdef, trainable, frozen = nnx.split(_init_model(cfg, make), nnx.LoRAParam, ...)
    tx = optim.make_optimizer(optim.OptimConfig(learning_rate=lr, warmup_ratio=0.0), 100)
    import jax.numpy as jnp

    return TrainState(graphdef, trainable, frozen, jax.jit(tx.init)(trainable), jnp.zeros((), jnp.int32)), tx


def _prompt_batch(cfg, prompts: int, prompt_len: int):
    from omnirrm_jax.models.thinker import prepare_inputs

    ids = np.random.default_rng(0).integers(1, min(cfg.text.vocab_size - 20, 20000), (prompts, prompt_len))
    batch = prepare_inputs(cfg, ids)
    batch.update(gold_better=np.zeros(prompts, np.int32), gold_score_A=np.full(prompts, 8, np.int32),
                 gold_score_B=np.full(prompts, 3, np.int32), valid=np.ones(prompts, bool))
    return batch


def bench_ours(cfg, prompts: int, G: int, prompt_len: int, completion: int, steps: int, rows_per_chunk,
               profile_dir: str | None = None):
    """Our cycle: one untimed first step (compiles), `steps` timed ones, then with `profile_dir` one more under
    the profiler, its kernels summed per program (rollout prefill/decode, log-probs, update) as "profile"."""
    import jax

    from omnirrm_jax.decoding.sampler import SamplingConfig
    from omnirrm_jax.training import grpo
    from omnirrm_jax.training.metrics import CompileCounter
    from omnirrm_jax.parallel import sharding as S
    from omnirrm_jax.training.grpo_config import GRPOSpec

    mesh = S.make_mesh(S.MeshConfig(data=1), devices=jax.devices()[:1])
    state, tx = _ours_state(cfg, 8, 1e-5)
    # on the mesh like `create_train_state` places it: the update's outputs live there, and inputs with another
    # sharding would compile every program a second time at step 2
    on_mesh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state = dataclasses.replace(state, **{k: jax.device_put(getattr(state, k), on_mesh)
                                          for k in ("trainable", "frozen", "opt_state", "step")})
    spec = GRPOSpec(num_generations=G, max_completion_length=completion, rows_per_chunk=rows_per_chunk)
    sampling = SamplingConfig(max_new_tokens=completion, temperature=1.0, top_p=0.95, top_k=50, num_samples=G,
                              stop_token_ids=(), pad_token_id=0)
    cycle = grpo.RolloutUpdate.build(state, tx, spec, None, tok=_IdTokenizer(), mesh=mesh, sampling=sampling)
    batch = jax.device_put(_prompt_batch(cfg, prompts, prompt_len))
    trainable, opt_state, step = state.trainable, state.opt_state, state.step
    records = []
    counter = CompileCounter()
    for i in range(steps + 1):  # the first step compiles (or reads its programs from --compile-cache)
        trainable, opt_state, step, rec, _ = cycle(trainable, opt_state, step, batch, jax.random.key(i))
        records.append(rec)
        if i == 0:
            first = counter.metrics()
            print(f"first step: {counter.summary()}", flush=True)
        print(f"ours step {i}: {rec['time/step_s']:.2f} s (rollout {rec['time/rollout_s']:.2f}, reference "
              f"{rec['time/reference_s']:.2f}, update {rec['time/update_s']:.2f})", flush=True)
    keys = ("time/step_s", "time/rollout_s", "time/rewards_s", "time/reference_s", "time/update_s")
    median = median_step([{k.split("/")[1]: r[k] for k in keys} for r in records[1:]])
    out = {k: float(v) for k, v in median.items()}
    if profile_dir:
        from omnirrm_jax.bench import profile

        with profile.trace(profile_dir):
            trainable, opt_state, step, rec, _ = cycle(trainable, opt_state, step, batch, jax.random.key(steps + 1))
            jax.block_until_ready(trainable)
        out["profile"] = profile.summarize(profile_dir, by_module=True)
        profile.print_summary(out["profile"])
    out["first_step_s"] = records[0]["time/step_s"]
    out["first_step_programs"], out["first_step_cache_hits"] = first["compiles"], first["compile/cache_hits"]
    out["first_step_compile_s"] = first["compile/seconds"]
    counter.close()
    stats = jax.devices()[0].memory_stats() or {}
    out["peak_memory_gib"] = stats.get("peak_bytes_in_use", 0) / 2 ** 30
    return out


def median_step(steps: list[dict]) -> dict:
    """The timed step of median `step_s` (the lower middle one of an even count), with its own parts: medians
    taken per part could come from different steps and not add up to the step (ours: rollout + reference + update,
    the rewards scored inside the reference's span; HF: rollout + rewards + reference + update)."""
    return sorted(steps, key=lambda t: t["step_s"])[(len(steps) - 1) // 2]


def bench_hf(cfg, prompts: int, G: int, prompt_len: int, completion: int, steps: int, micro: int):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

    from omnirrm_jax.models.config import to_hf_dict
    from omnirrm_jax.rubric.rewards import combined_reward
    from omnirrm_jax.training.grpo_loss import group_advantages

    hf_cfg = Qwen2_5OmniThinkerConfig(**{k: v for k, v in to_hf_dict(cfg).items() if k != "architectures"})
    dev = "cuda"
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(dev):
        base = Qwen2_5OmniThinkerForConditionalGeneration(hf_cfg)
    torch.set_default_dtype(torch.float32)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=32, target_modules="all-linear"))
    model.gradient_checkpointing_enable()
    model.enable_input_require_grads()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    ids = torch.tensor(np.random.default_rng(0).integers(1, min(cfg.text.vocab_size - 20, 20000),
                                                         (prompts, prompt_len)), device=dev)
    gen_kw = dict(do_sample=True, temperature=1.0, top_p=0.95, top_k=50, num_return_sequences=G,
                  max_new_tokens=completion, min_new_tokens=completion, eos_token_id=None, pad_token_id=0)

    def logps(seq):
        logits = model(input_ids=seq, logits_to_keep=completion + 1).logits[:, :-1].float()
        return torch.log_softmax(logits, -1).gather(-1, seq[:, -completion:, None])[..., 0]

    times = []
    for _ in range(steps + 1):
        torch.cuda.synchronize()
        print(f"HF step {len(times)}", flush=True)
        t0 = time.perf_counter()
        model.eval()
        with torch.no_grad():
            seqs = model.generate(input_ids=ids, **gen_kw)
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        texts = [" ".join(map(str, s[-completion:].tolist())) for s in seqs]
        r = combined_reward(texts, better=["A"] * len(texts), score_A=[8] * len(texts), score_B=[3] * len(texts))
        adv = torch.tensor(group_advantages(np.asarray(r).reshape(prompts, G)).reshape(-1), device=dev)
        t2 = time.perf_counter()
        with torch.no_grad(), model.disable_adapter():
            ref = torch.cat([logps(seqs[i:i + micro]) for i in range(0, len(seqs), micro)])
        torch.cuda.synchronize()
        t3 = time.perf_counter()
        model.train()
        opt.zero_grad()
        for i in range(0, len(seqs), micro):
            lp = logps(seqs[i:i + micro])
            ratio = torch.exp(lp - lp.detach())
            a = adv[i:i + micro, None]
            d = ref[i:i + micro] - lp
            per_tok = -torch.min(ratio * a, torch.clamp(ratio, 0.8, 1.2) * a) + 0.04 * (torch.exp(d) - d - 1)
            (per_tok.mean(-1).sum() / len(seqs)).backward()
        opt.step()
        torch.cuda.synchronize()
        t4 = time.perf_counter()
        times.append({"step_s": t4 - t0, "rollout_s": t1 - t0, "rewards_s": t2 - t1, "reference_s": t3 - t2,
                      "update_s": t4 - t3})
    out = dict(median_step(times[1:]))
    out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    model = base = opt = None  # free the card for JAX (`logps` closes over model)
    torch.cuda.empty_cache()
    return out


SFT_STEPS, SFT_WARMUP = 5, 2  # the bound's SFT measurement: timed steps after warm-up (the first compiles)


def sft_probe(*, preset: str, seq: int, loss_window: int, remat: str, small: bool = False) -> dict:
    """Our SFT step's tokens/s and model FLOP/s on one row of `seq` tokens (LoRA r=8, loss on the last
    `loss_window`), measured by `omnirrm bench sft` in a process of its own. Run before this process touches the
    card. Measured after the GRPO steps in the same process (as before session 20), the same step ran at about
    half its speed (H100: MFU 0.13 against 0.24 in its own process), which made the bound meaningless. The probe
    runs `bench sft`'s model: the preset (or its tiny model with `small`) with unrolled layers, whatever
    `--scan-layers` the GRPO side runs."""
    import os
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "sft.json")
        cmd = [sys.executable, "-m", "omnirrm_jax.cli", "bench", "sft", "--no-hf", "--seq", str(seq),
               "--loss-window", str(loss_window), "--remat", remat, "--steps", str(SFT_STEPS), "--warmup",
               str(SFT_WARMUP), "--lora-rank", "8", "--devices", "1", "--json", out]
        cmd += ["--small"] if small else ["--preset", preset]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"the bound's SFT probe failed ({' '.join(cmd[2:])}):\n{done.stderr[-3000:]}")
        with open(out) as f:
            res = json.load(f)
    if res["seq"] != seq:
        raise RuntimeError(f"the bound's SFT probe ran {res['seq']} tokens, not the {seq} asked for")
    row = res["ours"][0]
    return {"sft_seq": res["seq"], "sft_loss_window": loss_window, "sft_step_s": row["step_s"],
            "sft_flops_per_s": row["tokens_per_s"] * res["flops_per_token"], "sft_mfu": row["mfu"]}


def measure_bound(cfg, *, prompts: int, G: int, prompt_len: int, completion: int, ours: dict,
                  sft: dict | None = None, sft_mfu: float | None = None, small: bool = False) -> dict:
    """The bound's inputs measured on this card (copy bandwidth here; our SFT step's model FLOP/s from `sft`,
    `sft_probe`'s result, unless `sft_mfu` is given), the bound's parts and measured/bound for rollout,
    reference, update and the whole step. Call it after the timed GRPO steps: their state must be freed first."""
    import gc

    from omnirrm_jax.bench.decode import copy_bandwidth_gbs
    from omnirrm_jax.bench.grpo_bound import grpo_bound
    from omnirrm_jax.training.metrics import peak_flops_per_device

    gc.collect()  # the GRPO state is unreachable once bench_ours returned; cycles in its graph go here
    peak = peak_flops_per_device()
    inputs = {"copy_bandwidth_GBps": copy_bandwidth_gbs(mib=64 if small else 1024), "peak_flops": peak}
    if sft_mfu is None:
        if sft is None:
            raise ValueError("measure_bound needs the SFT probe's result (sft_probe) or sft_mfu")
        inputs.update(sft_source="measured", **sft)
        flops_s = sft["sft_flops_per_s"]
    else:
        flops_s = sft_mfu * peak
        inputs.update(sft_source="given", sft_mfu=sft_mfu)
    inputs["sft_flops_per_s"] = flops_s
    bound = grpo_bound(cfg, prompts=prompts, G=G, prompt_len=prompt_len, completion=completion,
                       bandwidth_bytes_s=inputs["copy_bandwidth_GBps"] * 1e9, flops_per_s=flops_s)
    ratio = {k: ours[f"{k}_s"] / bound[f"{k}_s"] for k in ("rollout", "reference", "update", "step")}
    out = {"inputs": inputs, **bound, "measured_over_bound": ratio}
    if peak:  # the strict floor: every FLOP at the card's peak (the bound above asks only for SFT's efficiency)
        at_peak = grpo_bound(cfg, prompts=prompts, G=G, prompt_len=prompt_len, completion=completion,
                             bandwidth_bytes_s=inputs["copy_bandwidth_GBps"] * 1e9, flops_per_s=peak)
        out["at_peak"] = {k: at_peak[f"{k}_s"] for k in ("rollout", "reference", "update", "step")}
    return out


def bound_lines(bound: dict, ours: dict) -> list[str]:
    """One line for the inputs, then one per part: measured, bound, measured/bound."""
    i, r = bound["inputs"], bound["measured_over_bound"]
    mfu = f"MFU {i['sft_mfu']:.2f}" if i["sft_mfu"] is not None else "MFU unknown: no listed peak for this card"
    src = f"measured on one row of {i['sft_seq']} tokens in its own process" if i["sft_source"] == "measured" \
        else "given"
    detail = {"rollout": f" (prefill {bound['prefill_s']:.3f} + decode {bound['decode_s']:.3f})",
              "step": f" (rewards: {ours['rewards_s']:.3f} s on the host while the reference pass runs)"}
    return [f"bound from copy bandwidth {i['copy_bandwidth_GBps']:.0f} GB/s and the SFT step's "
            f"{i['sft_flops_per_s'] / 1e12:.3g} TFLOP/s ({mfu}; {src}):"] + [
        f"  {k:<9} measured {ours[k + '_s']:.3f} s, bound {bound[k + '_s']:.3f} s{detail.get(k, '')}: "
        f"{r[k]:.2f}x" + (f"; at peak FLOP/s {bound['at_peak'][k]:.3f} s" if "at_peak" in bound else "")
        for k in ("rollout", "reference", "update", "step")]


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="omnirrm bench grpo", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="omni_3b")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--prompt", type=int, default=1024)
    p.add_argument("--completion", type=int, default=512)
    p.add_argument("--steps", type=int, default=1, help="timed steps (after warm-up)")
    p.add_argument("--rows-per-chunk", type=int, default=8, help="our update's rows per chunk (gradient accumulation)")
    p.add_argument("--remat", default="none", help="our decoder-layer remat policy: none | full | dots")
    p.add_argument("--scan-layers", action="store_true",
                   help="our decoder layers as one scan (models.config.ThinkerConfig.scan_layers): shorter compiles")
    p.add_argument("--hf-micro", type=int, default=8, help="HF update micro-batch (rows)")
    p.add_argument("--no-hf", action="store_true")
    p.add_argument("--no-ours", action="store_true", help="only the HF baseline (run ours in its own process)")
    p.add_argument("--small", action="store_true", help="tiny dimensions (a CPU smoke test)")
    p.add_argument("--sft-mfu", type=float, default=None, metavar="FLOAT",
                   help="the bound's SFT MFU (of this card's listed peak) instead of measuring our SFT step")
    p.add_argument("--no-bound", action="store_true", help="skip the lower bound (and its measurements)")
    p.add_argument("--compile-cache", default=None, metavar="DIR",
                   help="JAX's persistent compilation cache here: a second run with the same shapes times a resumed "
                        "run's first step (programs read back instead of compiled)")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="one more step of ours under jax.profiler after the timed ones; kernels summed per program")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from omnirrm_jax.models import config as C

    if args.small:
        cfg = C.tiny(dtype="float32", param_dtype="float32", scan_layers=args.scan_layers)
    else:
        cfg = C.PRESETS[args.preset](dtype="bfloat16", param_dtype="bfloat16", remat=args.remat,
                                     scan_layers=args.scan_layers)
    if args.sft_mfu is not None and not 0 < args.sft_mfu <= 1:
        p.error(f"--sft-mfu {args.sft_mfu} must lie in (0, 1]")
    shape = dict(prompts=args.prompts, G=args.generations, prompt_len=args.prompt, completion=args.completion,
                 steps=args.steps)
    hf = None
    if not args.no_hf:  # first: JAX preallocates most of the card once it starts, torch frees what it cached
        hf = bench_hf(cfg, **shape, micro=args.hf_micro)
        print(f"HF generate + PEFT: {json.dumps(hf)}", flush=True)
    sft = None
    if not args.no_ours and not args.no_bound and args.sft_mfu is None:  # before this process takes the card
        sft = sft_probe(preset=args.preset, seq=args.prompt + args.completion, loss_window=args.completion,
                        remat=args.remat, small=args.small)
        print(f"the bound's SFT probe (its own process): {json.dumps(sft)}", flush=True)
    import jax

    device = jax.devices()[0].device_kind
    result = {"device": device, "preset": "tiny" if args.small else args.preset, **shape}
    if args.no_ours:
        result["hf"] = hf
        print(json.dumps(result))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
        return 0
    from omnirrm_jax.training.metrics import peak_flops_per_device

    if args.sft_mfu is not None and not args.no_bound and peak_flops_per_device() is None:
        p.error(f"--sft-mfu needs this card's peak FLOP/s; training.metrics.PEAK_FLOPS lists none for {device!r}")
    from omnirrm_jax import compile_cache

    compile_cache.enable(args.compile_cache)
    result["ours"] = bench_ours(cfg, **shape, rows_per_chunk=args.rows_per_chunk, profile_dir=args.profile)
    line = f"[{device}] GRPO step {args.prompts} prompts x G={args.generations}, prompt {args.prompt}, " \
           f"completion {args.completion}: ours {result['ours']['step_s']:.2f} s " \
           f"(rollout {result['ours']['rollout_s']:.2f}, reference {result['ours']['reference_s']:.2f} with the " \
           f"rewards' {result['ours']['rewards_s']:.2f} on the host beside it, " \
           f"update {result['ours']['update_s']:.2f}; " \
           f"peak {result['ours']['peak_memory_gib']:.1f} GiB); first step {result['ours']['first_step_s']:.1f} s " \
           f"({result['ours']['first_step_programs']} programs, {result['ours']['first_step_cache_hits']} from the " \
           f"compilation cache)"
    if hf is not None:
        result["hf"] = hf
        result["speedup"] = hf["step_s"] / result["ours"]["step_s"]
        line += f"; HF generate + PEFT {hf['step_s']:.2f} s (rollout {hf['rollout_s']:.2f}, reference " \
                f"{hf['reference_s']:.2f}, update {hf['update_s']:.2f}; peak {hf['peak_memory_gib']:.1f} GiB)" \
                f" -> {result['speedup']:.1f}x"
    print(line, flush=True)
    if not args.no_bound:  # after the timed steps, never between them
        result["bound"] = measure_bound(cfg, prompts=args.prompts, G=args.generations, prompt_len=args.prompt,
                                        completion=args.completion, ours=result["ours"], sft=sft, sft_mfu=args.sft_mfu,
                                        small=args.small)
        print("\n".join(bound_lines(result["bound"], result["ours"])), flush=True)
    printed = {**result, "ours": {k: v for k, v in result["ours"].items() if k != "profile"}}
    print(json.dumps(printed))  # the profile's tables are printed above and kept in --json
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0
