"""Train state: the model split into (graphdef, trainable, frozen) + optimizer state, created sharded.

Setup order (big_vision style): abstract model (`nnx.eval_shape`) -> shardings from logical axes -> parameters
drawn by jitted initializers with out-shardings and weights read straight into their shardings, so a 7B model is never materialised on one
device first. LoRA runs
train only `nnx.LoRAParam`; full fine-tuning trains every `nnx.Param`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from omnirrm_jax.models import abstract
from omnirrm_jax.models import layers as L
from omnirrm_jax.models import loading, lora_io
from omnirrm_jax.models import params as P
from omnirrm_jax.models.config import ThinkerConfig
from omnirrm_jax.models.thinker import Thinker
from omnirrm_jax.training import lora as lora_lib
from omnirrm_jax.parallel import sharding as S


@dataclasses.dataclass
class TrainState:
    graphdef: Any
    trainable: nnx.State
    frozen: nnx.State
    opt_state: Any
    # micro-steps whose update was not skipped (non-finite, or SFT targets outside the loss window): the optimizer's
    # updates only without accumulation; the update count (what the learning-rate schedule sees) is
    # `optim.update_count`
    step: jax.Array

    def model(self) -> Thinker:
        return nnx.merge(self.graphdef, self.trainable, self.frozen)


def trainable_filter(full_finetune: bool):
    return nnx.Param if full_finetune else nnx.LoRAParam


def build_model(cfg: ThinkerConfig, *, hf_path: str | None, lora_cfg: lora_lib.LoraConfig | None,
                lora_path: str | None, seed: int) -> Thinker:
    """Host-side model construction: HF weights (or random init) plus LoRA branches, on one device. For what fits
    one device (export, inspection); a training run builds its model sharded (`create_run_state`). Random weights
    are drawn by the same per-parameter programs a run draws them with (`layers.init_placement`), so an export
    rebuilds a preset base bit for bit on any platform."""
    one_device = S.make_mesh(S.MeshConfig(data=1), devices=jax.devices()[:1])
    with L.init_placement(S.param_placement(one_device)):
        if hf_path:
            model, _ = P.load_hf(hf_path, dtype=cfg.param_dtype, compute_dtype=cfg.dtype,
                                 attention_backend=cfg.attention_backend, remat=cfg.remat,
                                 scan_layers=cfg.scan_layers,
                                 lora_path=lora_path, merge_lora=False)
        else:
            model = Thinker(cfg, rngs=nnx.Rngs(seed))
        if lora_cfg is not None and lora_path is None:
            lora_lib.apply_lora(model, lora_cfg, nnx.Rngs(seed + 1))
    return model


def create_run_state(model_spec, thinker_cfg: ThinkerConfig, tx: optax.GradientTransformation, mesh: Mesh,
                     seed: int) -> tuple[TrainState, Any]:
    """The sharded state of a run from its `ModelSpec`: what `omnirrm sft` and `omnirrm grpo` both start from.

    No weight is ever whole on one device unless its sharding says so: the model's structure comes from
    `nnx.eval_shape`; random weights (a preset, new LoRA factors) are drawn parameter by parameter by small jitted
    programs with out-shardings (`layers.init_placement`: the bits of an eager `Thinker(cfg, rngs=...)`); HF weights are read from the safetensors
    straight into their shardings, each process reading only the slices its devices hold (`models.loading`); a
    PEFT adapter (`model.lora_path`, small) is read whole and placed sharded like its kernels."""
    full = model_spec.full_finetune
    new_lora = None if full or model_spec.lora_path else model_spec.lora

    def random_model() -> Thinker:
        model = Thinker(thinker_cfg, rngs=nnx.Rngs(seed))
        if new_lora is not None:
            lora_lib.apply_lora(model, new_lora, nnx.Rngs(seed + 1))
        return model

    if model_spec.hf_path is None:
        model = placed_init(random_model, mesh)
    else:
        model = abstract.eval_shape(lambda: Thinker(thinker_cfg, rngs=nnx.Rngs(seed)))
        loading.load_hf_sharded(model_spec.hf_path, model,
                                S.state_shardings(nnx.state(model, P.base_params_filter()), mesh))
        if new_lora is not None:
            with L.init_placement(S.param_placement(mesh)):
                lora_lib.apply_lora(model, new_lora, nnx.Rngs(seed + 1))
        if model_spec.lora_path:
            lora_io.load_adapter(model, model_spec.lora_path, merge=False)
    return state_from_model(model, tx, mesh, full_finetune=full)


def placed_init(model_fn: Callable[[], Thinker], mesh: Mesh) -> Thinker:
    """`model_fn()` with every parameter drawn straight into its sharding on `mesh` (`layers.init_placement`)."""
    with L.init_placement(S.param_placement(mesh)):
        return model_fn()


def create_train_state(model_fn: Callable[[], Thinker], tx: optax.GradientTransformation, mesh: Mesh, *,
                       full_finetune: bool) -> tuple[TrainState, Any]:
    """The sharded state of a randomly initialised model (parameters drawn into their shardings); returns it with
    the state shardings (for jit and restore)."""
    model = placed_init(model_fn, mesh)
    return state_from_model(model, tx, mesh, full_finetune=full_finetune)


def state_from_model(model: Thinker, tx: optax.GradientTransformation, mesh: Mesh, *,
                     full_finetune: bool) -> tuple[TrainState, Any]:
    """Splits a (placed) model into trainable and frozen parts on their shardings and initialises the optimizer
    sharded like the parameters it mirrors; returns the state with the (trainable, frozen) shardings."""
    wrt = trainable_filter(full_finetune)
    graphdef, trainable, frozen = nnx.split(model, wrt, ...)
    sh_trainable = S.state_shardings(trainable, mesh)
    sh_frozen = S.state_shardings(frozen, mesh)
    trainable = jax.device_put(trainable, sh_trainable)  # a no-op for what was born on its sharding
    frozen = jax.device_put(frozen, sh_frozen)
    sh_opt = S.optimizer_shardings(jax.eval_shape(tx.init, trainable), sh_trainable, mesh)
    opt_state = jax.tree.map(functools.partial(_on_mesh, mesh), jax.jit(tx.init, out_shardings=sh_opt)(trainable))
    step = jax.device_put(jnp.zeros((), jnp.int32), NamedSharding(mesh, PartitionSpec()))
    return TrainState(graphdef, trainable, frozen, opt_state, step), (sh_trainable, sh_frozen)


def step_out_shardings(state: TrainState, sh_trainable) -> tuple:
    """out_shardings of a (trainable, opt_state, step, metrics) step: the state leaves where they came from. Left
    to the compiler, the optimizer state and step come back placed differently and the second step compiles the
    whole program again."""
    placed = lambda x: x.sharding  # noqa: E731
    return sh_trainable, jax.tree.map(placed, state.opt_state), placed(state.step), None


def _on_mesh(mesh: Mesh, x: jax.Array) -> jax.Array:
    """Optimizer scalars (step counts) come out of `tx.init` on one device; put them on the mesh, replicated,
    so a restored state never mixes single-device and mesh arrays."""
    if isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh:
        return x
    return jax.device_put(x, NamedSharding(mesh, PartitionSpec()))


def tree_where(pred: jax.Array, new: Any, old: Any) -> Any:
    """Keeps `old` wherever `pred` is False (a skipped non-finite update)."""
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)
