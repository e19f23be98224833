"""Hugging Face safetensors <-> NNX parameters, in both directions, by one declarative mapping.

Our module tree mirrors the checkpoint names (`model.layers.3.self_attn.q_proj` is the NNX path
`model/layers/3/self_attn/q_proj`), so the mapping is: leaf rename (`weight` -> `kernel` | `scale` |
`embedding`), a short table of path renames, and a layout transform chosen by the leaf and the tensor
rank. Loading is strict: a missing, unexpected or mis-shaped tensor is an error that names it.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from omnirrm_jax.models import config as config_lib

# Checkpoint path <-> NNX path renames (regex on the dotted name, applied in order).
_HF_TO_NNX = [(re.compile(r"\.mlp\.(\d+)\."), r".mlp_\1.")]
_NNX_TO_HF = [(re.compile(r"\.mlp_(\d+)\."), r".mlp.\1.")]
# Checkpoint prefixes of the full Qwen2.5-Omni model that the thinker does not use.
IGNORED_PREFIXES = ("talker.", "token2wav.")
_LEAF_TO_HF = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model: lists every offending tensor with both shapes."""


def base_params_filter():
    """Parameters that come from a base checkpoint (everything but LoRA factors)."""
    return nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))


def _path_str(path: Iterable[Any]) -> str:
    return ".".join(str(p) for p in path)


def nnx_path_to_hf(path: tuple) -> str:
    """('model', 'layers', 0, 'mlp', 'up_proj', 'kernel') -> 'model.layers.0.mlp.up_proj.weight'."""
    *module, leaf = (str(p) for p in path)
    name = ".".join(module) + "." + _LEAF_TO_HF[leaf]
    for pat, repl in _NNX_TO_HF:
        name = pat.sub(repl, name)
    return name


def hf_to_torch_layout(leaf: str, value: np.ndarray, hf_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """NNX value -> the tensor layout torch stores (Linear (in,out)->(out,in); Conv1d (k,in,out)->(out,in,k))."""
    if leaf != "kernel":
        return value
    if value.ndim == 3:
        return np.transpose(value, (2, 1, 0))
    out = value.T
    return out.reshape(hf_shape) if hf_shape is not None else out


def torch_to_nnx_layout(leaf: str, tensor: np.ndarray) -> np.ndarray:
    """Checkpoint tensor -> NNX layout. Conv3d patch weights (D, C, T, p, p) flatten to a (C*T*p*p, D) kernel."""
    if leaf != "kernel":
        return tensor
    if tensor.ndim == 3:
        return np.transpose(tensor, (2, 1, 0))
    return tensor.reshape(tensor.shape[0], -1).T


def normalize_hf_name(name: str) -> str | None:
    """Strips the `thinker.` prefix of full-model checkpoints; None for tensors the thinker ignores."""
    if name.startswith(IGNORED_PREFIXES):
        return None
    if name.startswith("thinker."):
        name = name[len("thinker."):]
    for pat, repl in _HF_TO_NNX:
        name = pat.sub(repl, name)
    return name


def expected_hf_shapes(module: nnx.Module, prefix: str = "") -> dict[str, tuple[tuple, str, tuple]]:
    """{checkpoint name (NNX-renamed) -> (nnx path, leaf, nnx shape)} for every base parameter of `module`."""
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(module, base_params_filter())):
        name = prefix + _path_str(path[:-1]) + "." + _LEAF_TO_HF[str(path[-1])]
        out[name] = (path, str(path[-1]), tuple(var.shape))
    return out


def match_hf_tensors(module: nnx.Module, shapes: Mapping[str, tuple], *, prefix: str = "",
                     source: str = "checkpoint") -> dict[tuple, str]:
    """Matches checkpoint tensors to the base parameters of `module` by name and shape, strictly.

    Args:
      module: an NNX module (abstract or not) whose tree mirrors the checkpoint names.
      shapes: checkpoint name -> torch shape (names may carry `thinker.`; talker/token2wav names are ignored).
      prefix: names in `shapes` start with this (e.g. "visual."); other names are reported as unexpected.
      source: how to call the origin in error messages (a file or directory).
    Returns:
      {nnx path of a parameter: the checkpoint name (a key of `shapes`) that fills it}.
    Raises:
      CheckpointMismatchError naming every missing, unexpected and mis-shaped tensor.
    """
    expected = expected_hf_shapes(module)
    renamed: dict[str, str] = {}  # nnx-renamed name relative to prefix -> original key
    for name in shapes:
        n = normalize_hf_name(name)
        if n is None:
            continue
        renamed[n[len(prefix):] if n.startswith(prefix) else n] = name  # off-prefix: reported as unexpected
    missing = sorted(set(expected) - set(renamed))
    unexpected = sorted(set(renamed) - set(expected))
    problems = [f"missing tensor {prefix}{_hf_name(n)} (model expects shape {_torch_shape(*expected[n][1:])})"
                for n in missing]
    problems += [f"unexpected tensor {prefix}{_hf_name(n)} (shape {tuple(shapes[renamed[n]])})"
                 for n in unexpected]
    plan = {}
    for name in sorted(set(expected) & set(renamed)):
        path, leaf, shape = expected[name]
        stored = tuple(shapes[renamed[name]])
        if _converted_shape(leaf, stored) != shape:
            problems.append(f"tensor {prefix}{_hf_name(name)} has shape {stored}, "
                            f"model expects {_torch_shape(leaf, shape)}")
            continue
        plan[path] = renamed[name]
    if problems:
        raise CheckpointMismatchError(f"{source} does not match the model ({len(problems)} problem(s)):\n  "
                                      + "\n  ".join(problems))
    return plan


