"""Judge pairs -> thinker prompt batches, built the way the data pipeline builds them (numpy only, no JAX).

Why reuse the pipeline instead of a shortcut: the released weights only behave as published on exactly the
prompts they were trained on. So a pair becomes an ms-swift row (its media, and a user message holding the
reference's media-tag prefix of its modality, `rubric.prompts`), the row goes through `data_prep.rows` (path
checks, media decoding with the reference settings, gold parsing), the judge prompt (`user_message`: those tags,
then the filled reference prompt) through `data.examples.build_example` (ms-swift tag handling, chat template,
placeholder expansion, TMRoPE ids), and batches through `examples.collate` / `finalize`. The swapped order (B, A)
is the same row with the answers exchanged in the prompt; its media are decoded once and shared.

The filled prompt is data, not template: it goes to build_example as a text item, never read for media tags or
control tokens, so an answer that mentions "<image>" or spells `<|im_end|>` is judged as the text it is.

A pair (one JSONL row, or the CLI flags): `question`, `answer_a`, `answer_b` (strings), optional `images` /
`videos` / `audios` (a path or a list), `modality` (otherwise from the media, `prompts.modality_of`), `id`,
`template` (a reference template name), and optional gold `better` / `score_A` / `score_B`, which are passed
through to the output. Every problem is a `PairError(reason, detail)`; the batch CLI writes it as the row's
error record.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

import numpy as np

from omnirrm_jax.data import examples as E
from omnirrm_jax.data import records as R
from omnirrm_jax.data.tokenizer import Tokenizer
from omnirrm_jax.models.config import ThinkerConfig
from omnirrm_jax.rubric import prompts

MEDIA_KEYS = ("images", "videos", "audios")
_KNOWN = frozenset({"question", "answer_a", "answer_b", "modality", "id", "template", "better", "score_A", "score_B",
                    *MEDIA_KEYS})
# Optional fields and the JSON types they may hold (answers and question are checked below, with their defaults).
_FIELD_TYPES = {"modality": str, "template": str, "id": (str, int, float, bool), "better": str,
                "score_A": (int, float), "score_B": (int, float)}
_TYPE_NAMES = {"modality": "a string", "template": "a template name", "id": "a string or number",
               "better": "a string", "score_A": "a number", "score_B": "a number"}
# build_example's prompt-only mode ("grpo") also copies gold labels into the batch for the rewards. Judging needs
# none, so unlabelled pairs carry this placeholder; it is never read back.
_NO_GOLD = {"better": "equal", "score_A": 0, "score_B": 0}
NO_MEDIA_LIMIT = (1 << 30,) * 4


class PairError(Exception):
    """One pair that cannot be judged: `reason` a short code (missing_field, missing_file, ...), `detail` what."""

    def __init__(self, reason: str, detail: str):
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclasses.dataclass
class PreparedPair:
    """A pair ready to batch: its examples in judge order ((A, B), then (B, A) if swapped) and what the output
    repeats (id, modality, gold)."""

    key: Any
    id: str | None
    modality: str
    gold: dict | None
    examples: list[dict]

    @property
    def tokens(self) -> int:
        return max(int(ex["cost"][0]) for ex in self.examples)


def check_pair(row: Any, *, modality: str | None = None) -> dict:
    """Validates one pair and fills the modality and the reference's default question; raises `PairError`."""
    if not isinstance(row, dict):
        raise PairError("bad_row", f"expected a JSON object, got {type(row).__name__}")
    unknown = sorted(set(row) - _KNOWN)
    if unknown:
        raise PairError("bad_row", f"unknown field(s) {unknown}; expected some of {sorted(_KNOWN)}")
    pair = dict(row)
    for key, types in _FIELD_TYPES.items():
        if pair.get(key) is not None and not isinstance(pair[key], types):
            raise PairError("bad_row", f"'{key}' must be {_TYPE_NAMES[key]}, got {type(pair[key]).__name__}")
    for key in MEDIA_KEYS:
        v = pair.get(key)
        v = [] if v is None else [v] if isinstance(v, str) else v
        if not isinstance(v, list) or not all(isinstance(p, str) and p for p in v):
            raise PairError("bad_row", f"'{key}' must be a path or a list of paths")
        pair[key] = v
    if modality is not None:
        pair["modality"] = modality
    try:
        pair["modality"] = prompts.modality_of(pair)
    except ValueError as e:
        raise PairError("bad_row", str(e)) from None
    if pair.get("question") is None:  # an empty string is a question the prompt shows as is (the reference does)
        default = prompts.default_question(pair["modality"])
        if default is None:
            raise PairError("missing_field", f"'question' is missing (the {pair['modality']} prompt has no default)")
        pair["question"] = default
    for key in ("question", "answer_a", "answer_b"):
        if key not in pair:
            raise PairError("missing_field", f"'{key}' is missing")
        if not isinstance(pair[key], str):
            raise PairError("bad_row", f"'{key}' must be a string, got {type(pair[key]).__name__}")
    if pair.get("template") is not None:
        try:
            prompts.template_info(pair["template"])
        except KeyError as e:
            raise PairError("bad_row", str(e.args[0])) from None
    return pair


def _template(pair: dict) -> str:
    return pair.get("template") or prompts.default_template(pair["modality"])


