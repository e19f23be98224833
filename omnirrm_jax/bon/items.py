"""Readers for the three Best-of-N files of the Omni-RRM release, as published, into one `BonItem` type.

  mmmu      JSONL: id, question, options, answer (a letter; a few open questions hold text), images (names of the
            parquet's image columns, "image_1"...), qwen_all_runs (the sampled letters), qwen_majority, qwen_votes
  videomme  JSONL: video_path ("/videos/x.mp4"), question, options (already "A. ..."), answer
  avqa      a JSON list: problem_id, problem, options (already "A. ..."), solution ("<answer>B</answer>"),
            path {image, audio}

Media resolve under a media root: MMMU's image "image_k" of item ID is `ID/image_k.png` (or .jpg/.jpeg: the release
keeps the images inside its parquet, so they must be written out once), Video-MME's "/videos/x.mp4" is `x.mp4` (the
reference replaces the "/videos" prefix with its --video_root), AVQA's relative paths are joined as they are.

Candidates: `qwen_all_runs` when the row has it (MMMU, or a file written by `omnirrm bon sample`), else the keys of
`qwen_votes` (what the AVQA and Video-MME selection scripts fall back to), else none (sample them first).
Reference quirk, switchable (`short_rows`): the MMMU and AVQA selection scripts skip a row with fewer than two runs
(it leaves the accuracy's denominator), the Video-MME script keeps a row with one distinct answer (its pick) and
skips one with none; "reference" (the default) does what the benchmark's script does, "skip" skips both, "keep"
counts both (one run: that run is every strategy's pick; none: wrong).

Bad rows (not JSON, a missing or ill-typed field) are skipped and counted by reason, each named by file and line;
more than `max_bad_ratio` of the file (or every row) is a `BonDataError` naming the first bad line.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
from typing import Any, Iterator

from omnirrm_jax.errors import UserError

BENCHES = ("mmmu", "videomme", "avqa")
SHORT_ROWS = ("reference", "skip", "keep")
_ANSWER_TAG = re.compile(r"</?answer>")
_IMAGE_EXTS = (".png", ".jpg", ".jpeg")


class BonDataError(UserError):
    """A Best-of-N file that cannot be used (missing, not the format, too many bad rows)."""


@dataclasses.dataclass(frozen=True)
class BonItem:
    """One question. gold: what a pick must equal (the reference's comparison, after AVQA's <answer> tags are
    removed); media: {"images"|"videos"|"audios": paths relative to the media root}; candidates: the sampled answers
    in draw order (None: not sampled yet); record: the row as read (written back by `omnirrm bon sample`)."""

    key: int
    where: str
    id: str
    bench: str
    question: str
    options: tuple[str, ...]
    gold: str
    media: dict
    candidates: tuple[str, ...] | None
    record: dict = dataclasses.field(repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    short_rows: str = "reference"  # "reference" (each script's rule), "skip" or "keep": rows with < 2 candidates
    max_bad_ratio: float = 0.1    # share of bad rows tolerated before the file is refused
    limit: int | None = None      # only the first N rows


@dataclasses.dataclass
class ReadResult:
    items: list[BonItem]
    bad: dict                      # reason -> count
    bad_examples: list[str]        # "file line N: reason: detail", the first few
    short: int                     # rows with fewer than two candidates (skipped or kept per short_rows)
    rows: int


class _Bad(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


def _records(path: str) -> Iterator[tuple[str, Any]]:
    """(where, record or _Bad) per row: JSONL line by line, or the rows of a JSON list."""
    if not os.path.isfile(path):
        raise BonDataError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(64).lstrip(b"\xef\xbb\xbf").lstrip()
    if head.startswith(b"["):
        try:
            with open(path, encoding="utf-8-sig") as f:
                data = json.load(f)
        except (ValueError, RecursionError) as e:
            raise BonDataError(f"{path}: not valid JSON ({e})") from None
        for i, rec in enumerate(data):
            yield f"{path} row {i}", rec
        return
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                yield f"{path} line {n}", json.loads(raw.decode("utf-8-sig" if n == 1 else "utf-8"))
            except (ValueError, RecursionError) as e:
                yield f"{path} line {n}", _Bad("malformed_json", str(e))


def _get(rec: dict, key: str, types, what: str) -> Any:
    if key not in rec or rec[key] is None:
        raise _Bad("missing_field", f"'{key}' is missing")
    if not isinstance(rec[key], types):
        raise _Bad("bad_field", f"'{key}' must be {what}, got {type(rec[key]).__name__}")
    return rec[key]


def _options(rec: dict) -> tuple[str, ...]:
    opts = _get(rec, "options", list, "a list of strings")
    if not all(isinstance(o, (str, int, float)) for o in opts):
        raise _Bad("bad_field", "'options' must be a list of strings")
    return tuple(str(o) for o in opts)


def _candidates(rec: dict) -> tuple[str, ...] | None:
    runs = rec.get("qwen_all_runs")
    if runs:
        if not isinstance(runs, list) or not all(isinstance(r, str) for r in runs):
            raise _Bad("bad_field", "'qwen_all_runs' must be a list of strings")
        return tuple(runs)
    votes = rec.get("qwen_votes")
    if votes:
        if not isinstance(votes, dict):
            raise _Bad("bad_field", "'qwen_votes' must be an object")
        return tuple(str(k) for k in votes)
    return () if "qwen_all_runs" in rec or "qwen_votes" in rec else None


def _image_path(media_root: str | None, item_id: str, name: str) -> str:
    base = os.path.join(item_id, name)
    if os.path.splitext(name)[1]:
        return base
    for ext in _IMAGE_EXTS:
        if media_root and os.path.exists(os.path.join(media_root, base + ext)):
            return base + ext
    return base + _IMAGE_EXTS[0]


def _mmmu(rec: dict, media_root: str | None) -> dict:
    item_id = str(_get(rec, "id", (str, int), "a string"))
    names = rec.get("images") or []
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise _Bad("bad_field", "'images' must be a list of image names")
    return dict(id=item_id, question=_get(rec, "question", str, "a string"), options=_options(rec),
                gold=str(_get(rec, "answer", (str, int, float, list), "a string")),
                media={"images": tuple(_image_path(media_root, item_id, n) for n in names)})


def _videomme(rec: dict, media_root: str | None) -> dict:
    video = _get(rec, "video_path", str, "a path").replace("\\", "/").strip()
    rel = video[len("/videos/"):] if video.startswith("/videos/") else video.lstrip("/")
    item_id = rec.get("id")
    return dict(id=str(item_id) if item_id is not None else None, question=_get(rec, "question", str, "a string"),
                options=_options(rec), gold=str(_get(rec, "answer", str, "a letter")).strip(),
                media={"videos": (rel,)})


def _avqa(rec: dict, media_root: str | None) -> dict:
    path = _get(rec, "path", dict, "an object {image, audio}")
    media = {}
    for key, out in (("image", "images"), ("audio", "audios")):
        if not isinstance(path.get(key), str) or not path[key]:
            raise _Bad("missing_field", f"'path.{key}' is missing")
        media[out] = (path[key],)
    return dict(id=str(_get(rec, "problem_id", (str, int), "a string or number")),
                question=_get(rec, "problem", str, "a string"), options=_options(rec),
                gold=_ANSWER_TAG.sub("", str(_get(rec, "solution", str, "a string"))).strip(), media=media)


_PARSERS = {"mmmu": _mmmu, "videomme": _videomme, "avqa": _avqa}


def read_items(bench: str, path: str, *, media_root: str | None = None,
               options: ReadOptions = ReadOptions()) -> ReadResult:
    """Every usable row of a released Best-of-N file (or one `omnirrm bon sample` wrote), in file order."""
    if bench not in _PARSERS:
        raise BonDataError(f"unknown Best-of-N benchmark {bench!r}; expected one of {', '.join(BENCHES)}")
    if options.short_rows not in SHORT_ROWS:
        raise BonDataError(f"short_rows must be one of {', '.join(SHORT_ROWS)}, got {options.short_rows!r}")
    path = os.fspath(path)
    items, bad, examples, short, rows = [], collections.Counter(), [], 0, 0
    for where, rec in _records(path):
        if options.limit is not None and rows >= options.limit:
            break
        rows += 1
        try:
            if isinstance(rec, _Bad):
                raise rec
            if not isinstance(rec, dict):
                raise _Bad("malformed_json", f"expected a JSON object, got {type(rec).__name__}")
            fields = _PARSERS[bench](rec, media_root)
            cands = _candidates(rec)
        except _Bad as e:
            bad[e.reason] += 1
            if len(examples) < 5:
                examples.append(f"{where}: {e.reason}: {e.detail}")
            continue
        if cands is not None and len(cands) < 2:
            short += 1
            rule = options.short_rows
            if rule == "reference":  # videomme_final/bon.py keeps one distinct answer; the others skip
                rule = "keep" if bench == "videomme" and len(cands) == 1 else "skip"
            if rule == "skip":
                continue
        fields["id"] = fields["id"] if fields["id"] is not None else f"row_{rows - 1}"
        items.append(BonItem(key=len(items), where=where, bench=bench, candidates=cands, record=rec, **fields))
    nbad = sum(bad.values())
    if rows == 0:
        raise BonDataError(f"{path}: no rows")
    if nbad == rows or nbad > options.max_bad_ratio * rows:
        raise BonDataError(f"{path}: {nbad} of {rows} rows are bad ({', '.join(f'{k} x{v}' for k, v in bad.items())}),"
                           f" more than max_bad_ratio {options.max_bad_ratio}; first: {examples[0]}")
    return ReadResult(items=items, bad=dict(bad), bad_examples=examples, short=short, rows=rows)
