"""Stage 2 of `omnirrm synth`: each prompt answered by a strong and a weak answer writer with our jitted engine.

The reference's generation scripts ("Omni Preference Construction/*/qwen_generate_example.py"), per modality:
  image  no system prompt (the chat template's default), [image, question], up to 128 new tokens
  video  system "You are an intelligent assistant for video question answering.", "Please watch the video and
         answer the following question: <video> {question}", 16 frames, up to 256 new tokens
  audio  system "You are a helpful assistant for audio QA.", [audio, question], up to 48 new tokens
  text   (no reference script) as image, without media, up to 128 new tokens
They decoded greedily (HF `generate` defaults); a writer's `temperature` changes that, so one checkpoint at two
settings can be the two writers. Prompts become examples through the judge's own path (`eval.pairs`: media decoded
once by `data_prep.rows`, ms-swift chat template), and batches go to `bon.candidates.generate_texts` (bucketed static
shapes). Answers are appended to candidates.jsonl ({id, model, text} or {id, model, error}) a batch group at a time
with fsync; a rerun skips the (id, model) rows already there, and loads no model when none is missing.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Sequence

from omnirrm_jax.errors import UserError
from omnirrm_jax.synth.config import CandidateSpec, PolicySpec
from omnirrm_jax.synth.sources import MEDIA_KEY, Prompt
from omnirrm_jax.synth.store import AppendLog, read_jsonl

log = logging.getLogger(__name__)
MAX_NEW_TOKENS = {"image": 128, "video": 256, "audio": 48, "text": 128}
SYSTEM = {"image": None, "text": None, "video": "You are an intelligent assistant for video question answering.",
          "audio": "You are a helpful assistant for audio QA."}
VIDEO_FRAMES = 16
VIDEO_LEAD = "Please watch the video and answer the following question: "
CHUNK = 64   # prompts per append: how much a kill can cost


def done_answers(path: str) -> dict:
    """{(prompt id, model label): row} already in candidates.jsonl."""
    return {(r["id"], r["model"]): r for r in read_jsonl(path) if "id" in r and "model" in r}


def media_config():
    """The inference media settings, with the reference generator's 16 video frames."""
    from omnirrm_jax.data.media import MediaConfig
    from omnirrm_jax.eval.benchmarks import INFERENCE_MEDIA_ENV

    cfg = MediaConfig.from_env(dict(INFERENCE_MEDIA_ENV))
    return dataclasses.replace(cfg, video=dataclasses.replace(cfg.video, fps_max_frames=VIDEO_FRAMES))


def prompt_example(p: Prompt, tok, cfg, opts, *, max_length: int) -> dict:
    """The answer-writer prompt of `p` as a prompt-only example (raises `eval.pairs.PairError`)."""
    from omnirrm_jax.data import examples as E
    from omnirrm_jax.eval import pairs

    tag = f"<{p.modality}>" if p.media else ""
    row = {"modality": p.modality, **({MEDIA_KEY[p.modality]: [p.media]} if p.media else {})}
    rec = pairs.media_record(row, tag, opts)
    if p.modality == "video":
        items = [{"type": "text", "text": VIDEO_LEAD}] + E.swift_items(tag) + [{"type": "text",
                                                                                "text": " " + p.question}]
    else:
        items = E.swift_items(tag) + [{"type": "text", "text": p.question}]
    msgs = [{"role": "user", "content": items}]
    if SYSTEM[p.modality]:
        msgs.insert(0, {"role": "system", "content": [{"type": "text", "text": SYSTEM[p.modality]}]})
    return pairs.prompt_examples(rec, [msgs], 0, tok, cfg, max_length=max_length)[0]


def writer_settings(policy: PolicySpec) -> dict:
    """What makes a writer's answers what they are; stored with each answer, so a config that points the label at
    another checkpoint, adapter or temperature is refused instead of silently reusing the old answers."""
    return {"checkpoint": policy.checkpoint, "lora": policy.lora, "dtype": policy.dtype,
            "temperature": policy.temperature}


def _check_writer(done: dict, policy: PolicySpec, path: str) -> None:
    want = writer_settings(policy)
    for (pid, label), row in done.items():
        have = row.get("writer")
        if label == policy.label and have is not None and have != want:
            changed = sorted(k for k in want if have.get(k) != want[k])
            raise UserError(f"{path}: the answers of {policy.label!r} were written with {changed} = "
                            f"{[have.get(k) for k in changed]}, the config now says {[want[k] for k in changed]}; "
                            f"use another out_dir or another label (prompt {pid})")


def write_candidates(prompts: Sequence[Prompt], spec: CandidateSpec, path: str, media_root: str,
                     load: Callable[[PolicySpec], tuple], progress=None) -> dict:
    """Answers every (prompt, writer) missing from `path`. `load(policy)` -> (model, cfg, tok). Returns counts
    {label: {"written", "cached", "errors"}}."""
    from data_prep.rows import RowOptions
    from omnirrm_jax.bon.candidates import generate_texts
    from omnirrm_jax.eval import pairs

    done = done_answers(path)
    counts = {}
    out = AppendLog(path)
    try:
        loaded: dict = {}
        for policy in (spec.strong, spec.weak):
            _check_writer(done, policy, path)
            todo = [p for p in prompts if (p.id, policy.label) not in done]
            counts[policy.label] = {"written": 0, "cached": len(prompts) - len(todo), "errors": 0}
            if not todo:
                continue
            key = (policy.checkpoint, policy.lora, policy.tokenizer, policy.dtype)
            if key not in loaded:
                loaded.clear()  # one model in memory at a time
                loaded[key] = load(policy)
            model, cfg, tok = loaded[key]
            opts = RowOptions(media_root=media_root, media=media_config())
            for s in range(0, len(todo), CHUNK):
                jobs, rows = [], []
                for p in todo[s:s + CHUNK]:
                    try:
                        ex = prompt_example(p, tok, cfg, opts, max_length=spec.max_length)
                    except pairs.PairError as e:
                        rows.append({"id": p.id, "model": policy.label, "writer": writer_settings(policy),
                                     "error": {"reason": e.reason, "detail": e.detail}})
                        continue
                    jobs.append((p.id, ex, spec.max_new_tokens.get(p.modality, MAX_NEW_TOKENS[p.modality])))
                texts = generate_texts(model, cfg, tok, jobs, n=1, temperature=policy.temperature,
                                       batch_size=spec.batch_size, seed=spec.seed + s) if jobs else {}
                rows += [{"id": k, "model": policy.label, "writer": writer_settings(policy), "text": t[0].strip()}
                         for k, t in texts.items()]
                for r in rows:
                    out.append(r)
                    counts[policy.label]["errors" if "error" in r else "written"] += 1
                if progress is not None:
                    progress.update(len(todo[s:s + CHUNK]))
    finally:
        out.close()
    return counts
