"""What a training run checks before it writes anything: the paths its config names are there, its workdir is new
or holds checkpoints of the same trainer, and its batch splits over the mesh.

Why before: a run used to create its workdir, open its metric files and restore a checkpoint before a mistyped path
or a workdir of the other trainer stopped it with a traceback (`omnirrm grpo` on an SFT workdir: `KeyError:
'rollout'`, after writing into that workdir). Each problem is a `UserError` naming the config key and what to do.
"""

from __future__ import annotations

import glob
import math
import os

from omnirrm_jax.checkpoint.manager import read_meta
from omnirrm_jax.errors import MissingPathError, UserError
from omnirrm_jax.parallel.sharding import batch_sharding, describe

TOKENIZER = "a SentencePiece .model file or an HF checkpoint / tokenizer folder"


def check_run(cfg, trainer: str) -> None:
    """Refuses (UserError) a run config whose inputs are missing here or whose workdir is another trainer's."""
    check_paths(cfg)
    check_workdir(cfg.run.workdir, trainer, accumulation=accumulation(cfg, trainer))


def accumulation(cfg, trainer: str) -> str | None:
    """How the run accumulates gradients, as its checkpoints' meta records it (each kind has its own optimizer-state
    structure): "token_mean" for SFT with `optim.grad_accum_steps` > 1 (`optim.token_mean_accumulation`),
    "micro_step_mean" for GRPO's (optax.MultiSteps), None without accumulation."""
    if cfg.optim.grad_accum_steps <= 1:
        return None
    return "token_mean" if trainer == "sft" else "micro_step_mean"


ACCUMULATION_NAMES = {None: "no accumulation", "token_mean": "the window's token mean (SFT)",
                      "micro_step_mean": "the mean of the micro-steps' gradients"}


def check_paths(cfg) -> None:
    data, model = cfg.data, cfg.model
    if not data.train:
        raise UserError("data.train is empty: list the ArrayRecord shards (paths or globs) that `omnirrm prep` wrote")
    for key, patterns in (("data.train", data.train), ("data.eval", data.eval)):
        for pattern in patterns:
            if not glob.glob(pattern):
                raise MissingPathError(f"{key}: no files match {pattern!r}; give the shards `omnirrm prep` wrote "
                                       "(a path or a glob)")
    if not data.tokenizer:
        raise UserError(f"data.tokenizer is required: {TOKENIZER}")
    if not os.path.exists(data.tokenizer):
        raise MissingPathError(f"data.tokenizer: {data.tokenizer} does not exist ({TOKENIZER})")
    if model.hf_path and not os.path.isfile(os.path.join(model.hf_path, "config.json")):
        raise MissingPathError(f"model.hf_path: {model.hf_path} is not an HF checkpoint folder (no config.json)")
    if model.lora_path and not os.path.isdir(model.lora_path):
        raise MissingPathError(f"model.lora_path: {model.lora_path} is not a folder (a PEFT / ms-swift adapter)")


def check_workdir(workdir: str, trainer: str, accumulation: str | None = None) -> None:
    """The workdir is new, or its newest checkpoint was written by `trainer` (a resume) with the same kind of
    gradient accumulation (`accumulation`). Reads only."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"run.workdir: {workdir} exists and is not a folder")
    found = read_meta(os.path.join(workdir, "checkpoints"))
    if found is None:
        return
    step, meta = found
    other = meta.get("trainer", "sft")  # SFT checkpoints carried no "trainer" before
    if other == trainer:
        # checkpoints written before the meta said it: SFT and GRPO both averaged the micro-steps' gradients
        saved_accum = ((meta.get("config") or {}).get("optim") or {}).get("grad_accum_steps", 1)
        saved = meta["accumulation"] if "accumulation" in meta else \
            (None if saved_accum <= 1 else "micro_step_mean")
        if saved != accumulation:
            raise UserError(
                f"run.workdir: {workdir} step {step} accumulated gradients by {ACCUMULATION_NAMES.get(saved, saved)}, "
                f"this run by {ACCUMULATION_NAMES.get(accumulation, accumulation)} (optim.grad_accum_steps; SFT "
                "checkpoints written before SFT took the window's token mean averaged the micro-steps): the optimizer "
                "states differ. Resume with the settings and version that wrote it, or give this run a new run.workdir")
        return
    hint = (f"; to start GRPO from that model, export it (`omnirrm export {workdir} OUT --formats hf`) and set "
            "model.hf_path=OUT/hf" if trainer == "grpo" else "")
    raise UserError(f"run.workdir: {workdir} holds checkpoints of an `omnirrm {other}` run (step {step}), not "
                    f"`omnirrm {trainer}`; give this run a new run.workdir{hint}")


def check_batch(batch_size: int, mesh) -> None:
    """The global batch splits evenly over the mesh's data-parallel devices (else JAX fails on the first batch)."""
    spec = batch_sharding(mesh, 1).spec[0]
    axes = () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)
    n = math.prod(mesh.shape[a] for a in axes)
    if batch_size % n:
        raise UserError(f"data.pipeline.batch_size {batch_size} does not split over the {n} data-parallel devices of "
                        f"mesh {describe(mesh)}: make it a multiple of {n} (or set mesh.data / mesh.fsdp smaller)")
