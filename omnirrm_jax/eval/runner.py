"""Judging a benchmark: every row in the orders asked for, with the benchmark's reference protocol, written to a
resumable judgements file.

The file has one JSON line per (row, order): the row's own fields, plus "benchmark", "index" (0-based row position),
"row_hash" (a fingerprint of the row), "order" ("AB" as stored / "BA" exchanged), "seed", "orders" and "decoding"
(the run's settings), "template", "output" (the raw generated text, in the shown order) and "probs" (P(A), P(B),
P(equal) at the verdict, in the shown labels; `eval.verdict`), or "error" ({"reason", "detail"}: the row could not
be judged - a missing media file, a malformed line - and output is null). Metrics are computed from this file alone
(`eval.score`), so a run can be re-scored without a model.

Resumable: lines are appended batch by batch and flushed; a rerun keeps every complete line, cuts a partial last
line, and judges only what is missing. Error lines are dropped (the file is rewritten atomically) and retried, so
a fixed --media-root heals a run. A file holding another benchmark's or another data file's judgements (a row at an
index that differs), or judged with other decoding settings (or another seed, where the seed matters), is refused
rather than mixed in. A run stops when more than `max_error_ratio` of the rows seen so far (this run's and those
judged before) fail, after `min_rows_for_ratio`, naming the commonest reasons.

Sampled benchmarks (VL-RewardBench, Multimodal RewardBench) draw each batch with a key folded from the seed and the
batch's first (row, order), so a run is reproducible for the same data, batch size and seed (a resumed run batches
differently and may draw differently).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import hashlib
import json
import os
import sys
import tempfile
from typing import Any, Iterator

import jax
from tqdm import tqdm

from data_prep.rows import RowOptions
from omnirrm_jax.errors import UserError
from omnirrm_jax.eval import pairs
from omnirrm_jax.eval.benchmarks import BenchRow, Protocol, reference_order
from omnirrm_jax.eval.judge import judge_with_verdicts
from omnirrm_jax.eval.judge_runner import _thread_copy

_SNIFF = ((b"\x89PNG", ".png"), (b"\xff\xd8", ".jpg"), (b"GIF8", ".gif"), (b"RIFF", ".wav"), (b"fLaC", ".flac"),
          (b"ID3", ".mp3"), (b"OggS", ".ogg"))


class EvalError(UserError):
    """A run that cannot start or must stop (unusable output file, too many bad rows): printed without a traceback."""


class RunStopped(EvalError):
    """Too many rows could not be judged; `summary` holds the run's counts (what was judged is kept and scored)."""

    def __init__(self, message: str, summary: dict):
        super().__init__(message)
        self.summary = summary


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """orders: "both" (AB and BA for every row: the omnirrm metric) or "reference" (only each row's reference order).
    decoding overrides: None keeps the protocol's. batch_size counts prompts (a row in both orders is two)."""

    orders: str = "both"
    seed: int = 0
    batch_size: int = 8
    max_new_tokens: int | None = None
    greedy: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_length: int = 16384
    max_error_ratio: float = 0.5
    min_rows_for_ratio: int = 20
    window_batches: int = 8
    model: str | None = None      # `model_identity` of the judge: a resume with another model is refused


def row_orders(proto: Protocol, row: BenchRow, opts: RunOptions) -> tuple[str, ...]:
    if opts.orders == "both":
        return ("AB", "BA")
    if opts.orders == "reference":
        return (reference_order(proto, row.index, opts.seed),)
    raise EvalError(f"orders must be 'both' or 'reference', got {opts.orders!r}")


def decoding(proto: Protocol, opts: RunOptions) -> tuple[int, dict | None]:
    """(max_new_tokens, sampling dict or None for greedy) after the overrides: --greedy wins; an explicit temperature
    0 means greedy, an explicit temperature > 0 samples (also on a greedy protocol, with top-p 1 unless given)."""
    new = opts.max_new_tokens or proto.max_new_tokens
    if opts.greedy or opts.temperature == 0 or (proto.greedy and opts.temperature is None):
        return new, None
    temperature = proto.temperature if opts.temperature is None else opts.temperature
    return new, {"temperature": temperature, "top_p": proto.top_p if opts.top_p is None else opts.top_p}


