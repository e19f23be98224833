"""HF safetensors straight into (sharded) arrays: each process reads only the slices its own devices hold.

Why: building the whole model on one device and then `device_put`-ing it cannot start a 7B run on 16 GB
chips, and makes every host read the whole checkpoint. Here the model is abstract (`nnx.eval_shape`: its
values are `ShapeDtypeStruct`s) and every base parameter becomes
`jax.make_array_from_callback(shape, sharding, read)`, where `read(index)` maps the NNX slice to the torch
layout (Linear kernels are stored transposed, Conv1d kernels reversed) and reads only that slice of the
memory-mapped file (`safe_open(...).get_slice(name)[...]`). The small Conv3d patch embedding is stored in a
layout that slices do not map onto; it is read whole and sliced after.

The checkpoint is checked against the model from the safetensors headers alone (names, shapes), so a
missing, unexpected or mis-shaped tensor is reported before any data is read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Any, Callable, Mapping, Union

import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy: safetensors' numpy slices of bf16 tensors)
import numpy as np
from flax import nnx

from omnirrm_jax.models import hf_map

# What `shardings` may be: None (the default device, uncommitted, as `jnp.asarray` places arrays), one
# Sharding for every parameter, a function (nnx path, abstract variable) -> Sharding, or a state / mapping
# of NNX path -> Sharding (leaves may be `nnx.Variable`s holding one, as `parallel.sharding.state_shardings`
# returns) covering every base parameter.
Shardings = Union[None, jax.sharding.Sharding, Callable[[tuple, Any], jax.sharding.Sharding], nnx.State,
                  Mapping[tuple, Any]]


@dataclasses.dataclass(frozen=True)
class StoredTensor:
    """Where one checkpoint tensor lives (from the safetensors header; no data read)."""

    file: str  # absolute path of the .safetensors file
    key: str  # the tensor's name inside that file
    shape: tuple[int, ...]  # torch layout
    dtype: str  # safetensors dtype code: F32, BF16, ...


def weight_files(path: str) -> list[str]:
    """The weight files of a checkpoint directory: those `model.safetensors.index.json` lists, else every
    `*.safetensors` but adapters."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        for fname in files:
            if not os.path.exists(os.path.join(path, fname)):
                raise FileNotFoundError(f"{index} lists {fname}, which is missing from {path}")
    else:
        files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors") and not f.startswith("adapter"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {path}")
    return [os.path.join(path, f) for f in files]


def index_safetensors_dir(path: str) -> dict[str, StoredTensor]:
    """{checkpoint name (`hf_map.checkpoint_name`) -> where it is stored}, from the headers of every weight file
    (talker/token2wav tensors left out)."""
    from safetensors import safe_open

    out: dict[str, StoredTensor] = {}
    for full in weight_files(path):
        with safe_open(full, framework="numpy") as f:
            for key in f.keys():
                name = hf_map.checkpoint_name(key)
                if name is None:
                    continue
                sl = f.get_slice(key)
                if name in out:
                    raise hf_map.CheckpointMismatchError(f"{path}: tensor {name} is stored twice ({out[name].key} in "
                                                    f"{out[name].file} and {key} in {full})")
                out[name] = StoredTensor(full, key, tuple(sl.get_shape()), sl.get_dtype())
    return out


class _Files:
    """Open safetensors files of one load (each opened once, memory-mapped, closed at the end)."""

    def __init__(self, stack: contextlib.ExitStack):
        self._stack, self._open = stack, {}

    def get(self, file: str):
        from safetensors import safe_open

        if file not in self._open:
            self._open[file] = self._stack.enter_context(safe_open(file, framework="numpy"))
        return self._open[file]


def read_slice(files: _Files, stored: StoredTensor, index: tuple[slice, ...] | None) -> np.ndarray:
    """`index` (torch layout; None: everything) of a stored tensor. The one place that reads tensor data, so
    tests can count what a process reads."""
    sl = files.get(stored.file).get_slice(stored.key)
    return np.asarray(sl[...] if index is None else sl[index])


def _read_nnx_slice(files: _Files, stored: StoredTensor, leaf: str, nnx_index: tuple[slice, ...],
                    dtype) -> np.ndarray:
    t_index = hf_map.torch_index(leaf, nnx_index, len(stored.shape))
    if t_index is None:  # the Conv3d patch kernel: small, read whole
        return hf_map.from_torch_layout(leaf, read_slice(files, stored, None))[nnx_index].astype(dtype, copy=False)
    return hf_map.from_torch_layout(leaf, read_slice(files, stored, t_index)).astype(dtype, copy=False)


def _sharding_lookup(shardings: Shardings) -> Callable[[tuple, Any], jax.sharding.Sharding | None]:
    if shardings is None:
        return lambda path, var: None
    if isinstance(shardings, jax.sharding.Sharding):
        return lambda path, var: shardings
    if callable(shardings) and not isinstance(shardings, (nnx.State, Mapping)):
        return shardings
    flat = dict(nnx.to_flat_state(shardings)) if isinstance(shardings, nnx.State) else dict(shardings)

    def lookup(path, var):
        if path not in flat:
            raise KeyError(f"no sharding given for parameter {'.'.join(map(str, path))}")
        s = flat[path]
        return s.get_value() if isinstance(s, nnx.Variable) else s

    return lookup


def load_hf_sharded(path: str, abstract_model: nnx.Module, shardings: Shardings = None) -> nnx.Module:
    """Fills the base parameters of `abstract_model` with the HF checkpoint at `path`, each read straight into
    its sharding.

    Args:
      path: a checkpoint directory (`*.safetensors`, sharded with `model.safetensors.index.json` or not; names
        with or without `thinker.`, transformers-v5 names accepted, talker/token2wav tensors ignored).
      abstract_model: the model, typically from `nnx.eval_shape` (its base-parameter values are only read for
        shape and dtype; values are cast to each parameter's dtype). LoRA branches and other variables are
        left as they are.
      shardings: where each base parameter goes (see `Shardings`). Each process reads, for each parameter, only
        the slices that its addressable devices hold; with None, whole tensors onto the default device.
    Returns:
      `abstract_model`, filled in place.
    Raises:
      CheckpointMismatchError naming every missing, unexpected and mis-shaped tensor (before reading data).
    """
    index = index_safetensors_dir(path)
    plan = hf_map.match_hf_tensors(abstract_model, {n: t.shape for n, t in index.items()}, source=path)
    lookup = _sharding_lookup(shardings)
    state = nnx.state(abstract_model, hf_map.base_params_filter())
    flat = dict(nnx.to_flat_state(state))
    with contextlib.ExitStack() as stack:
        files = _Files(stack)
        for var_path, name in plan.items():
            var, stored, leaf = flat[var_path], index[name], str(var_path[-1])
            shape, dtype = tuple(var.shape), var.dtype
            sharding = lookup(var_path, var)

            def read(nnx_index, stored=stored, leaf=leaf, dtype=dtype):
                return _read_nnx_slice(files, stored, leaf, tuple(nnx_index), dtype)

            if sharding is None:
                value = jnp.asarray(read((slice(None),) * len(shape)))
            else:
                value = jax.make_array_from_callback(shape, sharding, read)
            var.set_value(value)
    nnx.update(abstract_model, state)
    return abstract_model
