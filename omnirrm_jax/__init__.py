"""omnirrm_jax: Omni-RRM, the rubric-grounded omni-modal reward model, in JAX / Flax NNX.

Imports are lazy (a name loads its module on first use), so `import omnirrm_jax` and `omnirrm --help` stay fast.
The public API, by task:

  models      load_hf(path, dtype=..., lora_path=None) -> (model, config), save_hf, load_orbax, save_orbax,
              Thinker, ThinkerConfig, PRESETS, tiny, omni_3b, omni_7b
  judging     load_judge(checkpoint) -> (model, config, tokenizer); Judge(...).judge_rows / .run_file (what
              `omnirrm judge` runs); judge_batch, verdict_probabilities, pairwise_accuracy on pipeline batches
  rubric      judge_prompt, system_prompt, parse_judgement; format_reward, content_reward, rubric_reward,
              combined_reward, reward_components (the GRPO rewards, reference-compatible)
  training    train_sft(SFTConfig), train_grpo(GRPOConfig), load_config(yaml, overrides); ModelSpec, DataSpec,
              RunSpec, GRPOSpec, LoraConfig, OptimConfig, MeshConfig
  best-of-N   reward(prompts, responses_a, responses_b, media=..., judge=...) -> P(A) - P(B) per pair (scalar,
              no generation; `omnirrm bon` for the whole Best-of-N evaluation)
  export      export(workdir, out, formats=...) -> merged Orbax / HF safetensors / PEFT adapter
  demo        run_demo(DemoConfig()) (`omnirrm demo`)
Everything else is internal and may change.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    # models
    "load_hf": ("omnirrm_jax.models.params", "load_hf"),
    "save_hf": ("omnirrm_jax.models.params", "save_hf"),
    "load_orbax": ("omnirrm_jax.models.convert", "load_orbax"),
    "save_orbax": ("omnirrm_jax.models.convert", "save_orbax"),
    "Thinker": ("omnirrm_jax.models.thinker", "Thinker"),
    "ThinkerConfig": ("omnirrm_jax.models.config", "ThinkerConfig"),
    "PRESETS": ("omnirrm_jax.models.config", "PRESETS"),
    "tiny": ("omnirrm_jax.models.config", "tiny"),
    "omni_3b": ("omnirrm_jax.models.config", "omni_3b"),
    "omni_7b": ("omnirrm_jax.models.config", "omni_7b"),
    # judging
    "load_judge": ("omnirrm_jax.eval.judge_runner", "load_judge"),
    "Judge": ("omnirrm_jax.eval.judge_runner", "Judge"),
    "judge_batch": ("omnirrm_jax.eval.judge", "judge_batch"),
    "pairwise_accuracy": ("omnirrm_jax.eval.judge", "pairwise_accuracy"),
    "verdict_probabilities": ("omnirrm_jax.eval.verdict", "verdict_probabilities"),
    # rubric (pure Python)
    "judge_prompt": ("omnirrm_jax.rubric.prompts", "judge_prompt"),
    "system_prompt": ("omnirrm_jax.rubric.prompts", "system_prompt"),
    "parse_judgement": ("omnirrm_jax.rubric.parse", "parse_judgement"),
    "format_reward": ("omnirrm_jax.rubric.rewards", "format_reward"),
    "content_reward": ("omnirrm_jax.rubric.rewards", "content_reward"),
    "rubric_reward": ("omnirrm_jax.rubric.rewards", "rubric_reward"),
    "combined_reward": ("omnirrm_jax.rubric.rewards", "combined_reward"),
    "reward_components": ("omnirrm_jax.rubric.rewards", "reward_components"),
    # training
    "train_sft": ("omnirrm_jax.training.sft", "train"),
    "train_grpo": ("omnirrm_jax.training.grpo", "train"),
    "load_config": ("omnirrm_jax.training.config", "load_config"),
    "SFTConfig": ("omnirrm_jax.training.config", "SFTConfig"),
    "ModelSpec": ("omnirrm_jax.training.config", "ModelSpec"),
    "DataSpec": ("omnirrm_jax.training.config", "DataSpec"),
    "RunSpec": ("omnirrm_jax.training.config", "RunSpec"),
    "GRPOConfig": ("omnirrm_jax.training.grpo_config", "GRPOConfig"),
    "GRPOSpec": ("omnirrm_jax.training.grpo_config", "GRPOSpec"),
    "LoraConfig": ("omnirrm_jax.training.lora", "LoraConfig"),
    "OptimConfig": ("omnirrm_jax.training.optim", "OptimConfig"),
    "MeshConfig": ("omnirrm_jax.parallel.sharding", "MeshConfig"),
    # best-of-N
    "reward": ("omnirrm_jax.bon.reward", "reward"),
    # export and demo
    "export": ("omnirrm_jax.training.export", "export"),
    "run_demo": ("omnirrm_jax.demo", "run_demo"),
    "DemoConfig": ("omnirrm_jax.demo", "DemoConfig"),
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'omnirrm_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
