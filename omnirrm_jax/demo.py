"""`omnirrm demo`: the whole path on the embedded demo task, from nothing to a judge that perceives media.

  generate demo data (images, mp4, wav, arithmetic) -> `prep` (PyAV, librosa, ArrayRecord) -> SentencePiece
  tokenizer -> tiny thinker trained with SFT (full fine-tuning from random weights) -> held-out pairwise
  accuracy per modality from greedy judgements -> checkpoint saved and reloaded -> a short GRPO stage (LoRA on
  the SFT judge, rubric rewards; `demo_grpo`) -> merged export reloaded and evaluated again -> one judgement
  per modality; and a control run on blanked media, which must stay near chance.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import numpy as np

from omnirrm_jax.demo_grpo import DemoGRPOConfig

log = logging.getLogger(__name__)

DEMO_VIDEO = dict(min_pixels=3136, max_pixels=3136)  # keep the 56x56 demo clips at 4 patches a frame
SEQ_BUCKETS = (256, 288, 320, 384, 448, 512)


def media_buckets(batch: int) -> tuple:
    """One media budget that holds a batch of demo items of any mix: a 56x56 image is 16 patches, a 4-frame
    clip 32, a 1 s audio one chunk and 25 tokens."""
    return ((16 * batch, 32 * batch, batch, 25 * batch),)


def pipeline_config(mode: str, batch: int, seq_buckets: tuple = SEQ_BUCKETS, **kw):
    from omnirrm_jax.data import pipeline

    return pipeline.PipelineConfig(mode=mode, batch_size=batch, seq_buckets=seq_buckets,
                                   media_buckets=media_buckets(batch), **kw)


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    workdir: str = "runs/demo"
    n_train_per_modality: int = 240
    n_train_text: int | None = 480  # None: n_train_per_modality; arithmetic gets more items (make_demo)
    n_eval_per_modality: int = 48
    steps: int = 1000
    batch_size: int = 16
    learning_rate: float = 3e-3
    # Adam's second-moment decay. 0.95, not 0.999: the boilerplate's large early gradients otherwise keep the
    # second moment high for ~1000 steps and shrink the later, small updates that learn the decisions (same
    # 1000 steps, operands 1..4: 0.999 gave text/image/video/audio 0.58/0.88/0.54/1.00, 0.99 0.50/0.63/0.73/0.50,
    # 0.95 0.73/0.94/1.00/1.00 held-out, one run each).
    adam_b2: float = 0.95
    vocab_size: int = 800
    preset: str = "demo"  # models.config preset (tiny + a text decoder sized for the task)
    max_new_tokens: int = 200
    control: bool = True
    grpo: DemoGRPOConfig | None = DemoGRPOConfig()  # None: stop after SFT
    seed: int = 0


def _prepare(cfg: DemoConfig, name: str, blank: bool) -> dict:
    from data_prep.make_demo import make_demo
    from data_prep.prep import prep
    from omnirrm_jax.data.media import MediaConfig, VideoConfig

    root = os.path.join(cfg.workdir, name)
    info = make_demo(root, n_train_per_modality=cfg.n_train_per_modality, n_train_text=cfg.n_train_text,
                     n_eval_per_modality=cfg.n_eval_per_modality, seed=cfg.seed, compact=True, blank_media=blank)
    media_cfg = MediaConfig(video=VideoConfig(**DEMO_VIDEO))
    shards = os.path.join(root, "shards")
    # eval: prompts + gold labels (greedy judgements); eval_sft: prompts + gold judgements (held-out loss)
    for split, fname in (("train", "train.jsonl"), ("eval", "grpo_eval.jsonl"), ("eval_sft", "eval.jsonl")):
        prep([os.path.join(root, fname)], root, shards, media_cfg=media_cfg, split=split,
             records_per_shard=10_000)
    return {"root": root, "shards": shards, "info": info}


def _tokenizer(cfg: DemoConfig, data_root: str):
    from omnirrm_jax.data.tokenizer import train_sentencepiece

    texts = []
    with open(os.path.join(data_root, "train.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            texts.extend(m["content"] for m in row["messages"])
    path = os.path.join(cfg.workdir, "tokenizer")
    tok = train_sentencepiece(texts, cfg.vocab_size, path, split_digits=True)
    return tok, path + ".model"


def _sft_config(cfg: DemoConfig, shards: str, tok_path: str, workdir: str):
    from omnirrm_jax.training import config as C
    from omnirrm_jax.training.optim import OptimConfig
    from omnirrm_jax.training.sharding import MeshConfig

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


def _evaluate(model, tok, thinker_cfg, shards: str, cfg: DemoConfig, *, constrained: bool = False) -> dict:
    from omnirrm_jax.data import pipeline
    from omnirrm_jax.eval.judge import pairwise_accuracy

    pcfg = pipeline_config("grpo", 64, num_epochs=1, drop_remainder=False, shuffle_seed=None)
    paths = sorted(os.path.join(shards, f) for f in os.listdir(shards) if f.startswith("eval-"))
    batches = pipeline.make_dataset(paths, tok, thinker_cfg, pcfg)
    return pairwise_accuracy(model, tok, batches, max_new_tokens=cfg.max_new_tokens, constrained=constrained)


def _train(cfg: DemoConfig, prepared: dict, tok_path: str, name: str):
    import jax

    from omnirrm_jax.training import sft

    workdir = os.path.join(cfg.workdir, name)
    out = sft.train(_sft_config(cfg, prepared["shards"], tok_path, workdir), progress=True)
    return out, workdir, jax


def _reload(out: dict, workdir: str):
    """Restores the saved checkpoint into a fresh state and returns the model (proves save/reload)."""
    import jax

    from omnirrm_jax.checkpoint.manager import CheckpointManager, abstract_like
    from flax import nnx

    state = out["state"]
    mngr = CheckpointManager(os.path.join(workdir, "checkpoints"))
    target = {"trainable": abstract_like(state.trainable), "opt_state": abstract_like(state.opt_state),
              "step": abstract_like(state.step)}
    restored, _, meta = mngr.restore(None, abstract_state=target)
    mngr.close()
    same = all(bool((a == b).all()) for a, b in zip(jax.tree.leaves(restored["trainable"]),
                                                     jax.tree.leaves(state.trainable)))
    return nnx.merge(state.graphdef, restored["trainable"], state.frozen), same, int(meta["micro_step"])


def _table(results: dict) -> str:
    mods = ("text", "image", "video", "audio")
    lines = [f"{'run':<10}" + "".join(f"{m:>24}" for m in mods),
             " " * 10 + "".join(f"{'acc / json / reward':>24}" for _ in mods)]
    for run, res in results.items():
        cells = "".join(f"{res[m]['accuracy']:>8.2f} / {res[m]['valid_json']:.2f} / "
                        f"{res[m].get('mean_reward', np.nan):+.3f}" if m in res else f"{'-':>24}" for m in mods)
        lines.append(f"{run:<10}{cells}")
    if "sft" in results and "grpo" in results:  # what the GRPO stage changed
        before, after = results["sft"], results["grpo"]
        cells = "".join(f"{after[m]['accuracy'] - before[m]['accuracy']:>+7.2f} / "
                        f"{after[m]['valid_json'] - before[m]['valid_json']:+.2f} / "
                        f"{after[m].get('mean_reward', np.nan) - before[m].get('mean_reward', np.nan):+.3f}"
                        if m in before and m in after else f"{'-':>24}" for m in mods)
        lines.append(f"{'grpo-sft':<10}{cells}")
    return "\n".join(lines)


def _rows(real: dict, control: dict | None) -> dict:
    """demo_report.json's per-modality rows: held-out accuracy, valid-JSON rate and mean GRPO reward
    (`combined_reward`) of the greedy judgements, and the accuracy on blanked media (`control`)."""
    return {m: {"accuracy": r["accuracy"], "valid_json": r["valid_json"],
                "blank_media_accuracy": control[m]["accuracy"] if control and m in control else None,
                "mean_reward": r.get("mean_reward"), "n": r["n"]} for m, r in real.items()}


def run_demo(cfg: DemoConfig = DemoConfig()) -> dict:
    t0 = time.time()
    seconds = {}  # per stage, in the report: the whole demo has a CPU time budget
    # the demo's time depends on what else the (shared) machine runs: 1-minute load average after each stage
    load = {"start": os.getloadavg()}
    n = 4 + int(cfg.control) + int(cfg.grpo is not None)  # stages printed as [i/n]

    def lap(name):
        seconds[name] = round(time.time() - t0 - sum(seconds.values()), 1)
        load[name] = round(os.getloadavg()[0], 2)

    os.makedirs(cfg.workdir, exist_ok=True)
    print(f"[1/{n}] generating and preparing demo data (images, mp4 videos, wav audio, arithmetic)", flush=True)
    real = _prepare(cfg, "data", blank=False)
    tok, tok_path = _tokenizer(cfg, real["root"])
    lap("data")
    print(f"[2/{n}] SFT of a tiny thinker from random weights ({cfg.steps} steps)", flush=True)
    out, workdir, _ = _train(cfg, real, tok_path, "sft")
    thinker_cfg = out["thinker_config"]
    lap("sft")
    print(f"[3/{n}] checkpoint reload and held-out evaluation (greedy judgements)", flush=True)
    model, reload_ok, step = _reload(out, workdir)
    results = {"sft": _evaluate(model, tok, thinker_cfg, real["shards"], cfg)}
    report = {"checkpoint": {"reloaded_equal": reload_ok, "step": step}}
    lap("sft_eval")
    blank = None
    if cfg.control:
        print(f"[4/{n}] control: the same training on blanked media", flush=True)
        blank = _prepare(cfg, "data_blank", blank=True)
        out_c, _, _ = _train(cfg, blank, tok_path, "sft_control")
        results["control"] = _evaluate(out_c["state"].model(), tok, thinker_cfg, blank["shards"], cfg)
        report["control"] = results["control"]
        lap("control")
    report = {"sft": _rows(results["sft"], results.get("control")), **report}
    if cfg.grpo is not None:
        model = _grpo(cfg, model, tok, tok_path, thinker_cfg, real, blank, results, report, n)
        lap("grpo")
    print(f"[{n}/{n}] results (held-out pairwise accuracy / valid-JSON rate / mean combined reward)\n"
          + _table(results), flush=True)
    examples = _one_judgement_per_modality(model, tok, thinker_cfg, real["shards"], cfg)
    for modality, text in examples.items():
        print(f"\n--- {modality} ---\n{text}")
    report["examples"] = examples
    lap("examples")
    report["seconds"] = time.time() - t0
    report["seconds_by_stage"] = seconds
    report["load_average"] = {**load, "end": os.getloadavg()}
    with open(os.path.join(cfg.workdir, "demo_report.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nreport: {os.path.join(cfg.workdir, 'demo_report.json')} ({report['seconds']:.0f} s, "
          f"load average {load['start'][0]:.1f} -> {report['load_average']['end'][0]:.1f})")
    return report


def _grpo(cfg: DemoConfig, sft_model, tok, tok_path: str, thinker_cfg, real: dict, blank: dict | None,
          results: dict, report: dict, n: int):
    """The GRPO stage (`demo_grpo`); adds report["grpo"] (rows like "sft", from the reloaded export; its
    blank_media_accuracy is this judge's accuracy on the blanked held-out set, not a second control run),
    report["grpo_checkpoint"] and report["grpo_training"]. Returns the reloaded GRPO judge."""
    from omnirrm_jax import demo_grpo

    g = cfg.grpo
    print(f"[{n - 1}/{n}] GRPO: LoRA on the SFT judge, rubric rewards ({g.rollouts} rollouts of {g.prompts_per_rollout} "
          f"prompts x {g.num_generations} samples), merged export reloaded, held-out evaluation", flush=True)
    stage = demo_grpo.run_grpo_stage(cfg, sft_model, tok, tok_path, real, g)
    model = stage["model"]
    results["grpo"] = _evaluate(model, tok, thinker_cfg, real["shards"], cfg)
    on_blank = _evaluate(model, tok, thinker_cfg, blank["shards"], cfg) if blank else None
    report["grpo"] = _rows(results["grpo"], on_blank)
    report["grpo_checkpoint"] = {"reloaded_equal": stage["reloaded_equal"], "rollouts": stage["rollouts"],
                                 "export_dir": stage["export_dir"]}
    report["grpo_training"] = {**demo_grpo.history_summary(stage["history"]), "prompts": stage["prompts"],
                               "seconds": stage["seconds"]}
    print(f"GRPO export {stage['export_dir']} reloaded: parameters equal the trained merged model: "
          f"{stage['reloaded_equal']} (probe {stage['seconds']['probe']:.0f} s, training "
          f"{stage['seconds']['train']:.0f} s)", flush=True)
    return model


def _one_judgement_per_modality(model, tok, thinker_cfg, shards: str, cfg: DemoConfig) -> dict:
    from omnirrm_jax.data import pipeline
    from omnirrm_jax.eval.judge import MODALITIES, judge_batch

    pcfg = pipeline_config("grpo", 8, num_epochs=1, drop_remainder=False, shuffle_seed=None)
    paths = sorted(os.path.join(shards, f) for f in os.listdir(shards) if f.startswith("eval-"))
    seen = {}
    for batch in pipeline.make_dataset(paths, tok, thinker_cfg, pcfg):
        judged = judge_batch(model, tok, batch, max_new_tokens=cfg.max_new_tokens)
        for j, mod, v in zip(judged, np.asarray(batch["modality"]), np.asarray(batch["valid"])):
            name = MODALITIES[int(mod)]
            if v and name not in seen:
                seen[name] = j["text"]
        if len(seen) == 4:
            break
    return seen
