"""omnirrm_jax: Omni-RRM, the rubric-grounded omni-modal reward model, in JAX / Flax NNX.

Imports are lazy so `import omnirrm_jax` and `omnirrm --help` stay fast; the public API:
  load_hf(path, dtype=..., lora_path=None) -> (model, config)   HF / PEFT checkpoints into NNX
  Thinker, ThinkerConfig, presets (tiny, omni_3b, omni_7b)
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "load_hf": ("omnirrm_jax.models.params", "load_hf"),
    "save_hf": ("omnirrm_jax.models.params", "save_hf"),
    "Thinker": ("omnirrm_jax.models.thinker", "Thinker"),
    "ThinkerConfig": ("omnirrm_jax.models.config", "ThinkerConfig"),
    "tiny": ("omnirrm_jax.models.config", "tiny"),
    "omni_3b": ("omnirrm_jax.models.config", "omni_3b"),
    "omni_7b": ("omnirrm_jax.models.config", "omni_7b"),
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'omnirrm_jax' has no attribute {name!r}")
