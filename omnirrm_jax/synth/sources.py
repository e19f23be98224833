"""Stage 1 of `omnirrm synth`: the prompts, read from the formats the reference built Omni-Preference from.

  image  RLAIF-V-style JSON (a list of objects, or JSONL): `image_path`, `question`
  video  a JSON list: `video_path`, `question` (what the reference's video scripts read)
  audio  Clotho-AQA CSV: `file_name`, `QuestionText` (or `question`)
  jsonl  generic: `question` and at most one of `images` / `videos` / `audios` (a path or a one-path list),
         optional `id`; no media is a text prompt

Media resolve under the media root (`data_prep.rows.resolve_media_path`: nothing outside it is read). Prompts are
deduplicated on (media, question) across all sources (the first wins) and capped per source, in file order. A bad
row (unparseable, a missing field or file, a path outside the root) is counted and named by file and line; it is
never fatal. The prompt id is a hash of (modality, media, question), so it is stable across runs and configs.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import json
import os

from omnirrm_jax.synth.config import SourceSpec

MEDIA_KEY = {"image": "images", "video": "videos", "audio": "audios"}


@dataclasses.dataclass(frozen=True)
class Prompt:
    id: str
    modality: str                 # text | image | video | audio
    media: str | None             # path relative to the media root as given (None: text)
    question: str
    source: str

    def row(self) -> dict:
        return dataclasses.asdict(self)


class _Bad(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


def prompt_id(modality: str, media: str | None, question: str) -> str:
    return hashlib.sha256(json.dumps([modality, media, question]).encode()).hexdigest()[:16]


def _json_rows(path: str):
    """(line or index, object) of a JSON list, or of a JSONL file (one object a line)."""
    with open(path, encoding="utf-8-sig") as f:
        text = f.read()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, list):
        for i, row in enumerate(data):
            yield f"item {i}", row
        return
    for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): JSON may hold a raw U+2028 or U+0085
        if line.strip():
            try:
                yield f"line {n}", json.loads(line)
            except ValueError as e:
                yield f"line {n}", _Bad("malformed_json", str(e))


def _csv_rows(path: str):
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        n = 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield f"line {reader.line_num}", _Bad("bad_csv_row", str(e))
                continue
            n = reader.line_num
            if None in row or any(v is None for v in row.values()):
                yield f"line {n}", _Bad("bad_csv_row", f"{len(reader.fieldnames or [])} columns expected")
                continue
            yield f"line {n}", row


def _string(row: dict, *keys: str) -> str:
    for k in keys:
        v = row.get(k)
        if isinstance(v, str) and v.strip():
            return v
    raise _Bad("missing_field", f"'{keys[0]}' is missing or empty")


def media_tag(text: str) -> str | None:
    """The first media placeholder a text holds literally ("How do I autoplay an <audio> element?"): ms-swift rows
    read it as a media slot, so `omnirrm prep` would refuse the row (more tags than media); None if none."""
    from data_prep.rows import TAGS
    return next((tag for tag in TAGS.values() if tag in text), None)


def _parse(kind: str, row) -> tuple[str, str | None, str]:
    """One raw row -> (modality, media path, question); raises _Bad."""
    modality, media, question = _parse_fields(kind, row)
    tag = media_tag(question)
    if tag:
        raise _Bad("media_tag_in_text", f"the question holds a literal {tag}, which training rows read as a media "
                   "placeholder")
    return modality, media, question


def _parse_fields(kind: str, row) -> tuple[str, str | None, str]:
    if isinstance(row, _Bad):
        raise row
    if not isinstance(row, dict):
        raise _Bad("bad_row", f"expected an object, got {type(row).__name__}")
    if kind == "image":
        return "image", _string(row, "image_path"), _string(row, "question")
    if kind == "video":
        return "video", _string(row, "video_path"), _string(row, "question")
    if kind == "audio":
        return "audio", _string(row, "file_name"), _string(row, "QuestionText", "question")
    present = []
    for modality, key in MEDIA_KEY.items():
        v = row.get(key)
        v = [] if v in (None, "") else [v] if isinstance(v, str) else v
        if not isinstance(v, list) or not all(isinstance(p, str) and p for p in v):
            raise _Bad("bad_row", f"'{key}' must be a path or a list of paths")
        if len(v) > 1:
            raise _Bad("bad_row", f"'{key}' holds {len(v)} files; a synth prompt takes one")
        if v:
            present.append((modality, v[0]))
    if len(present) > 1:
        raise _Bad("bad_row", "more than one media kind; a synth prompt takes one")
    modality, media = present[0] if present else ("text", None)
    return modality, media, _string(row, "question")


def _check_media(media: str, media_root: str) -> None:
    from data_prep.rows import Quarantine, RowOptions, resolve_media_path

    try:
        resolve_media_path(media, RowOptions(media_root=media_root))
    except Quarantine as q:
        raise _Bad("missing_media" if q.reason == "missing_file" else q.reason, q.detail) from None


@dataclasses.dataclass
class PromptsResult:
    prompts: list[Prompt]
    counts: dict                  # source name -> {rows, kept, duplicate, over_cap, bad}
    bad: list[dict]               # {source, where, reason, detail} per bad row
    bad_by_reason: dict


def read_prompts(sources: tuple[SourceSpec, ...], media_root: str) -> PromptsResult:
    """All sources, in order: the kept prompts, per-source counts and every bad row named."""
    seen: set = set()
    prompts, bad, counts = [], [], {}
    for spec in sources:
        c = counts.setdefault(spec.name, collections.Counter(rows=0, kept=0, duplicate=0, over_cap=0, bad=0))
        if not os.path.isfile(spec.path):
            bad.append({"source": spec.name, "where": spec.path, "reason": "missing_source", "detail":
                        f"file not found: {spec.path}"})
            c["bad"] += 1
            continue
        rows = _csv_rows(spec.path) if spec.kind == "audio" else _json_rows(spec.path)
        try:
            for where, raw in rows:
                c["rows"] += 1
                try:
                    modality, media, question = _parse(spec.kind, raw)
                    if media is not None:
                        _check_media(media, media_root)
                except _Bad as b:
                    c["bad"] += 1
                    bad.append({"source": spec.name, "where": f"{spec.path} {where}", "reason": b.reason,
                                "detail": b.detail})
                    continue
                if (media, question) in seen:
                    c["duplicate"] += 1
                    continue
                seen.add((media, question))
                if spec.cap is not None and c["kept"] >= spec.cap:
                    c["over_cap"] += 1
                    continue
                c["kept"] += 1
                prompts.append(Prompt(prompt_id(modality, media, question), modality, media, question, spec.name))
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            c["bad"] += 1
            bad.append({"source": spec.name, "where": spec.path, "reason": "unreadable_source", "detail": str(e)})
    by_reason = dict(collections.Counter(b["reason"] for b in bad))
    return PromptsResult(prompts, {k: dict(v) for k, v in counts.items()}, bad, by_reason)
