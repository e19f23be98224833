"""Readers for the six benchmark files as published (no conversion step), each yielding `BenchRow`s.

Why here: the released files differ in format (JSONL, a JSON list, parquet with media bytes inside) and in how they
store the gold label; everything after a reader (runner, metrics, report) sees one row type. A row that cannot be
judged becomes a `BenchRow` with `error` = (reason, detail naming file, line or row, and field), so one bad row never
stops a run; only a whole-file problem raises `BenchmarkFileError`. Reasons: malformed_json, missing_field,
bad_field, placeholder_path, missing_file.

The gold label is read first, on its own, and kept on every error row whose label field is readable: such a row
stays in the accuracy's population (a row that cannot be judged counts as wrong, not as unlabelled). Only a row whose
label itself is missing or unreadable, or a line that is not a JSON object, has label None.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from typing import Any, Callable, Iterator

from omnirrm_jax.errors import UserError
from omnirrm_jax.eval.benchmarks import RESERVED, BenchRow, mm_category, mm_label, protocol, vl_preferred

PLACEHOLDER = "/path/to/resource"  # the release's anonymised media path
VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".webm", ".mov")


class BenchmarkFileError(UserError):
    """The whole file is unusable (missing, not a JSON list, unreadable parquet, no rows)."""


class _Bad(Exception):
    """One row cannot be judged: (reason, detail); `row` keeps what was read (question, answers) when only the
    media is missing, so the error record still shows them. The gold label is not carried here: `_rows` reads it
    before the rest of the row and puts it on the error row itself."""

    def __init__(self, reason: str, detail: str, row: dict | None = None):
        super().__init__(reason, detail)
        self.error, self.row = (reason, detail), row or {}


# ---------------------------------------------------------------- sources: (index, line, record | _Bad)

def _check_file(path: str) -> None:
    if not os.path.isfile(path):
        raise BenchmarkFileError(f"{path}: no such file")


def _jsonl(path: str) -> Iterator[tuple[int, int | None, Any]]:
    """Lines read as bytes and decoded one by one, so a bad line (JSON or UTF-8) costs only that row."""
    _check_file(path)
    index = 0
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw.decode("utf-8-sig" if n == 1 else "utf-8"))
                if not isinstance(rec, dict):
                    raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
            except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError; nesting too deep
                rec = _Bad("malformed_json", f"{path} line {n}: {e}")
            yield index, n, rec
            index += 1
    if index == 0:
        raise BenchmarkFileError(f"{path}: no rows")


def _json_list(path: str) -> Iterator[tuple[int, int | None, Any]]:
    _check_file(path)
    try:
        with open(path, encoding="utf-8-sig") as f:
            data = json.load(f)
    except (ValueError, RecursionError) as e:
        raise BenchmarkFileError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, list):
        raise BenchmarkFileError(f"{path}: expected a JSON list of rows, got a JSON {type(data).__name__}")
    if not data:
        raise BenchmarkFileError(f"{path}: no rows")
    for i, rec in enumerate(data):
        yield i, None, rec if isinstance(rec, dict) else _Bad(
            "malformed_json", f"{path} row {i}: expected a JSON object, got {type(rec).__name__}")


def _parquet(path: str) -> Iterator[tuple[int, int | None, Any]]:
    """Batches of 64 rows as Python values (bytes, lists, dicts): a large release is never held whole."""
    _check_file(path)
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        batches = pf.iter_batches(batch_size=64)
    except Exception as e:  # ArrowInvalid, OSError: not a parquet file
        raise BenchmarkFileError(f"{path}: not a readable parquet file ({e})") from e
    if pf.metadata.num_rows == 0:
        raise BenchmarkFileError(f"{path}: no rows")
    index = 0
    while True:
        try:  # a corrupt row group is a file problem, not a row's
            batch = next(batches, None)
        except Exception as e:
            raise BenchmarkFileError(f"{path}: unreadable parquet after row {index} ({e})") from e
        if batch is None:
            return
        for rec in batch.to_pylist():
            yield index, None, rec
            index += 1


def _any_format(path: str) -> Iterator[tuple[int, int | None, Any]]:
    """Parquet (by suffix or magic bytes), JSONL (.jsonl/.ndjson) or a JSON list."""
    _check_file(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if path.endswith(".parquet") or magic == b"PAR1":
        return _parquet(path)
    return _jsonl(path) if path.endswith((".jsonl", ".ndjson")) else _json_list(path)


# ---------------------------------------------------------------- field helpers

def _plain(v: Any) -> Any:
    """JSON-serialisable Python: bytes become '<N bytes>', numpy/pyarrow scalars and arrays plain values."""
    if isinstance(v, (bytes, bytearray, memoryview)):
        return f"<{len(v)} bytes>"
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if v is None or isinstance(v, (str, bool, int, float)):
        return v
    if hasattr(v, "tolist"):  # numpy arrays and scalars
        return _plain(v.tolist())
    if hasattr(v, "as_py"):  # pyarrow scalars
        return _plain(v.as_py())
    return str(v)


def _fields(rec: dict) -> dict:
    """The row's own fields; one that clashes with a judgement line's key is renamed row_<key>."""
    return {(f"row_{k}" if k in RESERVED else k): _plain(v) for k, v in rec.items()}


def _get(rec: dict, key: str, where: str, types: type | tuple = str, *, optional: bool = False) -> Any:
    if key not in rec or (rec[key] is None and not optional):
        if optional:
            return None
        raise _Bad("missing_field", f"{where}: field {key!r} is missing" + (" (null)" if key in rec else ""))
    v = rec[key]
    if v is not None and (not isinstance(v, types) or isinstance(v, bool)):
        names = "/".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise _Bad("bad_field", f"{where}: field {key!r} must be {names}, got {type(v).__name__} {_short(v)}")
    return v


def _short(v: Any) -> str:
    s = repr(_plain(v))
    return s if len(s) <= 80 else s[:77] + "..."


def _binary_label(rec: dict, where: str) -> str:
    """HH-style label: 0 = answer A better, 1 = B; ints or the strings "0"/"1"."""
    v = _get(rec, "label", where, (int, str))
    key = v.strip() if isinstance(v, str) else v
    if key in (0, "0"):
        return "A"
    if key in (1, "1"):
        return "B"
    raise _Bad("bad_field", f"{where}: field 'label' must be 0 or 1 (0 = answer A better), got {v!r}")


def _media(v: Any) -> tuple[bytes | None, str | None]:
    """(bytes, path) of an HF media cell: a {bytes, path} struct, raw bytes or a path string."""
    if isinstance(v, dict):
        b, p = v.get("bytes"), v.get("path")
        b = bytes(b) if isinstance(b, (bytes, bytearray)) and b else None
        return b, (p if isinstance(p, str) and p else None)
    if isinstance(v, (bytes, bytearray)):
        return bytes(v), None
    return None, (v if isinstance(v, str) and v else None)


def _rows(path: str, source: Iterator, gold: Callable[[dict, str], str | None],
          parse: Callable[[dict, str], dict]) -> Iterator[BenchRow]:
    """Turn each record into a BenchRow: gold(rec, where) -> label first, then parse(rec, where) -> the other
    BenchRow kwargs. A _Bad from either becomes an error row; it keeps the label whenever gold could read it (a bad
    label field is itself the row's error, label None)."""
    for index, line, rec in source:
        where = f"{path} line {line}" if line is not None else f"{path} row {index}"
        if isinstance(rec, _Bad):
            yield BenchRow(index=index, line=line, error=rec.error)
            continue
        label = None
        try:
            label = gold(rec, where)
            kw = parse(rec, where)
        except _Bad as bad:
            rid = rec.get("id", rec.get("ID"))
            kw = {"id": None if rid is None else str(rid), "fields": _fields(rec), **bad.row}
            yield BenchRow(index=index, line=line, error=bad.error, **dict(kw, label=label))
            continue
        kw.setdefault("fields", _fields(rec))
        yield BenchRow(index=index, line=line, **dict(kw, label=label))


def _str_id(rec: dict, key: str, where: str, optional: bool = True) -> str | None:
    v = _get(rec, key, where, (str, int), optional=optional)
    return None if v is None else str(v)


# ---------------------------------------------------------------- per-benchmark parsing

def _hh(rec: dict, where: str) -> dict:
    return dict(question=_get(rec, "text_prompt", where), answer_a=_get(rec, "answer_a", where),
                answer_b=_get(rec, "answer_b", where), id=_str_id(rec, "id", where))


def _audio_hh(rec: dict, where: str) -> dict:
    """question None unless the row has one: the template supplies the reference's fixed question."""
    audio = _get(rec, "audio_prompt", where)
    kw = dict(question=_get(rec, "question", where, optional=True), answer_a=_get(rec, "answer_a", where),
              answer_b=_get(rec, "answer_b", where), audios=[audio],
              id=_str_id(rec, "id", where))
    if audio.strip() == PLACEHOLDER:
        raise _Bad("placeholder_path", f"{where}: audio_prompt is the release's anonymised placeholder "
                   f"{PLACEHOLDER!r}, not a file; give each row its real audio path (the spoken text_prompt)", kw)
    return kw


def _sharegpt(media_root: str | None) -> Callable[[dict, str], dict]:
    def parse(rec: dict, where: str) -> dict:
        """The release's `video` is a placeholder: fall back to <media_root>/<id without _N>.<ext> (MSR-VTT)."""
        rid = _get(rec, "id", where)
        video = _get(rec, "video", where).replace("\\", "/").strip()  # as the reference script normalises it
        kw = dict(id=rid, question=_get(rec, "query", where), answer_a=_get(rec, "answer_a", where),
                  answer_b=_get(rec, "answer_b", where))
        placeholder = video == PLACEHOLDER
        if media_root is None:
            if placeholder:
                raise _Bad("placeholder_path", f"{where} (id {rid!r}): video is the release's anonymised placeholder "
                           f"{PLACEHOLDER!r}; give a media root holding <video id>.mp4 (e.g. video1026.mp4)", kw)
            return dict(kw, videos=[video])
        if not placeholder and os.path.isfile(os.path.join(media_root, video)):
            return dict(kw, videos=[video])
        vid = re.sub(r"_\d+$", "", rid)
        tried = [vid + ext for ext in VIDEO_EXTS]
        for name in tried:
            if os.path.isfile(os.path.join(media_root, name)):
                return dict(kw, videos=[name])
        raise _Bad("missing_file", f"{where} (id {rid!r}): video {video!r} not found; tried "
                   f"{', '.join(os.path.join(media_root, n) for n in tried)}", kw)
    return parse


def _mm_label(rec: dict, where: str) -> str | None:
    """Better other than Output1/Output2 (or absent) gives label None, as the reference's Label (scored as wrong)."""
    return mm_label(rec.get("Better"))


def _mm_rewardbench(rec: dict, where: str) -> dict:
    """Text is kept as stored, None included (the reference's f-string prints it as 'None'; the runner formats it).
    Category as the reference's `ex.get("Category", "unknown")` prints it: an absent key is "unknown", a null one
    stays None and is printed "None" (so the category is the string "None"); any other value is kept."""
    rid = _get(rec, "ID", where, (str, int))
    rid = str(rid)
    if "Category" not in rec:
        cat = "unknown"
    else:
        cat = _get(rec, "Category", where, optional=True)
        cat = "None" if cat is None else cat
    return dict(id=rid, question=_get(rec, "Text", where, optional=True), images=[_get(rec, "Image", where)],
                answer_a=_get(rec, "Output1", where), answer_b=_get(rec, "Output2", where),
                category=mm_category(cat, rid))


def _vl_label(rec: dict, where: str) -> str:
    """label from human_ranking by the rule of the reference's eval.py (the script that prints the number): both
    ranks as int(), a smaller rank is better, good = 0 if ranking[0] <= ranking[1] else 1; so [0, 1] -> A,
    [1, 0] -> B and a tie [r, r] -> A. (infer_lora_vl.py's argmax would call a tie B; eval.py's count is the one
    reported.)"""
    rank = _get(rec, "human_ranking", where, (list, tuple))
    try:
        if not all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in rank):
            raise ValueError
        return "AB"[vl_preferred(rank)]  # NaN / inf raise
    except (ValueError, OverflowError):
        raise _Bad("bad_field",
                   f"{where}: field 'human_ranking' must be a list of two numbers, got {_short(rank)}") from None


