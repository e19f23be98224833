"""The judge behind `omnirrm judge` (flags: `omnirrm_jax/commands/judge.py`) and `omnirrm eval`: a loaded
checkpoint (`load_judge`) that judges pair rows in batches (`Judge`), one pair or a JSONL file, resumable.

A JSONL file is judged in batches with static shapes (bucketed lengths, so a long run compiles a few programs,
never one per row) and written as one JSON line per input row, appended batch by batch. Each record carries its
input line number and a hash of that line's bytes: a rerun skips rows already in the output, so a killed run
resumes where it stopped; a partial last line is cut off and that row judged again; an output written for other
(or edited) input rows is refused instead of being silently extended. A row that cannot be judged becomes an error
record and the run goes on, unless more than `max_error_ratio` of the rows fail (a wrong --media-root, say): then
it stops, and `retry_errors` judges the error rows again once the cause is fixed.
Record fields: the docstring of `omnirrm_jax/commands/judge.py`.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import copy
import hashlib
import json
import os
import sys
import tempfile
from typing import Any, Iterator

from tqdm import tqdm

from data_prep.rows import RowOptions
from omnirrm_jax.data.media import MediaConfig
from omnirrm_jax.data.tokenizer import HFTokenizer, SentencePieceTokenizer, load_tokenizer, thinker_token_ids
from omnirrm_jax.errors import UserError
from omnirrm_jax.eval import pairs
from omnirrm_jax.eval.benchmarks import INFERENCE_MEDIA_ENV
from omnirrm_jax.eval.judge import judge_with_verdicts
from omnirrm_jax.eval.pairs import PairError
from omnirrm_jax.eval.verdict import combine_orders, swap_label, unswap_probs


class UsageError(UserError):
    """Bad flags or an unusable checkpoint/tokenizer: printed without a traceback."""


class TooManyErrors(RuntimeError):
    """More than the allowed share of rows could not be judged: the run stopped (what it wrote stays)."""


MIN_ROWS_FOR_RATIO = 32  # the error ratio is judged only once this many rows were tried in the run


# ----------------------------------------------------------------------------------------------------
# Model and tokenizer
# ----------------------------------------------------------------------------------------------------

def load_judge(checkpoint: str, *, lora: str | None = None, tokenizer: str | None = None, dtype: str = "float32"):
    """(model, config, tokenizer) from an HF or Orbax dir; refuses a tokenizer whose ids do not fit the model."""
    if not os.path.isdir(checkpoint):
        raise UsageError(f"checkpoint {checkpoint} is not a directory")
    if os.path.isdir(os.path.join(checkpoint, "params")):
        if lora:
            raise UsageError("--lora applies to HF checkpoints; merge it into the Orbax one with "
                             "`omnirrm convert HF_DIR OUT --to orbax --lora ADAPTER`")
        from omnirrm_jax.models.convert import load_orbax

        model, cfg = load_orbax(checkpoint, dtype)
    elif os.path.isfile(os.path.join(checkpoint, "config.json")):
        from omnirrm_jax.models.params import load_hf

        model, cfg = load_hf(checkpoint, dtype=dtype, lora_path=lora)
    else:
        raise UsageError(f"checkpoint {checkpoint} is neither an HF thinker folder (config.json + *.safetensors) nor "
                         "an Orbax one (config.json + params/, from `omnirrm convert` or `omnirrm export`)")
    return model, cfg, judge_tokenizer(tokenizer or checkpoint, cfg)


def judge_tokenizer(source: str, cfg):
    """The tokenizer at `source`, refused (UsageError, naming --tokenizer) unless its ids fit the model `cfg`."""
    hint = "pass --tokenizer (a SentencePiece .model file or an HF tokenizer dir)"
    try:
        tok = load_tokenizer(source)
    except UserError as e:  # missing, or not loadable (load_tokenizer names the cause)
        raise UsageError(f"{e}; {hint}") from None
    except Exception as e:  # noqa: BLE001 - transformers raises OSError/ValueError/TypeError for a missing tokenizer
        raise UsageError(f"cannot load a tokenizer from {source} ({type(e).__name__}: {e}); {hint}") from None
    want = {k: getattr(cfg, k) for k in thinker_token_ids(tok)}
    if thinker_token_ids(tok) != want:
        raise UsageError(f"tokenizer {source} special ids {thinker_token_ids(tok)} differ from the checkpoint's {want}")
    if tok.vocab_size > cfg.text.vocab_size:
        raise UsageError(f"tokenizer {source} has {tok.vocab_size} ids, the model only {cfg.text.vocab_size}")
    return tok


# ----------------------------------------------------------------------------------------------------
# Judging
# ----------------------------------------------------------------------------------------------------

class Judge:
    """A loaded checkpoint plus the judging options; turns pair rows into output records."""

    def __init__(self, model, cfg, tok, *, swap: bool = False, constrained: bool = False, max_new_tokens: int = 1024,
                 max_length: int = 8192, batch_size: int = 8, field: str = "better", modality: str | None = None,
                 template: str | None = None, media_limits: str = "inference"):
        self.model, self.cfg, self.tok = model, cfg, tok
        self.media = MediaConfig.from_env(dict(INFERENCE_MEDIA_ENV)) if media_limits == "inference" else MediaConfig()
        self.swap, self.constrained, self.field = swap, constrained, field
        self.max_new_tokens, self.max_length, self.batch_size = max_new_tokens, max_length, batch_size
        self.modality, self.template = modality, template
        self.verdict_min_prefix = 16  # `judge_with_verdicts`; the server sets the longest (one program)
        if batch_size < (2 if swap else 1):
            raise UsageError(f"--batch-size {batch_size} cannot hold a pair{' in both orders' if swap else ''}")
        if constrained:
            from omnirrm_jax.decoding.constrained import judgement_constraint

            need = judgement_constraint(tok, cfg.text.vocab_size).min_new_tokens
            if max_new_tokens < need:
                raise UsageError(f"--max-new-tokens {max_new_tokens} is below the shortest constrained judgement "
                                 f"({need} tokens with this tokenizer)")

    @classmethod
    def from_args(cls, args: argparse.Namespace, batch_size: int | None = None, load=load_judge) -> "Judge":
        """The judge `omnirrm judge` flags describe; `load` (a `load_judge` alike) reads the checkpoint."""
        model, cfg, tok = load(args.checkpoint, lora=args.lora, tokenizer=args.tokenizer, dtype=args.dtype)
        return cls(model, cfg, tok, swap=args.swap, constrained=args.constrained, max_new_tokens=args.max_new_tokens,
                   max_length=args.max_length, batch_size=batch_size or args.batch_size, field=args.verdict_field,
                   modality=args.modality, template=args.template, media_limits=args.media_limits)

    def prepare(self, key: Any, row: Any, opts, tok=None):
        """A `PreparedPair`, or an error record; never raises for a bad row. `tok`: this thread's tokenizer."""
        try:
            if isinstance(row, pairs.PairError):
                raise row
            if self.template and isinstance(row, dict) and "template" not in row:
                row = dict(row, template=self.template)
            pair = pairs.check_pair(row, modality=self.modality)
            return pairs.prepare_pair(pair, key, tok or self.tok, self.cfg, opts, swap=self.swap,
                                      max_length=self.max_length)
        except pairs.PairError as e:
            reason, detail = e.reason, e.detail
        except Exception as e:  # noqa: BLE001 - one broken row (or a decoder bug) must not stop a long run
            reason, detail = "internal_error", f"{type(e).__name__}: {e}"
        rid = row.get("id") if isinstance(row, dict) else None
        return {"line": key, "id": rid, "error": {"reason": reason, "detail": detail}}

    def judge_prepared(self, prepared: list, seq_len: int | None = None) -> list[dict]:
        """Prepared pairs (at most batch_size examples together) -> output records, via one batch (padded to
        `seq_len` if given, else to `pairs.seq_bucket`)."""
        exs = [ex for p in prepared for ex in p.examples]
        batch = pairs.make_batch(exs, self.batch_size, self.tok, self.cfg, seq_len)
        results = judge_with_verdicts(self.model, self.tok, batch, max_new_tokens=self.max_new_tokens,
                                      constrained=self.constrained, field=self.field,
                                      verdict_min_prefix=self.verdict_min_prefix)
        out, i = [], 0
        for p in prepared:
            n = len(p.examples)
            out.append(_record(p, results[i:i + n], self.field))
            i += n
        return out

    def batches(self, prepared: list) -> Iterator[list]:
        """Groups of prepared pairs that fill a batch, shortest prompts together (less padding)."""
        per = self.batch_size // (2 if self.swap else 1)
        ordered = sorted(prepared, key=lambda p: p.tokens)
        for i in range(0, len(ordered), per):
            yield ordered[i:i + per]

    def judge_rows(self, rows: list[tuple[Any, Any]], *, media_root: str) -> list[dict]:
        """(key, row) pairs -> records in the same order (error records for bad rows)."""
        opts = RowOptions(media_root=media_root, media=self.media)
        done: dict[Any, dict] = {}
        ready = []
        for key, row in rows:
            p = self.prepare(key, row, opts)
            if isinstance(p, dict):
                done[key] = p
            else:
                ready.append(p)
        for group in self.batches(ready):
            for p, rec in zip(group, self.judge_prepared(group)):
                done[p.key] = rec
        return [done[key] for key, _ in rows]

    def run_file(self, input_path: str, output_path: str, *, media_root: str | None = None,
                 window_batches: int = 8, retry_errors: bool = False,
                 max_error_ratio: float = 0.25, settings: dict | None = None) -> dict[str, Any]:
        """Judges every row of `input_path` not yet in `output_path`; returns a summary of this run's rows.

        settings: how this run judges (`commands.judge.judge_settings`), kept in every record as "judge"; a resume
          whose records were judged otherwise is refused.
        retry_errors: error records already in the output are removed and their rows judged again.
        max_error_ratio: once MIN_ROWS_FOR_RATIO rows were tried, stop (TooManyErrors) when a larger share of them
          became error records; 1.0 never stops."""
        if not 0.0 <= max_error_ratio <= 1.0:
            raise UsageError(f"--max-error-ratio must be in [0, 1], got {max_error_ratio}")
        check_paths(input_path, output_path)
        rows = list(read_pairs(input_path))
        hashes = {n: h for n, _, h in rows}
        done = resume_output(output_path, hashes, retry_errors=retry_errors, input_path=input_path,
                             settings=settings)
        rows = [(n, r) for n, r, _ in rows]
        pending = [(n, r) for n, r in rows if n not in done]
        opts = RowOptions(media_root=media_root or os.path.dirname(os.path.abspath(input_path)), media=self.media)
        window = self.batch_size * window_batches
        chunks = [pending[i:i + window] for i in range(0, len(pending), window)]
        stats: dict[str, Any] = collections.Counter()
        errors: collections.Counter = collections.Counter()
        agree: list[tuple] = []
        prep_tok = _thread_copy(self.tok)

        def stamped(recs: list[dict]) -> list[dict]:
            """Records as written: with their input row's hash and this run's settings (what a resume checks)."""
            for r in recs:
                r["row_sha"] = hashes[r["line"]]
                if settings is not None:
                    r["judge"] = settings
            return recs

        prep = lambda chunk: [self.prepare(n, r, opts, prep_tok) for n, r in chunk]  # noqa: E731
        with open(output_path, "a", encoding="utf-8") as out, \
                tqdm(total=len(rows), initial=len(rows) - len(pending), unit="pair", file=sys.stderr) as bar, \
                cf.ThreadPoolExecutor(1) as pool:  # the next window's media decode while this one is judged
            nxt = pool.submit(prep, chunks[0]) if chunks else None
            for c in range(len(chunks)):
                prepared = nxt.result()
                nxt = pool.submit(prep, chunks[c + 1]) if c + 1 < len(chunks) else None
                records = [p for p in prepared if isinstance(p, dict)]
                _write(out, stamped(records))
                bar.update(len(records))
                for group in self.batches([p for p in prepared if not isinstance(p, dict)]):
                    recs = stamped(self.judge_prepared(group))
                    _write(out, recs)
                    bar.update(len(recs))
                    records += recs
                for r in records:
                    if "error" in r:
                        errors[r["error"]["reason"]] += 1
                        continue
                    stats["judged"] += 1
                    stats["parsed"] += int(r["ok"])
                    stats["correct"] += int(bool(r.get("correct")))
                    stats["labelled"] += int("gold" in r)
                    if "swap" in r:
                        agree.append((r["better"], r["swap"]["better"]))
                tried = stats["judged"] + sum(errors.values())
                if tried >= MIN_ROWS_FOR_RATIO and sum(errors.values()) > max_error_ratio * tried:
                    if nxt is not None:
                        nxt.cancel()
                    common = ", ".join(f"{k} x{v}" for k, v in errors.most_common(3))
                    raise TooManyErrors(
                        f"stopped: {sum(errors.values())} of the {tried} rows tried could not be judged "
                        f"({common}), more than --max-error-ratio {max_error_ratio}; the reasons are in the error "
                        f"records of {output_path}. Fix the cause (--media-root? the input's fields?) and rerun "
                        "with --retry-errors, or raise --max-error-ratio")
        summary = {"rows": len(rows), "skipped_done": len(rows) - len(pending), "judged": stats["judged"],
                   "errors": dict(errors), "parse_rate": stats["parsed"] / stats["judged"] if stats["judged"] else None}
        if stats["labelled"]:
            summary["accuracy"] = stats["correct"] / stats["labelled"]
        if self.swap:
            from omnirrm_jax.eval.verdict import swap_consistency

            summary["swap_consistency"], summary["swap_pairs"] = swap_consistency(agree)
        return summary


