"""The synth tests' inputs: the demo's media and questions (data_prep.make_demo) in the reference's source formats
(RLAIF-V-style image JSON, a video JSON list, a Clotho-AQA CSV, and generic JSONL for the text prompts), a few bad
rows among them, a config, and scripted candidate answers written where stage 2 would write them."""
from __future__ import annotations

import csv
import json
import os

import yaml

from data_prep.make_demo import make_demo


def demo_sources(root: str, n: int = 2) -> dict:
    """make_demo's train split (n per modality) as four source files under root/src; returns paths."""
    info = make_demo(os.path.join(root, "demo"), n_train_per_modality=n, n_eval_per_modality=0, seed=0)
    media_root = info["media_root"]
    rows = [json.loads(line) for line in open(info["files"]["train"])]
    src = os.path.join(root, "src")
    os.makedirs(src, exist_ok=True)
    img, vid, aud, txt = [], [], [], []
    for r in rows:
        if r.get("images"):
            img.append({"image_path": r["images"][0], "question": "What colour is the shape?"})
        elif r.get("videos"):
            vid.append({"video_path": r["videos"][0], "question": "Which way does the square move?"})
        elif r.get("audios"):
            aud.append({"file_name": r["audios"][0], "QuestionText": "Is the tone high or deep?"})
        else:
            txt.append({"question": f"What is {len(txt) + 1} + 2?"})
    img.append(dict(img[0]))                                                   # a duplicate
    img.append({"image_path": "media/images/missing.png", "question": "What?"})  # missing media
    vid.append({"video_path": "../outside.mp4", "question": "Where?"})           # outside the media root
    paths = {"image": os.path.join(src, "rlaif_v.json"), "video": os.path.join(src, "videos.json"),
             "audio": os.path.join(src, "clotho_aqa.csv"), "jsonl": os.path.join(src, "text.jsonl")}
    json.dump(img, open(paths["image"], "w"))
    json.dump(vid, open(paths["video"], "w"))
    with open(paths["audio"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "QuestionText", "answer"])
        for r in aud:
            w.writerow([r["file_name"], r["QuestionText"], "yes"])
        w.writerow(["media/audios/x.wav", "Too many", "columns", "here"])    # unreadable CSV row
    with open(paths["jsonl"], "w") as f:
        for r in txt:
            f.write(json.dumps(r) + "\n")
        f.write("{not json\n")
    return {"media_root": media_root, "paths": paths}


def write_config(path: str, src: dict, out_dir: str, teacher_url: str, *, t1: str = "t1", t2: str = "t2",
                 candidates: dict | None = None, teacher_run: dict | None = None, **extra) -> str:
    cfg = {"out_dir": out_dir, "media_root": src["media_root"], "seed": 0,
           "sources": [{"kind": k, "path": p} for k, p in src["paths"].items()],
           "teachers": [{"name": "alpha", "base_url": teacher_url, "model": t1, "api_key_env": "SYNTH_TEST_KEY",
                         "price_input_per_1m": 0.15, "price_output_per_1m": 0.6},
                        {"name": "beta", "base_url": teacher_url, "model": t2}],
           "teacher_run": {"concurrency": 4, "timeout_s": 20, "max_retries": 3, "backoff_s": 0.01,
                           **(teacher_run or {})},
           **({"candidates": candidates} if candidates else {}), **extra}
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def seed_candidates(config_path: str, markers: dict | None = None) -> list:
    """Writes both writers' answers for every prompt into the run's candidates.jsonl (the stage then loads no
    model): strong answers are longer; `markers` {i: word} adds a word to prompt i's weak answer."""
    from omnirrm_jax.synth import config as C
    from omnirrm_jax.synth.sources import read_prompts

    cfg = C.load(config_path)
    prompts = read_prompts(cfg.sources, cfg.media_root).prompts
    os.makedirs(cfg.out_dir, exist_ok=True)
    with open(os.path.join(cfg.out_dir, "candidates.jsonl"), "w") as f:
        for i, p in enumerate(prompts):
            f.write(json.dumps({"id": p.id, "model": "strong", "text": f"A careful full answer to: {p.question}"})
                    + "\n")
            f.write(json.dumps({"id": p.id, "model": "weak", "text": f"no {(markers or {}).get(i, '')}".strip()})
                    + "\n")
    return prompts