def _vl_rewardbench(rec: dict, where: str) -> dict:
    """The label is `_vl_label`'s (read before this)."""
    resp = _get(rec, "response", where, (list, tuple))
    if len(resp) != 2 or not all(isinstance(r, str) for r in resp):
        raise _Bad("bad_field", f"{where}: field 'response' must be a list of two strings, got {_short(resp)}")
    data, path = _media(_get(rec, "image", where, (dict, bytes, str)))
    if data is None and path is None:
        raise _Bad("missing_field", f"{where}: field 'image' has neither bytes nor a path")
    fields = _fields({k: v for k, v in rec.items() if k != "image"})
    fields["image"] = {"path": path, "bytes": None if data is None else f"<{len(data)} bytes>"}
    return dict(id=_str_id(rec, "id", where), question=_get(rec, "query", where), answer_a=resp[0],
                answer_b=resp[1], fields=fields,
                images=[] if data is not None else [path], embedded={"images": [data]} if data is not None else {})


_TA2T_LABELS = {"response1": "A", "response2": "B", "tie": "equal", "a": "A", "b": "B", "equal": "equal"}


def _ta2t_label(rec: dict, where: str) -> str:
    pref = _get(rec, "criteria_preference", where)
    label = _TA2T_LABELS.get(pref.strip().lower())
    if label is None:
        raise _Bad("bad_field", f"{where}: field 'criteria_preference' must be response1/response2/tie, got {pref!r}")
    return label


