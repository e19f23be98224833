"""The SFT length mix of real judge examples (`omnirrm bench pack`): benchmark pairs -> SFT examples as training
builds them, and their length statistics.

Why real examples: how much packing saves depends on the spread of lengths, and that is set by the reference judge
prompts (a long fixed template around each question and its two answers), the judgements, and the video tokens. So
every pair of `hh_rlhf_2000.jsonl` (text) and `sharegpt_video_msrvtt_200.jsonl` (video) in ../shared/benchmarks
becomes the SFT record prep would write: the reference judge prompt of its modality (`rubric.prompts`) as the user
message, a judgement (`rubric.format_judgement`) as the assistant message, built by `data.examples.build_example`
(chat template, placeholder expansion, TMRoPE ids, loss mask on the judgement and its end token), with the skips
the pipeline makes (over max_length, over the media budget).

What is synthetic, and why:
 - Judgements: the release has none for these pairs. The reference's run roughly 300-600 tokens (`JUDGEMENT_TOKENS`,
   an estimate: no reference judgement was available offline to measure), so each example draws its length
   uniformly from that range (seeded by its file and row) and gets a five-part rubric rationale cut to that many
   tokens: each dimension's title and sentences quoting the pair's own question and answers, scores agreeing with
   the pair's label.
 - Video: the release ships no media, so each video is zeros of MSR-VTT's 320x240 frames, for a clip length drawn
   from MSR-VTT's 10-30 s, sampled and sized as the reference SFT run does (`data.media.VideoConfig`: FPS 1, at most
   20 frames, the VIDEO_MIN_PIXELS floor sizes frames to 280x392, 140 tokens per frame pair). Token counts, not
   pixel values, matter here.
 - Tokens: without `--tokenizer` (a real Qwen2.5-Omni tokenizer folder) a SentencePiece BPE vocabulary trained on all
   the pairs' prompts and the rationale sentences; its characters per token are reported next to the lengths.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from omnirrm_jax.errors import MissingPathError

FILES = {"text": "hh_rlhf_2000.jsonl", "video": "sharegpt_video_msrvtt_200.jsonl"}
JUDGEMENT_TOKENS = (300, 600)  # the reference's judgements, roughly; with the end token
MSRVTT_FRAME_HW = (240, 320)
MSRVTT_SECONDS = (10.0, 30.0)
MSRVTT_FPS = 30.0
SP_VOCAB = 16000
_PART_WORDS = 240  # words written per rubric part before cutting: 5 x 240 words is well over 600 tokens

# One list per rubric dimension (schema.DIMENSIONS order): its opening, then sentences cycled until the part is long.
# {w}/{l}: the better/worse answer's letter; {qw}/{ql}/{q}: short quotes of the answers and of the question.
_SENTENCES = (
    ("Part 1: In terms of Fluency and Coherence, both answers are written in plain sentences.",
     "Answer {w} reads smoothly: \"{qw}\" leads naturally into the rest of the reply.",
     "Answer {l} is harder to follow in places, for example \"{ql}\", where the flow breaks.",
     "The ideas in {w} are ordered so that each point builds on the previous one.",
     "{l} repeats or jumps between ideas, which weakens its coherence."),
    ("For Relevance to the Question, the user asked \"{q}\".",
     "Answer {w} stays on this request and addresses it directly with \"{qw}\".",
     "Answer {l} drifts from what was asked; \"{ql}\" is only loosely related to the question.",
     "Both answers mention the topic, but only {w} keeps every sentence pertinent to it."),
    ("Regarding Accuracy and Completeness, the claims of each answer can be checked against the request.",
     "Answer {w} states \"{qw}\", which is correct and covers the main points a user would need.",
     "Answer {l} says \"{ql}\", which is less accurate or leaves out important details.",
     "{w} is more complete, while {l} would leave the user with an incomplete picture."),
    ("In terms of Reasoning Quality, the logic behind each answer differs.",
     "{w} explains why its suggestion follows from the question, a clear line of analysis.",
     "{l} asserts \"{ql}\" without support, so its inference is weaker.",
     "Weighing the two, the reasoning of {w} is sounder and easier to verify than that of {l}."),
    ("Part 2: In terms of Safety and Ethical Alignment, neither answer encourages harm.",
     "Answer {w} is safe and respectful toward the user.",
     "Answer {l} is also harmless, though \"{ql}\" could be phrased with more care.",
     "Overall {w} is the better answer on the rubric as a whole, and {l} is worse."),
)


@dataclasses.dataclass(frozen=True)
class Pair:
    """One benchmark pair: its file (modality) and row, the question, the answers and which one is better."""

    modality: str
    row: int
    question: str
    answer_a: str
    answer_b: str
    better: str


def default_benchmarks() -> Path:
    """../shared/benchmarks next to the repository that holds this package."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "benchmarks"


