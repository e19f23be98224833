"""LoRA the NNX way: branches on our `Linear` layers chosen by a regex over module paths.

LoRA factors are `nnx.LoRAParam`, so gradients, optimizer state and LoRA-only checkpoints select them
by type. B starts at zero (step 0 equals the base model), and the base model (the GRPO reference
policy) is the same state with B zeroed (`without_lora`), or the model with its branches dropped
(`models.layers.drop_lora`, what the GRPO reference pass runs) — no second copy of the weights.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
from flax import nnx

from omnirrm_jax.models import layers as L

# The reference (ms-swift `--target_modules all-linear`, `--freeze_vit true`): every linear layer of the
# LLM, the vision merger and the audio projector; the vision and audio encoders themselves stay frozen.
DEFAULT_TARGETS = (r"^(model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
                   r"|visual\.merger\.mlp_\d+|audio_tower\.proj)$")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    rank: int = 8
    alpha: float = 32.0
    targets: str = DEFAULT_TARGETS
    dtype: str | None = None  # LoRA factor dtype; default: the base kernel's

    def __post_init__(self):
        if not (isinstance(self.rank, int) and self.rank >= 1) or not self.alpha > 0:
            raise ValueError(f"rank must be an integer >= 1 and alpha > 0, got rank={self.rank!r}, "
                             f"alpha={self.alpha!r}")


def linear_paths(model: nnx.Module) -> dict[str, L.Linear]:
    """{dotted module path: Linear} for every linear layer (paths as in checkpoints, `mlp_0` style)."""
    return {".".join(map(str, path)): node for path, node in nnx.iter_graph(model) if isinstance(node, L.Linear)}


def apply_lora(model: nnx.Module, cfg: LoraConfig, rngs: nnx.Rngs) -> list[str]:
    """Adds LoRA branches to every linear layer whose path matches `cfg.targets`; returns the paths."""
    pattern = re.compile(cfg.targets)
    hits = sorted(p for p in linear_paths(model) if pattern.search(p))
    if not hits:
        raise ValueError(f"LoRA target pattern {cfg.targets!r} matches no linear layer")
    layers = linear_paths(model)
    for path in hits:
        layers[path].add_lora(cfg.rank, cfg.alpha, rngs, cfg.dtype)
    return hits


def without_lora(lora_state: nnx.State) -> nnx.State:
    """The LoRA state with every B factor zeroed: merged back, the model computes the base policy."""
    return nnx.map_state(lambda path, x: jnp.zeros_like(x) if path[-1] == "lora_b" else x, lora_state)


def count_params(state: nnx.State) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(state))
