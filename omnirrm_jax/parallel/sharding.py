"""Device mesh and the one table from logical axis names to mesh axes.

Parameters carry logical names (`models/layers.py`); this table decides where they live. Keeping it
in one place is what lets the same model run data-parallel on one GPU host, FSDP + tensor-parallel on a
TPU pod slice, or anything between, by changing a config line rather than the model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from omnirrm_jax.errors import UserError
from omnirrm_jax.models import layers as L

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")
BATCH = L.BATCH  # logical name of the batch dim of activations / data

# logical axis -> mesh axis (or a tuple of mesh axes, or None = replicated).
DEFAULT_RULES: dict[str, Any] = {
    BATCH: ("data", "fsdp"),
    L.EMBED: "fsdp",
    L.MLP: "tensor",
    L.HEADS: "tensor",
    L.KV_HEADS: "tensor",
    L.VOCAB: "tensor",
    L.NORM: None,
    L.CONV: None,
    L.LORA_RANK: None,
}


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh shape; -1 fills with the remaining devices (at most one -1)."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def shape(self, n_devices: int) -> tuple[int, ...]:
        dims = [self.data, self.fsdp, self.tensor]
        if dims.count(-1) > 1:
            raise UserError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, dims))}")
        known = math.prod(d for d in dims if d != -1)
        if -1 in dims:
            if n_devices % known:
                raise UserError(f"{n_devices} devices cannot fill mesh {dict(zip(MESH_AXES, dims))} (set mesh.data, "
                                "mesh.fsdp, mesh.tensor so their product divides the device count)")
            dims[dims.index(-1)] = n_devices // known
        if math.prod(dims) != n_devices:
            raise UserError(f"mesh {dict(zip(MESH_AXES, dims))} needs {math.prod(dims)} devices, "
                            f"{n_devices} available (set mesh.data=-1 to fill them)")
        return tuple(dims)


def make_mesh(cfg: MeshConfig = MeshConfig(), devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())
    shape = cfg.shape(len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int] | None = None, *, mesh: Mesh | None = None,
                    rules: Mapping[str, Any] = DEFAULT_RULES) -> PartitionSpec:
    """Maps logical names to a PartitionSpec. Two dims claiming one mesh axis is an error; a dim whose
    size the mesh axes do not divide is replicated instead (small tensors such as tiny-model heads)."""
    used: dict[str, str] = {}
    out = []
    for i, name in enumerate(axes):
        target = rules.get(name) if name is not None else None
        if name is not None and name not in rules:
            raise KeyError(f"logical axis {name!r} has no sharding rule; known: {sorted(rules)}")
        mesh_axes = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
        if mesh is not None:
            mesh_axes = tuple(a for a in mesh_axes if mesh.shape[a] > 1)
            if shape is not None and mesh_axes and shape[i] % math.prod(mesh.shape[a] for a in mesh_axes):
                mesh_axes = ()
        for a in mesh_axes:
            if a in used:
                raise ValueError(f"logical axes {used[a]!r} and {name!r} both map to mesh axis {a!r} in {axes}")
            used[a] = name
        out.append(None if not mesh_axes else (mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes))
    return PartitionSpec(*out)


def state_shardings(state: Any, mesh: Mesh, rules: Mapping[str, Any] = DEFAULT_RULES) -> Any:
    """NamedShardings for every Variable of an (abstract) NNX state, from its `out_sharding` names."""

    def one(var):
        if not isinstance(var, nnx.Variable):
            return NamedSharding(mesh, PartitionSpec())
        axes = var.get_metadata().get("out_sharding") or (None,) * len(var.shape)
        return var.replace(NamedSharding(mesh, logical_to_spec(axes, var.shape, mesh=mesh, rules=rules)))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def param_placement(mesh: Mesh, rules: Mapping[str, Any] = DEFAULT_RULES) -> Callable:
    """(logical axes, shape) -> the NamedSharding a parameter lives on (`models.layers.init_placement`)."""
    return lambda axes, shape: NamedSharding(mesh, logical_to_spec(axes, shape, mesh=mesh, rules=rules))


def batch_sharding(mesh: Mesh, ndim: int, batch_axis: int = 0, rules: Mapping[str, Any] = DEFAULT_RULES) -> NamedSharding:
    """Sharding of a data array whose `batch_axis` is the global batch (split over data and fsdp)."""
    axes = [None] * ndim
    axes[batch_axis] = BATCH
    return NamedSharding(mesh, logical_to_spec(axes, mesh=mesh, rules=rules))


def describe(mesh: Mesh) -> str:
    return " x ".join(f"{k}={v}" for k, v in mesh.shape.items()) + f" ({np.prod(list(mesh.shape.values()))} devices)"


def optimizer_shardings(abstract_opt_state: Any, trainable_shardings: Any, mesh: Mesh) -> Any:
    """Shardings for an optimizer state (a `jax.eval_shape(tx.init, ...)` tree): a leaf that mirrors a parameter
    (Adam's mu / nu, accumulated gradients: its path ends with the parameter's path) gets that parameter's
    sharding; anything else (step counts) is replicated. Without this, `jit(tx.init)` returns the state
    replicated, and FSDP would shard the weights yet keep whole copies of the moments on every device."""
    by_path = {tuple(path): (sh.get_value() if isinstance(sh, nnx.Variable) else sh)
               for path, sh in nnx.to_flat_state(trainable_shardings)}
    replicated = NamedSharding(mesh, PartitionSpec())

    def one(path, leaf):
        keys = tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))
        for i in range(len(keys)):
            sh = by_path.get(keys[i:])
            if sh is not None and len(sh.spec) <= len(leaf.shape):
                return sh
        return replicated

    return jax.tree_util.tree_map_with_path(one, abstract_opt_state)


def weight_compute_rules(rules: Mapping[str, Any] = DEFAULT_RULES) -> dict[str, Any]:
    """The table a weight is computed with: its stored table less the mesh axes the batch is split over (FSDP
    stores weights split over them; each device gathers the whole weight for its own share of the batch).
    Tensor-parallel axes stay."""
    batch = rules.get(BATCH) or ()
    batch = {batch} if isinstance(batch, str) else set(batch)

    def strip(target):
        if target is None:
            return None
        kept = tuple(a for a in ((target,) if isinstance(target, str) else target) if a not in batch)
        return None if not kept else (kept[0] if len(kept) == 1 else kept)

    return {name: strip(target) for name, target in rules.items()}


@contextlib.contextmanager
def activations_on(mesh: Mesh, rules: Mapping[str, Any] = DEFAULT_RULES):
    """Functions traced inside pin the model's named activations (`layers.constrain`) through `rules` on `mesh`,
    and its weights where they are used (`layers.weight`) through `weight_compute_rules(rules)` (no mesh:
    nothing pinned)."""
    if mesh is None:
        yield
        return

    compute = weight_compute_rules(rules)

    def resolve(axes, shape, weight=False):
        return NamedSharding(mesh, logical_to_spec(axes, shape, mesh=mesh, rules=compute if weight else rules))

    with L.activation_sharding(resolve):
        yield


def traced_on(mesh: Mesh | None, fn, rules: Mapping[str, Any] = DEFAULT_RULES):
    """`fn` that traces under `activations_on(mesh)` (for `jax.jit`: the trace happens inside the call). A new
    function each time: jax caches traces per function and the context is not part of that key."""
    if mesh is None:
        return fn

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with activations_on(mesh, rules):
            return fn(*args, **kwargs)

    return wrapped


def mesh_of(shardings: Any) -> Mesh | None:
    """The mesh of the first NamedSharding in a pytree of shardings (None if there is none)."""
    for leaf in jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding)):
        if isinstance(leaf, NamedSharding):
            return leaf.mesh
    return None