def assign_hf_tensors(module: nnx.Module, tensors: Mapping[str, Any], *, prefix: str = "",
                      source: str = "checkpoint") -> None:
    """Copies in-memory checkpoint tensors (torch names, relative to `prefix`) into `module`, strictly.

    Args:
      module: an NNX module whose tree mirrors the checkpoint names (e.g. the vision tower for `visual.*`).
      tensors: name -> array (numpy, jax or anything `np.asarray` takes).
      prefix, source: as in `match_hf_tensors`.
    Raises:
      CheckpointMismatchError naming every missing, unexpected and mis-shaped tensor.
    """
    plan = match_hf_tensors(module, {k: tuple(np.shape(v)) for k, v in tensors.items()}, prefix=prefix,
                            source=source)
    state = nnx.state(module, base_params_filter())
    flat = dict(nnx.to_flat_state(state))
    for path, name in plan.items():
        var = flat[path]
        value = _to_nnx(path[-1], tensors[name], var.dtype)
        var.set_value(value) if hasattr(var, "set_value") else setattr(var, "value", value)
    nnx.update(module, state)


def _hf_name(nnx_renamed: str) -> str:
    for pat, repl in _NNX_TO_HF:
        nnx_renamed = pat.sub(repl, nnx_renamed)
    return nnx_renamed


def _converted_shape(leaf: str, shape: tuple) -> tuple:
    if leaf != "kernel":
        return shape
    if len(shape) == 3:
        return (shape[2], shape[1], shape[0])
    return (int(np.prod(shape[1:])), shape[0])


def _torch_shape(leaf: str, nnx_shape: tuple) -> tuple:
    if leaf != "kernel":
        return nnx_shape
    return tuple(reversed(nnx_shape))


def _to_nnx(leaf: str, arr: Any, dtype) -> jax.Array:
    if isinstance(arr, jax.Array) and leaf != "kernel":
        return arr.astype(dtype)
    if isinstance(arr, jax.Array):
        if arr.ndim == 3:
            return jnp.transpose(arr, (2, 1, 0)).astype(dtype)
        return arr.reshape(arr.shape[0], -1).T.astype(dtype)
    return jnp.asarray(torch_to_nnx_layout(leaf, np.asarray(arr)), dtype=dtype)


def module_to_hf_tensors(module: nnx.Module, *, prefix: str = "",
                         hf_shapes: Mapping[str, tuple] | None = None) -> dict[str, jax.Array]:
    """The inverse of `assign_hf_tensors`: {checkpoint name: tensor in torch layout} (values keep their dtype).

    `hf_shapes` gives the torch shape for tensors whose layout is not determined by the NNX one
    (the Conv3d patch embedding).
    """
    hf_shapes = hf_shapes or {}
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(module, base_params_filter())):
        name = prefix + nnx_path_to_hf(path)
        value = var[...]
        leaf = str(path[-1])
        if leaf == "kernel":
            value = jnp.transpose(value, (2, 1, 0)) if value.ndim == 3 else value.T
            if name in hf_shapes:
                value = value.reshape(hf_shapes[name])
        out[name] = value
    return out


# ----------------------------------------------------------------------------------------------------
# Checkpoint directories
# ----------------------------------------------------------------------------------------------------

# transformers v5 in-memory names (also found in adapters saved from v5 models) -> checkpoint names.
_V5_RENAMES = (("model.language_model.", "model."), ("model.visual.", "visual."),
               ("model.audio_tower.", "audio_tower."))


def _v5_to_checkpoint(name: str) -> str:
    for old, new in _V5_RENAMES:
        if name.startswith(old):
            return new + name[len(old):]
    return name


def read_safetensors_dir(path: str) -> dict[str, jax.Array]:
    """All tensors of a (possibly sharded) safetensors directory, bf16 included (read through JAX)."""
    from safetensors import safe_open

    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors") and not f.startswith("adapter"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {path}")
    out = {}
    for fname in files:
        full = os.path.join(path, fname)
        if not os.path.exists(full):
            raise FileNotFoundError(f"{index} lists {fname}, which is missing from {path}")
        with safe_open(full, framework="flax") as f:
            for k in f.keys():
                out[_v5_to_checkpoint(k) if not k.startswith("thinker.") else k] = f.get_tensor(k)
    return out


def read_config(path: str, **runtime: Any) -> config_lib.ThinkerConfig:
    cfg_file = os.path.join(path, "config.json")
    if not os.path.exists(cfg_file):
        raise FileNotFoundError(f"{path} has no config.json")
    with open(cfg_file) as f:
        try:
            return config_lib.from_hf_dict(json.load(f), **runtime)
        except (KeyError, ValueError) as e:
            raise ValueError(f"{cfg_file}: {e}") from e


def abstract_thinker(cfg: config_lib.ThinkerConfig):
    """The model's structure with no memory allocated (filled by the loader)."""
    from omnirrm_jax.models.thinker import Thinker

    return nnx.eval_shape(lambda: Thinker(cfg, rngs=nnx.Rngs(0)))


def load_hf(path: str, dtype: str = "float32", lora_path: str | None = None, *, merge_lora: bool = True,
            compute_dtype: str | None = None, attention_backend: str = "auto", remat: str = "none",
            shardings=None):
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
    from omnirrm_jax.models import loading

    cfg = read_config(path, param_dtype=dtype, dtype=compute_dtype or dtype, attention_backend=attention_backend,
                      remat=remat)
    model = loading.load_hf_sharded(path, abstract_thinker(cfg), shardings)
    if lora_path is not None:
        from omnirrm_jax.models import lora_io

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
    HF -> NNX -> HF is bit-exact.
    """
    from safetensors.flax import save_file

    cfg = model.config
    os.makedirs(path, exist_ok=True)
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