def _thread_copy(tok):
    """A second tokenizer instance for the preparing thread: one HF fast tokenizer used from two threads can raise
    "Already borrowed" (encode reconfigures the shared Rust object; transformers#47085, tokenizers#537)."""
    if isinstance(tok, SentencePieceTokenizer):
        return SentencePieceTokenizer(tok.model_proto)
    if isinstance(tok, HFTokenizer):
        return HFTokenizer(copy.deepcopy(tok.hf))
    raise TypeError(f"no thread-private copy for tokenizer type {type(tok).__name__}")


def _order(result: dict, swapped: bool) -> dict:
    """One order's judgement; on the swapped prompt the verdict and probabilities are mapped back."""
    parsed, vp = result["parsed"], result["verdict"]
    better = parsed.better if parsed.ok else None
    probs = None if vp is None else (unswap_probs(vp.probs) if swapped else dict(vp.probs))
    return {"judgement": parsed.obj, "text": result["text"], "ok": parsed.ok, "parse_error": parsed.error or None,
            "better": swap_label(better) if swapped else better, "probs": probs,
            "reward": None if probs is None else probs["A"] - probs["B"],
            "verdict_mass": None if vp is None else vp.mass}


def _record(p, results: list[dict], field: str) -> dict:
    rec = {"line": p.key, "id": p.id, "modality": p.modality, **_order(results[0], False), "verdict_field": field}
    if p.gold is not None:
        rec["gold"] = p.gold
        rec["correct"] = rec["better"] == p.gold["better"]
    if len(results) > 1:
        sw = _order(results[1], True)
        rec["swap"] = sw
        v_ab, v_ba = results[0]["verdict"], results[1]["verdict"]
        probs = None if v_ab is None or v_ba is None else combine_orders(v_ab.probs, v_ba.probs)
        rec["combined"] = {"probs": probs, "reward": None if probs is None else probs["A"] - probs["B"],
                           "verdict": None if probs is None else max(probs, key=probs.get),
                           "consistent": None if rec["better"] is None or sw["better"] is None
                           else rec["better"] == sw["better"]}
    return rec