def model_identity(checkpoint: str, *, lora: str | None = None, tokenizer: str | None = None,
                   dtype: str | None = None) -> str:
    """Which judge wrote a line: the checkpoint, LoRA and tokenizer paths (absolute) and the dtype; for a training
    workdir (judged at its newest checkpoint) also that checkpoint's step, so more training is another judge."""
    from omnirrm_jax.checkpoint.workdir import is_training_workdir, newest_step

    step = newest_step(checkpoint) if is_training_workdir(checkpoint) else None
    parts = [os.path.abspath(checkpoint) + ("" if step is None else f"@step{step}")]
    parts += [f"{k}={os.path.abspath(v)}" for k, v in (("lora", lora), ("tokenizer", tokenizer)) if v]
    return " ".join(parts + ([f"dtype={dtype}"] if dtype else []))


def run_settings(proto: Protocol, opts: RunOptions) -> dict:
    """What every line records of how it was judged; a resume must use the same."""
    new, sampling = decoding(proto, opts)
    out = {"orders": opts.orders, "decoding": {"max_new_tokens": new, **(sampling or {"greedy": True})}}
    return {**out, "model": opts.model} if opts.model is not None else out


def row_hash(row: BenchRow) -> str:
    """A short fingerprint of the row's own fields: resuming into, or scoring against, another data file (whose rows
    have no id to compare) is caught."""
    blob = json.dumps(row.fields, sort_keys=True, ensure_ascii=False, default=str)  # not the error: a fixed
    # --media-root changes a row's error, not the row
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------
# The judgements file
# ----------------------------------------------------------------------------------------------------

def _scan(path: str) -> tuple[list[dict], bool]:
    """(complete judgement lines, whether the file needs a rewrite: a partial or unreadable last line)."""
    if not os.path.exists(path):
        return [], False
    with open(path, "rb") as f:
        data = f.read()
    raw = data.split(b"\n")
    last = max((i for i, ln in enumerate(raw) if ln.strip()), default=-1)
    out = []
    for i, line in enumerate(raw):
        if not line.strip():
            continue
        try:
            obj = json.loads(line.decode("utf-8"))
            if not isinstance(obj, dict) or "index" not in obj or obj.get("order") not in ("AB", "BA"):
                raise ValueError("not a judgement line (needs 'index' and 'order')")
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            if i == last:  # a run killed mid-write: the last line is cut off and redone
                return out, True
            raise EvalError(f"{path} line {i + 1} is not a judgement line ({e}); use a new output file") from None
        out.append(obj)
    return out, bool(data) and not data.endswith(b"\n")


def read_lines(path: str) -> list[dict]:
    """The complete judgement lines of `path` (a partial last line is ignored; a bad line before it is an error)."""
    return _scan(path)[0]


def _check_owner(lines: list[dict], rows: list[BenchRow], proto: Protocol, opts: RunOptions, path: str) -> None:
    hashes = {r.index: row_hash(r) for r in rows}
    want = run_settings(proto, opts)["decoding"]
    seeded = "greedy" not in want or proto.order != "stored"  # the seed changes the draws or VL's shown orders
    for n, ln in enumerate(lines, 1):
        if ln.get("benchmark") != proto.name:
            raise EvalError(f"{path} holds {ln.get('benchmark')!r} judgements, not {proto.name!r}; use a new file")
        if seeded and ln.get("seed") != opts.seed:
            raise EvalError(f"{path} was run with seed {ln.get('seed')}, this run uses {opts.seed}; use a new file or "
                            "the same --seed")
        if ln.get("orders") == "both" and opts.orders == "reference":  # reference -> both extends the file
            raise EvalError(f"{path} was judged with --orders both, this run asks for reference: its rows judged in "
                            "one order would be scored as missing the other; use a new file or --orders both")
        if opts.model is not None and ln.get("model") is not None and ln["model"] != opts.model:
            raise EvalError(f"{path} was judged by {ln['model']}, this run's judge is {opts.model}: its lines would "
                            "be scored as this judge's; use a new file (or output_dir)")
        if ln.get("decoding") != want:
            raise EvalError(f"{path} was judged with decoding {ln.get('decoding')}, this run asks for {want}; use a "
                            "new file or the same settings")
        i = ln["index"]
        if i in hashes and ln.get("row_hash") != hashes[i]:
            raise EvalError(f"{path}: judgement {n} is for a row {i} that differs from the data file's row {i}: the "
                            "output belongs to another data file (or the file was edited); use a new file")


