"""``omnirrm prep``: ms-swift JSONL + media files -> ArrayRecord shards of ``omnirrm_jax.data.records`` records.

Why a separate pass: decoding video and computing log-mels costs far more than a training step's host budget, so it
is done once, in parallel processes, and training reads ready arrays. The pass must survive real data: every bad
row (malformed or non-UTF-8 line, missing/corrupt/huge media, path outside the media root, bad gold label) is
quarantined with a reason code and detail, counted, and the rest of its shard is written; nothing crashes it.

Layout of ``out_dir``::

    {split}-{shard:05d}-of-{n:05d}.array_record   shard i = non-blank input rows [i*R, (i+1)*R) in input order
    quarantine.jsonl   {"split","shard","source","line","id","media","reason","detail"} per bad row
    notes.jsonl        the same per written row that was changed (``audio_truncated``: audio cut to the processor's
                       ``audio_max_seconds``, as the reference's processor cuts it)
    summary.json       {"splits": {split: counts by modality / quarantine reason / note, shards written/skipped,
                       timings}}
    .prep/             the plan (input hashes + options) and per-shard stats

Resume: a shard is finished when its stats file and its final file both exist (the shard is written to ``.tmp``,
its stats are saved, then the shard is renamed into place); finished shards are skipped, leftover ``.tmp`` files
are overwritten. Rerunning with other inputs or options into the same ``out_dir`` is refused (the plan differs).
One prep process per ``out_dir`` at a time (there is no lock).
Output is byte-identical for any worker count: rows are processed by a spawn-context process pool but written in
input order. Row parsing, path rules, media extraction and the pool live in ``data_prep.rows``. No JAX here.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path

from data_prep.rows import PrepError, RowOptions, iter_rows, map_rows, source_names
from omnirrm_jax.data import media as M
from omnirrm_jax.data import records as R

__all__ = ["PrepError", "prep"]

log = logging.getLogger("omnirrm.prep")
STATE = ".prep"


def _atomic_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, ensure_ascii=False, indent=1, sort_keys=True))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _load_stats(state: Path, out: Path, split: str) -> dict[int, dict]:
    """Stats of the finished shards of ``split``: readable stats whose shard file is in place."""
    found = {}
    for p in sorted(state.glob(f"{split}-[0-9]*.json")):
        shard = int(p.stem.rsplit("-", 1)[1])
        try:
            if any(out.glob(f"{split}-{shard:05d}-of-*.array_record")):
                found[shard] = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass
    return found


def _plan(jsonl_paths, names, split, media_root, opts, records_per_shard) -> dict:
    inputs, rows = [], 0
    for path, name in zip(jsonl_paths, names):
        h, n = hashlib.sha256(), 0
        with open(path, "rb") as f:
            for line in f:
                h.update(line)
                n += bool(line.strip())
        inputs.append({"name": name, "sha256": h.hexdigest(), "rows": n})
        rows += n
    return {"schema_version": R.VERSION, "split": split, "inputs": inputs, "rows": rows,
            "records_per_shard": records_per_shard, "media_root": os.path.realpath(media_root),
            "media": dataclasses.asdict(opts.media), "use_audio_in_video": opts.use_audio_in_video,
            "path_rewrites": [list(r) for r in opts.path_rewrites]}


def _write_reports(out: Path, split: str, run_info: dict) -> dict:
    """Rebuild quarantine.jsonl and notes.jsonl (all splits) and this split's summary.json entry from the saved shard
    stats."""
    state, entries, noted, splits = out / STATE, [], [], {}
    try:
        splits = json.loads((out / "summary.json").read_text(encoding="utf-8")).get("splits", {})
    except (OSError, ValueError):
        pass
    for plan_file in sorted(state.glob("*.plan.json")):
        sp = plan_file.name[: -len(".plan.json")]
        stats = list(_load_stats(state, out, sp).values())
        entries += [dict(e, split=sp) for s in stats for e in s["quarantine"]]
        noted += [dict(e, split=sp) for s in stats for e in s.get("notes", [])]  # stats of older preps have none
        if sp != split:
            continue
        by_mod, by_reason, by_note = collections.Counter(), collections.Counter(), collections.Counter()
        for s in stats:
            by_mod.update(s["by_modality"])
            by_reason.update(e["reason"] for e in s["quarantine"])
            by_note.update(e["reason"] for e in s.get("notes", []))
        plan = json.loads(plan_file.read_text(encoding="utf-8"))
        splits[sp] = {"rows": plan["rows"], "rows_done": sum(s["rows"] for s in stats),
                      "records": sum(by_mod.values()), "quarantined": sum(by_reason.values()),
                      "by_modality": dict(sorted(by_mod.items())),
                      "quarantine_by_reason": dict(sorted(by_reason.items())),
                      "notes_by_reason": dict(sorted(by_note.items())), "bytes": sum(s["bytes"] for s in stats),
                      "shard_seconds": round(sum(s["seconds"] for s in stats), 3), **run_info}
    for name, rows in (("quarantine.jsonl", entries), ("notes.jsonl", noted)):
        tmp = out / (name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for e in rows:
                f.write(json.dumps(e, ensure_ascii=False, sort_keys=True) + "\n")
        os.replace(tmp, out / name)
    _atomic_json(out / "summary.json", {"schema_version": R.VERSION, "splits": splits})
    return splits[split]


def prep(jsonl_paths, media_root, out_dir, *, media_cfg: M.MediaConfig = M.MediaConfig(), split: str = "train",
         num_workers: int = 0, records_per_shard: int = 1000, max_bad_ratio: float = 0.1,
         bad_ratio_min_rows: int = 100, use_audio_in_video: bool = False, path_rewrites=()) -> dict:
    """Prepare ``jsonl_paths`` into ``out_dir`` (see module doc); returns this split's summary.

    ``max_bad_ratio``: stop with ``PrepError`` once more than this fraction of the rows done so far is quarantined
    (checked after each shard once ``bad_ratio_min_rows`` rows are done, and at the end) - a wrong media root
    should fail in minutes, not yield an empty dataset."""
    from array_record.python.array_record_module import ArrayRecordWriter
    t0, out, state = time.time(), Path(out_dir), Path(out_dir) / STATE
    if not re.fullmatch(r"[A-Za-z0-9_]+", split):
        raise PrepError(f"split name {split!r} must be letters, digits or _")
    if records_per_shard < 1 or not 0 <= max_bad_ratio <= 1:
        raise PrepError(f"need records_per_shard >= 1 and 0 <= max_bad_ratio <= 1, got {records_per_shard}, "
                        f"{max_bad_ratio}")
    if not os.path.isdir(media_root):
        raise PrepError(f"media root {media_root} is not a directory")
    for path in jsonl_paths:
        if not os.path.isfile(path):
            raise PrepError(f"input JSONL {path} is not a file")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise PrepError(f"output {out_dir} exists and is not a folder")
    opts = RowOptions(os.path.abspath(media_root), media_cfg, use_audio_in_video,
                      tuple((str(a), str(b)) for a, b in path_rewrites))
    names = source_names(jsonl_paths)
    plan = _plan(jsonl_paths, names, split, media_root, opts, records_per_shard)
    state.mkdir(parents=True, exist_ok=True)
    plan_path = state / f"{split}.plan.json"
    plan = json.loads(json.dumps(plan))  # as it reads back from disk
    if plan_path.exists():
        old = json.loads(plan_path.read_text(encoding="utf-8"))
        if old != plan:
            diff = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
            raise PrepError(f"{out} holds split {split!r} prepared with other {', '.join(diff)}; "
                            "use a new output folder (or delete it) to start over")
    else:
        _atomic_json(plan_path, plan)
    n_shards = -(-plan["rows"] // records_per_shard)
    shard_path = lambda s: out / f"{split}-{s:05d}-of-{n_shards:05d}.array_record"  # noqa: E731
    stats_path = lambda s: state / f"{split}-{s:05d}.json"  # noqa: E731
    done = _load_stats(state, out, split)
    run = {"shards": n_shards, "shards_skipped": len(done), "shards_written": 0, "workers": num_workers}
    totals = collections.Counter()
    for st in done.values():
        totals.update(rows=st["rows"], bad=len(st["quarantine"]))

    def check_ratio(final: bool):
        rows, bad = totals["rows"], totals["bad"]
        if rows and (final or rows >= bad_ratio_min_rows) and bad / rows > max_bad_ratio:
            info = _write_reports(out, split, dict(run, seconds=round(time.time() - t0, 3), finished=False))
            top = ", ".join(f"{k}={v}" for k, v in collections.Counter(info["quarantine_by_reason"]).most_common(3))
            raise PrepError(f"{bad} of {rows} rows quarantined ({bad / rows:.1%}) > max_bad_ratio {max_bad_ratio:.1%}"
                            f" (top reasons: {top}); see {out / 'quarantine.jsonl'}")

    check_ratio(False)
    todo = ((*it, s // records_per_shard) for s, it in enumerate(iter_rows(jsonl_paths, names))
            if s // records_per_shard not in done)
    sh: dict = {}

    def finish():
        sh["writer"].close()
        with open(sh["tmp"], "rb+") as f:
            os.fsync(f.fileno())
        st = {"rows": sh["rows"], "by_modality": dict(sh["by_modality"]), "quarantine": sh["quarantine"],
              "notes": sh["notes"],
              "bytes": sh["tmp"].stat().st_size, "seconds": round(time.time() - sh["t0"], 3)}
        _atomic_json(stats_path(sh["shard"]), st)  # stats first: a shard file without stats is redone
        os.replace(sh["tmp"], shard_path(sh["shard"]))
        run["shards_written"] += 1
        totals.update(rows=st["rows"], bad=len(st["quarantine"]))
        log.info("%s: %d records, %d quarantined", shard_path(sh["shard"]).name, sum(st["by_modality"].values()),
                 len(st["quarantine"]))
        check_ratio(False)

    for (*_, shard), (data, modality, entries) in map_rows(todo, opts, num_workers):
        if shard != sh.get("shard"):
            if sh:
                finish()
            tmp = shard_path(shard).with_name(shard_path(shard).name + ".tmp")
            tmp.unlink(missing_ok=True)
            sh = {"shard": shard, "tmp": tmp, "writer": ArrayRecordWriter(str(tmp), "group_size:1"), "rows": 0,
                  "by_modality": collections.Counter(), "quarantine": [], "notes": [], "t0": time.time()}
        sh["rows"] += 1
        if data is not None:  # `entries`: the record's notes (or None)
            sh["writer"].write(data)
            sh["by_modality"][modality] += 1
            sh["notes"] += [dict(e, shard=shard) for e in entries or ()]
        else:  # `entries`: the quarantine entry
            sh["quarantine"].append(dict(entries, shard=shard))
    if sh:
        finish()
    check_ratio(True)
    return _write_reports(out, split, dict(run, seconds=round(time.time() - t0, 3), finished=True))
