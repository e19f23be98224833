"""`omnirrm export`: a training workdir -> the formats a trained judge leaves the project in.

A training checkpoint (`omnirrm sft` / `omnirrm grpo`) holds only the trainable state - for LoRA runs just the LoRA
factors - plus, in its JSON meta, the resolved run config and the thinker config. The base is not stored: it is
rebuilt here exactly as the trainer built it (`training.state.build_model`: `model.hf_path` [+ `model.lora_path`],
or the preset initialised from `run.seed`), the trained values are restored over it, LoRA is merged in float32,
and the result is written as any of:

  orbax/    inference checkpoint in `models.convert` layout (config.json + params/), parameters only
  hf/       safetensors + config.json that transformers' Qwen2_5OmniThinkerForConditionalGeneration loads
  adapter/  (LoRA runs) the LoRA factors alone as a PEFT adapter, for `peft` or `--lora` on an HF base
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import jax
from flax import nnx

from omnirrm_jax.checkpoint.manager import abstract_like
from omnirrm_jax.errors import MissingPathError, UserError
from omnirrm_jax.models import config as model_config
from omnirrm_jax.models import convert, lora_io
from omnirrm_jax.models import params as P
from omnirrm_jax.training.config import ModelSpec
from omnirrm_jax.training.lora import LoraConfig
from omnirrm_jax.training.state import build_model, trainable_filter

FORMATS = ("orbax", "hf", "adapter")


@dataclasses.dataclass
class Trained:
    model: Any  # the Thinker with LoRA branches still separate (LoRA runs)
    step: int  # checkpoint step (micro-steps for SFT, rollouts for GRPO)
    meta: dict  # the checkpoint's JSON meta (config, thinker, micro_step, ...)
    full_finetune: bool


def _model_spec(raw: dict, where: str):
    try:
        spec = dict(raw["config"]["model"])
        spec["lora"] = LoraConfig(**spec.get("lora") or {})
        return ModelSpec(**spec), int(raw["config"]["run"]["seed"])
    except (KeyError, TypeError) as e:
        raise UserError(f"{where}: checkpoint meta has no usable config.model / config.run.seed ({e!r}); "
                         "was it written by omnirrm sft or grpo?") from e


def load_trained(workdir: str, step: int | None = None, *, base_hf: str | None = None,
                 compute_dtype: str | None = None) -> Trained:
    """Rebuilds the trained thinker of a training workdir (LoRA unmerged).

    Args:
      workdir: the run's `run.workdir` (with `checkpoints/`).
      step: checkpoint step; default the newest finished one.
      base_hf: the base HF checkpoint dir, when the run's `model.hf_path` has moved.
      compute_dtype: the model's compute dtype (default: the run's model.dtype); parameters keep the run's.
    """
    import orbax.checkpoint as ocp

    ckdir = os.path.abspath(os.path.join(workdir, "checkpoints"))
    if not os.path.isdir(workdir):
        raise MissingPathError(f"workdir {workdir} does not exist (give the run.workdir of an omnirrm sft/grpo run)")
    if not os.path.isdir(ckdir):
        raise MissingPathError(f"{workdir} has no checkpoints/ directory: not the run.workdir of an omnirrm sft/grpo "
                               "run")
    mngr = ocp.CheckpointManager(ckdir)
    try:
        step = mngr.latest_step() if step is None else step
        if step is None or step not in mngr.all_steps():
            raise MissingPathError(f"{ckdir}: no finished checkpoint {'' if step is None else step} "
                                   f"(steps: {list(mngr.all_steps())})")
        where = f"{ckdir}/{step}"
        meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        spec, seed = _model_spec(meta, where)
        if "thinker" not in meta:
            raise UserError(f"{where}: checkpoint meta lacks the thinker config")
        hf_path = base_hf or spec.hf_path
        if hf_path and not os.path.isdir(hf_path):
            raise MissingPathError(f"{where}: the run's base model.hf_path {hf_path} is not there; "
                                   "pass the base checkpoint directory (--base-hf)")
        cfg = model_config.from_hf_dict(meta["thinker"], dtype=compute_dtype or spec.dtype,
                                        param_dtype=spec.param_dtype, attention_backend=spec.attention_backend)
        model = build_model(cfg, hf_path=hf_path, lora_cfg=None if spec.full_finetune else spec.lora,
                            lora_path=spec.lora_path, seed=seed)
        graphdef, trainable, rest = nnx.split(model, trainable_filter(spec.full_finetune), ...)
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = {"trainable": abstract_like(trainable, jax.tree.map(lambda _: device, trainable))}
        try:
            restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
                item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=True)))["state"]
        except (ValueError, KeyError) as e:
            raise UserError(f"{where}: the stored trainable state does not fit the model rebuilt from its "
                             f"config: {e}") from e
    finally:
        mngr.close()
    model = nnx.merge(graphdef, restored["trainable"], rest)
    return Trained(model, step, dict(meta), spec.full_finetune)


def merged(trained: Trained, dtype: str | None = None):
    """The inference model: LoRA folded into the kernels (float32 arithmetic), parameters cast to `dtype`."""
    model = nnx.merge(*nnx.split(trained.model))  # a copy: the caller's LoRA branches stay intact
    lora_io.merge_lora(model)
    if dtype is not None:
        model, _ = convert.cast_params(model, dtype)
    return model


def export(workdir: str, out: str, *, formats: Sequence[str] = ("orbax", "hf"), dtype: str | None = None,
           step: int | None = None, base_hf: str | None = None) -> dict[str, str]:
    """Writes the requested formats under `out/<format>/`; returns {format: directory}.

    `dtype` (float32, bfloat16, ...) applies to the merged parameters; default: the training param_dtype."""
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UserError(f"unknown export format(s) {bad or formats}; choose from {', '.join(FORMATS)}")
    trained = load_trained(workdir, step, base_hf=base_hf)
    if "adapter" in formats and trained.full_finetune:
        raise UserError(f"{workdir} is a full fine-tuning run: there is no LoRA adapter to export "
                         "(export orbax or hf)")
    written = {}
    if "adapter" in formats:
        written["adapter"] = os.path.join(out, "adapter")
        lora_io.save_adapter(trained.model, written["adapter"])
    if {"orbax", "hf"} & set(formats):
        model = merged(trained, dtype)
        if "orbax" in formats:
            written["orbax"] = os.path.join(out, "orbax")
            convert.save_orbax(model, written["orbax"])
        if "hf" in formats:
            written["hf"] = os.path.join(out, "hf")
            P.save_hf(model, written["hf"])
    return written


def run(workdir: str, out: str, *, formats: str = "orbax,hf", dtype: str | None = None, step: int | None = None,
        base_hf: str | None = None) -> int:
    written = export(workdir, out, formats=[f.strip() for f in formats.split(",") if f.strip()], dtype=dtype,
                     step=step, base_hf=base_hf)
    for fmt, path in written.items():
        print(f"wrote {fmt}: {path}")
    return 0
