"""The paper's evaluation benchmarks: one `BenchRow` type every reader yields, and each benchmark's protocol as the
reference ran it (prompt template, decoding, inference media limits, A/B order), plus the published accuracies.

Why one row type: the runner, both metrics and the report must not care which file format a row came from. A reader
(`eval.readers`) turns a released file, as published, into `BenchRow`s; everything after works on those.

Conventions used everywhere in `eval/`:
* `answer_a` / `answer_b` are the answers *as stored* (A = the file's first answer). `label` is the gold verdict in
  those stored labels: "A", "B", "equal" (a tie, TA2T only) or None (unlabelled / unreadable).
* An *order* is how a judgement showed the answers: "AB" = as stored, "BA" = exchanged. Judgement lines keep the
  model's raw output in its shown order; metrics map "BA" verdicts back (`swap_label`).
* `reference_order` is the order the reference's own script would have used for a row (VL-RewardBench: a seeded
  random order per row; the others: as stored). The `reference` metric reads exactly those judgements.

Pure Python (no JAX): readers, metrics and re-scoring run without a model.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from omnirrm_jax.data.media import MediaConfig

LABELS = ("A", "B", "equal")
ORDERS = ("AB", "BA")
# Keys a judgement line adds next to the row's own fields (a reader renames a clashing row field to "row_<key>").
RESERVED = frozenset({"benchmark", "index", "row_hash", "order", "orders", "decoding", "output", "error", "probs",
                      "seed", "template"})


@dataclasses.dataclass
class BenchRow:
    """One benchmark pair, whatever file it came from.

    index: 0-based position in the file (the reference scripts' row order). line: 1-based line of a JSONL file
    (None for JSON lists and parquet). fields: the row's own fields, JSON-serialisable (embedded media bytes are
    replaced by a short description), written back into every judgement line. images/videos/audios: media paths as
    stored (resolved under the media root by the runner). embedded: media carried inside the file
    ({"images"|"audios": [bytes, ...]}; VL-RewardBench and TA2T parquet), written to files by the runner.
    label: gold verdict in stored labels, or None. category: a per-category breakdown key (Multimodal
    RewardBench). error: (reason, detail) when the row cannot be judged (the detail names file, line and field);
    such a row is written as an error record and counted, never judged.
    """

    index: int
    line: int | None = None
    id: str | None = None
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)
    question: str | None = None
    answer_a: str | None = None
    answer_b: str | None = None
    images: list[str] = dataclasses.field(default_factory=list)
    videos: list[str] = dataclasses.field(default_factory=list)
    audios: list[str] = dataclasses.field(default_factory=list)
    embedded: dict[str, list[bytes]] = dataclasses.field(default_factory=dict)
    label: str | None = None
    category: str | None = None
    error: tuple[str, str] | None = None


# The ms-swift media env of every reference inference script (FPS left at qwen-omni-utils' 2).
INFERENCE_MEDIA_ENV = (("MAX_PIXELS", "1003520"), ("VIDEO_MAX_PIXELS", "50176"), ("FPS_MAX_FRAMES", "20"))


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How the reference ran one benchmark.

    template: the `rubric.prompts` template. modality: the judge modality (media tag and pipeline path).
    greedy / temperature / top_p / max_new_tokens: the reference's RequestConfig. order: "stored" or "seeded_random"
    (VL-RewardBench shuffles A/B per row). media_env: the ms-swift env vars of the inference script
    (`MediaConfig.from_env`). title: the report's column name.
    """

    name: str
    title: str
    template: str
    modality: str
    greedy: bool
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 2048
    order: str = "stored"
    media_env: tuple[tuple[str, str], ...] = INFERENCE_MEDIA_ENV

    def media_config(self) -> MediaConfig:
        return MediaConfig.from_env(dict(self.media_env))


# Decoding and media limits as in the reference's inference scripts (inference/*/infer_lora*.py): greedy with 2048 new
# tokens for the HH, Audio-HH and ShareGPT-Video scripts; temperature 0.7, top-p 0.9, 4096 new tokens for
# VL-RewardBench and Multimodal RewardBench; MAX_PIXELS 1003520, VIDEO_MAX_PIXELS 50176, FPS_MAX_FRAMES 20 (FPS left
# at qwen-omni-utils' 2). TA2T has no reference script: the audio judge prompt, greedy, like Audio-HH-RLHF.
PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("vl_rewardbench", "VL-RewardBench", "vl_reward", "image", greedy=False, temperature=0.7, top_p=0.9,
             max_new_tokens=4096, order="seeded_random"),
    Protocol("mm_rewardbench", "Multimodal RewardBench", "mm_rewardbench", "image", greedy=False, temperature=0.7,
             top_p=0.9, max_new_tokens=4096),
    Protocol("sharegpt_video", "ShareGPT-Video", "sharegpt_video", "video", greedy=True),
    Protocol("audio_hh_rlhf", "Audio-HH-RLHF", "audio_hh_rlhf", "audio", greedy=True),
    Protocol("ta2t", "TA2T", "audio_hh_rlhf", "audio", greedy=True),
    Protocol("hh_rlhf", "HH-RLHF", "hh_rlhf", "text", greedy=True),
)}
BENCHMARKS = tuple(PROTOCOLS)

