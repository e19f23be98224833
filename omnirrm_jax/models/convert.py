"""`omnirrm convert`: HF safetensors directory <-> Orbax parameter checkpoint.

The Orbax layout is `DIR/config.json` (the HF-style thinker config, so either format describes the
model the same way) and `DIR/params/` (an Orbax PyTree checkpoint of the base parameters, NNX paths).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
from flax import nnx

from omnirrm_jax.errors import MissingPathError, UserError
from omnirrm_jax.models import config as config_lib
from omnirrm_jax.models import fresh_dir
from omnirrm_jax.models import params as P


def save_orbax(model: nnx.Module, path: str) -> None:
    """Writes the base parameters (LoRA merged beforehand if wanted) and the config."""
    import orbax.checkpoint as ocp

    state = nnx.state(model, P.base_params_filter())
    with fresh_dir.replacing(path) as tmp:  # nothing of an older export at `path` survives
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(os.path.join(tmp, "params"), state, force=True)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config_lib.to_hf_dict(model.config), f, indent=2)


def stored_dtype(config: dict) -> str:
    """The dtype a config.json says its weights are stored in (v5 `dtype`, v4 `torch_dtype`, also under
    `thinker_config` of a full Qwen2.5-Omni config); float32 where it says nothing."""
    for d in (config, config.get("thinker_config") or {}):
        found = d.get("dtype") or d.get("torch_dtype")
        if isinstance(found, str):
            return found.removeprefix("torch.")
    return "float32"


def load_orbax(path: str, dtype: str | None = None, *, compute_dtype: str | None = None,
               attention_backend: str = "auto", shardings=None):
    """(model, config) from an Orbax directory written by `save_orbax` (restored in the stored dtype
    unless `dtype` is given).

    `shardings`: None (as stored, on this process's devices), or a state / mapping of NNX path -> Sharding
    covering the base parameters (`parallel.sharding.state_shardings` gives one): Orbax then reads straight
    into those shardings, each process only its own slices."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(path)
    if not os.path.isdir(os.path.join(path, "params")) or not os.path.isfile(os.path.join(path, "config.json")):
        raise MissingPathError(f"{path} is not an Orbax thinker folder (config.json + params/, written by `omnirrm "
                               "convert --to orbax` or `omnirrm export`)")
    with open(os.path.join(path, "config.json")) as f:
        raw = json.load(f)
    stored = stored_dtype(raw)
    dtype = dtype or stored
    cfg = config_lib.from_hf_dict(raw, param_dtype=stored, dtype=compute_dtype or dtype,
                                  attention_backend=attention_backend)
    abstract = P.abstract_thinker(cfg)
    graphdef, target, rest = nnx.split(abstract, P.base_params_filter(), ...)
    if shardings is not None:
        flat = dict(nnx.to_flat_state(shardings)) if isinstance(shardings, nnx.State) else dict(shardings)
        target = nnx.map_state(lambda p, v: v.replace(jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=_get(flat[p]))),
                               target)
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(os.path.join(path, "params"), target)
    model = nnx.merge(graphdef, restored, rest)
    if dtype != stored:
        model, cfg = cast_params(model, dtype)
    return model, cfg


def _get(s):
    return s.get_value() if isinstance(s, nnx.Variable) else s


def cast_params(model: nnx.Module, dtype: str):
    """Casts base parameters to `dtype` and records it as the model's parameter dtype."""
    import dataclasses

    cfg = dataclasses.replace(model.config, param_dtype=dtype)
    state = nnx.state(model, P.base_params_filter())
    state = jax.tree.map(lambda x: x.astype(jnp.dtype(dtype)), state)
    nnx.update(model, state)
    model.config = cfg
    return model, cfg


def run(src: str, dst: str, *, to: str, dtype: str | None = None, lora_path: str | None = None) -> None:
    """`omnirrm convert`: `src` (HF folder for --to orbax, Orbax folder for --to hf) written to `dst`, in `dtype`
    (None: the dtype `src` is stored in)."""
    if to not in ("orbax", "hf"):
        raise UserError(f"unknown target format {to!r} (orbax or hf)")
    if not os.path.isdir(src):
        raise MissingPathError(f"{src} is not a folder")
    if os.path.isdir(os.path.join(src, "checkpoints")) and not os.path.isfile(os.path.join(src, "config.json")):
        raise UserError(f"{src} is a training workdir; write its checkpoint out with `omnirrm export {src} OUT`")
    is_orbax = os.path.isdir(os.path.join(src, "params"))
    if to == "orbax":
        if is_orbax:
            raise UserError(f"{src} is already an Orbax checkpoint; `--to hf` converts it to HF safetensors")
        if dtype is None and os.path.isfile(os.path.join(src, "config.json")):
            with open(os.path.join(src, "config.json")) as f:
                dtype = stored_dtype(json.load(f))
        model, _ = P.load_hf(src, dtype=dtype, lora_path=lora_path, merge_lora=True)
        save_orbax(model, dst)
    else:
        if lora_path:
            raise UserError("--lora applies to HF -> Orbax; merge it before exporting to HF")
        if not is_orbax and os.path.isfile(os.path.join(src, "config.json")):
            raise UserError(f"{src} is already an HF checkpoint; `--to orbax` converts it to Orbax")
        model, _ = load_orbax(src, dtype)
        P.save_hf(model, dst)
    print(f"wrote {to} checkpoint to {dst}")
