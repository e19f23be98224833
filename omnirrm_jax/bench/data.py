"""`omnirrm bench data`: samples/s of the Grain input pipeline over prepared shards, padding waste per bucket,
and the bounded set of batch shapes it can emit (each one is a separate compiled train step).

Two cases, both end to end from ArrayRecord shards to finalized host batches (what the trainer receives):
  demo       `data_prep.make_demo` + `omnirrm prep` (reference judge prompts, tiny media), SentencePiece tokenizer
             trained on its texts;
  synthetic  ~3072-token reference judge prompts with real-sized media, rotating image (448x448, 256 tokens),
             video (8 frames 280x336, 480 tokens) and audio (20 s, 500 tokens), written as records directly.
Host-side dimensions come from the 7B thinker config (patch size, audio window); the model itself is not built.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from omnirrm_jax.cli import Parser


def _tokenizer(texts, path: str | None, vocab: int):
    from omnirrm_jax.data.tokenizer import load_tokenizer, train_sentencepiece
    if path is None:
        return train_sentencepiece(texts, vocab)
    return load_tokenizer(path)


def make_demo_shards(root: Path, n_per_modality: int, workers: int) -> tuple[Path, list[str]]:
    from data_prep import make_demo, prep
    info = make_demo.make_demo(root / "demo", n_train_per_modality=n_per_modality, n_eval_per_modality=4)
    prep.prep([info["files"]["train"]], info["media_root"], root / "demo_sft", num_workers=workers,
              records_per_shard=64)
    texts = [m["content"] for line in open(info["files"]["train"], encoding="utf-8")
             for m in json.loads(line)["messages"]]
    return root / "demo_sft", texts


def _words(rng, n: int, lexicon: list[str]) -> str:
    return " ".join(lexicon[i] for i in rng.integers(len(lexicon), size=n))


def make_synthetic_shards(root: Path, n: int, target: int, tok_path: str | None, vocab: int):
    """n records of ~`target` tokens (prompt + media + judgement) with media; returns (folder, tokenizer)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    from omnirrm_jax.data import records as R
    from omnirrm_jax.rubric import prompts, schema
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lexicon = ["".join(rng.choice(letters, rng.integers(2, 9))) for _ in range(3000)]
    tok = _tokenizer([_words(rng, 200, lexicon) for _ in range(300)], tok_path, vocab)
    per_word = len(tok.encode(_words(rng, 2000, lexicon))) / 2000
    media_tokens = {"image": 256, "video": 480, "audio": 500}
    out = root / "synthetic"
    out.mkdir(parents=True, exist_ok=True)
    w = ArrayRecordWriter(str(out / "train-00000-of-00001.array_record"), "group_size:1")
    for i in range(n):
        modality = ("image", "video", "audio")[i % 3]
        gold = schema.format_judgement(8, 3, "A", "<think>" + _words(rng, int(150 / per_word), lexicon) + "</think>")
        fixed = len(tok.encode(prompts.user_content(modality, prompts.judge_prompt(modality, "q", "a", "b")))) + \
            len(tok.encode(gold)) + media_tokens[modality] + 40
        k = max(10, int((target - fixed) / per_word / 2))
        body = prompts.judge_prompt(modality, _words(rng, 30, lexicon), _words(rng, k, lexicon),
                                    _words(rng, k, lexicon))
        rec = {"id": f"syn{i}", "modality": modality, "gold": None, "solution": None, "cmp_gt": None,
               "source": {"file": "synthetic", "line": i}, "use_audio_in_video": False, "extra": {},
               "messages": [{"role": "user", "content": prompts.user_content(modality, body)},
                            {"role": "assistant", "content": gold}],
               "media_paths": {"images": [], "videos": [], "audios": []}, "images": [], "videos": [], "audios": []}
        if modality == "image":
            rec["images"] = [{"frames": rng.integers(0, 256, (1, 448, 448, 3), np.uint8),
                              "grid_thw": np.array([1, 32, 32], np.int64)}]
        elif modality == "video":
            rec["videos"] = [{"frames": rng.integers(0, 256, (8, 280, 336, 3), np.uint8),
                              "grid_thw": np.array([4, 20, 24], np.int64), "second_per_grid": 1.0,
                              "frame_times": np.arange(8, dtype=np.float64) / 2, "audio": None}]
        else:
            rec["audios"] = [{"features": rng.standard_normal((128, 2000)).astype(np.float32), "length": 2000}]
        rec["media_paths"] = {k: ["x"] * len(rec[k]) for k in ("images", "videos", "audios")}
        w.write(R.encode_record(rec))
    w.close()
    return out, tok


def examples_in(batch) -> int:
    """Examples in a host batch: its valid rows, or with packing every segment of them (a row holds several)."""
    if "segment_ids" in batch:
        return int(np.asarray(batch["segment_ids"]).max(axis=1, initial=0)[np.asarray(batch["valid"])].sum())
    return int(np.asarray(batch["valid"]).sum())


