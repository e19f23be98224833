"""Hugging Face safetensors <-> NNX thinker: loading (`load_hf`), in-memory tensors both ways, export (`save_hf`).

Names and layouts come from the one table in `hf_map.py`; reading checkpoint files (sharded or not, into any
sharding) is `loading.py`; PEFT adapters are `lora_io.py`. Loading is strict: a missing, unexpected or mis-shaped
tensor is an error that names it.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.flax import save_file

from omnirrm_jax.errors import MissingPathError, UserError
from omnirrm_jax.models import config as config_lib
from omnirrm_jax.models import abstract, fresh_dir, hf_map, loading, lora_io

# The loaders' error and parameter filter, where callers have always found them.
from omnirrm_jax.models.hf_map import CheckpointMismatchError, base_params_filter  # noqa: F401
from omnirrm_jax.models.thinker import Thinker


def assign_hf_tensors(module: nnx.Module, tensors: Mapping[str, Any], *, prefix: str = "",
                      source: str = "checkpoint") -> None:
    """Copies in-memory checkpoint tensors (torch names, relative to `prefix`) into `module`, strictly.

    Args:
      module: an NNX module whose tree mirrors the checkpoint names (e.g. the vision tower for `visual.*`).
      tensors: name -> array (numpy, jax or anything `np.asarray` takes).
      prefix, source: as in `hf_map.match_hf_tensors`.
    Raises:
      CheckpointMismatchError naming every missing, unexpected and mis-shaped tensor.
    """
    plan = hf_map.match_hf_tensors(module, {k: tuple(np.shape(v)) for k, v in tensors.items()}, prefix=prefix,
                                   source=source)
    state = nnx.state(module, base_params_filter())
    flat = dict(nnx.to_flat_state(state))
    for path, name in plan.items():
        var, arr, leaf = flat[path], tensors[name], str(path[-1])
        if isinstance(arr, jax.Array):
            value = hf_map.from_torch_layout(leaf, arr).astype(var.dtype)
        else:
            value = jnp.asarray(hf_map.from_torch_layout(leaf, np.asarray(arr)), dtype=var.dtype)
        var.set_value(value)
    nnx.update(module, state)


def module_to_hf_tensors(module: nnx.Module, *, prefix: str = "",
                         hf_shapes: Mapping[str, tuple] | None = None) -> dict[str, jax.Array]:
    """The inverse of `assign_hf_tensors`: {checkpoint name: tensor in torch layout} (values keep their dtype).

    `hf_shapes` gives the torch shape for tensors whose layout is not determined by the NNX one
    (the Conv3d patch embedding).
    """
    hf_shapes = hf_shapes or {}
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(module, base_params_filter())):
        name = prefix + hf_map.nnx_path_to_hf(path)
        out[name] = hf_map.to_torch_layout(str(path[-1]), var[...], hf_shapes.get(name))
    return out


# ----------------------------------------------------------------------------------------------------
# Checkpoint directories
# ----------------------------------------------------------------------------------------------------

def read_safetensors_dir(path: str) -> dict[str, jax.Array]:
    """All tensors of a checkpoint directory, whole, on the default device (read through JAX; bf16 included).
    `load_hf` does not use it (it reads each parameter's slices into place); small tools and tests do."""
    out = {}
    for full in loading.weight_files(path):
        with safe_open(full, framework="flax") as f:
            for k in f.keys():
                out[k] = f.get_tensor(k)
    return out


def read_config(path: str, **runtime: Any) -> config_lib.ThinkerConfig:
    cfg_file = os.path.join(path, "config.json")
    if not os.path.exists(cfg_file):
        raise MissingPathError(f"{path} has no config.json: not an HF thinker checkpoint folder")
    with open(cfg_file) as f:
        try:
            return config_lib.from_hf_dict(json.load(f), **runtime)
        except (KeyError, ValueError) as e:
            raise UserError(f"{cfg_file}: not a Qwen2.5-Omni thinker config ({type(e).__name__}: {e})") from e


def abstract_thinker(cfg: config_lib.ThinkerConfig):
    """The model's structure with no memory allocated (filled by the loader)."""
    return abstract.eval_shape(lambda: Thinker(cfg, rngs=nnx.Rngs(0)))


def load_hf(path: str, dtype: str = "float32", lora_path: str | None = None, *, merge_lora: bool = True,
            compute_dtype: str | None = None, attention_backend: str = "auto", remat: str = "none",
            scan_layers: bool = False, shardings: loading.Shardings = None):
    """Loads an HF Qwen2.5-Omni (thinker) checkpoint directory into the NNX thinker.

    Args:
      path: directory with `config.json` and `*.safetensors` (sharded or not, `thinker.` prefix or not;
        talker/token2wav tensors are ignored).
      dtype: parameter dtype; the compute dtype defaults to it.
      lora_path: optional PEFT / ms-swift adapter directory.
      merge_lora: merge the adapter into the weights (True) or keep it as `nnx.LoRAParam` branches.
      shardings: where the base parameters go (`loading.Shardings`; None: the default device). Each process
        reads only the slices its devices hold.
    Returns:
      (model, config).
    """
    cfg = read_config(path, param_dtype=dtype, dtype=compute_dtype or dtype, attention_backend=attention_backend,
                      remat=remat, scan_layers=scan_layers)
    model = loading.load_hf_sharded(path, abstract_thinker(cfg), shardings)
    if lora_path is not None:
        lora_io.load_adapter(model, lora_path, merge=merge_lora)
    return model, cfg


def hf_tensor_shapes(cfg: config_lib.ThinkerConfig) -> dict[str, tuple]:
    """Torch shapes that the NNX layout does not determine (the Conv3d patch embedding)."""
    v = cfg.vision
    return {"visual.patch_embed.proj.weight": (v.hidden_size, v.in_channels, v.temporal_patch_size,
                                               v.patch_size, v.patch_size)}


def save_hf(model: nnx.Module, path: str, *, max_shard_bytes: int = 4 << 30) -> None:
    """Writes `config.json` + safetensors that transformers' thinker `from_pretrained` loads.

    Base parameters only (merge LoRA first to export a fine-tuned judge); values keep their dtype, so
    HF -> NNX -> HF is bit-exact. The folder is written whole and swapped in (`fresh_dir.replacing`): nothing of
    an older export at `path` survives.
    """
    with fresh_dir.replacing(path) as tmp:
        _write_hf(model, tmp, max_shard_bytes)


def _write_hf(model: nnx.Module, path: str, max_shard_bytes: int) -> None:
    cfg = model.config
    tensors = module_to_hf_tensors(model, hf_shapes=hf_tensor_shapes(cfg))
    shards, current, size = [], {}, 0
    for name in sorted(tensors):
        nbytes = tensors[name].size * tensors[name].dtype.itemsize
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = jnp.asarray(tensors[name])
        size += nbytes
    shards.append(current)
    if len(shards) == 1:
        save_file(shards[0], os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, os.path.join(path, fname), metadata={"format": "pt"})
            weight_map.update({k: fname for k in shard})
        total = sum(int(v.size * v.dtype.itemsize) for v in tensors.values())
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config_lib.to_hf_dict(cfg), f, indent=2)
