"""`omnirrm bench sft`: tokens/s and MFU of our LoRA SFT step next to HF transformers + PEFT, on the same card
in the same process.

The reference's stage 1 (ms-swift): Qwen2.5-Omni-3B, LoRA r=8 alpha=32 on every linear layer of the LLM (and the
vision merger and audio projector), one 3072-token sequence per device and step, bf16. Random weights and random
token ids at those dimensions: step time depends on shapes, not values. Both sides run the whole optimizer step:
forward, masked token cross-entropy over every position, backward to the LoRA factors, global-norm clipping,
AdamW. HF runs with gradient checkpointing off and on; the faster is the baseline.

MFU counts the model FLOPs of a frozen-base step and nothing else: 4·N per token (forward 2·N, backward 2·N for
the activation gradients only; a frozen weight gets no gradient), N = the text decoder's matmul weights plus the
output head, plus causal attention (QKᵀ and PV: forward 2·T·d per layer and token, backward twice that). Recompute
(remat, gradient checkpointing) and the LoRA factors' own FLOPs are not counted, so the same step scores the same
MFU whatever it rematerialises.

HF runs first and releases its memory before JAX starts (JAX allocates on demand here, not 75 % up front).
`--small` shrinks everything for a CPU smoke test (tests/bench).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import time

import numpy as np

from omnirrm_jax.cli import Parser
from omnirrm_jax.training.metrics import flops_per_token, matmul_params  # noqa: F401 - the MFU definition


# ----------------------------------------------------------------------------------------------------
# Ours
# ----------------------------------------------------------------------------------------------------

PROFILED_STEPS = 2


def compiled_memory(compiled) -> dict | None:
    """XLA's own account of a compiled program's device memory (GiB): arguments, outputs, aliased (donated)
    bytes and the temporary buffer - what the program needs on top of what the caller holds."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend reports it
        return None
    if m is None:
        return None
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
              "generated_code_size_in_bytes")
    return {f.replace("_size_in_bytes", ""): round(getattr(m, f, 0) / 2**30, 3) for f in fields}


def _batch(cfg, batch: int, seq: int, loss_window: int | None = None) -> dict:
    """Random token rows; every token is a target, or with `loss_window` only each row's last that many (as a
    judgement at the end of a prompt)."""
    from omnirrm_jax.models.thinker import prepare_inputs

    ids = np.random.default_rng(0).integers(1, min(cfg.text.vocab_size - 20, 20000), (batch, seq))
    host = prepare_inputs(cfg, ids)
    host["loss_mask"] = (np.arange(seq) >= seq - (loss_window or seq)).astype(np.int32)[None].repeat(batch, 0)
    return host


def lora_train_state(cfg, mesh, *, lora_rank: int, total_steps: int):
    """(state, shardings, tx): random weights at `cfg` with LoRA factors on the default targets (fp32, as PEFT keeps
    them) and AdamW, sharded on `mesh` - the starting point every SFT-step benchmark shares."""
    from omnirrm_jax.training import lora as lora_lib
    from omnirrm_jax.training import optim
    from omnirrm_jax.training.state import build_model, create_train_state

    lora_cfg = lora_lib.LoraConfig(rank=lora_rank, alpha=4.0 * lora_rank, dtype="float32")
    tx = optim.make_optimizer(optim.OptimConfig(learning_rate=1e-5, warmup_ratio=0.0), total_steps)
    state, shardings = create_train_state(
        lambda: build_model(cfg, hf_path=None, lora_cfg=lora_cfg, lora_path=None, seed=0), tx, mesh,
        full_finetune=False)
    return state, shardings, tx


