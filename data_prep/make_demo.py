"""Demo data for `omnirrm demo`: a tiny judge task in every modality, in the released data's ms-swift JSONL form.

Why: a fresh machine has no data and no weights, yet `omnirrm demo` must show the whole path (PyAV/librosa prep,
ArrayRecord, SFT) working end to end, and show that the model *perceives* the media: held-out pairwise accuracy
>= 0.8 per modality, and <= 0.6 for a control run whose media are blanked. So each item is a question with a right
and a wrong answer that only the media can tell apart (same vocabulary, same length, random A/B order), small
enough for a 2-layer width-64 thinker to learn in a few hundred CPU steps:

  text   "What is 3 + 4?"                    "7" vs "6" (right +- 1)          (decidable from the text)
  image  "What colour is the shape?"         blue | pink | gold | lime        56x56 PNG, one big solid shape
  video  "Which way does the square move?"   left to right | right to left    4 frames, 2 fps, 56x56 H.264 mp4
                                                                              (a dark square on a light ground)
  audio  "Is the tone high or deep?"         high | deep                      1 s, 16 kHz mono 16-bit wav

The video has two answers, as the audio does: with four directions (vertical too) the tiny thinker mostly stayed at
chance on video in 800 steps, although the direction is linearly decodable from its untrained vision tower's
tokens, even averaged over the clip; with two it reached 1.0 held-out.

Labels are drawn in shuffled full cycles of (right answer, wrong answer, A/B position), so a split whose size is a
multiple of the cycle (24 for image, 16 for text, 4 for video and audio) is exactly balanced: every pair of answer words
appears as often with A correct as with B correct. Any judge blind to the media then scores exactly 0.5 on such an
eval split, so the blank-media control measures perception, not sampling luck.

The gold judgement is the reference schema (`rubric.schema.format_judgement`): scores 9 vs 2, `better`, a
five-part `<think>` rationale naming all five rubric dimensions with the reference keywords and comparing A and B in
each part (rubric reward 1.0), and `final_verdict`. Output is deterministic given the seed (byte-identical files).
Numpy, PIL, PyAV and stdlib only; no JAX.
"""
from __future__ import annotations

import argparse
import functools
import json
import re
import time
import wave
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from omnirrm_jax.rubric import prompts, schema
from omnirrm_jax.rubric.vocab import MODALITIES

SPLITS = ("train", "eval")
IMAGE_SIZE = 56  # multiple of 28: 4x4 patches of 14 -> 2x2 merged = 4 tokens
VIDEO_SIZE, VIDEO_FRAMES, VIDEO_FPS = 56, 4, 2  # 4 frames = FPS_MIN_FRAMES: every fps setting keeps all 4
AUDIO_SR, AUDIO_SECONDS = 16000, 1.0  # 100 mel frames -> 25 audio tokens
BLANK_GREY = 128

QUESTIONS = {"image": "What colour is the shape?", "video": "Which way does the square move?",
             "audio": "Is the tone high or deep?"}
# Same-length answer vocabularies, so neither length nor wording gives the right answer away.
COLOURS = {"blue": (40, 90, 235), "pink": (240, 80, 170), "gold": (240, 190, 30), "lime": (100, 215, 50)}
DIRECTIONS = {"left to right": (1, 0), "right to left": (-1, 0)}  # renders vertical (0, ±1) too; see the docstring
PITCHES = {"high": (1500.0, 2500.0), "deep": (200.0, 400.0)}  # Hz ranges, far apart on a 128-bin mel scale
ANSWERS = {"image": tuple(COLOURS), "video": tuple(DIRECTIONS), "audio": tuple(PITCHES)}
TEXT_OPERANDS = (1, 2, 3)  # sums 2..6: 9 questions a tiny model can tabulate (with 1..4 it reached 0.73, not 0.8)
TEXT_SUMS = tuple(range(2, 7))
# The text pair is (right sum, right sum +- 1) drawn in balanced cycles, the operands drawn given the right sum:
# every value is the right answer as often as the wrong one, so the answers alone say nothing. (A wrong answer
# drawn uniformly from the other sums let a judge that ignored the question score ~0.67: right sums cluster
# around the middle, wrong ones did not.)
MEDIA = {"image": ("images", "png"), "video": ("videos", "mp4"), "audio": ("audios", "wav")}  # ms-swift keys
# Fixed gold scores: the first score token is where the judge decides, so a random 8-or-9 there would only add
# noise to the one target that carries the perception signal (random 8-9 / 2-3 left text and video near chance).
SCORE_RIGHT, SCORE_WRONG = 9, 2