# Published accuracies (%), Omni-RRM README / project page; "overall" = mean of the five.
PUBLISHED_COLUMNS = ("vl_rewardbench", "mm_rewardbench", "sharegpt_video", "audio_hh_rlhf", "ta2t")
PUBLISHED: dict[str, dict[str, float]] = {
    "Omni-RRM-7B (SFT+RL)": dict(zip(PUBLISHED_COLUMNS, (67.1, 72.9, 80.2, 66.8, 65.0)), overall=70.4),
    "Omni-RRM-7B (SFT)": dict(zip(PUBLISHED_COLUMNS, (60.4, 61.0, 70.5, 62.8, 58.5)), overall=62.6),
    "Omni-RRM-3B (SFT+RL)": dict(zip(PUBLISHED_COLUMNS, (58.5, 68.9, 67.4, 65.1, 61.1)), overall=64.2),
    "Omni-RRM-3B (SFT)": dict(zip(PUBLISHED_COLUMNS, (56.8, 58.1, 64.9, 60.3, 54.3)), overall=58.9),
    "Qwen2.5-Omni-7B (base)": dict(zip(PUBLISHED_COLUMNS, (57.8, 57.5, 66.3, 62.4, 56.9)), overall=60.2),
    "Qwen2.5-Omni-3B (base)": dict(zip(PUBLISHED_COLUMNS, (53.7, 53.9, 58.1, 58.7, 47.9)), overall=54.5),
    "GPT-4o-mini": dict(zip(PUBLISHED_COLUMNS, (59.8, 61.9, 53.9, 58.2, 57.9)), overall=58.3),
    "Gemini-2.5-Pro": dict(zip(PUBLISHED_COLUMNS, (79.6, 63.3, 78.8, 66.5, 64.9)), overall=70.6),
}


def protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise KeyError(f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)}")
    return PROTOCOLS[name]


def reference_order(proto: Protocol, index: int, seed: int) -> str:
    """The order the reference script shows row `index` in: "AB" unless the protocol shuffles (VL-RewardBench's
    `random.choice([0, 1])` per row, here drawn from a generator seeded by (seed, index) so a subset, a resumed run
    or a re-score gives every row the same order)."""
    if proto.order == "stored":
        return "AB"
    return "BA" if random.Random(f"{seed}:{index}").random() < 0.5 else "AB"


def swap_label(verdict: Any) -> Any:
    """A verdict given on the exchanged order, in stored labels: A <-> B; "equal", None and anything that is not a
    string (a model's JSON may hold a list there) stay as they are."""
    return {"A": "B", "B": "A"}.get(verdict, verdict) if isinstance(verdict, str) else verdict


# Rules the reference's eval scripts apply to the stored fields; the readers (gold labels, categories) and the
# reference metric both use them, so the two cannot drift apart.

def mm_category(category: Any, row_id: Any) -> str:
    """Multimodal RewardBench's breakdown as its eval.py prints it: safety -> bias / toxicity by ID prefix "pairs",
    reasoning -> math / coding by ID prefix "math"; any other category as printed (None -> "None")."""
    ident = str(row_id or "").lower()
    if category == "safety":
        return "safety/bias" if ident.startswith("pairs") else "safety/toxicity"
    if category == "reasoning":
        return "reasoning/math" if ident.startswith("math") else "reasoning/coding"
    return str(category)


def mm_label(better: Any) -> str | None:
    """Multimodal RewardBench's gold as infer_lora_multimodal.py writes it: "Output1" -> A, "Output2" -> B, else None."""
    return {"Output1": "A", "Output2": "B"}.get(better) if isinstance(better, str) else None


def vl_preferred(ranking: Any) -> int:
    """VL-RewardBench's preferred answer (0 or 1, stored order) by its eval.py: two ranks read with int(), the smaller
    is better, a tie goes to the first (infer_lora_vl.py's argmax would say the second, but eval.py's count is the one
    reported). Raises ValueError / TypeError / OverflowError for anything else."""
    ranking = list(ranking)
    if len(ranking) != 2:
        raise ValueError(f"expected two ranks, got {len(ranking)}")
    first, second = int(ranking[0]), int(ranking[1])
    return 0 if first <= second else 1