def _ta2t(rec: dict, where: str) -> dict:
    """Audio bytes are embedded; else the path of `audio` (a string or the struct's path), then `audio_path`."""
    data, path = _media(_get(rec, "audio", where, (dict, bytes, str), optional=True))
    path = path or _get(rec, "audio_path", where, optional=True) or None
    if data is None and path is None:
        raise _Bad("missing_field", f"{where}: neither 'audio' (bytes or path) nor 'audio_path' is given")
    fields = _fields({k: v for k, v in rec.items() if k != "audio"})
    if "audio" in rec:
        fields["audio"] = {"path": _media(rec["audio"])[1], "bytes": None if data is None else f"<{len(data)} bytes>"}
    return dict(id=_str_id(rec, "id", where), question=_get(rec, "prompt", where),
                answer_a=_get(rec, "response1", where), answer_b=_get(rec, "response2", where),
                fields=fields, audios=[] if data is not None else [path],
                embedded={"audios": [data]} if data is not None else {})


# ---------------------------------------------------------------- public API

READERS: dict[str, Callable[[str, str | None], Iterator[BenchRow]]] = {
    "hh_rlhf": lambda path, media_root=None: _rows(path, _jsonl(path), _binary_label, _hh),
    "audio_hh_rlhf": lambda path, media_root=None: _rows(path, _jsonl(path), _binary_label, _audio_hh),
    "sharegpt_video": lambda path, media_root=None: _rows(path, _jsonl(path), _binary_label, _sharegpt(media_root)),
    "mm_rewardbench": lambda path, media_root=None: _rows(path, _json_list(path), _mm_label, _mm_rewardbench),
    "vl_rewardbench": lambda path, media_root=None: _rows(path, _parquet(path), _vl_label, _vl_rewardbench),
    "ta2t": lambda path, media_root=None: _rows(path, _any_format(path), _ta2t_label, _ta2t),
}


def read_benchmark(name: str, path: str, *, media_root: str | None = None, limit: int | None = None) -> list[BenchRow]:
    """All rows of a released benchmark file (the first `limit` if given), in file order."""
    protocol(name)  # KeyError naming the known benchmarks
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    path = os.fspath(path)
    _check_file(path)
    return list(itertools.islice(READERS[name](path, media_root), limit))
