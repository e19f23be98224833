"""The demo's second stage: GRPO with the rubric rewards on top of the SFT judge, as the reference does it.

  SFT model -> HF checkpoint (the GRPO base) -> probe: the SFT judge samples 8 judgements of each distinct train
  prompt (all 32 arithmetic questions, 32 per media modality) -> RL split = contested prompts (rewards differ
  within the group) x3 + every solved probed prompt as an anchor -> LoRA on every
  linear layer, `training.grpo.train` (28 rollouts of 16 prompts x 8 samples) -> merged export (HF safetensors)
  read back -> held-out greedy judgements of the reloaded export, set against the SFT model's.

Why the probe: a group whose G samples all earn the same reward has zero advantage and no policy gradient
(DAPO filters such groups as they are sampled; the demo does it once, up front). After SFT the demo judge earns
reward 1 on every media prompt and on most arithmetic ones, so random train prompts give a few contested groups
in a short run - too few to move it (40 rollouts of 8 random prompts left every held-out judgement unchanged).

Why every solved prompt stays in: the update that fixes the contested prompts also moves their neighbours (with
8 of 25 arithmetic anchors, lr 2e-3, a solved "2 + 3" prompt fell from p = 0.998 to 0.58; with 2 image anchors
and one contested image prompt, held-out image accuracy fell 0.98 -> 0.90). A solved prompt in the rollouts that
starts to slip draws wrong samples, and GRPO pushes it back; one that is not, drifts. Probing 32 prompts of each
media modality also finds several contested ones where 8 found one, so the update follows what they share
instead of fitting a single prompt.
Why small steps (lr 3e-3, 16 prompts a rollout) rather than fewer, larger ones: at lr 6e-3 to 1e-2 the same
budget also moved the media rationales (held-out video fell to 0.98 and, on one seed, 0.50 valid JSON) -
the media judgements ride on the same decoder and their anchors only hold them while the drift is small.
Measured numbers: docs/RESULTS.md.

The reference policy of the KL term is the SFT model itself (LoRA switched off), the reference's setting
(ms-swift GRPO with LoRA on the stage-1 model).
"""

from __future__ import annotations

import collections
import glob
import json
import os

import numpy as np

from omnirrm_jax.demo.config import DemoConfig, DemoGRPOConfig
from omnirrm_jax.demo.data import DEMO_VIDEO, DemoData, media_buckets, pipeline_config
from omnirrm_jax.rubric.vocab import MODALITIES as ALL_MODALITIES

MEDIA_KEYS = {"images": "image", "videos": "video", "audios": "audio"}  # ms-swift columns -> modality
# Every demo prompt (judge prompt, chat template, media placeholders) is at most 109 tokens: one 128 bucket
# halves the prompt part of the rollout and the update next to SFT's 256 (prompt + judgement).
PROMPT_BUCKETS = (128, 256, 512)


def _modality(row: dict) -> str:
    return next((m for k, m in MEDIA_KEYS.items() if row.get(k)), "text")