def run(source, tok, cfg, *, batches: int, warmup: int) -> dict:
    """Iterate the pipeline: samples/s after `warmup` batches, padding waste per bucket, shapes seen."""
    from omnirrm_jax.data import examples as E
    from omnirrm_jax.data import pipeline as PL
    from omnirrm_jax.data.tokenizer import thinker_token_ids
    from omnirrm_jax.models.config import omni_7b
    thinker = dataclasses.replace(omni_7b(), **thinker_token_ids(tok))
    ds = PL.make_dataset(source, tok, thinker, cfg, process_index=0, process_count=1)
    it = iter(ds)
    t_start = time.perf_counter()
    for _ in range(warmup):
        next(it)
    t0, samples, tokens = time.perf_counter(), 0, 0
    waste = collections.defaultdict(lambda: np.zeros(2))  # bucket -> (padding slots, all slots)
    media_waste = collections.defaultdict(lambda: np.zeros(2))
    shapes = collections.Counter()
    for _ in range(batches):
        b = next(it)
        sig = E.batch_signature(b)
        shapes[sig] += 1
        real = int(b["attention_mask"].sum())
        samples += examples_in(b)
        tokens += real
        waste[sig[0]] += (b["attention_mask"].size - real, b["attention_mask"].size)
        media_real = (int(b["image_aux"]["valid_P"].sum()) + int(b["video_aux"]["valid_P"].sum()))
        media_waste[sig[1:]] += (sig[1] + sig[2] - media_real, sig[1] + sig[2])
    dt = time.perf_counter() - t0
    counts = PL.skip_counts(it.get_state())
    it.close()
    return {"samples_per_s": round(samples / dt, 1), "tokens_per_s": round(tokens / dt),
            "batches": batches, "seconds": round(dt, 2), "startup_s": round(t0 - t_start, 2),
            "mean_tokens_per_sample": round(tokens / max(samples, 1)),
            "padding_waste_by_seq_bucket": {int(k): round(v[0] / v[1], 3) for k, v in sorted(waste.items())},
            "patch_padding_waste_by_media_bucket": {str(k): round(v[0] / v[1], 3) for k, v in
                                                    sorted(media_waste.items())},
            "shapes_seen": {str(k): v for k, v in shapes.items()},
            "possible_shapes": len(PL.batch_shapes(cfg, thinker)),
            "possible_signatures": [[s, list(m)] for s in cfg.seq_buckets for m in cfg.media_buckets],
            "skips": counts["skipped"]}


def main(argv=None) -> int:
    from omnirrm_jax.data.pipeline import PipelineConfig
    p = Parser(prog="omnirrm bench data", description=__doc__.split("\n")[0])
    p.add_argument("--case", choices=["demo", "synthetic", "both"], default="both")
    p.add_argument("--data", default=None, help="prepared shards (folder or files) instead of the demo set")
    p.add_argument("--tokenizer", default=None, help="HF checkpoint dir or SentencePiece .model (default: train one)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--group-window", type=int, default=1)
    p.add_argument("--pack", action="store_true", help="pack several examples per row (SFT packing); samples/s "
                   "counts examples, not rows")
    p.add_argument("--synthetic-records", type=int, default=96)
    p.add_argument("--workdir", default=None, help="keep generated data here (default: a temp folder)")
    a = p.parse_args(argv)
    if a.data and not a.tokenizer:
        p.error("--data needs --tokenizer (the model's tokenizer)")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.workdir or tmp)
        base = dict(batch_size=a.batch_size, worker_count=a.workers, group_window=a.group_window,
                    max_skip_ratio=1.0, shuffle_seed=0, pack=a.pack)
        if a.case in ("demo", "both"):
            if a.data:
                src, texts = a.data, [""]
            else:
                src, texts = make_demo_shards(root, 24, a.workers)
            tok = _tokenizer(texts, a.tokenizer, 2000)
            cfg = PipelineConfig(seq_buckets=(512, 1024, 2048, 3072),  # demo: 16-patch images, ~1k-patch videos
                                 media_buckets=((256, 2048, 4, 100), (512, 4096, 8, 200)), **base)
            results["demo"] = run(src, tok, cfg, batches=a.batches, warmup=a.warmup)
        if a.case in ("synthetic", "both"):
            src, tok = make_synthetic_shards(root, a.synthetic_records, 3040, a.tokenizer, 8000)  # ~3065 tokens
            cfg = PipelineConfig(seq_buckets=(1024, 2048, 3072),
                                 media_buckets=((4096, 8192, 40, 2000), (8192, 16384, 80, 4000)), **base)
            results["synthetic_3072"] = run(src, tok, cfg, batches=a.batches, warmup=a.warmup)
    print(json.dumps(results, indent=1))
    return 0