def bench_ours(cfg, *, batch: int, seq: int, steps: int, warmup: int, remat: str, lora_rank: int,
               mesh_axes: dict | None = None, devices: int | None = None, profile_dir: str | None = None,
               loss_window: int | None = None) -> dict:
    """Our jitted `sft_step` (donated state, LoRA-only AdamW) on the first `devices` local devices (all by
    default), over a mesh of `mesh_axes` (default data-parallel: {"data": -1}). With `profile_dir`, two more
    steps after the timed ones run under the profiler and their kernel summary is returned as "profile"."""
    import jax

    from omnirrm_jax.training import lora as lora_lib
    from omnirrm_jax.training import sft
    from omnirrm_jax.parallel import sharding as S

    cfg = dataclasses.replace(cfg, remat=remat)
    devs = jax.devices()[:devices] if devices else jax.devices()
    mesh = S.make_mesh(S.MeshConfig(**(mesh_axes or {"data": -1})), devices=devs)
    t0 = time.perf_counter()
    state, shardings, tx = lora_train_state(cfg, mesh, lora_rank=lora_rank, total_steps=steps + warmup)
    init_s = time.perf_counter() - t0
    step_fn = sft.jit_sft_step(state, tx, shardings, loss_window=loss_window)
    host = _batch(cfg, batch * len(devs), seq, loss_window)
    data = {k: jax.device_put(v, S.batch_sharding(mesh, v.ndim, batch_axis=1 if k == "position_ids" else 0))
            for k, v in host.items()}
    trainable, opt_state, step = state.trainable, state.opt_state, state.step
    t0 = time.perf_counter()
    compiled = step_fn.lower(trainable, state.frozen, opt_state, step, data).compile()
    compile_s = time.perf_counter() - t0
    memory = compiled_memory(compiled)
    print(f"ours ({remat}): compiled in {compile_s:.0f} s; XLA memory analysis (GiB): {json.dumps(memory)}",
          flush=True)
    step_fn = compiled
    trainable, opt_state, step, m = step_fn(trainable, state.frozen, opt_state, step, data)
    jax.block_until_ready(m)
    for _ in range(warmup - 1):
        trainable, opt_state, step, m = step_fn(trainable, state.frozen, opt_state, step, data)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(steps):
        trainable, opt_state, step, m = step_fn(trainable, state.frozen, opt_state, step, data)
    jax.block_until_ready(m)
    seconds = (time.perf_counter() - t0) / steps
    prof = None
    if profile_dir:
        from omnirrm_jax.bench import profile

        with profile.trace(profile_dir):
            for _ in range(PROFILED_STEPS):
                trainable, opt_state, step, m = step_fn(trainable, state.frozen, opt_state, step, data)
            jax.block_until_ready(m)
        prof = profile.summarize(profile_dir)
        profile.print_summary(prof, PROFILED_STEPS)
    peak = None
    try:
        peak = jax.devices()[0].memory_stats().get("peak_bytes_in_use")
    except Exception:  # noqa: BLE001 - CPU devices have no memory stats
        pass
    out = {"remat": remat, "step_s": seconds, "tokens_per_s": batch * len(devs) * seq / seconds,
           "loss": float(m["loss"]), "init_s": init_s, "compile_s": compile_s, "xla_memory_gib": memory,
           "trainable_params": lora_lib.count_params(trainable), "peak_gib": peak and peak / 2**30}
    if prof:
        out["profile"] = prof
    del state, trainable, opt_state, data, step_fn
    gc.collect()
    return out


# ----------------------------------------------------------------------------------------------------
# HF transformers + PEFT
# ----------------------------------------------------------------------------------------------------

def hf_lora_targets() -> str:
    """Our LoRA targets (training.lora.DEFAULT_TARGETS) as a PEFT full-match regex over HF module names, which
    differ by transformers version (`model.layers.*` or `model.language_model.layers.*`; the audio tower's own
    `layers.*` must not match)."""
    return (r"(?:.*\.)?(?:language_model|model)\.layers\.\d+\.(?:self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)"
            r"|(?:.*\.)?visual\.merger\.mlp\.[02]|(?:.*\.)?audio_tower\.proj")


