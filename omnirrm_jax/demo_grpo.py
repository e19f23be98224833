"""The demo's second stage: GRPO with the rubric rewards on top of the SFT judge, as the reference does it.

  SFT model -> HF checkpoint (the GRPO base) -> LoRA on every linear layer -> `training.grpo.train` on the
  demo's RL rows of the train split (prompt + gold verdict/scores, `grpo_train.jsonl`) -> merged export (HF
  safetensors) read back -> held-out greedy judgements of the reloaded export: pairwise accuracy, valid JSON and
  mean combined reward per modality, to set against the SFT model's.

The reference policy of the KL term is the SFT model itself (LoRA switched off), the reference's setting
(ms-swift GRPO with LoRA on the stage-1 model). Groups whose G samples all earn the same reward have zero
advantage, so the update is driven by the prompts the SFT judge still gets wrong sometimes (on the demo task:
arithmetic); the media modalities, already at reward 1, mostly contribute the KL term.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np


@dataclasses.dataclass(frozen=True)
class DemoGRPOConfig:
    rollouts: int = 40  # rollout batches = optimizer updates (one update per rollout)
    prompts_per_rollout: int = 8
    num_generations: int = 4  # G samples per prompt
    learning_rate: float = 2e-3  # LoRA factors of a width-64 decoder: far above the 7B run's 1e-6
    temperature: float = 1.0
    lora_rank: int = 8
    lora_alpha: float = 16.0
    beta: float = 0.04
    max_completion_length: int | None = None  # None: the demo's max_new_tokens


def prepare_rl_split(root: str, shards: str) -> str:
    """Prepares `grpo_train.jsonl` (RL rows with gold labels) next to the SFT shards; returns the shard glob."""
    from data_prep.prep import prep
    from omnirrm_jax.data.media import MediaConfig, VideoConfig
    from omnirrm_jax.demo import DEMO_VIDEO

    prep([os.path.join(root, "grpo_train.jsonl")], root, shards, media_cfg=MediaConfig(video=VideoConfig(**DEMO_VIDEO)),
         split="grpotrain", records_per_shard=10_000)
    return os.path.join(shards, "grpotrain-*.array_record")


def grpo_config(demo_cfg, gcfg: DemoGRPOConfig, base_dir: str, train_glob: str, tok_path: str, workdir: str):
    """The `GRPOConfig` of the stage: LoRA on the SFT model's HF export, float32, one update per rollout."""
    from omnirrm_jax.demo import SEQ_BUCKETS, media_buckets
    from omnirrm_jax.training import config as C
    from omnirrm_jax.training.grpo_config import GRPOConfig, GRPOSpec
    from omnirrm_jax.training.lora import LoraConfig
    from omnirrm_jax.training.optim import OptimConfig
    from omnirrm_jax.training.sharding import MeshConfig

    import jax

    b = gcfg.prompts_per_rollout
    # prompts shard over the data axis when they divide it (tests run 8 fake devices); else parameters do
    mesh = MeshConfig(data=-1) if b % jax.device_count() == 0 else MeshConfig(data=1, fsdp=-1)
    return GRPOConfig(
        model=C.ModelSpec(preset=None, hf_path=base_dir, dtype="float32", param_dtype="float32",
                          lora=LoraConfig(rank=gcfg.lora_rank, alpha=gcfg.lora_alpha)),
        data=C.DataSpec(train=(train_glob,), tokenizer=tok_path,
                        pipeline={"batch_size": b, "shuffle_seed": demo_cfg.seed + 1, "seq_buckets": SEQ_BUCKETS,
                                  "media_buckets": media_buckets(b)}),
        optim=OptimConfig(learning_rate=gcfg.learning_rate, warmup_ratio=0.05, weight_decay=0.0),
        mesh=mesh,
        run=C.RunSpec(workdir=workdir, seed=demo_cfg.seed, max_steps=gcfg.rollouts, log_every=5,
                      save_every=10 ** 9, keep_checkpoints=1),
        grpo=GRPOSpec(num_generations=gcfg.num_generations, beta=gcfg.beta, temperature=gcfg.temperature,
                      max_completion_length=gcfg.max_completion_length or demo_cfg.max_new_tokens))


def run_grpo_stage(demo_cfg, sft_model, tok_path: str, data: dict, gcfg: DemoGRPOConfig,
                   progress: bool = True) -> dict:
    """Trains the GRPO stage from `sft_model`, exports the merged judge as HF safetensors and reads it back.

    Returns {"model": the reloaded export, "history": per-rollout metrics, "export_dir",
    "reloaded_equal": the reloaded parameters equal the trained, merged ones bit for bit, "rollouts"}.
    """
    from omnirrm_jax.checkpoint import export as export_lib
    from omnirrm_jax.models import params as P
    from omnirrm_jax.training import grpo

    base_dir = os.path.join(demo_cfg.workdir, "sft_hf")
    P.save_hf(sft_model, base_dir)
    train_glob = prepare_rl_split(data["root"], data["shards"])
    workdir = os.path.join(demo_cfg.workdir, "grpo")
    out = grpo.train(grpo_config(demo_cfg, gcfg, base_dir, train_glob, tok_path, workdir), progress=progress)
    # `omnirrm export`: the base rebuilt from sft_hf, the LoRA checkpoint restored over it, merged, HF safetensors
    written = export_lib.export(workdir, os.path.join(demo_cfg.workdir, "grpo_export"), formats=("hf",))
    reloaded, _ = P.load_hf(written["hf"])
    trained = export_lib.merged(export_lib.Trained(out["state"].model(), out["rollouts"], {}, False))
    return {"model": reloaded, "history": out["history"], "export_dir": written["hf"],
            "reloaded_equal": same_params(trained, reloaded), "rollouts": out["rollouts"]}


def same_params(a, b) -> bool:
    """Both models hold the same parameters (same names, shapes, dtypes and values, bit for bit)."""
    from flax import nnx

    flat_a, flat_b = (dict(nnx.to_flat_state(nnx.state(m, nnx.Param))) for m in (a, b))
    if flat_a.keys() != flat_b.keys():
        return False
    for k in flat_a:
        x, y = np.asarray(flat_a[k][...]), np.asarray(flat_b[k][...])
        if x.dtype != y.dtype or not np.array_equal(x, y):
            return False
    return True


def history_summary(history: list[dict], k: int = 5) -> dict:
    """Mean training-rollout reward and verdict accuracy over the first and last `k` rollouts (a trend only:
    these are sampled judgements of different train prompts, not the held-out evaluation)."""
    def mean(rows, key):
        return round(float(np.mean([h[key] for h in rows])), 4) if rows else None

    first, last = history[:k], history[-k:]
    return {"rollouts": len(history), "first_reward": mean(first, "reward/total_mean"),
            "last_reward": mean(last, "reward/total_mean"), "first_accuracy": mean(first, "rollout/verdict_accuracy"),
            "last_accuracy": mean(last, "rollout/verdict_accuracy"), "last_kl": mean(last, "train/kl")}