def _prep_rows(root: str, split: str, rows: list[dict]) -> str:
    """Writes `rows` as `{split}.jsonl` under the media root and prepares them into a fresh `grpo_shards/{split}/`
    (derived from the probe, so rebuilt on every run); returns the shard glob."""
    import shutil

    from data_prep.prep import prep
    from omnirrm_jax.data.media import MediaConfig, VideoConfig

    src, out = os.path.join(root, f"{split}.jsonl"), os.path.join(root, "grpo_shards", split)
    with open(src, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    shutil.rmtree(out, ignore_errors=True)
    prep([src], root, out, media_cfg=MediaConfig(video=VideoConfig(**DEMO_VIDEO)), split=split,
         records_per_shard=10_000)
    return os.path.join(out, f"{split}-*.array_record")


def distinct_prompts(rows: list[dict], per_modality: tuple[int, int, int, int]) -> list[dict]:
    """The first `per_modality[m]` distinct prompts of each modality, in file order (the arithmetic repeats its
    32 questions; media prompts differ by their files)."""
    pool, seen, taken = [], set(), collections.Counter()
    for row in rows:
        key, m = json.dumps([row["messages"], row.get("images"), row.get("videos"), row.get("audios")]), _modality(row)
        if key not in seen and taken[m] < per_modality[ALL_MODALITIES.index(m)]:
            seen.add(key)
            taken[m] += 1
            pool.append(row)
    return pool


def choose_rl_rows(modalities: list[str], spread: np.ndarray, solved: np.ndarray,
                   gcfg: DemoGRPOConfig) -> tuple[list[int], dict]:
    """Indices (with repeats) of the probed prompts that make the RL split: every contested prompt (its sampled
    rewards differ) `contested_repeat` times, then up to `anchors[m]` solved ones (all samples right) per
    modality; prompts whose samples all earned the same imperfect reward carry no advantage and are left out.
    With nothing contested or solved (an untrained judge), every probed prompt once.

    Returns (indices, counts per modality: {"contested", "anchors"})."""
    contested = [i for i, s in enumerate(spread) if s > 0]
    anchors, kept = [], collections.Counter()
    for i, m in enumerate(modalities):
        if spread[i] == 0 and solved[i] and kept[m] < gcfg.anchors[ALL_MODALITIES.index(m)]:
            kept[m] += 1
            anchors.append(i)
    chosen = sorted(contested * gcfg.contested_repeat + anchors) or list(range(len(modalities)))
    return chosen, {"contested": dict(collections.Counter(modalities[i] for i in contested)), "anchors": dict(kept)}


def probe(model, tok, rows: list[dict], glob_: str, gcfg: DemoGRPOConfig, max_new_tokens: int,
          seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The SFT judge samples `probe_generations` judgements of each prepared prompt (`glob_`, the rows of
    `rows`) with the GRPO sampling settings; returns per prompt the spread (max - min) of their rewards and
    whether every sample gave the gold verdict."""
    import jax

    from omnirrm_jax.data import pipeline
    from omnirrm_jax.decoding.sampler import generate
    from omnirrm_jax.training import rollout
    from omnirrm_jax.training.grpo_config import GRPOSpec
    from omnirrm_jax.models.thinker import model_inputs

    spec = GRPOSpec(num_generations=gcfg.probe_generations, temperature=gcfg.temperature, top_p=gcfg.top_p,
                    top_k=gcfg.top_k, max_completion_length=max_new_tokens)
    pcfg = pipeline_config("grpo", 16, PROMPT_BUCKETS, num_epochs=1, drop_remainder=False, shuffle_seed=None)
    spread, solved = np.full(len(rows), np.nan), np.zeros(len(rows), bool)
    key = jax.random.key(seed)
    for i, batch in enumerate(pipeline.make_dataset(sorted(glob.glob(glob_)), tok, model.config, pcfg)):
        result = generate(model, model_inputs(batch), rollout.sampling_config(spec, tok), jax.random.fold_in(key, i))
        scored = rollout.score_rollout(tok, np.asarray(result.tokens), np.asarray(result.lengths), batch, spec)
        for b in np.flatnonzero(np.asarray(batch["valid"])):
            row = int(batch["example_index"][b])
            spread[row], solved[row] = np.ptp(scored["total"][b]), scored["correct"][b].all()
    if np.isnan(spread).any():
        raise RuntimeError(f"probe: {int(np.isnan(spread).sum())} of {len(rows)} prompts were not judged")
    return spread, solved


def rl_split(model, tok, data: DemoData, gcfg: DemoGRPOConfig, max_new_tokens: int, seed: int) -> tuple[str, dict]:
    """Prepares the RL split from the train split's RL rows (`grpo_train.jsonl`: prompt + gold verdict/scores):
    the probe's choice (`choose_rl_rows`), or every row when `probe_per_modality` is all 0.

    Returns (shard glob, {"probed", "contested", "anchors": counts per modality, "rows"}; {} without a probe)."""
    with open(os.path.join(data.root, "grpo_train.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    if not any(gcfg.probe_per_modality):
        return _prep_rows(data.root, "grpotrain", rows), {}
    pool = distinct_prompts(rows, gcfg.probe_per_modality)
    spread, solved = probe(model, tok, pool, _prep_rows(data.root, "grpoprobe", pool), gcfg, max_new_tokens, seed)
    modalities = [_modality(r) for r in pool]
    chosen, counts = choose_rl_rows(modalities, spread, solved, gcfg)
    stats = {"probed": dict(collections.Counter(modalities)), **counts, "rows": len(chosen)}
    return _prep_rows(data.root, "grporl", [pool[i] for i in chosen]), stats


def grpo_seed(demo_cfg: DemoConfig, gcfg: DemoGRPOConfig) -> int:
    return demo_cfg.seed if gcfg.seed is None else gcfg.seed


def grpo_config(demo_cfg: DemoConfig, gcfg: DemoGRPOConfig, base_dir: str, train_glob: str, tok_path: str, workdir: str,
                rl_rows: int):
    """The `GRPOConfig` of the stage: LoRA on the SFT model's HF export, float32, `rollouts` rollout batches of
    `prompts_per_rollout` prompts (all `rl_rows` when None)."""
    from omnirrm_jax.training import config as C
    from omnirrm_jax.training.grpo_config import GRPOConfig, GRPOSpec
    from omnirrm_jax.training.lora import LoraConfig
    from omnirrm_jax.training.optim import OptimConfig
    from omnirrm_jax.parallel.sharding import MeshConfig

    import jax

    b = min(gcfg.prompts_per_rollout or rl_rows, rl_rows)
    seed = grpo_seed(demo_cfg, gcfg)
    # prompts shard over the data axis when they divide it (tests run 8 fake devices); else parameters do
    mesh = MeshConfig(data=-1) if b % jax.device_count() == 0 else MeshConfig(data=1, fsdp=-1)
    return GRPOConfig(
        model=C.ModelSpec(preset=None, hf_path=base_dir, dtype="float32", param_dtype="float32",
                          lora=LoraConfig(rank=gcfg.lora_rank, alpha=gcfg.lora_alpha)),
        data=C.DataSpec(train=(train_glob,), tokenizer=tok_path,
                        pipeline={"batch_size": b, "shuffle_seed": seed + 1, "seq_buckets": PROMPT_BUCKETS,
                                  "media_buckets": media_buckets(b)}),
        optim=OptimConfig(learning_rate=gcfg.learning_rate, warmup_ratio=gcfg.warmup_ratio, weight_decay=0.0,
                          eps=gcfg.adam_eps),
        mesh=mesh,
        # max_steps counts optimizer updates: num_iterations of them per rollout batch
        run=C.RunSpec(workdir=workdir, seed=seed, max_steps=gcfg.rollouts * gcfg.num_iterations, log_every=5,
                      save_every=10 ** 9, keep_checkpoints=1),
        grpo=GRPOSpec(num_generations=gcfg.num_generations, beta=gcfg.beta, scale_rewards=gcfg.scale_rewards,
                      temperature=gcfg.temperature,
                      top_p=gcfg.top_p, top_k=gcfg.top_k, num_iterations=gcfg.num_iterations,
                      max_completion_length=gcfg.max_completion_length or demo_cfg.max_new_tokens))


def run_grpo_stage(demo_cfg: DemoConfig, sft_model, tok, tok_path: str, data: DemoData, gcfg: DemoGRPOConfig,
                   progress: bool = True) -> dict:
    """Picks the RL prompts (`rl_split`), trains the GRPO stage from `sft_model`, exports the merged judge as HF
    safetensors and reads it back.

    Returns {"model": the reloaded export, "history": per-rollout metrics, "export_dir",
    "reloaded_equal": the reloaded parameters equal the trained, merged ones bit for bit, "rollouts",
    "prompts": `rl_split` counts, "seconds": {"probe", "train", "export"}}.
    """
    import time

    from omnirrm_jax.training import export as export_lib
    from omnirrm_jax.models import params as P
    from omnirrm_jax.training import grpo

    t0 = time.time()
    base_dir = os.path.join(demo_cfg.workdir, "sft_hf")
    P.save_hf(sft_model, base_dir)
    max_new = gcfg.max_completion_length or demo_cfg.max_new_tokens
    train_glob, prompts = rl_split(sft_model, tok, data, gcfg, max_new, grpo_seed(demo_cfg, gcfg))
    if progress and prompts:
        print(f"GRPO prompts: contested {prompts['contested']} (x{gcfg.contested_repeat}) + anchors "
              f"{prompts['anchors']} of probed {prompts['probed']}", flush=True)
    rl_rows = prompts.get("rows") or sum(1 for _ in open(os.path.join(data.root, "grpo_train.jsonl")))
    t1 = time.time()
    workdir = os.path.join(demo_cfg.workdir, "grpo")
    out = grpo.train(grpo_config(demo_cfg, gcfg, base_dir, train_glob, tok_path, workdir, rl_rows),
                     progress=progress)
    t2 = time.time()
    # `omnirrm export`: the base rebuilt from sft_hf, the LoRA checkpoint restored over it, merged, HF safetensors
    written = export_lib.export(workdir, os.path.join(demo_cfg.workdir, "grpo_export"), formats=("hf",))
    reloaded, _ = P.load_hf(written["hf"])
    trained = export_lib.merged(export_lib.Trained(out["state"].model(), out["rollouts"], {}, False))
    seconds = {"probe": round(t1 - t0, 1), "train": round(t2 - t1, 1), "export": round(time.time() - t2, 1)}
    return {"model": reloaded, "history": out["history"], "export_dir": written["hf"],
            "reloaded_equal": same_params(trained, reloaded), "rollouts": out["rollouts"], "prompts": prompts,
            "seconds": seconds}


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