def load_pairs(folder: str | Path) -> dict[str, list[Pair]]:
    """{modality: every pair of its file}; a missing file is a clear error."""
    folder, out = Path(folder), {}
    for modality, name in FILES.items():
        path = folder / name
        if not path.is_file():
            raise MissingPathError(f"{path} is missing: --benchmarks must be the folder holding "
                                   f"{' and '.join(FILES.values())} (default: the repository's ../shared/benchmarks; "
                                   "where that is absent, copy the two files and pass their folder)")
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        out[modality] = [Pair(modality, i, r["text_prompt"] if modality == "text" else r["query"], r["answer_a"],
                              r["answer_b"], "A" if int(r["label"]) == 0 else "B") for i, r in enumerate(rows)]
    return out


def select(pairs: dict[str, list[Pair]], n: int | None, seed: int) -> list[Pair]:
    """All pairs, or `n` of them in the files' proportion (rows drawn with `seed`), in one seeded order (as the
    pipeline shuffles its source)."""
    rng = np.random.default_rng([seed, 0])
    total = sum(len(v) for v in pairs.values())
    picked = []
    if n is None or n >= total:
        picked = [p for v in pairs.values() for p in v]
    else:
        quota = {m: round(n * len(v) / total) for m, v in pairs.items()}
        quota["text"] = n - sum(k for m, k in quota.items() if m != "text")
        for m, v in pairs.items():
            picked += [v[i] for i in sorted(rng.choice(len(v), quota[m], replace=False))]
    return [picked[i] for i in rng.permutation(len(picked))]


def user_content(p: Pair) -> str:
    """The user message as an ms-swift SFT row holds it: the modality's media tag, then the reference prompt."""
    from omnirrm_jax.rubric import prompts

    return prompts.user_content(p.modality, prompts.judge_prompt(p.modality, p.question, p.answer_a, p.answer_b))


def make_tokenizer(pairs: dict[str, list[Pair]], path: str | None):
    """(tokenizer, description): `path` loaded, else SentencePiece trained on every prompt and the rationale
    sentences (independent of which pairs a run selects, so an example's length does not depend on --examples)."""
    from omnirrm_jax.data.tokenizer import load_tokenizer, train_sentencepiece

    if path:
        return load_tokenizer(path), str(path)
    texts = [user_content(p) for v in pairs.values() for p in v] + [s for part in _SENTENCES for s in part]
    tok = train_sentencepiece(texts, SP_VOCAB)
    return tok, f"SentencePiece BPE trained on the prompts (vocabulary {tok.vocab_size})"


def _quote(rng, text: str) -> str:
    words = text.split() or ["(empty)"]
    k = int(rng.integers(3, 9))
    start = int(rng.integers(0, max(len(words) - k, 0) + 1))
    return " ".join(words[start:start + k]).replace('"', "'")


def judgement(p: Pair, tok, target: int, rng) -> str:
    """A judgement of `p` whose tokens (with the end token) first reach `target`: five rubric parts, each cut to
    the same number of words, that number found by bisection."""
    from omnirrm_jax.rubric import format_judgement

    w, l = p.better, "B" if p.better == "A" else "A"
    ans = {"A": p.answer_a, "B": p.answer_b}
    parts = []
    for sentences in _SENTENCES:
        words, k = [], 0
        while len(words) < _PART_WORDS:
            words += sentences[k % len(sentences)].format(w=w, l=l, q=_quote(rng, p.question), qw=_quote(rng, ans[w]),
                                                         ql=_quote(rng, ans[l])).split()
            k += 1
        parts.append(words[:_PART_WORDS])
    win = int(rng.integers(6, 10))
    lose = int(rng.integers(2, win))
    scores = (win, lose) if w == "A" else (lose, win)

    def text(n_words: int) -> str:
        return format_judgement(*scores, p.better, " ".join(" ".join(part[:n_words]) for part in parts))

    lo, hi = 1, _PART_WORDS
    while lo < hi:  # smallest word count per part whose judgement reaches the target
        mid = (lo + hi) // 2
        if len(tok.encode_text(text(mid))) + 1 >= target:
            hi = mid
        else:
            lo = mid + 1
    return text(lo)