def _write(out, records: list[dict]) -> None:
    for r in records:
        out.write(json.dumps(r, ensure_ascii=False) + "\n")
    out.flush()


# ----------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------

def check_paths(input_path: str, output_path: str) -> None:
    """The input must be a file and the output another one (appending judgements to the pairs would corrupt
    them, and a one-line input would read as an already-finished output)."""
    if not os.path.isfile(input_path):
        raise UsageError(f"--input {input_path} is not a file")
    if os.path.exists(output_path) and os.path.samefile(input_path, output_path):
        raise UsageError(f"--output {output_path} is the --input file: the judgements would be written into the "
                         "pairs; choose another output file")


def row_sha(raw: bytes) -> str:
    """The identity of an input row in the output: a hash of its line's bytes (surrounding blanks ignored)."""
    return hashlib.sha256(raw.strip()).hexdigest()[:16]


def read_pairs(path: str) -> Iterator[tuple[int, Any, str]]:
    """(1-based line number, row dict or PairError, `row_sha`) for each non-blank line."""
    if not os.path.isfile(path):
        raise UsageError(f"--input {path} is not a file")
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                yield n, json.loads(raw.decode("utf-8")), row_sha(raw)
            except (UnicodeDecodeError, ValueError, RecursionError) as e:  # RecursionError: nesting too deep
                yield n, PairError("malformed_json", f"{path} line {n}: {e}"), row_sha(raw)