def bench_hf(cfg, *, batch: int, seq: int, steps: int, warmup: int, checkpointing: bool, lora_rank: int,
             loss_window: int | None = None) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

    from omnirrm_jax.models.config import to_hf_dict

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    hf_cfg = Qwen2_5OmniThinkerConfig(**{k: v for k, v in to_hf_dict(cfg).items() if k != "architectures"})
    hf_cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16 if cfg.param_dtype == "bfloat16" else torch.float32)
    t0 = time.perf_counter()
    with torch.device(dev):
        model = Qwen2_5OmniThinkerForConditionalGeneration(hf_cfg)
    torch.set_default_dtype(torch.float32)
    model = get_peft_model(model, LoraConfig(r=lora_rank, lora_alpha=4 * lora_rank, lora_dropout=0.0,
                                             target_modules=hf_lora_targets()))
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    init_s = time.perf_counter() - t0
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.1, fused=dev == "cuda")
    ids = torch.tensor(np.random.default_rng(0).integers(1, min(cfg.text.vocab_size - 20, 20000), (batch, seq)),
                       device=dev)
    labels = ids.clone()
    if loss_window:
        labels[:, :seq - loss_window] = -100  # ignored, as the prompt is in the reference's SFT (logits still computed)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step():
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(warmup):
        loss = step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync()
    seconds = (time.perf_counter() - t0) / steps
    out = {"checkpointing": checkpointing, "batch": batch, "step_s": seconds, "tokens_per_s": batch * seq / seconds,
           "loss": float(loss), "init_s": init_s, "trainable_params": sum(p.numel() for p in params),
           "attn": model.config._attn_implementation,
           "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else None}
    model = opt = params = ids = labels = None  # free the card (`step` closes over them)
    return out


def _release_torch_memory() -> None:
    """Frees what a finished (or failed: out of memory) HF run held, before the next run needs the card."""
    gc.collect()
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="omnirrm bench sft", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="omni_3b")
    p.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 3072; 64 with --small)")
    p.add_argument("--batch", type=int, default=1, help="sequences per device and step")
    p.add_argument("--steps", type=int, default=8, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps (the first compiles)")
    p.add_argument("--remat", default="none,dots", help="our remat policies to time (comma-separated)")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--loss-window", type=int, default=None, metavar="N",
                   help="only each row's last N tokens are targets (a judgement after a prompt); ours runs the head "
                        "on those alone (data.pipeline.max_target_length), HF masks the rest of its labels")
    p.add_argument("--no-hf", action="store_true", help="skip the transformers + PEFT baseline")
    p.add_argument("--small", action="store_true", help="tiny dims, fp32, short sequence: a CPU smoke test")
    p.add_argument("--mesh", default="data=-1", help="our mesh, e.g. data=2 or fsdp=2 or data=1,fsdp=-1")
    p.add_argument("--devices", type=int, default=None, help="use only the first N local devices")
    p.add_argument("--json", default=None, help="also write the result here")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="trace two extra steps of ours per remat policy into DIR/<remat> and print the top kernels")
    args = p.parse_args(argv)
    mesh_axes = {}
    for part in args.mesh.split(","):
        k, _, v = part.partition("=")
        if k.strip() not in ("data", "fsdp", "tensor") or not v.strip().lstrip("-").isdigit():
            p.error(f"--mesh {args.mesh!r}: {part!r} is not data|fsdp|tensor=INT")
        mesh_axes[k.strip()] = int(v)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # HF shares the card; JAX allocates on demand
    # ...up to 95 % of the card, not JAX's default 75 %: the 7B step at 6144 tokens (49.7 GiB peak) ran out of
    # memory under that cap on an 80 GB H100
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")

    from omnirrm_jax.models import config as C
    from omnirrm_jax.training.metrics import peak_flops_per_device

    if args.small:
        cfg, seq = C.tiny(dtype="float32", param_dtype="float32"), args.seq or 64
    else:
        cfg, seq = C.PRESETS[args.preset](dtype="bfloat16", param_dtype="bfloat16"), args.seq or 3072
    if args.loss_window is not None and not 0 < args.loss_window < seq:
        p.error(f"--loss-window {args.loss_window} must lie in [1, {seq - 1}] (sequence {seq})")
    run = dict(batch=args.batch, seq=seq, steps=args.steps, warmup=args.warmup, lora_rank=args.lora_rank,
               loss_window=args.loss_window)
    hf, hf_errors = [], []
    for c in () if args.no_hf else (False, True):
        # each setting on its own: one that runs out of memory (no checkpointing at a large batch) leaves the other
        try:
            hf.append(bench_hf(cfg, checkpointing=c, **run))
            print(f"hf: {json.dumps(hf[-1])}", flush=True)  # rows as they finish: a cut-off run keeps them
        except Exception as e:  # noqa: BLE001 - a missing/broken baseline must not hide our numbers
            hf_errors.append(f"checkpointing={c}: {type(e).__name__}: {str(e)[:300]}")
            print(f"HF baseline failed: {hf_errors[-1]}", flush=True)
        _release_torch_memory()
    hf_error = "; ".join(hf_errors) or None

    import jax

    ours = []
    for r in args.remat.split(","):
        ours.append(bench_ours(cfg, remat=r, mesh_axes=mesh_axes, devices=args.devices,
                               profile_dir=args.profile and os.path.join(args.profile, r), **run))
        if len(ours) > 1:  # JAX's peak is the process's high-water mark, which cannot be reset: the first policy's
            ours[-1]["peak_gib"] = None  # alone is this policy's own (xla_memory_gib is per program)
        print(f"ours: {json.dumps({k: v for k, v in ours[-1].items() if k != 'profile'})}", flush=True)
    fpt, peak = flops_per_token(cfg, seq, loss_window=args.loss_window), peak_flops_per_device()
    n_dev = args.devices or jax.device_count()
    for row in hf + ours:
        per_device = row["tokens_per_s"] / (n_dev if "remat" in row else 1)
        row["mfu"] = per_device * fpt / peak if peak else None
    best_ours = max(ours, key=lambda r: r["tokens_per_s"])
    best_hf = max(hf, key=lambda r: r["tokens_per_s"]) if hf else None
    versions = {}
    for name in ("jax", "flax", "torch", "transformers", "peft"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    result = {"bench": "sft", "device": jax.devices()[0].device_kind, "devices": n_dev,
              "mesh": mesh_axes, "preset": "small" if args.small else args.preset, "seq": seq,
              "batch_per_device": args.batch, "lora_rank": args.lora_rank, "loss_window": args.loss_window,
              "flops_per_token": fpt, "peak_flops_per_device": peak,
              "versions": versions, "ours": ours, "hf": hf, "hf_error": hf_error,
              "ours_best_tokens_per_s": best_ours["tokens_per_s"],
              "ours_best_mfu": best_ours["mfu"],
              # over the HF settings that ran (hf_error names any that failed, e.g. out of memory)
              "hf_best_tokens_per_s": best_hf and best_hf["tokens_per_s"],
              "speedup_vs_hf_best": best_hf and best_ours["tokens_per_s"] / (best_hf["tokens_per_s"] * n_dev)}
    print(json.dumps({**result, "ours": [{k: v for k, v in r.items() if k != "profile"} for r in ours]}), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0