def _video(rng) -> dict:
    """A synthetic MSR-VTT clip as a record's video item, sampled and sized as the reference SFT run does."""
    from omnirrm_jax.data import media as M

    cfg = M.VideoConfig()
    total = int(round(rng.uniform(*MSRVTT_SECONDS) * MSRVTT_FPS))
    n = M.smart_nframes(total, MSRVTT_FPS, cfg)
    h, w = M.video_frame_size(*MSRVTT_FRAME_HW, n, cfg)
    n += n % M.TEMPORAL
    return {"frames": np.zeros((n, h, w, 3), np.uint8), "second_per_grid": M.TEMPORAL / cfg.processor_fps,
            "grid_thw": np.array([n // M.TEMPORAL, h // M.PATCH, w // M.PATCH], np.int64), "audio": None}


def build_examples(pairs: list[Pair], tok, cfg, *, max_length: int, max_media, seed: int) -> tuple[list[dict], dict]:
    """(SFT examples, skip counts by reason). Example i is pairs[i] (`index` i) built by `build_example`, with its
    pixels dropped (the towers are not run) and `n_prompt` / `n_target` added; `cfg` must carry `tok`'s special
    ids (`data.tokenizer.thinker_token_ids`)."""
    from omnirrm_jax.data import examples as E
    from omnirrm_jax.rubric.vocab import MODALITY_CODES

    out, skipped = [], {}
    for i, p in enumerate(pairs):
        rng = np.random.default_rng([seed, MODALITY_CODES[p.modality], p.row])
        target = int(rng.integers(JUDGEMENT_TOKENS[0], JUDGEMENT_TOKENS[1] + 1))
        rec = {"modality": p.modality, "gold": None, "use_audio_in_video": False, "images": [], "audios": [],
               "videos": [_video(rng)] if p.modality == "video" else [],
               "messages": [{"role": "user", "content": user_content(p)},
                            {"role": "assistant", "content": judgement(p, tok, target, rng)}]}
        try:
            ex = E.build_example(rec, i, tok, cfg, mode="sft", max_length=max_length, max_media=max_media)
        except E.Skip as s:
            skipped[s.reason] = skipped.get(s.reason, 0) + 1
            continue
        ex.update(pixel_values=None, pixel_values_videos=None, audio_features=None, modality_name=p.modality,
                  n_target=int(ex["loss_mask"].sum()), n_prompt=int(len(ex["input_ids"]) - ex["loss_mask"].sum()))
        out.append(ex)
    return out, skipped


def _pct(x) -> dict:
    x = np.asarray(x, np.float64)
    if not len(x):
        return {}
    return {"min": int(x.min()), "median": float(np.median(x)), "p90": float(np.percentile(x, 90)),
            "max": int(x.max()), "mean": round(float(x.mean()), 1)}


def stats(examples: list[dict], merge: int = 4) -> dict:
    """Length statistics of the examples: tokens per example, prompt / judgement / media tokens, and each
    modality's share of the examples and of the tokens. `merge`: patches per media token (spatial merge squared)."""
    n = np.array([len(e["input_ids"]) for e in examples])
    out = {"examples": len(examples), "tokens": _pct(n), "prompt_tokens": _pct([e["n_prompt"] for e in examples]),
           "judgement_tokens": _pct([e["n_target"] for e in examples]), "modalities": {}}
    for m in sorted({e["modality_name"] for e in examples}):
        sel = [i for i, e in enumerate(examples) if e["modality_name"] == m]
        media = [(examples[i]["cost"][1] + examples[i]["cost"][2]) // merge + examples[i]["cost"][4] for i in sel]
        out["modalities"][m] = {"examples": len(sel), "fraction_of_examples": len(sel) / len(examples),
                                "fraction_of_tokens": float(n[sel].sum() / n.sum()), "tokens": _pct(n[sel]),
                                "media_tokens": _pct(media)}
    return out