def user_message(pair: dict, swapped: bool = False) -> dict:
    """The user message of the judge prompt as chat items: the reference's media-tag prefix as media items, then
    the filled prompt as one text item (its question and answers are data: never tags or control tokens); it
    renders as `prompts.user_content` with each tag replaced by its placeholder. `swapped` shows answer_b as A and
    answer_a as B. A template that states the order (Multimodal RewardBench's "Order of answers in this task: A-B")
    says "B-A" when swapped, as the reference's `prompt_string(ex, random_number=1)` does."""
    a, b = (pair["answer_b"], pair["answer_a"]) if swapped else (pair["answer_a"], pair["answer_b"])
    name = _template(pair)
    extra = {"order": "B-A" if swapped else "A-B"} if "order" in prompts.template_info(name)["fields"].values() else {}
    body = prompts.judge_prompt(pair["modality"], pair["question"], a, b, template=name, **extra)
    return {"role": "user", "content": E.swift_items(prompts.user_content(name, "")) + [{"type": "text", "text": body}]}


def media_record(row: dict, tags: str, opts) -> dict:
    """A row's media decoded once, as a data record (`data.records`): `row` holds the MEDIA_KEYS lists (and
    optionally modality, id, gold fields); `tags` is the user message's media-tag prefix (`prompts.user_content(
    template, "")`), which `data_prep.rows` checks against the media. Raises `PairError`."""
    from data_prep import rows

    # The row's message holds only the template's tags (what rows checks against the media); the prompt text
    # joins them in build_example, as a text item of the user message.
    msg = {"messages": [{"role": "user", "content": tags}],
           **({"modality": row["modality"]} if row.get("modality") else {}),
           **{k: row[k] for k in MEDIA_KEYS if row.get(k)},
           **{k: row[k] for k in ("id", "better", "score_A", "score_B") if k in row}}
    try:
        data, _ = rows.build_record(json.dumps(msg, ensure_ascii=False).encode(), "pair", 0, opts, [])
    except rows.Quarantine as q:
        raise PairError(q.reason, q.detail) from None
    return R.decode_record(data)


def prompt_examples(rec: dict, conversations: Sequence[list[dict]], key: Any, tok: Tokenizer, cfg: ThinkerConfig, *,
                    max_length: int) -> list[dict]:
    """One prompt-only example per conversation (chat messages whose items are data), all over `rec`'s media
    (`media_record`); raises `PairError` (e.g. "too_long")."""
    exs = []
    for msgs in conversations:
        try:
            exs.append(E.build_example(dict(rec, messages=list(msgs), gold=rec["gold"] or _NO_GOLD),
                                       key if isinstance(key, int) else 0, tok, cfg, mode="grpo",
                                       max_length=max_length, max_media=NO_MEDIA_LIMIT))
        except E.Skip as s:
            raise PairError(s.reason, s.detail) from None
    return exs


def prepare_pair(pair: dict, key: Any, tok: Tokenizer, cfg: ThinkerConfig, opts, *, swap: bool = False,
                 max_length: int, orders: tuple[str, ...] | None = None) -> PreparedPair:
    """A checked pair -> its examples (media decoded once); raises `PairError`.

    Args:
      opts: `data_prep.rows.RowOptions` (media root and media settings).
      key: the pair's identity in the output (e.g. its input line number); an int key is also the examples' index.
      swap: add the (B, A) example (orders ("AB", "BA")).
      max_length: longer prompts are refused ("too_long").
      orders: the shown orders to build, in this order ("AB" = as given, "BA" = exchanged); overrides `swap`.
    """
    orders = orders or (("AB", "BA") if swap else ("AB",))
    rec = media_record(pair, prompts.user_content(_template(pair), ""), opts)
    exs = prompt_examples(rec, [[user_message(pair, swapped=o == "BA")] for o in orders], key, tok, cfg,
                          max_length=max_length)
    gold = rec["gold"]
    return PreparedPair(key=key, id=pair.get("id"), modality=pair["modality"], gold=gold, examples=exs)


# ----------------------------------------------------------------------------------------------------
# Batches with bounded shapes
# ----------------------------------------------------------------------------------------------------

def seq_bucket(n: int, minimum: int = 128) -> int:
    """Prompt length -> padded length: multiples of an eighth of the enclosing power of two (<= 25% padding,
    four shapes per octave), so a run of any length compiles a handful of programs, never one per row."""
    n = max(int(n), minimum)
    step = 1 << max((n - 1).bit_length() - 3, 0)
    return -(-n // step) * step


def media_bucket(total: Sequence[int], minimum: Sequence[int] = (16, 16, 1, 8)) -> tuple[int, ...]:
    """(image patches, video patches, audio chunks, audio tokens) of a batch -> the next powers of two."""
    return tuple(1 << (max(int(t), m) - 1).bit_length() for t, m in zip(total, minimum))


def make_batch(exs: Sequence[dict], batch_size: int, tok: Tokenizer, cfg: ThinkerConfig,
               seq_len: int | None = None) -> dict[str, Any]:
    """Examples -> one left-padded host batch of `batch_size` rows (rows past len(exs) are padding, valid False).
    `seq_len`: pad to this length instead of `seq_bucket` (a server with its own, coarser length buckets)."""
    if not exs or len(exs) > batch_size:
        raise ValueError(f"{len(exs)} examples for a batch of {batch_size}")
    longest = max(int(ex["cost"][0]) for ex in exs)
    if seq_len is not None and seq_len < longest:
        raise ValueError(f"seq_len {seq_len} is shorter than the longest prompt ({longest} tokens)")
    seq = seq_bucket(longest) if seq_len is None else seq_len
    media = media_bucket(np.sum([ex["cost"][1:] for ex in exs], axis=0))
    patch_dim = cfg.vision.in_channels * cfg.vision.temporal_patch_size * cfg.vision.patch_size ** 2
    pre = E.collate(exs, batch_size=batch_size, seq_len=seq, media=media, pad_id=tok.special_ids["pad"],
                    mode="grpo", patch_dim=patch_dim)
    return E.finalize(pre, cfg)
