"""The one table between Hugging Face checkpoints and our NNX parameters, run in both directions.

Our module tree mirrors the checkpoint names (`model.layers.3.self_attn.q_proj` is the NNX path
`model/layers/3/self_attn/q_proj`), so the table is short: module renames (`mlp.0` <-> `mlp_0`), leaf names
(`weight` <-> `kernel` | `scale` | `embedding`), the name prefixes of other layouts of the same tensors
(full-model `thinker.`, transformers-v5 in-memory names, ignored talker/token2wav tensors) and the layout
transform a leaf implies (Linear (in, out) is torch (out, in) transposed; Conv1d (k, in, out) is torch
(out, in, k) reversed; the Conv3d patch embedding (D, C, T, p, p) flattens to (C*T*p*p, D)).
Loading (`loading.py`, `params.assign_hf_tensors`), export (`params.save_hf`, `params.module_to_hf_tensors`) and
LoRA adapters (`lora_io.py`) all go through the functions below; matching a checkpoint against a model is strict
and names every missing, unexpected and mis-shaped tensor.
"""

from __future__ import annotations

import logging
import re
from typing import Mapping

from flax import nnx

from omnirrm_jax.errors import UserError

_log = logging.getLogger(__name__)

THINKER_PREFIX = "thinker."  # full Qwen2.5-Omni checkpoints (and ms-swift adapters) keep the thinker under it
IGNORED_PREFIXES = ("talker.", "token2wav.")  # full-model tensors the thinker does not use
# checkpoint module-name part <-> NNX attribute ({n}: a number)
MODULE_RENAMES = (("mlp.{n}", "mlp_{n}"),)
# transformers-v5 in-memory prefixes (also in adapters PEFT saves from v5 models) <-> checkpoint prefixes
V5_PREFIXES = (("model.language_model.", "model."), ("model.visual.", "visual."), ("model.audio_tower.", "audio_tower."))
# NNX leaf -> checkpoint leaf (the way back is chosen by the model's leaf of the same module)
LEAF_TO_HF = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


def _rule(src: str, dst: str):
    pattern = re.compile(r"(^|\.)" + re.escape(src).replace(r"\{n\}", r"(\d+)") + r"(?=\.|$)")
    return pattern, lambda m: m.group(1) + dst.format(n=m.group(2))


_TO_NNX = [_rule(hf, ours) for hf, ours in MODULE_RENAMES]
_TO_HF = [_rule(ours, hf) for hf, ours in MODULE_RENAMES]


class CheckpointMismatchError(UserError):
    """A checkpoint does not fit the model: lists every offending tensor with both shapes."""


def base_params_filter():
    """Parameters that come from a base checkpoint (everything but LoRA factors)."""
    return nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))


# ------------------------------------------------------------------------------------------------ names

def hf_to_nnx_module(name: str) -> str:
    """Checkpoint module name -> dotted NNX module path ('visual.merger.mlp.0' -> 'visual.merger.mlp_0')."""
    for pattern, repl in _TO_NNX:
        name = pattern.sub(repl, name)
    return name


def nnx_to_hf_module(name: str) -> str:
    """Dotted NNX module path -> checkpoint module name (the inverse of `hf_to_nnx_module`)."""
    for pattern, repl in _TO_HF:
        name = pattern.sub(repl, name)
    return name


def nnx_path_to_hf(path: tuple) -> str:
    """NNX variable path -> checkpoint tensor name: ('model', 'layers', 0, 'mlp', 'up_proj', 'kernel') ->
    'model.layers.0.mlp.up_proj.weight'."""
    *module, leaf = (str(p) for p in path)
    return nnx_to_hf_module(".".join(module)) + "." + LEAF_TO_HF[leaf]


def v5_to_checkpoint(name: str) -> str:
    """transformers-v5 in-memory name -> checkpoint name ('model.language_model.x' -> 'model.x'); others as they are."""
    for v5, ckpt in V5_PREFIXES:
        if name.startswith(v5):
            return ckpt + name[len(v5):]
    return name


def checkpoint_to_v5(name: str) -> str:
    """Checkpoint name -> transformers-v5 in-memory name (what PEFT matches adapter keys and targets against)."""
    for v5, ckpt in V5_PREFIXES:
        if name.startswith(ckpt):
            return v5 + name[len(ckpt):]
    return name


def checkpoint_name(stored: str) -> str | None:
    """A stored tensor name -> the thinker checkpoint name: `thinker.` stripped, v5 names mapped; None for
    talker/token2wav tensors."""
    if stored.startswith(IGNORED_PREFIXES):
        return None
    if stored.startswith(THINKER_PREFIX):
        stored = stored[len(THINKER_PREFIX):]
    return v5_to_checkpoint(stored)