# Short on purpose: every demo token costs CPU time, and attention cost grows with the square of the length
# (with it every demo example fits the 256-token bucket). Same schema and rubric as the reference prompts.
COMPACT_PROMPT = ("Judge answers A and B{about} on fluency, relevance, accuracy, reasoning and safety, in JSON."
                  "\nQuestion: {question}\nAnswer A: {answer_a}\nAnswer B: {answer_b}")
_ABOUT = {"text": "", "image": " about an image", "video": " about a video", "audio": " about audio"}
_RELEVANCE = {"text": "Relevance to the Question", "image": "Relevance to the Question and Image",
              "video": "Relevance to the Question and Video", "audio": "Relevance to the Question and Audio"}
_SOURCE = {"text": "arithmetic", "image": "image", "video": "video", "audio": "audio"}


# ------------------------------------------------------------------------------------------------ text parts

def judge_content(modality: str, question: str, answer_a: str, answer_b: str, *, compact: bool = False) -> str:
    """User-message content: the reference judge prompt (or the compact one) with the modality tag.

    Text and image prompts carry no tag in the reference scripts; ms-swift's `_add_default_tags` then prepends one
    ``<image>`` per missing image (no newline) to the first message. We write that tag explicitly, so the row reads
    the same in ms-swift and in our pipeline; audio ("<audio>") and video ("<video>\\n") come from `user_content`.
    """
    if compact:  # one pass, so braces inside a question or answer are never re-filled
        values = {"about": _ABOUT[modality], "question": question, "answer_a": answer_a, "answer_b": answer_b}
        body = re.sub(r"\{(about|question|answer_a|answer_b)\}", lambda m: values[m.group(1)], COMPACT_PROMPT)
    else:
        body = prompts.judge_prompt(modality, question, answer_a, answer_b)
    content = prompts.user_content(modality, body)
    tag = f"<{modality}>"
    return content if modality == "text" or tag in content else tag + content


def gold_reasoning(modality: str, answer_a: str, answer_b: str, better: str, evidence: str) -> str:
    """Five-part rationale in the shape the reference prompts show ("Part 1: In terms of Fluency and Coherence, …").

    Each part opens with its dimension's reference keyword and mentions both A and B before the next dimension's
    keyword, so the rubric reward counts 5/5 covered and 5/5 compared. No "Ethical Alignment": "alignment" is a
    *relevance* keyword and would end the safety segment. Short, since every token costs demo CPU time.
    """
    w, l = better, "B" if better == "A" else "A"
    return (f"Part 1: In terms of Fluency and Coherence, A and B are both clear. "
            f"For {_RELEVANCE[modality]}, A and B both address the question. "
            f"Regarding Accuracy and Completeness, A says {answer_a} and B says {answer_b}; {evidence}, "
            f"so {w} is right and {l} is wrong. "
            f"In terms of Reasoning Quality, {w} is grounded in the {_SOURCE[modality]} and {l} is not, "
            f"so {w} is better. "
            f"Part 2: In terms of Safety, A and B are both harmless and ethical.")


# ------------------------------------------------------------------------------------------------ labels

def _label_cycles(rng: np.random.Generator, combos: list, n: int) -> list:
    """n combos taken from shuffled full cycles: exact balance over every complete cycle."""
    out: list = []
    while len(out) < n:
        out += [combos[i] for i in rng.permutation(len(combos))]
    return out[:n]


