"""One ms-swift JSONL row -> one encoded record, and the ordered process pool that runs it (``omnirrm prep`` and the
TFDS builder share both, so they quarantine the same rows for the same reasons and write the same bytes).

Row format (ms-swift, as in the released Omni-Preference files): ``messages`` [{role, content}] whose contents hold
``<image>``/``<video>``/``<audio>`` tags; ``images``/``videos``/``audios`` a path or a list of paths; RL rows carry
the gold judgement in flat ``better``/``score_A``/``score_B`` fields (the reward plugin's first choice) or in
``solution`` (a JSON string); optional ``cmp_gt``, ``id``, ``modality``; other fields are kept in ``extra``. The
released rows hold absolute paths (``/data/...``): map them under the media root with ``path_rewrites``.

Every problem raises ``Quarantine(reason, detail, media)``; ``process_row`` never raises. A record written with a
change worth knowing (audio cut to the processor's ``audio_max_seconds``) carries notes, counted in prep's summary.
No JAX here.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import json
import math
import multiprocessing
import os
import re
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from omnirrm_jax.data import media as M
from omnirrm_jax.data import records as R
from omnirrm_jax.data.examples import prompt_and_target
from omnirrm_jax.errors import UserError
from omnirrm_jax.rubric.prompts import modality_of
from omnirrm_jax.rubric.rewards import gold_from_solution
TAGS = {"images": "<image>", "videos": "<video>", "audios": "<audio>"}
GOLD = ("better", "score_A", "score_B")
_ROW_KEYS = frozenset({"messages", "id", "modality", "solution", "cmp_gt", *TAGS, *GOLD})


class PrepError(UserError, RuntimeError):
    """prep must stop: too many bad rows, or an out_dir prepared from other inputs/options."""


class Quarantine(Exception):
    """One bad row: ``reason`` is a short code (summary key), ``detail`` says what exactly, ``media`` the path."""

    def __init__(self, reason: str, detail: str, media: str | None = None):
        super().__init__(reason, detail, media)
        self.reason, self.detail, self.media = reason, detail, media


@dataclasses.dataclass(frozen=True)
class RowOptions:
    """What a worker needs to turn one JSONL row into a record (picklable; sent once per worker)."""

    media_root: str
    media: M.MediaConfig = M.MediaConfig()
    use_audio_in_video: bool = False  # ms-swift env USE_AUDIO_IN_VIDEO (the reference runs left it off)
    path_rewrites: tuple[tuple[str, str], ...] = ()  # (old prefix, new prefix), e.g. ("/data/", "") for released rows


# ---------------------------------------------------------------- paths and media (worker side)

def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def resolve_media_path(raw, opts: RowOptions) -> str:
    """Row path -> real path of a regular file under ``opts.media_root``; relative paths are taken under the root,
    absolute ones must lie in it, ``..`` and symlinks may not lead out of it. First matching rewrite applies."""
    if not isinstance(raw, str) or not raw.strip() or "\0" in raw:
        raise Quarantine("bad_row", f"media path {raw!r} is not a usable path string", str(raw))
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://|^data:", raw):
        raise Quarantine("remote_media", "URLs are not fetched by prep; download the file under the media root", raw)
    p = raw
    for old, new in opts.path_rewrites:
        if p.startswith(old):
            p = new + p[len(old):]
            break
    root_abs, root_real = os.path.abspath(opts.media_root), os.path.realpath(opts.media_root)
    lexical = os.path.normpath(p if os.path.isabs(p) else os.path.join(root_abs, p))
    if not (_under(lexical, root_abs) or _under(lexical, root_real)):
        raise Quarantine("path_escape", f"{raw!r} resolves to {lexical}, outside the media root {root_abs}", raw)
    real = os.path.realpath(lexical)
    if not _under(real, root_real):
        raise Quarantine("path_escape", f"{raw!r} leads through a symlink to {real}, outside the media root", raw)
    if not os.path.exists(real):
        raise Quarantine("missing_file", f"file not found: {real}", raw)
    if not os.path.isfile(real):
        raise Quarantine("missing_file", f"not a regular file: {real}", raw)
    return real


def _media_reason(kind: str, reason: str) -> str:
    r = reason.lower()
    for needle, code in (("file not found", "missing_file"), ("zero-length", "audio_empty"),
                         ("no audio track", "no_audio_track"),
                         ("non-finite", "audio_non_finite"), ("exceeds the decode budget", f"{kind}_too_large"),
                         ("decompressionbomb", f"{kind}_too_large")):
        if needle in r:
            return code
    return f"{kind}_undecodable"


def _extract(kind: str, raw: str, opts: RowOptions, fn):
    path = resolve_media_path(raw, opts)
    try:
        return fn(path)
    except M.MediaError as e:
        raise Quarantine(_media_reason(kind, e.reason), e.reason, raw) from None


# ---------------------------------------------------------------- one row -> record bytes (worker side)

def _reject_constant(token: str):
    raise ValueError(f"{token} is not valid JSON")


def _gold(row: dict):
    flat = [k for k in GOLD if row.get(k) is not None]  # null is no gold, as a missing key (an SFT row)
    sol = row.get("solution")
    if sol is not None and not isinstance(sol, str):
        sol = json.dumps(sol, ensure_ascii=False) if isinstance(sol, dict) else sol
        if not isinstance(sol, str):
            raise Quarantine("bad_gold", f"'solution' must be a JSON string or object, got {type(sol).__name__}")
    if flat and len(flat) < 3:
        raise Quarantine("bad_gold", f"row has {flat} but not all of {list(GOLD)}")
    if flat:
        gold = {k: row[k] for k in GOLD}
    elif sol is not None:
        try:
            gold = {k: v[0] for k, v in gold_from_solution([sol]).items()}
        except ValueError as e:
            raise Quarantine("bad_gold", str(e)) from None
    else:
        return None, sol
    if gold["better"] not in R.VERDICTS:
        raise Quarantine("bad_gold", f"better={gold['better']!r} is not one of {R.VERDICTS}")
    for k in ("score_A", "score_B"):
        v = gold[k]
        if isinstance(v, str) and re.fullmatch(r"\s*-?\d+\s*", v):
            gold[k] = v = int(v)  # the reference plugin int()s scores, so "8" means 8
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise Quarantine("bad_gold", f"{k}={v!r} is not a finite number")
    return gold, sol


def build_record(line: bytes, source: str, lineno: int, opts: RowOptions, ident: list,
                 notes: list | None = None) -> tuple[bytes, str]:
    """One JSONL line -> (encoded record, modality); raises ``Quarantine``. ``ident`` receives the row id once known;
    ``notes`` (reason, detail, media) of what the record changed, e.g. audio cut to ``audio_max_seconds``."""
    try:
        text = line.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    except UnicodeDecodeError as e:
        raise Quarantine("non_utf8", f"invalid UTF-8 at byte {e.start}: {e.reason}") from None
    try:
        row = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:  # RecursionError: nesting deeper than Python's json follows
        raise Quarantine("malformed_json", str(e)) from None
    if not isinstance(row, dict):
        raise Quarantine("malformed_json", f"expected a JSON object, got {type(row).__name__}")
    rid = row.get("id")
    ident.append(str(rid) if rid not in (None, "") else f"{source}:{lineno}")
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise Quarantine("bad_row", "'messages' must be a non-empty list")
    for i, m in enumerate(msgs):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise Quarantine("bad_row", f"messages[{i}] must be {{'role': str, 'content': str}}")
    # Tags are counted where build_example reads them, in the prompt messages: a final assistant message (the SFT
    # target) is data text, so a judgement that mentions "<image>" is no tag.
    paths, text_all = {}, "\n".join(m["content"] for m in prompt_and_target(msgs)[0])
    for key, tag in TAGS.items():
        v = row.get(key)
        v = [] if v is None else [v] if isinstance(v, str) else v
        if not isinstance(v, list) or not all(isinstance(p, str) for p in v):
            raise Quarantine("bad_row", f"'{key}' must be a path or a list of paths")
        if text_all.count(tag) > len(v):  # fewer tags is fine: ms-swift prepends the missing ones
            raise Quarantine("tag_mismatch", f"{text_all.count(tag)} {tag} tags but {len(v)} {key}")
        paths[key] = v
    kinds = [k[:-1] for k in TAGS if paths[k]]
    try:  # a null modality is inferred from the media, as a missing one
        modality = modality_of(row) if row.get("modality") is not None \
            else ("mixed" if len(kinds) > 1 else (kinds or ["text"])[0])
    except ValueError as e:
        raise Quarantine("bad_row", str(e)) from None
    gold, sol = _gold(row)
    cmp_gt = row.get("cmp_gt")
    if not R._is_json_scalar(cmp_gt):
        raise Quarantine("bad_gold", f"cmp_gt={cmp_gt!r} is not a JSON scalar")
    cfg = opts.media
    notes = [] if notes is None else notes

    def audio_item(wave, raw):
        seconds = wave.size / cfg.sampling_rate
        if seconds > cfg.audio_max_seconds:  # whisper_features keeps the first audio_max_seconds, as the processor
            notes.append(("audio_truncated", f"{seconds:.1f} s of audio cut to its first {cfg.audio_max_seconds} s "
                                             "(the processor's limit, MediaConfig.audio_max_seconds)", raw))
        return R.audio_item(wave, cfg)

    def video(path, raw):
        x, grid, spg, times = R.video_frames(path, cfg.video)
        audio = None
        if opts.use_audio_in_video:
            wave = M.extract_audio_track(path, cfg.sampling_rate, cfg.audio_max_input_seconds)
            if wave is None:
                raise M.MediaError(path, "use_audio_in_video is set but the video has no audio track")
            audio = audio_item(wave, raw)
        return {"frames": x, "grid_thw": grid, "second_per_grid": spg, "frame_times": times, "audio": audio}

    images = [dict(zip(("frames", "grid_thw"), _extract("image", p, opts, lambda f: R.image_frames(f, cfg.image))))
              for p in paths["images"]]
    videos = [_extract("video", p, opts, lambda f, raw=p: video(f, raw)) for p in paths["videos"]]
    audios = [_extract("audio", p, opts, lambda f, raw=p: audio_item(
        M.load_audio(f, cfg.sampling_rate, cfg.audio_max_input_seconds), raw)) for p in paths["audios"]]
    rec = {"id": ident[-1], "modality": modality, "messages": msgs, "gold": gold, "solution": sol, "cmp_gt": cmp_gt,
           "source": {"file": source, "line": lineno}, "media_paths": paths,
           "use_audio_in_video": opts.use_audio_in_video, "extra": {k: v for k, v in row.items() if k not in _ROW_KEYS},
           "images": images, "videos": videos, "audios": audios}
    try:
        return R.encode_record(rec), modality
    except R.RecordError as e:
        raise Quarantine("bad_row", str(e)) from None


_OPTS: RowOptions | None = None


def _init_worker(opts: RowOptions) -> None:
    global _OPTS
    _OPTS = opts


def process_row(item: tuple, opts: RowOptions | None = None) -> tuple[bytes | None, str | None, Any]:
    """(source, line, bytes, ...) -> (record bytes, modality, its note entries or None) or (None, None, quarantine
    entry). Entries: {"source", "line", "id", "media", "reason", "detail"}. Never raises."""
    source, lineno, line = item[:3]
    ident: list = []
    notes: list = []
    try:
        data, modality = build_record(line, source, lineno, opts or _OPTS, ident, notes)
        entries = [{"source": source, "line": lineno, "id": ident[-1], "media": media, "reason": reason,
                    "detail": detail} for reason, detail, media in notes]
        return data, modality, entries or None
    except Quarantine as q:
        reason, detail, media = q.reason, q.detail, q.media
    except Exception as e:  # noqa: BLE001 - a bug or an unexpected decoder error must not stop the run
        reason, detail, media = "internal_error", f"{type(e).__name__}: {e}", None
    return None, None, {"source": source, "line": lineno, "id": ident[-1] if ident else None, "media": media,
                        "reason": reason, "detail": detail}


# ---------------------------------------------------------------- inputs and the pool

def source_names(paths) -> list[str]:
    """Record ``source.file`` names: paths relative to the inputs' common folder (stable across machines)."""
    dirs = [os.path.dirname(os.path.abspath(p)) for p in paths]
    common = os.path.commonpath(dirs) if dirs else ""
    return [os.path.relpath(os.path.abspath(p), common).replace(os.sep, "/") for p in paths]


