"""PEFT / ms-swift LoRA adapter directories (`adapter_config.json` + `adapter_model.safetensors`).

An adapter is applied either merged into the base kernels (inference, export) or kept as LoRA branches
(`nnx.LoRAParam`) on our `Linear` layers (continued training). Adapter tensor names are normalised from
every layout seen in practice: PEFT's `base_model.model.` prefix, ms-swift's full-model `thinker.` prefix,
transformers v5 in-memory names (`model.language_model.*`) and PEFT's adapter-name infix (`.default`).
"""

from __future__ import annotations

import json
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from omnirrm_jax.errors import UserError
from omnirrm_jax.models import fresh_dir, hf_map
from omnirrm_jax.models import layers as L

_PEFT_PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[A-Za-z0-9_]+)?\.weight$")


class AdapterError(UserError):
    """An adapter directory that cannot be applied; the message names the file and tensor."""


def read_adapter(path: str) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """{checkpoint module name: (A (r,in), B (out,r), scale)}, the scale as PEFT computes it for that module."""
    from safetensors import safe_open

    cfg_file = os.path.join(path, "adapter_config.json")
    weights = os.path.join(path, "adapter_model.safetensors")
    for f in (cfg_file, weights):
        if not os.path.exists(f):
            raise AdapterError(f"LoRA adapter directory {path} lacks {os.path.basename(f)}")
    with open(cfg_file) as f:
        acfg = json.load(f)
    for flag in ("use_dora",):
        if acfg.get(flag):
            raise AdapterError(f"{cfg_file}: {flag}=true is not supported")
    pairs: dict[str, dict[str, np.ndarray]] = {}
    aliases: dict[str, set[str]] = {}  # every name the module goes by, for alpha_pattern's suffix match
    with safe_open(weights, framework="flax") as f:
        for key in f.keys():
            m = _LORA_KEY.match(key)
            if not m:
                raise AdapterError(f"{weights}: tensor {key} is not a LoRA A/B weight "
                                   "(modules_to_save / bias adapters are not supported)")
            raw = m["module"]
            if raw.startswith(_PEFT_PREFIX):
                raw = raw[len(_PEFT_PREFIX):]
            name = hf_map.checkpoint_name(raw)
            if name is None:
                raise AdapterError(f"{weights}: tensor {key} targets the talker / token2wav, not the thinker")
            pairs.setdefault(name, {})[m["ab"]] = np.asarray(f.get_tensor(key), np.float32)
            aliases.setdefault(name, {name, hf_map.checkpoint_to_v5(name)}).add(raw)
    out = {}
    for name, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise AdapterError(f"{weights}: module {name} has lora_{''.join(ab)} but not both A and B")
        out[name] = (ab["A"], ab["B"], _scale(acfg, aliases[name], ab["A"].shape[0]))
    return out


def _scale(acfg: dict, names: set[str], rank: int) -> float:
    """PEFT's scale: the first `alpha_pattern` key that equals a name of the module or matches its end as a regex
    (peft's `get_pattern_key`), else `lora_alpha`; over r, or over sqrt(r) with rsLoRA."""
    alpha = acfg.get("lora_alpha", rank)
    for key, value in (acfg.get("alpha_pattern") or {}).items():
        if any(n == key or re.match(rf"(.*\.)?({key})$", n) for n in names):
            alpha = value
            break
    return alpha / math.sqrt(rank) if acfg.get("use_rslora") else alpha / rank


def _resolve(model: nnx.Module, name: str) -> L.Linear:
    obj = model
    for part in hf_map.hf_to_nnx_module(name).split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part, None)
        if obj is None:
            break
    if not isinstance(obj, L.Linear):
        raise AdapterError(f"adapter targets {name}, which is not a linear layer of the model")
    return obj


def load_adapter(model: nnx.Module, path: str, *, merge: bool = True) -> None:
    """Applies the adapter at `path` to `model` in place (merged into kernels, or as LoRA branches)."""
    for name, (a_rin, b_outr, scale) in sorted(read_adapter(path).items()):
        lin = _resolve(model, name)
        d_in, d_out = lin.kernel.shape
        rank = a_rin.shape[0]
        if a_rin.shape != (rank, d_in) or b_outr.shape != (d_out, rank):
            raise AdapterError(f"{path}: {name} lora_A {a_rin.shape} / lora_B {b_outr.shape} do not fit "
                               f"the layer's (out, in) = {(d_out, d_in)}")
        kernel = lin.kernel[...]
        if merge:
            delta = scale * (a_rin.T @ b_outr.T)
            dtype = lin.kernel.dtype
            lin.kernel.set_value(_map_shards(kernel, lambda k, idx: (np.asarray(k, np.float32) + delta[idx])
                                             .astype(dtype)))
        else:
            lin.add_lora(rank, 1.0, nnx.Rngs(0))
            a_sharding, b_sharding = _lora_shardings(kernel)
            lin.lora_a.set_value(_place(np.asarray(a_rin.T, lin.lora_a.dtype), a_sharding))
            lin.lora_b.set_value(_place(np.asarray(b_outr.T, lin.lora_b.dtype), b_sharding))
            lin.lora_scale = scale