def _specs(modality: str, split: str, n: int, seed: int) -> list[dict]:
    """Item specs (question, right/wrong answer, position, scores, media parameters) for one modality and split.

    One RNG stream per (seed, split, modality): the eval split does not change when the train size does.
    """
    rng = np.random.default_rng([seed, SPLITS.index(split), MODALITIES.index(modality)])
    if modality == "text":
        combos = [(r, w, pos) for r in TEXT_SUMS for w in (r - 1, r + 1) if w in TEXT_SUMS for pos in (0, 1)]
    else:
        combos = [(r, w, pos) for r in ANSWERS[modality] for w in ANSWERS[modality] if w != r for pos in (0, 1)]
    specs = []
    for i, (x, y, pos) in enumerate(_label_cycles(rng, combos, n)):
        if modality == "text":  # (x, y) = the right sum and the off-by-one wrong one; the operands come next
            right, wrong = x, y
            pairs = [(p, q) for p in TEXT_OPERANDS for q in TEXT_OPERANDS if p + q == right]
            x, y = pairs[int(rng.integers(len(pairs)))]
            question, right, wrong = f"What is {x} + {y}?", str(right), str(wrong)
            evidence = f"{x} + {y} is {right}"
        else:
            question, right, wrong = QUESTIONS[modality], x, y
            evidence = {"image": f"the shape in the image is {right}",
                        "video": f"the square in the video moves {right}",
                        "audio": f"the tone in the audio is {right}"}[modality]
        spec = {"modality": modality, "split": split, "index": i, "question": question, "right": right,
                "wrong": wrong, "better": "AB"[pos], "evidence": evidence,
                "score_right": SCORE_RIGHT, "score_wrong": SCORE_WRONG}
        if modality != "text":  # nuisance parameters, drawn even for blank media so records stay identical
            spec["media_seed"] = int(rng.integers(2**31))
        specs.append(spec)
    return specs


# ------------------------------------------------------------------------------------------------ media

def render_image(colour: str, rng: np.random.Generator, blank: bool = False) -> np.ndarray:
    """56x56 RGB: a big circle, square or triangle of `colour` (jittered) on a light background, light noise."""
    s = IMAGE_SIZE
    bg, kind, r = int(rng.integers(200, 246)), int(rng.integers(3)), int(rng.integers(16, 23))
    cx, cy = (s / 2 + rng.integers(-5, 6, 2)).tolist()
    fill = tuple(int(c) for c in np.clip(np.array(COLOURS[colour]) + rng.integers(-15, 16, 3), 0, 255))
    noise = rng.integers(-4, 5, (s, s, 3))
    if blank:
        return np.full((s, s, 3), BLANK_GREY, np.uint8)
    img = Image.new("RGB", (s, s), (bg, bg, bg))
    draw = ImageDraw.Draw(img)
    box = (cx - r, cy - r, cx + r, cy + r)
    if kind == 0:
        draw.ellipse(box, fill=fill)
    elif kind == 1:
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    return np.clip(np.asarray(img, np.int16) + noise, 0, 255).astype(np.uint8)


def render_video(direction: str, rng: np.random.Generator, blank: bool = False) -> list[np.ndarray]:
    """4 frames of a 16-px square crossing the frame in `direction` (~10 px per frame); random dark shade and lane.

    The square is always darker than the light ground: the vision tower sees frames in pairs (temporal patches
    of 2), so motion shows up as a signed brightness change inside a patch, and one polarity keeps that cue the
    same for every clip (with bright and dark squares mixed, a tiny tower never learned direction: chance).
    """
    s, side, n = VIDEO_SIZE, 16, VIDEO_FRAMES
    dx, dy = DIRECTIONS[direction]
    bg = int(rng.integers(200, 246))
    colour = rng.integers(0, 70, 3).astype(np.uint8)
    lane, start, step = int(rng.integers(4, s - side - 3)), int(rng.integers(2, 7)), int(rng.integers(9, 12))
    frames = []
    for k in range(n):
        if blank:
            frames.append(np.full((s, s, 3), BLANK_GREY, np.uint8))
            continue
        along = start + k * step if (dx + dy) > 0 else s - side - start - k * step
        x, y = (along, lane) if dx else (lane, along)
        frame = np.full((s, s, 3), bg, np.uint8)
        frame[y:y + side, x:x + side] = colour
        frames.append(frame)
    return frames