def iter_rows(paths, names):
    """Stream (name, line number, line bytes) of every non-blank line, files in the given order."""
    for path, name in zip(paths, names):
        with open(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield name, lineno, line.rstrip(b"\r\n")


def _ping() -> bool:
    return True


def _new_pool(num_workers: int, opts: RowOptions) -> cf.ProcessPoolExecutor:
    """A spawn pool that has proved it can start a worker (so a broken environment is one clear error, not every row
    quarantined as a crash)."""
    pool = cf.ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=_init_worker, initargs=(opts,))
    try:
        pool.submit(_ping).result()
    except BrokenProcessPool:
        pool.shutdown(cancel_futures=True)
        raise PrepError("worker processes die at start-up (spawn re-imports the main module: run prep from a file "
                        "or `python -m`, not stdin) - or use num_workers=0") from None
    return pool


def map_rows(items, opts: RowOptions, num_workers: int, fn=process_row):
    """Yield (item, fn(item, opts)) in input order; ``num_workers`` spawn processes (0: in this process; workers call
    ``fn(item)`` with ``opts`` installed by the pool initializer, so ``fn`` must be importable). A worker that dies
    (a segfault in a decoder) breaks the pool: the in-flight rows are retried one at a time in fresh pools and the
    one that kills its worker again is reported as ``worker_crash``."""
    if num_workers <= 0:
        for it in items:
            yield it, fn(it, opts)
        return
    pool, window, items = _new_pool(num_workers, opts), collections.deque(), iter(items)
    try:
        while True:
            while len(window) < 2 * num_workers + 2 and (it := next(items, None)) is not None:
                window.append((it, pool.submit(fn, it)))
            if not window:
                return
            it, fut = window.popleft()
            try:
                res = fut.result()
            except BrokenProcessPool:
                pending, res = [it] + [i for i, _ in window], None
                window.clear()
            if res is not None:
                yield it, res
                continue
            pool.shutdown(cancel_futures=True)
            pool = _new_pool(num_workers, opts)
            for it in pending:
                try:
                    res = pool.submit(fn, it).result()
                except BrokenProcessPool:
                    res = (None, None, {"source": it[0], "line": it[1], "id": None, "media": None,
                                        "reason": "worker_crash", "detail": "the worker process died on this row"})
                    pool.shutdown(cancel_futures=True)
                    pool = _new_pool(num_workers, opts)
                yield it, res
    finally:
        pool.shutdown(cancel_futures=True)
