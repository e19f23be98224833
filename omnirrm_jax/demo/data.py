"""The demo's data: generated media and arithmetic (data_prep.make_demo) prepared into ArrayRecord shards, the
SentencePiece tokenizer trained on it, and the pipeline shapes that hold it.

`prepare_demo_data` is the one call tests use as a fixture (data + tokenizer, optionally the GRPO train split);
the demo itself calls `prepare_data` and `train_tokenizer` (its blanked-media control reuses the real tokenizer).
"""

from __future__ import annotations

import dataclasses
import json
import os

from omnirrm_jax.demo.config import DemoConfig

DEMO_VIDEO = dict(min_pixels=3136, max_pixels=3136)  # keep the 56x56 demo clips at 4 patches a frame
SEQ_BUCKETS = (256, 288, 320, 384, 448, 512)


def media_buckets(batch: int) -> tuple:
    """One media budget that holds a batch of demo items of any mix: a 56x56 image is 16 patches, a 4-frame
    clip 32, a 1 s audio one chunk and 25 tokens."""
    return ((16 * batch, 32 * batch, batch, 25 * batch),)


def pipeline_config(mode: str, batch: int, seq_buckets: tuple = SEQ_BUCKETS, **kw):
    """A `data.pipeline.PipelineConfig` with the demo's sequence and media buckets."""
    from omnirrm_jax.data import pipeline

    return pipeline.PipelineConfig(mode=mode, batch_size=batch, seq_buckets=seq_buckets,
                                   media_buckets=media_buckets(batch), **kw)


def train_sizes(cfg: DemoConfig) -> dict[str, int]:
    """Train items per modality: `cfg.train_mix` times `cfg.n_train_per_modality`."""
    from omnirrm_jax.rubric.vocab import MODALITIES

    if len(cfg.train_mix) != len(MODALITIES) or min(cfg.train_mix) < 1:
        raise ValueError(f"train_mix needs a positive multiple for each of {MODALITIES}, got {cfg.train_mix}")
    return {m: int(k) * cfg.n_train_per_modality for m, k in zip(MODALITIES, cfg.train_mix)}


@dataclasses.dataclass(frozen=True)
class DemoData:
    """Prepared demo data.

    root: the media root (train.jsonl, grpo_train.jsonl, ... and media/); shards: its ArrayRecord shards
    (train-, eval- = prompts + gold labels, eval_sft- = prompts + gold judgements, grpotrain- when asked for);
    info: what `make_demo` wrote; tokenizer_path: the SentencePiece .model (`prepare_demo_data` only).
    """

    root: str
    shards: str
    info: dict
    tokenizer_path: str | None = None


def _prep(root: str, shards: str, fname: str, split: str) -> None:
    from data_prep.prep import prep
    from omnirrm_jax.data.media import MediaConfig, VideoConfig

    prep([os.path.join(root, fname)], root, shards, media_cfg=MediaConfig(video=VideoConfig(**DEMO_VIDEO)),
         split=split, records_per_shard=10_000)


def prepare_data(cfg: DemoConfig, name: str = "data", *, blank: bool = False) -> DemoData:
    """Generates the demo set under `cfg.workdir/name` (media blanked with `blank`) and prepares its shards."""
    from data_prep.make_demo import make_demo

    root = os.path.join(cfg.workdir, name)
    info = make_demo(root, n_train_per_modality=cfg.n_train_per_modality, n_train=train_sizes(cfg),
                     n_eval_per_modality=cfg.n_eval_per_modality, seed=cfg.seed, compact=True, blank_media=blank)
    shards = os.path.join(root, "shards")
    # eval: prompts + gold labels (greedy judgements); eval_sft: prompts + gold judgements (held-out loss)
    for split, fname in (("train", "train.jsonl"), ("eval", "grpo_eval.jsonl"), ("eval_sft", "eval.jsonl")):
        _prep(root, shards, fname, split)
    return DemoData(root=root, shards=shards, info=info)


def train_tokenizer(cfg: DemoConfig, data_root: str):
    """Trains the demo's SentencePiece tokenizer on the train split's messages; returns (tokenizer, .model path)."""
    from omnirrm_jax.data.tokenizer import train_sentencepiece

    texts = []
    with open(os.path.join(data_root, "train.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            texts.extend(m["content"] for m in row["messages"])
    path = os.path.join(cfg.workdir, "tokenizer")
    tok = train_sentencepiece(texts, cfg.vocab_size, path, split_digits=True)
    return tok, path + ".model"


def prepare_demo_data(cfg: DemoConfig, *, grpo_train: bool = False) -> DemoData:
    """Demo data with its tokenizer, as tests use it: `prepare_data` + `train_tokenizer` (+ the RL rows of the
    train split as `grpotrain-` shards with `grpo_train`)."""
    data = prepare_data(cfg)
    if grpo_train:
        _prep(data.root, data.shards, "grpo_train.jsonl", "grpotrain")
    _, tok_path = train_tokenizer(cfg, data.root)
    return dataclasses.replace(data, tokenizer_path=tok_path)