def _lora_shardings(kernel) -> tuple:
    """Shardings of LoRA factors A (in, r) and B (r, out) beside a kernel (in, out): the kernel's split of `in`
    and `out`, the rank replicated (what the logical-axis table gives: LORA_RANK is never split). None (the
    default device, uncommitted) beside a kernel that is not on a mesh."""
    sharding = getattr(kernel, "sharding", None)
    if not isinstance(sharding, NamedSharding):
        return None, None
    spec = tuple(sharding.spec) + (None,) * (2 - len(sharding.spec))
    return (NamedSharding(sharding.mesh, PartitionSpec(spec[0], None)),
            NamedSharding(sharding.mesh, PartitionSpec(None, spec[1])))


def _place(value: np.ndarray, sharding) -> jax.Array:
    """A host array (the same on every process) placed with `sharding`: each process puts its own slices."""
    if sharding is None:
        return jnp.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])


def _host(array: jax.Array) -> np.ndarray:
    """The whole (small) array on the host, gathered from the other processes where it spans them."""
    if array.is_fully_addressable:
        return np.asarray(array)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def _map_shards(array: jax.Array, fn) -> jax.Array:
    """`fn(shard as numpy, its global index)` for every shard this process holds, in place of the array's
    values, same sharding: host numpy math on an array that may span other processes' devices."""
    if array.is_fully_addressable and not array.committed:
        return jnp.asarray(fn(np.asarray(array), (slice(None),) * array.ndim))
    shards = [jax.device_put(fn(np.asarray(s.data), s.index), s.device) for s in array.addressable_shards]
    return jax.make_array_from_single_device_arrays(array.shape, array.sharding, shards)


def merge_lora(model: nnx.Module) -> None:
    """Folds every LoRA branch into its kernel and removes the branch (before export)."""
    for _, lin in nnx.iter_graph(model):
        if isinstance(lin, L.Linear) and lin.lora_a is not None:
            delta = (_host(lin.lora_a[...]).astype(np.float32) @ _host(lin.lora_b[...]).astype(np.float32))
            scale, dtype = lin.lora_scale, lin.kernel.dtype
            lin.kernel.set_value(_map_shards(lin.kernel[...], lambda k, idx: (np.asarray(k, np.float32)
                                                                              + scale * delta[idx]).astype(dtype)))
            lin.lora_a, lin.lora_b, lin.lora_scale = nnx.data(None), nnx.data(None), 0.0


def save_adapter(model: nnx.Module, path: str) -> list[str]:
    """Writes the model's LoRA branches as a PEFT adapter dir (`adapter_config.json` + `adapter_model.safetensors`)
    that `peft.PeftModel.from_pretrained(<HF thinker>, path)` and `load_adapter` both read; returns the module names.

    One rank and one scale for all branches (what `training.lora.apply_lora` makes); anything else is an error
    rather than an adapter that PEFT would rescale differently."""
    from safetensors.numpy import save_file

    tensors, modules, ranks, scales = {}, [], set(), set()
    for path_, lin in nnx.iter_graph(model):
        if not isinstance(lin, L.Linear) or lin.lora_a is None:
            continue
        # PEFT matches adapter keys and target modules against transformers-v5 in-memory names: an adapter
        # written with checkpoint names would not attach to a v5 model
        peft_name = hf_map.checkpoint_to_v5(hf_map.nnx_to_hf_module(".".join(map(str, path_))))
        a_inr, b_rout = np.asarray(lin.lora_a[...], np.float32), np.asarray(lin.lora_b[...], np.float32)
        tensors[f"{_PEFT_PREFIX}{peft_name}.lora_A.weight"] = np.ascontiguousarray(a_inr.T)
        tensors[f"{_PEFT_PREFIX}{peft_name}.lora_B.weight"] = np.ascontiguousarray(b_rout.T)
        modules.append(peft_name)
        ranks.add(a_inr.shape[1])
        scales.add(float(lin.lora_scale))
    if not modules:
        raise AdapterError("the model has no LoRA branches to save (a full fine-tuning run has no adapter)")
    if len(ranks) > 1 or len(scales) > 1:
        raise AdapterError(f"LoRA branches with several ranks {sorted(ranks)} / scales {sorted(scales)}: "
                           "one adapter_config.json cannot describe them; export the merged model instead")
    rank, scale = ranks.pop(), scales.pop()
    config = {"peft_type": "LORA", "task_type": None, "base_model_name_or_path": None, "r": rank,
              "lora_alpha": scale * rank, "lora_dropout": 0.0, "bias": "none", "use_rslora": False,
              "use_dora": False, "fan_in_fan_out": False, "init_lora_weights": True,
              "target_modules": sorted(modules), "modules_to_save": None, "inference_mode": True}
    with fresh_dir.replacing(path) as tmp:  # nothing of an older adapter at `path` survives
        save_file(tensors, os.path.join(tmp, "adapter_model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(tmp, "adapter_config.json"), "w") as f:
            json.dump(config, f, indent=2)
    return sorted(modules)