# ------------------------------------------------------------------------------------------------ layouts

def to_torch_layout(leaf: str, value, torch_shape: tuple | None = None):
    """NNX value -> torch layout (numpy or jax, dtype kept). `torch_shape` restores the Conv3d patch kernel."""
    if leaf != "kernel":
        return value
    if value.ndim == 3:
        return value.transpose(2, 1, 0)
    return value.T if torch_shape is None else value.T.reshape(torch_shape)


def from_torch_layout(leaf: str, tensor):
    """Torch-layout tensor -> NNX layout (numpy or jax, dtype kept)."""
    if leaf != "kernel":
        return tensor
    if tensor.ndim == 3:
        return tensor.transpose(2, 1, 0)
    return tensor.reshape(tensor.shape[0], -1).T


def nnx_shape(leaf: str, torch_shape: tuple) -> tuple:
    """The NNX shape of a torch-layout tensor of `torch_shape`."""
    if leaf != "kernel":
        return tuple(torch_shape)
    if len(torch_shape) == 3:
        return tuple(reversed(torch_shape))
    return (int(_prod(torch_shape[1:])), torch_shape[0])


def torch_shape(leaf: str, shape: tuple) -> tuple:
    """The torch shape of an NNX value of `shape` (the Conv3d patch kernel: its flattened form)."""
    return tuple(reversed(shape)) if leaf == "kernel" else tuple(shape)


def torch_index(leaf: str, index: tuple[slice, ...], torch_ndim: int) -> tuple[slice, ...] | None:
    """The torch-layout slice holding the NNX slice `index`; None where slices do not map onto slices (the
    Conv3d patch kernel: read it whole, then `from_torch_layout(...)[index]`)."""
    if leaf != "kernel":
        return tuple(index)
    if torch_ndim in (2, 3):
        return tuple(reversed(index))
    return None


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


# ------------------------------------------------------------------------------------------------ matching

def expected_hf_shapes(module: nnx.Module) -> dict[str, tuple[tuple, str, tuple]]:
    """{checkpoint name -> (nnx path, leaf, nnx shape)} for every base parameter of `module` (abstract or not)."""
    return {nnx_path_to_hf(path): (path, str(path[-1]), tuple(var.shape))
            for path, var in nnx.to_flat_state(nnx.state(module, base_params_filter()))}


def match_hf_tensors(module: nnx.Module, shapes: Mapping[str, tuple], *, prefix: str = "",
                     source: str = "checkpoint") -> dict[tuple, str]:
    """Matches stored tensors to the base parameters of `module` by name and shape, strictly.

    Args:
      module: an NNX module (abstract or not) whose tree mirrors the checkpoint names.
      shapes: stored name -> torch shape (names as `checkpoint_name` takes them).
      prefix: names start with this (e.g. "visual." for the vision tower); other names are reported as unexpected.
      source: how to call the origin in error messages (a file or directory).
    Returns:
      {nnx path of a parameter: the key of `shapes` that fills it}.
    Raises:
      CheckpointMismatchError naming every missing, unexpected and mis-shaped tensor.
    """
    expected = expected_hf_shapes(module)
    found: dict[str, str] = {}  # checkpoint name relative to prefix -> key of `shapes`
    for key in shapes:
        name = checkpoint_name(key)
        if name is not None:
            found[name[len(prefix):] if name.startswith(prefix) else name] = key  # off-prefix: unexpected below
    if "lm_head.weight" in found and "lm_head.weight" not in expected and "model.embed_tokens.weight" in expected:
        # tied embeddings with the head also stored (a .bin -> safetensors conversion writes both): transformers
        # ties the head to the embedding and ignores the copy, and so do we
        _log.warning("%s stores lm_head.weight but the config ties it to the embedding: the stored head is ignored",
                     source)
        del found["lm_head.weight"]
    problems = [f"missing tensor {prefix}{n} (model expects shape {torch_shape(*expected[n][1:])})"
                for n in sorted(set(expected) - set(found))]
    problems += [f"unexpected tensor {prefix}{n} (shape {tuple(shapes[found[n]])})"
                 for n in sorted(set(found) - set(expected))]
    plan = {}
    for name in sorted(set(expected) & set(found)):
        path, leaf, shape = expected[name]
        stored = tuple(shapes[found[name]])
        if nnx_shape(leaf, stored) != shape:
            problems.append(f"tensor {prefix}{name} has shape {stored}, model expects {torch_shape(leaf, shape)}")
            continue
        plan[path] = found[name]
    if problems:
        raise CheckpointMismatchError(f"{source} does not match the model ({len(problems)} problem(s)):\n  "
                                      + "\n  ".join(problems))
    return plan