def resume(path: str, rows: list[BenchRow], proto: Protocol, opts: RunOptions) -> set[tuple[int, str]]:
    """(index, order) already judged in `path`. Rewrites the file without error lines and a partial last line."""
    lines, dirty = _scan(path)
    _check_owner(lines, rows, proto, opts, path)
    keep = [ln for ln in lines if not ln.get("error")]
    seen: set[tuple[int, str]] = set()
    unique = []
    for ln in keep:
        key = (int(ln["index"]), ln["order"])
        if key not in seen:
            seen.add(key)
            unique.append(ln)
    if dirty or len(unique) != len(lines):
        _rewrite(path, unique)
    return seen


def _rewrite(path: str, lines: list[dict]) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".judgements.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for ln in lines:
            f.write(json.dumps(ln, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _line(proto: Protocol, row: BenchRow, order: str, opts: RunOptions, **result: Any) -> dict:
    return {**row.fields, "benchmark": proto.name, "index": row.index, "row_hash": row_hash(row), "order": order,
            "seed": opts.seed, **run_settings(proto, opts), "template": proto.template, "output": None, "error": None,
            "probs": None, **result}


# ----------------------------------------------------------------------------------------------------
# Rows -> prepared pairs
# ----------------------------------------------------------------------------------------------------

def _materialise(row: BenchRow, media_dir: str) -> dict[str, list[str]]:
    """Media bytes carried in the file -> files under `media_dir` (named by content, reused on resume)."""
    out: dict[str, list[str]] = {}
    for kind, blobs in row.embedded.items():
        paths = []
        for blob in blobs:
            ext = next((e for magic, e in _SNIFF if blob.startswith(magic)), ".bin")
            name = hashlib.sha1(blob).hexdigest()[:24] + ext  # by content: a stale cache can never be reused wrongly
            full = os.path.join(media_dir, name)
            if not os.path.exists(full):
                with open(full + ".tmp", "wb") as f:
                    f.write(blob)
                os.replace(full + ".tmp", full)
            paths.append(name)
        out[kind] = paths
    return out


def to_pair(proto: Protocol, row: BenchRow, embedded_paths: dict[str, list[str]]) -> dict:
    """A benchmark row -> a judge pair (`eval.pairs`) with the protocol's template."""
    question = row.question
    if question is None and proto.template == "mm_rewardbench":
        question = "None"  # the reference's f-string formats a null Text as "None"
    pair = {"question": question, "answer_a": row.answer_a, "answer_b": row.answer_b, "modality": proto.modality,
            "template": proto.template, "images": list(row.images), "videos": list(row.videos),
            "audios": list(row.audios)}
    for kind, paths in embedded_paths.items():
        pair[kind] = paths
    if row.id is not None:
        pair["id"] = str(row.id)
    return pair


class BenchmarkRun:
    """One benchmark over one loaded judge (`judge_runner.Judge` supplies model, config, tokenizer)."""

    def __init__(self, judge, proto: Protocol, opts: RunOptions, *, media_root: str, output: str):
        self.judge, self.proto, self.opts = judge, proto, opts
        self.media_root, self.output = os.path.abspath(media_root), output
        self.media_dir = output + ".media"
        self.max_new_tokens, self.sampling = decoding(proto, opts)
        self.media = proto.media_config()
        if opts.batch_size < (2 if opts.orders == "both" else 1):
            raise EvalError(f"--batch-size {opts.batch_size} cannot hold a row in both orders")

    def prepare(self, row: BenchRow, orders: tuple[str, ...], tok) -> Any:
        """A `PreparedPair` (key = row index) or the row's error lines."""
        try:
            if row.error is not None:
                raise pairs.PairError(*row.error)
            embedded = {}
            root = self.media_root
            if row.embedded:
                os.makedirs(self.media_dir, exist_ok=True)
                embedded, root = _materialise(row, self.media_dir), self.media_dir
            opts = RowOptions(media_root=root, media=self.media)
            pair = pairs.check_pair(to_pair(self.proto, row, embedded))
            return pairs.prepare_pair(pair, row.index, tok, self.judge.cfg, opts, orders=orders,
                                      max_length=self.opts.max_length)
        except pairs.PairError as e:
            err = {"reason": e.reason, "detail": e.detail}
        except Exception as e:  # noqa: BLE001 - one broken row (or a decoder bug) must not stop a long run
            err = {"reason": "internal_error", "detail": f"{type(e).__name__}: {e}"}
        return [_line(self.proto, row, o, self.opts, error=err) for o in orders]

    def judge_group(self, group: list[tuple[BenchRow, tuple[str, ...], Any]]) -> list[dict]:
        exs = [ex for _, _, p in group for ex in p.examples]
        batch = pairs.make_batch(exs, self.opts.batch_size, self.judge.tok, self.judge.cfg)
        first = group[0]
        rng = jax.random.fold_in(jax.random.key(self.opts.seed), 2 * first[0].index + (first[1][0] == "BA"))
        results = judge_with_verdicts(self.judge.model, self.judge.tok, batch, max_new_tokens=self.max_new_tokens,
                                      decoding=self.sampling, rng=rng)
        out, i = [], 0
        for row, orders, _ in group:
            for o in orders:
                r = results[i]
                i += 1
                out.append(_line(self.proto, row, o, self.opts, output=r["text"],
                                 probs=None if r["verdict"] is None else dict(r["verdict"].probs)))
        return out

    def _groups(self, prepared: list[tuple[BenchRow, tuple[str, ...], Any]]) -> Iterator[list]:
        """Rows whose examples fill a batch, shortest prompts together (less padding)."""
        group, n = [], 0
        for item in sorted(prepared, key=lambda t: t[2].tokens):
            k = len(item[2].examples)
            if group and n + k > self.opts.batch_size:
                yield group
                group, n = [], 0
            group.append(item)
            n += k
        if group:
            yield group

    def run(self, rows: list[BenchRow], *, progress: bool = True) -> dict[str, Any]:
        """Judges what `output` lacks; returns counts of this run."""
        done = resume(self.output, rows, self.proto, self.opts)
        todo = []
        for row in rows:
            missing = tuple(o for o in row_orders(self.proto, row, self.opts) if (row.index, o) not in done)
            if missing:
                todo.append((row, missing))
        per = max(1, self.opts.batch_size // (2 if self.opts.orders == "both" else 1))
        window = per * self.opts.window_batches
        chunks = [todo[i:i + window] for i in range(0, len(todo), window)]
        counts: collections.Counter = collections.Counter()
        errors: collections.Counter = collections.Counter()
        prep_tok = _thread_copy(self.judge.tok)
        prep = lambda chunk: [(r, o, self.prepare(r, o, prep_tok)) for r, o in chunk]  # noqa: E731
        with open(self.output, "a", encoding="utf-8") as out, \
                tqdm(total=len(rows), initial=len(rows) - len(todo), unit="row", file=sys.stderr,
                     disable=not progress, desc=self.proto.name) as bar, cf.ThreadPoolExecutor(1) as pool:
            nxt = pool.submit(prep, chunks[0]) if chunks else None
            for c in range(len(chunks)):
                prepared = nxt.result()
                nxt = pool.submit(prep, chunks[c + 1]) if c + 1 < len(chunks) else None
                bad = [t for t in prepared if isinstance(t[2], list)]
                for _, _, lines in bad:
                    _write(out, lines)
                    errors[lines[0]["error"]["reason"]] += 1
                counts["error_rows"] += len(bad)
                bar.update(len(bad))
                for group in self._groups([t for t in prepared if not isinstance(t[2], list)]):
                    lines = self.judge_group(group)
                    _write(out, lines)
                    counts["judged_rows"] += len(group)
                    counts["judgements"] += len(lines)
                    bar.update(len(group))
                seen = len(rows) - len(todo) + counts["error_rows"] + counts["judged_rows"]  # judged before too
                if seen >= self.opts.min_rows_for_ratio and counts["error_rows"] > self.opts.max_error_ratio * seen:
                    if nxt is not None:
                        nxt.cancel()
                    top = ", ".join(f"{k} x{v}" for k, v in errors.most_common(3))
                    summary = {"rows": len(rows), "already_done_rows": len(rows) - len(todo), **counts,
                               "errors": dict(errors)}
                    raise RunStopped(f"{self.proto.name}: {counts['error_rows']} of {seen} rows could not be judged "
                                    f"(> {self.opts.max_error_ratio:.0%}; {top}); see the error lines in "
                                    f"{self.output} - check --media-root and the data file. Judged rows are kept.", summary)
        return {"rows": len(rows), "already_done_rows": len(rows) - len(todo), **counts, "errors": dict(errors)}


def _write(out, lines: list[dict]) -> None:
    for ln in lines:
        out.write(json.dumps(ln, ensure_ascii=False) + "\n")
    out.flush()
