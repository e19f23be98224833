"""The demo's SFT stage: the run config (full fine-tuning of the `demo` preset from random weights), the run, and
the checkpoint reload that proves save/restore."""

from __future__ import annotations

import os

from omnirrm_jax.demo.config import DemoConfig
from omnirrm_jax.demo.data import SEQ_BUCKETS, DemoData, media_buckets


def sft_config(cfg: DemoConfig, shards: str, tok_path: str, workdir: str):
    """The `training.config.SFTConfig` of the demo's SFT run on prepared `shards`, writing to `workdir`."""
    from omnirrm_jax.training import config as C
    from omnirrm_jax.training.optim import OptimConfig
    from omnirrm_jax.parallel.sharding import MeshConfig

    return C.SFTConfig(
        model=C.ModelSpec(preset=cfg.preset, dtype="float32", param_dtype="float32", full_finetune=True),
        data=C.DataSpec(train=(os.path.join(shards, "train-*.array_record"),), tokenizer=tok_path,
                        eval=tuple(os.path.join(shards, f"{s}-*.array_record") for s in ("eval", "eval_sft")),
                        pipeline={"batch_size": cfg.batch_size, "shuffle_seed": cfg.seed,
                                  "seq_buckets": SEQ_BUCKETS, "media_buckets": media_buckets(cfg.batch_size)}),
        optim=OptimConfig(learning_rate=cfg.learning_rate, warmup_ratio=0.05, weight_decay=0.0, b2=cfg.adam_b2),
        mesh=MeshConfig(data=-1),
        run=C.RunSpec(workdir=workdir, seed=cfg.seed, max_steps=cfg.steps, log_every=25,
                      save_every=10 ** 9, keep_checkpoints=1))


def train(cfg: DemoConfig, data: DemoData, tok_path: str, name: str) -> tuple[dict, str]:
    """Runs SFT on `data` into `cfg.workdir/name`; returns (`training.sft.train`'s result, the run's workdir)."""
    from omnirrm_jax.training import sft

    workdir = os.path.join(cfg.workdir, name)
    out = sft.train(sft_config(cfg, data.shards, tok_path, workdir), progress=True)
    return out, workdir


def reload(out: dict, workdir: str):
    """Restores the saved checkpoint into a fresh state; returns (model, restored == trained, saved step)."""
    import jax
    from flax import nnx

    from omnirrm_jax.checkpoint.manager import CheckpointManager, abstract_like

    state = out["state"]
    mngr = CheckpointManager(os.path.join(workdir, "checkpoints"))
    target = {"trainable": abstract_like(state.trainable), "opt_state": abstract_like(state.opt_state),
              "step": abstract_like(state.step)}
    restored, _, meta = mngr.restore(None, abstract_state=target)
    mngr.close()
    same = all(bool((a == b).all()) for a, b in zip(jax.tree.leaves(restored["trainable"]),
                                                     jax.tree.leaves(state.trainable)))
    return nnx.merge(state.graphdef, restored["trainable"], state.frozen), same, int(meta["micro_step"])