def render_audio(pitch: str, rng: np.random.Generator, blank: bool = False) -> np.ndarray:
    """1 s of 1-3 short sine beeps at a `pitch` frequency (10 ms fades, no clicks) over faint noise; float in [-1, 1].

    Blank: the same faint noise for every item (not digital silence, which audio checks may reject as bad input).
    """
    n = int(AUDIO_SR * AUDIO_SECONDS)
    freq, beeps, amp = float(rng.uniform(*PITCHES[pitch])), int(rng.integers(1, 4)), float(rng.uniform(0.3, 0.6))
    noise = rng.normal(0.0, 0.003, n)
    if blank:
        return np.random.default_rng(0).normal(0.0, 0.003, n)
    t = np.arange(n) / AUDIO_SR
    beep_len, fade = int(0.15 * AUDIO_SR), int(0.01 * AUDIO_SR)
    env = np.zeros(n)
    shape = np.ones(beep_len)
    shape[:fade], shape[-fade:] = np.linspace(0, 1, fade), np.linspace(1, 0, fade)
    for b in range(beeps):
        start = int((0.05 + b * 0.32) * AUDIO_SR)
        env[start:start + beep_len] = shape
    return amp * env * np.sin(2 * np.pi * freq * t) + noise


@functools.cache
def video_codec() -> str:
    """libx264 when this PyAV build has it (what the real data uses), else mpeg4."""
    import av
    for name in ("libx264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - PyAV raises UnknownCodecError or FFmpegError by version
            continue
    raise RuntimeError("this PyAV build has neither libx264 nor mpeg4 encoders")


def write_mp4(path: Path, frames: list[np.ndarray], fps: int = VIDEO_FPS) -> None:
    """Encode RGB frames to mp4, single-threaded so the bytes are reproducible."""
    import av
    codec = video_codec()
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.codec_context.thread_count = 1
        stream.options = {"crf": "18"} if codec == "libx264" else {"qscale": "2"}
        for k, arr in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            frame.pts = k
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def write_wav(path: Path, samples: np.ndarray, sr: int = AUDIO_SR) -> None:
    """16-bit PCM mono wav through the stdlib (no dependency, deterministic bytes)."""
    pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setparams((1, 2, sr, len(pcm), "NONE", "not compressed"))
        w.writeframes(pcm.tobytes())


def _write_media(spec: dict, out_dir: Path, blank: bool) -> str:
    folder, ext = MEDIA[spec["modality"]]
    rel = f"media/{folder}/{spec['split']}_{spec['index']:05d}.{ext}"
    rng = np.random.default_rng(spec["media_seed"])
    path = out_dir / rel
    if spec["modality"] == "image":
        Image.fromarray(render_image(spec["right"], rng, blank)).save(path, format="PNG")
    elif spec["modality"] == "video":
        write_mp4(path, render_video(spec["right"], rng, blank))
    else:
        write_wav(path, render_audio(spec["right"], rng, blank))
    return rel


# ------------------------------------------------------------------------------------------------ records

def _rows(spec: dict, media_rel: str | None, compact: bool) -> tuple[dict, dict]:
    """(SFT row, RL row) for one item, in ms-swift form."""
    modality, better = spec["modality"], spec["better"]
    a, b = (spec["right"], spec["wrong"]) if better == "A" else (spec["wrong"], spec["right"])
    score_a, score_b = ((spec["score_right"], spec["score_wrong"]) if better == "A"
                        else (spec["score_wrong"], spec["score_right"]))
    gold = schema.format_judgement(score_a, score_b, better,
                                   gold_reasoning(modality, a, b, better, spec["evidence"]))
    user = {"role": "user", "content": judge_content(modality, spec["question"], a, b, compact=compact)}
    media = {MEDIA[modality][0]: [media_rel]} if media_rel else {}
    sft = {"messages": [user, {"role": "assistant", "content": gold}], **media}
    rl = {"messages": [user], **media, "score_A": score_a, "score_B": score_b, "better": better, "solution": gold}
    return sft, rl


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def make_demo(out_dir, *, n_train_per_modality: int = 192, n_eval_per_modality: int = 48, seed: int = 0,
              n_train: dict[str, int] | None = None, compact: bool = False, blank_media: bool = False) -> dict:
    """Write the demo set under `out_dir` and return what was written.

    Files: ``media/{images,videos,audios}/{split}_NNNNN.{png,mp4,wav}``; ``train.jsonl`` / ``eval.jsonl`` (SFT rows:
    ``messages`` = user judge prompt + assistant gold JSON, and ``images``/``videos``/``audios`` path lists, relative
    to `out_dir`, the media root); ``grpo_train.jsonl`` / ``grpo_eval.jsonl`` (RL rows: the user message only, the
    media list, gold ``score_A``/``score_B``/``better`` columns and the gold judgement as ``solution``);
    ``meta.json`` (the settings). Rows interleave the modalities text, image, video, audio.

    Args:
      n_train_per_modality, n_eval_per_modality: items per modality and split; multiples of 24 keep the
        image/video/audio labels exactly balanced (text: 32; see the module docstring).
      n_train: train items of some modalities, overriding n_train_per_modality for them (the demo gives the
        arithmetic and the colours more: see `omnirrm_jax.demo.config.DemoConfig.train_mix`).
      seed: everything is a function of it; the same arguments give byte-identical files.
      compact: use a short judge prompt (same JSON schema) instead of the long reference prompt.
      blank_media: write the same records (identical JSONL) but grey images, static grey videos and faint fixed
        noise for audio, for the control run: only perceiving the media can beat 0.5 on image/video/audio.
    Returns:
      {"out_dir", "files": {name: path}, "counts": {split: {modality: n}}, "media": {kind: n}, "video_codec", ...}.
    """
    out = Path(out_dir)
    for folder, _ in MEDIA.values():
        (out / "media" / folder).mkdir(parents=True, exist_ok=True)
    sizes = {"train": dict.fromkeys(MODALITIES, n_train_per_modality),
             "eval": dict.fromkeys(MODALITIES, n_eval_per_modality)}
    unknown = set(n_train or {}) - set(MODALITIES)
    if unknown:
        raise ValueError(f"n_train: unknown modalities {sorted(unknown)} (known: {MODALITIES})")
    sizes["train"].update(n_train or {})
    files, counts, n_media = {}, {}, {folder: 0 for folder, _ in MEDIA.values()}
    for split in SPLITS:
        specs = {m: _specs(m, split, sizes[split][m], seed) for m in MODALITIES}
        sft_rows, rl_rows = [], []
        for i in range(max(sizes[split].values())):
            for m in MODALITIES:
                if i >= sizes[split][m]:
                    continue
                rel = None
                if m != "text":
                    rel = _write_media(specs[m][i], out, blank_media)
                    n_media[MEDIA[m][0]] += 1
                sft, rl = _rows(specs[m][i], rel, compact)
                sft_rows.append(sft)
                rl_rows.append(rl)
        for name, rows in ((split, sft_rows), (f"grpo_{split}", rl_rows)):
            files[name] = str(out / f"{name}.jsonl")
            _write_jsonl(out / f"{name}.jsonl", rows)
        counts[split] = dict(sizes[split])
    meta = {"seed": seed, "n_train_per_modality": n_train_per_modality, "n_eval_per_modality": n_eval_per_modality,
            "n_train": sizes["train"],
            "compact": compact, "blank_media": blank_media, "image_size": IMAGE_SIZE,
            "video": {"size": VIDEO_SIZE, "frames": VIDEO_FRAMES, "fps": VIDEO_FPS, "codec": video_codec()},
            "audio": {"sample_rate": AUDIO_SR, "seconds": AUDIO_SECONDS}}
    (out / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    files["meta"] = str(out / "meta.json")
    return {"out_dir": str(out), "files": files, "counts": counts, "media": n_media, "video_codec": video_codec(),
            "media_root": str(out)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m data_prep.make_demo", description=__doc__.split("\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--n-train", type=int, default=192, help="train items per modality")
    p.add_argument("--n-eval", type=int, default=48, help="held-out items per modality")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compact", action="store_true", help="short judge prompt instead of the reference one")
    p.add_argument("--blank-media", action="store_true", help="control set: same records, media blanked")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    info = make_demo(args.out_dir, n_train_per_modality=args.n_train, n_eval_per_modality=args.n_eval,
                     seed=args.seed, compact=args.compact, blank_media=args.blank_media)
    print(json.dumps({**info, "seconds": round(time.perf_counter() - t0, 2)}, indent=1))
    return info


if __name__ == "__main__":
    main()