def resume_output(path: str, hashes: dict[int, str] | None = None, *, retry_errors: bool = False,
                  input_path: str = "the input", settings: dict | None = None) -> set[int]:
    """Input line numbers already judged in `path`.

    A partial (or unparsable) last line is cut off so it is redone; an unparsable line before it means the file is
    not ours to append to, and stops the run. With `hashes` ({line: row_sha} of the input), every record must be
    for the same bytes at the same line, else the output belongs to another (or an edited) input and the run
    stops. `retry_errors` rewrites the file without its error records, so those rows are judged again."""
    if not os.path.exists(path):
        return set()
    with open(path, "rb") as f:
        data = f.read()
    done, pos, records = set(), 0, []
    lines = data.split(b"\n")
    for i, raw in enumerate(lines):
        last = i == len(lines) - 1 or (i == len(lines) - 2 and lines[-1] == b"")
        end = pos + len(raw) + (0 if i == len(lines) - 1 else 1)
        if raw.strip():
            try:
                obj = json.loads(raw.decode("utf-8"))
                line = int(obj["line"])
                if i == len(lines) - 1:  # complete record without its newline: keep it, add the newline
                    with open(path, "ab") as f:
                        f.write(b"\n")
            except (UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError) as e:
                if not last:
                    raise UsageError(f"--output {path} line {i + 1} is not a judge record ({e}); only the last line "
                                     "may be partial - use a new output file") from None
                with open(path, "r+b") as f:
                    f.truncate(pos)
                break
            if hashes is not None and hashes.get(line) != obj.get("row_sha"):
                what = ("has no such line" if line not in hashes else "has different content there"
                        if obj.get("row_sha") else "cannot be matched: the record has no row hash (older omnirrm)")
                raise UsageError(f"--output {path} line {i + 1} holds the judgement of input line {line}, but "
                                 f"{input_path} {what}: the output was written for other input rows; use a new "
                                 "output file (or the input it was made from)")
            had = obj.get("judge")
            if settings is not None and had is not None and had != settings:
                had = had if isinstance(had, dict) else {"judge": had}
                changed = sorted(k for k in set(settings) | set(had) if had.get(k) != settings.get(k))
                raise UsageError(f"--output {path} line {i + 1} was judged with {changed} = "
                                 f"{[had.get(k) for k in changed]}, this run uses {[settings.get(k) for k in changed]}:"
                                 " its records would pass as this run's; use a new output file")
            done.add(line)
            records.append((raw, obj))
        pos = end
    if retry_errors and any("error" in obj for _, obj in records):
        keep = [raw for raw, obj in records if "error" not in obj]
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".judge-output.")
        with os.fdopen(fd, "wb") as f:  # on disk before it replaces the output, as eval.runner._rewrite does
            f.writelines(raw + b"\n" for raw in keep)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        done = {int(obj["line"]) for _, obj in records if "error" not in obj}
    return done
